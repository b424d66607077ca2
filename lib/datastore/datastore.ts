/**
 * An open datastore: `datastore.json` checked against the files it names, `keys.npy` and
 * `vals.npy` mapped read-only, and the FAISS index read, ready for searches.
 *
 * @module
 */

import { exactL2Async, FaissIndex } from "../index/mod.ts";
import { MappedArray } from "../storage/mmap.ts";
import { type DatastoreManifest, datastorePaths, readManifest } from "./manifest.ts";

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
  }

  /**
   * Opens `dir`, checking that every file is there and agrees with `datastore.json`.
   * `nprobe` overrides the one recorded at build time.
   */
  static async open(
    dir: string,
    opts: { nprobe?: number; mmapIndex?: boolean } = {},
  ): Promise<Datastore> {
    const paths = datastorePaths(dir);
    const manifest = await readManifest(dir);
    if (!manifest) {
      throw new Error(
        `${dir}: no datastore.json — not a finished datastore (run \`knn build-index --out ${dir}\`)`,
      );
    }
    if (!manifest.index) {
      throw new Error(
        `${dir}: the datastore has no finished index (run \`knn build-index --out ${dir}\`)`,
      );
    }
    const needed = [paths.keys, paths.vals, paths.index];
    if (manifest.index.invlists === "disk" && manifest.index.nlist > 0) needed.push(paths.ivfdata);
    for (const p of needed) {
      try {
        await Deno.stat(p);
      } catch {
        throw new Error(`${p}: missing; the datastore in ${dir} is incomplete (rebuild it)`);
      }
    }
    const keys = MappedArray.open(paths.keys, { mode: "r" });
    const vals = MappedArray.open(paths.vals, { mode: "r" });
    let index: FaissIndex | undefined;
    try {
      const [n, d] = manifest.keys.shape;
      if (keys.rows !== n || keys.rowLength !== d) {
        throw new Error(
          `${paths.keys}: shape [${keys.shape}] does not match datastore.json [${n}, ${d}]`,
        );
      }
      if (vals.rows !== n) {
        throw new Error(`${paths.vals}: ${vals.rows} rows, datastore.json says ${n}`);
      }
      // Queries only read: on-disk lists are opened read-only, so a datastore the user may read
      // but not write (another user's, a read-only mount) can be searched.
      index = FaissIndex.read(paths.index, { mmap: opts.mmapIndex ?? false, readOnly: true });
      if (index.ntotal !== n || index.d !== d) {
        throw new Error(
          `${paths.index}: holds ${index.ntotal} vectors of dimension ${index.d}; ` +
            `datastore.json says ${n} of ${d}`,
        );
      }
      const nprobe = opts.nprobe ?? manifest.index.nprobe;
      if (manifest.index.nlist > 0) index.nprobe = nprobe;
      keys.advise("random");
      return new Datastore(dir, manifest, index, keys, vals);
    } catch (e) {
      index?.close();
      keys.close();
      vals.close();
      throw e;
    }
  }

  /** Number of keys. */
  get size(): number {
    return this.keys.rows;
  }

  /** The next token stored for row `i`. */
  val(i: number): number {
    return this.#valsView[i];
  }

  /** Token `j` of the datastore's corpus (token 0 is recorded, token j+1 = vals[j]). */
  token(j: number): number {
    return j === 0 ? this.manifest.corpus.firstToken : this.#valsView[j - 1];
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
