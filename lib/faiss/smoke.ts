/**
 * An end-to-end check of the FAISS layer: build a small IVFPQ index over random vectors the
 * way the kNN-LM datastore does (train, add with ids, set nprobe, search), and report what
 * came back. Used by `knnlm smoke` until the real pipeline lands.
 *
 * @module
 */

import { FaissIndex, faissLibraryPath, faissVersion, setNumThreads } from "./index.ts";

/** Options of `runFaissSmoke`; every field has a small default that runs in about a second. */
export interface SmokeOptions {
  /** Vector dimension; default 32. */
  d?: number;
  /** Vectors stored (and used for training); default 10000. */
  n?: number;
  /** Stored vectors used as queries; default 5. */
  queries?: number;
  /** Neighbours per query; default 5. */
  k?: number;
  /** IVF lists; default 32. */
  nlist?: number;
  /** PQ sub-quantizers (code bytes at 8 bits); default 8. */
  m?: number;
  /** Bits per PQ code; default 8. */
  nbits?: number;
  /** Lists probed per query; default 8 (the kNN-LM reference value). */
  nprobe?: number;
  /** Seed of the random vectors; default 1. */
  seed?: number;
  /** OpenMP threads; default: leave FAISS's setting. */
  threads?: number;
}

/** What `runFaissSmoke` found. */
export interface SmokeResult {
  /** FAISS version the shim was built against. */
  faissVersion: string;
  /** Path of the loaded shim library. */
  library: string;
  /** The index that was built. */
  index: { type: string; d: number; ntotal: number; nlist: number; m: number; nbits: number };
  /** nprobe used for the searches. */
  nprobe: number;
  /** Wall-clock seconds of each step. */
  seconds: { train: number; add: number; search: number };
  /** Per query: the stored row it copies, and the ids/distances found (best first). */
  queries: { row: number; ids: number[]; distances: number[] }[];
  /** How many queries found their own stored vector first. */
  selfFound: number;
}

// Deterministic uniform [0, 1) floats (mulberry32).
function randomRows(n: number, d: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n * d);
  for (let i = 0; i < out.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }
  return out;
}

/**
 * Builds an IVFPQ index over `n` random vectors with ids `1000 + row`, searches `queries` of
 * the stored vectors, and returns the neighbours and timings. Prints nothing.
 */
export async function runFaissSmoke(opts: SmokeOptions = {}): Promise<SmokeResult> {
  const {
    d = 32,
    n = 10_000,
    queries = 5,
    k = 5,
    nlist = 32,
    m = 8,
    nbits = 8,
    nprobe = 8,
    seed = 1,
  } = opts;
  if (!Number.isInteger(queries) || queries < 1 || queries > n) {
    throw new Error(`queries must be an integer in 1..n (${n}), got ${queries}`);
  }
  if (opts.threads !== undefined) setNumThreads(opts.threads);

  // keys: [n, d] float32; ids: row + 1000, so a label is visibly an id, not a row number.
  const keys = randomRows(n, d, seed);
  const ids = BigInt64Array.from({ length: n }, (_, i) => BigInt(i + 1000));
  using index = FaissIndex.ivfpq({ d, nlist, m, nbits });

  let t = performance.now();
  await index.trainAsync(keys);
  const train = (performance.now() - t) / 1000;
  t = performance.now();
  await index.addWithIdsAsync(keys, ids);
  const add = (performance.now() - t) / 1000;
  index.nprobe = nprobe;

  const rows = Array.from({ length: queries }, (_, i) => Math.floor((i * n) / queries));
  const q = new Float32Array(queries * d);
  rows.forEach((row, i) => q.set(keys.subarray(row * d, (row + 1) * d), i * d));
  t = performance.now();
  const { distances, labels } = await index.searchAsync(q, k);
  const search = (performance.now() - t) / 1000;

  const found = rows.map((row, i) => ({
    row,
    ids: Array.from(labels.subarray(i * k, (i + 1) * k), Number),
    distances: Array.from(distances.subarray(i * k, (i + 1) * k)),
  }));
  return {
    faissVersion: faissVersion(),
    library: faissLibraryPath(),
    index: { type: index.type, d, ntotal: index.ntotal, nlist, m, nbits },
    nprobe,
    seconds: { train, add, search },
    queries: found,
    selfFound: found.filter((f) => f.ids[0] === f.row + 1000).length,
  };
}
