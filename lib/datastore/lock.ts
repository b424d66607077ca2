/**
 * One writer per datastore: every command that writes a datastore holds an exclusive advisory
 * lock (`flock`, through `Deno.FsFile.tryLock`) on `DIR/.lock` for its whole run. A second
 * writer fails at once with `E_LOCKED`, naming the holder's pid and command, which the holder
 * records in the lock file. The kernel drops the lock when its holder exits, however it exits,
 * so a crash never leaves a stale lock. Readers take no lock: they rely on `datastore.json`
 * being written last and on files being replaced by rename, never rewritten in place.
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

/** A held writer lock; release it with `release()` or `using`. */
export class DatastoreLock implements Disposable {
  /** The lock file. */
  readonly path: string;
  /** What this process recorded in it. */
  readonly holder: LockHolder;
  #file: Deno.FsFile | null;

  private constructor(path: string, holder: LockHolder, file: Deno.FsFile) {
    this.path = path;
    this.holder = holder;
    this.#file = file;
  }

  /**
   * Takes the writer lock of datastore directory `dir` (which must exist) for `command`, or
   * throws `E_LOCKED` at once (never waits) naming the process that holds it.
   */
  static async acquire(dir: string, command: string): Promise<DatastoreLock> {
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
      locked = await file.tryLock(true);
    } catch (e) {
      file.close();
      throw fsError(e, path, "lock");
    }
    if (!locked) {
      const holder = await readHolder(path);
      file.close();
      const who = holder
        ? `process ${holder.pid} (${holder.command})` +
          (holder.host ? ` on ${holder.host}` : "") + ` since ${holder.since}`
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
    try {
      const bytes = new TextEncoder().encode(JSON.stringify(holder) + "\n");
      await file.truncate(0);
      let off = 0;
      while (off < bytes.length) off += await file.write(bytes.subarray(off));
    } catch (e) {
      file.close();
      throw fsError(e, path, "record the lock holder");
    }
    return new DatastoreLock(path, holder, file);
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
    try {
      file.truncateSync(0);
    } catch { /* the record is informative only; the lock itself goes with close */ }
    file.close();
  }

  /** Same as {@link DatastoreLock.release}, for `using`. */
  [Symbol.dispose](): void {
    this.release();
  }
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
