/**
 * An open datastore: `datastore.json` checked against the files it names, `keys.npy` and
 * `vals.npy` mapped read-only, and the FAISS index read, ready for searches.
 *
 * @module
 */

import { KnnError } from "../core/errors.ts";
import { exactL2Async, FaissIndex } from "../index/mod.ts";
import type { MappedArray } from "../storage/mmap.ts";
import { type DatastoreManifest, datastorePaths, readManifest } from "./manifest.ts";
import {
  gatheredProblems,
  indexCountProblems,
  indexFileProblems,
  openNpyChecked,
} from "./_checks.ts";

/** An open datastore, ready for queries. Close it when done. */
export class Datastore implements Disposable {
  /** Directory it was opened from. */
  readonly dir: string;
  /** Its `datastore.json`. */
  readonly manifest: DatastoreManifest;
  /** The FAISS index (ids = rows). */
  readonly index: FaissIndex;
  /** `keys.npy`, mapped read-only (for exact distances and inspection). */
  readonly keys: MappedArray;
  /** `vals.npy`, mapped read-only. */
  readonly vals: MappedArray;
  #valsView: Int32Array;
  #vocab: number;
  #valuesChecked = false;

  private constructor(
    dir: string,
    manifest: DatastoreManifest,
    index: FaissIndex,
    keys: MappedArray,
    vals: MappedArray,
  ) {
    this.dir = dir;
    this.manifest = manifest;
    this.index = index;
    this.keys = keys;
    this.vals = vals;
    this.#valsView = vals.view() as Int32Array;
    this.#vocab = manifest.model.vocabSize;
  }

  /**
   * Opens `dir`, checking before anything is mapped or searched that every file is there and
   * agrees with `datastore.json`: `keys.npy` and `vals.npy` headers and sizes against the
   * recorded dtypes and shapes, `faiss.index` and `faiss.ivfdata` sizes against the recorded
   * ones, and the index's size against `index.ntotal` and the number of keys. A file that fails
   * is `E_CORRUPT` (a missing one `E_NOT_FOUND`), naming the file, the field, the recorded and
   * the found value. `nprobe` overrides the one recorded at build time.
   */
  static async open(
    dir: string,
    opts: { nprobe?: number; mmapIndex?: boolean } = {},
  ): Promise<Datastore> {
    const paths = datastorePaths(dir);
    const manifest = await readManifest(dir);
    if (!manifest) {
      throw new KnnError(
        "E_NOT_FOUND",
        `${dir}: no datastore.json — not a finished datastore (run \`knn build-index --out ${dir}\`)`,
        { path: paths.manifest },
      );
    }
    if (!manifest.index) {
      throw new KnnError(
        "E_NOT_FOUND",
        `${dir}: the datastore has no finished index (run \`knn build-index --out ${dir}\`)`,
        { path: paths.index },
      );
    }
    const fileProblems = [
      ...gatheredProblems(dir, manifest),
      ...await indexFileProblems(dir, manifest),
    ];
    if (fileProblems.length) throw fileProblems[0];
    const keys = openNpyChecked(paths.keys, manifest.keys, "keys");
    let vals: MappedArray | undefined;
    let index: FaissIndex | undefined;
    try {
      vals = openNpyChecked(paths.vals, manifest.vals, "vals");
      // Queries only read: on-disk lists are opened read-only, so a datastore the user may read
      // but not write (another user's, a read-only mount) can be searched.
      index = FaissIndex.read(paths.index, { mmap: opts.mmapIndex ?? false, readOnly: true });
      const countProblems = indexCountProblems(dir, manifest, index);
      if (countProblems.length) throw countProblems[0];
      const nprobe = opts.nprobe ?? manifest.index.nprobe;
      if (manifest.index.nlist > 0) index.nprobe = nprobe;
      keys.advise("random");
      return new Datastore(dir, manifest, index, keys, vals);
    } catch (e) {
      index?.close();
      keys.close();
      vals?.close();
      throw e;
    }
  }

  /** Number of keys. */
  get size(): number {
    return this.keys.rows;
  }

  /**
   * The next token stored for row `i`. A value outside the model's vocabulary (an overwritten
   * `vals.npy`) is `E_CORRUPT`: it would otherwise be silently left out of p_kNN.
   */
  val(i: number): number {
    const v = this.#valsView[i];
    if (v >= 0 && v < this.#vocab) return v;
    if (v === undefined) throw new RangeError(`val(${i}): row out of range for ${this.size} rows`);
    throw this.#badValue(i, v);
  }

  /**
   * Scans `vals.npy` once for values outside the model's vocabulary and throws `E_CORRUPT`
   * naming the first such row. Evaluation calls it before handing the values to the native
   * vote, which reads them without {@link val}'s check (one pass over 4 bytes a key: about
   * 0.1 s per 100M keys from the page cache).
   */
  checkValues(): void {
    if (this.#valuesChecked) return;
    const vals = this.#valsView;
    const vocab = this.#vocab;
    for (let i = 0; i < vals.length; i++) {
      const v = vals[i];
      if (v < 0 || v >= vocab) throw this.#badValue(i, v);
    }
    this.#valuesChecked = true;
  }

  /** Token `j` of the datastore's corpus (token 0 is recorded, token j+1 = vals[j]). */
  token(j: number): number {
    return j === 0 ? this.manifest.corpus.firstToken : this.val(j - 1);
  }

  #badValue(i: number, v: number): KnnError {
    const path = datastorePaths(this.dir).vals;
    return new KnnError(
      "E_CORRUPT",
      `${path}: row ${i} holds token ${v}, outside the model's vocabulary [0, ${this.#vocab}) ` +
        `(datastore.json model.vocabSize)`,
      { path, key: "model.vocabSize", hint: `check the whole file: knn verify ${this.dir}` },
    );
  }

  /**
   * Exact squared L2 distances from each query to its neighbours' stored keys, recomputed
   * natively from the memory-mapped `keys.npy`. queries: [nq, d]; labels: [nq, k] → [nq, k]
   * (Infinity where the label is -1).
   */
  exactDistances(queries: Float32Array, labels: BigInt64Array, k: number): Promise<Float32Array> {
    return exactL2Async(
      queries,
      {
        pointer: this.keys.pointer(0),
        rows: this.keys.rows,
        d: this.keys.rowLength,
        dtype: this.keys.dtype === "<f2" ? "float16" : "float32",
      },
      labels,
      k,
    );
  }

  /**
   * FAISS's distances as the vote uses them (smaller = nearer): squared L2 as they are,
   * inner-product similarities negated.
   */
  voteDistances(distances: Float32Array): Float32Array {
    return this.manifest.index?.metric === "ip" ? distances.map((x) => -x) : distances;
  }

  /** Releases the index and the mappings. */
  close(): void {
    this.index.close();
    this.keys.close();
    this.vals.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
