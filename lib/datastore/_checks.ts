/**
 * Cheap checks of a datastore's files against `datastore.json` (presence, sizes, npy headers,
 * index counts), shared by `Datastore.open`, the skipped stages of `buildIndex` and
 * `verifyDatastore`. Every problem is a {@linkcode KnnError} naming the file, what the manifest
 * promises and what was found.
 *
 * @module
 */

import { dirname, join } from "node:path";
import { fsError, KnnError } from "../core/errors.ts";
import { MappedArray } from "../storage/mmap.ts";
import type { DType } from "../storage/npy.ts";
import { type DatastoreManifest, datastorePaths } from "./manifest.ts";

/** The on-disk inverted lists file a finished index uses, or `undefined` when it has none. */
export function ivfdataFile(index: DatastoreManifest["index"]): string | undefined {
  if (!index) return undefined;
  if (index.ivfdata) return index.ivfdata.file;
  return index.invlists === "disk" && index.nlist > 0 ? "faiss.ivfdata" : undefined;
}

/** The size of `path`, `E_NOT_FOUND` naming it (and `what` needs it) when it is missing. */
export async function fileSize(path: string, what: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch (e) {
    const err = fsError(e, path, "read");
    if (err.code === "E_NOT_FOUND") {
      throw new KnnError("E_NOT_FOUND", `${path}: missing; ${what}`, { path, cause: e });
    }
    throw err;
  }
}

/**
 * Maps an `.npy` file of the datastore read-only and checks its header against the manifest:
 * the file size must match the header (a truncated file is `E_CORRUPT`), and dtype and shape
 * must be the ones `datastore.json` records (`field` names them, e.g. `"keys"`).
 */
export function openNpyChecked(
  path: string,
  want: { dtype: string; shape: readonly number[] },
  field: string,
): MappedArray {
  let arr: MappedArray;
  try {
    arr = MappedArray.open(path, { mode: "r", dtypes: [want.dtype as DType] });
  } catch (e) {
    if (KnnError.is(e, "E_NOT_FOUND")) {
      throw new KnnError(
        "E_NOT_FOUND",
        `${path}: missing; the datastore in ${dirname(path)} is incomplete (rebuild it)`,
        { path, cause: e },
      );
    }
    if (KnnError.is(e)) throw e; // another failed system call: permission, I/O
    const msg = (e as Error).message;
    throw new KnnError(
      "E_CORRUPT",
      msg.startsWith(path) ? msg : `${path}: ${msg}`,
      { path, cause: e, hint: "rebuild it: knn build-index skips nothing that fails this check" },
    );
  }
  if (arr.shape.length !== want.shape.length || arr.shape.some((v, i) => v !== want.shape[i])) {
    const found = arr.shape;
    arr.close();
    throw new KnnError(
      "E_CORRUPT",
      `${path}: shape [${found}] does not match datastore.json ${field}.shape [${want.shape}]`,
      { path, key: `${field}.shape` },
    );
  }
  return arr;
}

/** Problems with `keys.npy` and `vals.npy` (missing, truncated, other dtype or shape). */
export function gatheredProblems(
  dir: string,
  m: Pick<DatastoreManifest, "keys" | "vals">,
): KnnError[] {
  const paths = datastorePaths(dir);
  const out: KnnError[] = [];
  for (
    const [path, field, want] of [
      [paths.keys, "keys", m.keys],
      [paths.vals, "vals", m.vals],
    ] as const
  ) {
    try {
      openNpyChecked(path, want, field).close();
    } catch (e) {
      if (!KnnError.is(e)) throw e;
      out.push(e);
    }
  }
  return out;
}

/**
 * Problems with a finished index's files: `faiss.index` and its on-disk lists missing, or of
 * another size than `datastore.json` recorded when they were written (a truncated
 * `faiss.ivfdata` would otherwise crash readers with SIGBUS).
 */
export async function indexFileProblems(dir: string, m: DatastoreManifest): Promise<KnnError[]> {
  const index = m.index;
  if (!index) return [];
  const out: KnnError[] = [];
  const files: [string, number | undefined, string][] = [
    [join(dir, index.file), index.bytes, "index.bytes"],
  ];
  const ivf = ivfdataFile(index);
  if (ivf) files.push([join(dir, ivf), index.ivfdata?.bytes, "index.ivfdata.bytes"]);
  for (const [path, bytes, key] of files) {
    try {
      const size = await fileSize(path, `the index in ${dir} is incomplete (rebuild it)`);
      if (bytes !== undefined && size !== bytes) {
        out.push(
          new KnnError(
            "E_CORRUPT",
            `${path}: ${size} bytes, but datastore.json ${key} records ${bytes} ` +
              `(${size < bytes ? "truncated" : "changed"} since it was written)`,
            { path, key, hint: `rebuild the index: knn build-index --out ${dir}` },
          ),
        );
      }
    } catch (e) {
      if (!KnnError.is(e)) throw e;
      out.push(e);
    }
  }
  return out;
}

/**
 * Problems with the counts of an index that was read: its size against `index.ntotal` and the
 * number of keys, its dimension against the keys' width.
 */
export function indexCountProblems(
  dir: string,
  m: DatastoreManifest,
  index: { ntotal: number; d: number },
): KnnError[] {
  const paths = datastorePaths(dir);
  const out: KnnError[] = [];
  const [n, d] = m.keys.shape;
  const recorded = m.index?.ntotal;
  if (recorded !== index.ntotal) {
    out.push(
      new KnnError(
        "E_CORRUPT",
        `${paths.manifest}: index.ntotal is ${recorded} but ${paths.index} holds ` +
          `${index.ntotal} vectors`,
        { path: paths.manifest, key: "index.ntotal" },
      ),
    );
  }
  if (index.ntotal !== n) {
    out.push(
      new KnnError(
        "E_CORRUPT",
        `${paths.index}: holds ${index.ntotal} vectors but keys.shape in datastore.json ` +
          `has ${n} rows`,
        { path: paths.index, key: "keys.shape" },
      ),
    );
  }
  if (index.d !== d) {
    out.push(
      new KnnError(
        "E_CORRUPT",
        `${paths.index}: vectors of dimension ${index.d} but keys.shape in datastore.json ` +
          `has width ${d}`,
        { path: paths.index, key: "keys.shape" },
      ),
    );
  }
  return out;
}
