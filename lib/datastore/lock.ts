/**
 * One writer per datastore: every command that writes a datastore holds an exclusive advisory
 * lock (`flock`, through `Deno.FsFile.tryLock`) on `DIR/.lock` for its whole run. A second
 * writer fails at once with `E_LOCKED`, naming the holder's pid and command, which the holder
 * records in the lock file. The kernel drops the lock when its holder exits, however it exits,
 * so a crash never leaves a stale lock. Readers take no lock: they rely on `datastore.json`
 * being written last and on files being replaced by rename, never rewritten in place.
 *
 * Shards: the processes that gather or add one shard (`knn gather --shard I/N`, possibly on
 * other machines sharing the file system) hold `DIR/.lock` *shared*, so they run at the same
 * time while no datastore-wide writer (train, merge, build-index) can start, and each holds its
 * shard directory's own lock (`DIR/shards/I/.lock`) exclusively, where it records itself. The
 * worker processes of a `build-index` run take no datastore lock: their parent holds it for
 * them ({@link DatastoreLock.heldBy} checks that).
 *
 * @module
 */

import { join } from "node:path";
import { fsError, KnnError } from "../core/errors.ts";

/** Name of the lock file inside a datastore directory. */
export const LOCK_FILE = ".lock";

/** Who holds a datastore's writer lock, as recorded in its lock file. */
export interface LockHolder {
  /** Process id of the holder. */
  pid: number;
  /** What it runs, e.g. `"knn build-index"`. */
  command: string;
  /**
   * Host it runs on (a lock on a shared file system may be held elsewhere); absent when the
   * holder may not read the host name (Deno without `--allow-sys`).
   */
  host?: string;
  /** When it took the lock (ISO 8601). */
  since: string;
}

/** Options of {@link DatastoreLock.acquire}. */
export interface AcquireLockOptions {
  /**
   * `"exclusive"` (default): the only writer, recorded in the lock file. `"shared"`: one of
   * several shard writers that may run together (nothing is recorded: each records itself in
   * its shard directory's lock instead); excludes every exclusive holder.
   */
  mode?: "exclusive" | "shared";
}

/** A held writer lock; release it with `release()` or `using`. */
export class DatastoreLock implements Disposable {
  /** The lock file. */
  readonly path: string;
  /** What this process recorded in it (a shared holder records nothing in the file). */
  readonly holder: LockHolder;
  /** How it is held. */
  readonly mode: "exclusive" | "shared";
  #file: Deno.FsFile | null;

  private constructor(
    path: string,
    holder: LockHolder,
    file: Deno.FsFile,
    mode: "exclusive" | "shared",
  ) {
    this.path = path;
    this.holder = holder;
    this.#file = file;
    this.mode = mode;
  }

  /**
   * Takes the writer lock of datastore directory `dir` (which must exist) for `command`, or
   * throws `E_LOCKED` at once (never waits) naming the process that holds it (for a lock held
   * shared, the shard writers recorded in `dir/shards/*\/.lock`).
   */
  static async acquire(
    dir: string,
    command: string,
    opts: AcquireLockOptions = {},
  ): Promise<DatastoreLock> {
    const mode = opts.mode ?? "exclusive";
    const path = join(dir, LOCK_FILE);
    let file: Deno.FsFile;
    try {
      // Never truncated on open and never unlinked: every writer must lock the same inode.
      file = await Deno.open(path, { read: true, write: true, create: true });
    } catch (e) {
      throw fsError(e, path, "open the datastore's lock file");
    }
    let locked = false;
    try {
      locked = await file.tryLock(mode === "exclusive");
    } catch (e) {
      file.close();
      throw fsError(e, path, "lock");
    }
    if (!locked) {
      const holder = await readHolder(path);
      file.close();
      const shards = holder ? [] : await shardHolders(dir);
      const who = holder
        ? describeHolder(holder)
        : shards.length
        ? `shard processes: ${shards.map(describeHolder).join(", ")}`
        : "another process";
      throw new KnnError(
        "E_LOCKED",
        `${dir}: the datastore is being written by ${who}; one writer at a time`,
        {
          path,
          hint: "wait for it to finish (or stop it: it resumes where it stopped), then rerun",
        },
      );
    }
    const holder: LockHolder = { pid: Deno.pid, command, since: new Date().toISOString() };
    try {
      holder.host = Deno.hostname();
    } catch { /* no sys permission: the record names the pid only */ }
    if (mode === "shared") return new DatastoreLock(path, holder, file, mode);
    try {
      const bytes = new TextEncoder().encode(JSON.stringify(holder) + "\n");
      await file.truncate(0);
      let off = 0;
      while (off < bytes.length) off += await file.write(bytes.subarray(off));
    } catch (e) {
      file.close();
      throw fsError(e, path, "record the lock holder");
    }
    return new DatastoreLock(path, holder, file, mode);
  }

  /**
   * Checks, for a worker process of a `build-index` run, that process `pid` (its parent) holds
   * the exclusive lock of `dir` on its behalf; throws `E_LOCKED` otherwise (the parent died, or
   * someone else holds it).
   */
  static async heldBy(dir: string, pid: number): Promise<void> {
    const path = join(dir, LOCK_FILE);
    const holder = await readHolder(path);
    let free = false;
    try {
      using file = await Deno.open(path, { read: true, write: true });
      free = await file.tryLock(false);
    } catch (e) {
      throw fsError(e, path, "check the lock of");
    }
    if (free || holder?.pid !== pid) {
      throw new KnnError(
        "E_LOCKED",
        `${dir}: expected process ${pid} to hold the datastore's lock for this worker, found ` +
          (free ? "the lock free" : holder ? describeHolder(holder) : "another process"),
        { path },
      );
    }
  }

  /** Whether `release()` has run. */
  get released(): boolean {
    return this.#file === null;
  }

  /** Clears the holder record and releases the lock; calling it twice is a no-op. */
  release(): void {
    const file = this.#file;
    if (file === null) return;
    this.#file = null;
    if (this.mode === "exclusive") {
      try {
        file.truncateSync(0);
      } catch { /* the record is informative only; the lock itself goes with close */ }
    }
    file.close();
  }

  /** Same as {@link DatastoreLock.release}, for `using`. */
  [Symbol.dispose](): void {
    this.release();
  }
}

function describeHolder(h: LockHolder): string {
  return `process ${h.pid} (${h.command})` + (h.host ? ` on ${h.host}` : "") + ` since ${h.since}`;
}

/** The holders recorded in `dir/shards/*\/.lock` (those still locked or not: a hint only). */
async function shardHolders(dir: string): Promise<LockHolder[]> {
  const out: LockHolder[] = [];
  try {
    for await (const e of Deno.readDir(join(dir, "shards"))) {
      if (!e.isDirectory) continue;
      const h = await readHolder(join(dir, "shards", e.name, LOCK_FILE));
      if (h) out.push(h);
    }
  } catch { /* no shards */ }
  return out;
}

/** The holder recorded in a lock file, or `undefined` when it is empty or unreadable. */
export async function readHolder(path: string): Promise<LockHolder | undefined> {
  try {
    const text = await Deno.readTextFile(path);
    const h = JSON.parse(text) as LockHolder;
    return typeof h.pid === "number" ? h : undefined;
  } catch {
    return undefined;
  }
}
