import { fsError, KnnError } from "./errors.ts";

/**
 * Writes `bytes` to a unique `path.<pid>.<id>.tmp`, fsyncs it and renames it over `path`:
 * readers never see a half file, and concurrent writers never share a temp file. The temp
 * file is removed if anything fails. Failures are {@linkcode KnnError}s naming `path` (a full
 * disk is `E_NO_SPACE`, e.g. `data/x/datastore.json: cannot write: No space left on device`).
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    {
      using file = await Deno.open(tmp, { write: true, create: true, truncate: true });
      let off = 0;
      while (off < bytes.length) off += await file.write(bytes.subarray(off));
      await file.sync();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw fsError(e, path, "write");
  }
}

/** Writes `text` as UTF-8 atomically (see {@link writeFileAtomic}). */
export function writeTextAtomic(path: string, text: string): Promise<void> {
  return writeFileAtomic(path, new TextEncoder().encode(text));
}

/** Writes `value` as pretty JSON atomically (see {@link writeTextAtomic}). */
export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeTextAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/**
 * Reads JSON, or `undefined` when the file does not exist. A file that is not JSON is
 * `E_CORRUPT`; other read failures are {@linkcode KnnError}s naming `path`.
 */
export async function readJsonIfExists<T>(path: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw fsError(e, path, "read");
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new KnnError("E_CORRUPT", `${path}: not valid JSON (${(e as Error).message})`, {
      path,
      cause: e,
    });
  }
}

/** Removes a file, ignoring one that is already gone; other failures name `path`. */
export async function removeIfExists(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw fsError(e, path, "remove");
  }
}

/** Renames `from` to `to`; failures are {@linkcode KnnError}s naming both files. */
export async function renameFile(from: string, to: string): Promise<void> {
  try {
    await Deno.rename(from, to);
  } catch (e) {
    throw fsError(e, from, `rename to ${to}`);
  }
}
