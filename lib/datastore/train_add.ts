/**
 * Index building: train a FAISS index on a seeded sample of the keys, save it, then add every
 * key with its row number as id, in chunks read straight from the memory-mapped `keys.npy`.
 *
 * The defaults (`DEFAULT_CONFIG.index`) follow the reference pipeline (IVF with an IndexFlatL2 quantizer, 2048 centroids,
 * 64-byte PQ codes of 8 bits, nprobe 8, 200k training keys); {@link planIndex} clamps them,
 * with warnings, when the datastore is too small for them.
 *
 * @module
 */

import { FaissIndex, type Vectors } from "../index/mod.ts";
import { MappedArray } from "../storage/mmap.ts";
import { datastorePaths, type IndexParams } from "./manifest.ts";
import { sampleRows } from "./sample.ts";
import { removeIfExists } from "../core/_atomic.ts";
import { DEFAULT_CONFIG, type IndexConfig } from "../config/mod.ts";
import { resolve } from "node:path";

/** FAISS wants at least this many training points per centroid. */
export const MIN_POINTS_PER_CENTROID = 39;

/** Requested index settings, before clamping; what is absent takes `DEFAULT_CONFIG.index`. */
export type IndexRequest = Partial<IndexConfig>;

/** Fits the requested parameters to a datastore of `n` keys of width `d`. */
export function planIndex(
  n: number,
  d: number,
  req: IndexRequest = {},
): { params: IndexParams; warnings: string[] } {
  const warnings: string[] = [];
  const def = DEFAULT_CONFIG.index;
  const metric = req.metric ?? def.metric;
  const seed = req.seed ?? def.seed;
  const invlists = req.invlists ?? def.invlists;
  const addChunk = req.addChunk ?? def.addChunk;
  let trainSize = req.trainSize ?? def.trainSize;
  if (n < 1) throw new Error("the datastore has no keys to index");
  if (trainSize > n) {
    warnings.push(`trainSize ${trainSize} > ${n} keys: training on all ${n} keys`);
    trainSize = n;
  }
  if (req.factory) {
    // Ids are row numbers: IVF indexes store them; anything else needs an IDMap around it.
    const factory = /IVF|IDMap/.test(req.factory) ? req.factory : `IDMap,${req.factory}`;
    const ivf = /IVF(\d+)/.exec(factory);
    return {
      params: {
        factory,
        nlist: ivf ? Number(ivf[1]) : 0,
        m: 0,
        nbits: 0,
        metric,
        nprobe: req.nprobe ?? def.nprobe,
        trainSize,
        addChunk,
        seed,
        invlists: ivf ? invlists : "memory",
      },
      warnings,
    };
  }
  const m = req.m ?? def.m;
  if (!(d % m === 0)) {
    const divisors = Array.from({ length: d }, (_, i) => i + 1).filter((x) => d % x === 0);
    throw new Error(
      `index.m: the PQ code size (${m} bytes) must divide the key width d = ${d}; ` +
        `choose one of ${divisors.join(", ")}`,
    );
  }
  let nlist = req.nlist ?? def.nlist;
  const maxNlist = Math.max(1, Math.floor(trainSize / MIN_POINTS_PER_CENTROID));
  if (nlist > maxNlist) {
    warnings.push(
      `nlist ${nlist} needs ≥ ${nlist * MIN_POINTS_PER_CENTROID} training keys ` +
        `(${MIN_POINTS_PER_CENTROID} per centroid); ${trainSize} available: using nlist ${maxNlist}`,
    );
    nlist = maxNlist;
  }
  let nbits = req.nbits ?? def.nbits;
  const maxBits = Math.max(1, Math.floor(Math.log2(trainSize)));
  if (nbits > maxBits) {
    warnings.push(
      `nbits ${nbits} needs ≥ ${2 ** nbits} training keys for each PQ codebook; ` +
        `${trainSize} available: using nbits ${maxBits}`,
    );
    nbits = maxBits;
  }
  const pqWants = MIN_POINTS_PER_CENTROID * 2 ** nbits;
  if (trainSize < pqWants) {
    warnings.push(
      `PQ codebooks of ${2 ** nbits} entries want ≥ ${pqWants} training keys; ` +
        `${trainSize} available: codes will be coarse`,
    );
  }
  let nprobe = req.nprobe ?? def.nprobe;
  if (nprobe > nlist) {
    warnings.push(`nprobe ${nprobe} > nlist ${nlist}: using nprobe ${nlist}`);
    nprobe = nlist;
  }
  return {
    params: {
      factory: `IVF${nlist},PQ${m}x${nbits}`,
      nlist,
      m,
      nbits,
      metric,
      nprobe,
      trainSize,
      addChunk,
      seed,
      invlists,
    },
    warnings,
  };
}

function newIndex(d: number, p: IndexParams): FaissIndex {
  if (p.m > 0) {
    return FaissIndex.ivfpq({ d, nlist: p.nlist, m: p.m, nbits: p.nbits, metric: p.metric });
  }
  return FaissIndex.factory(d, p.factory, p.metric);
}

function vectorsOf(keys: MappedArray, start: number, end: number): Vectors {
  return keys.dtype === "<f2"
    ? { pointer: keys.pointer(start), n: end - start, dtype: "float16" }
    : { pointer: keys.pointer(start), n: end - start, dtype: "float32" };
}

/** Options of {@link trainIndex}. */
export interface TrainIndexOptions {
  /** Datastore directory holding a complete `keys.npy`. */
  dir: string;
  /** Parameters from {@link planIndex}. */
  params: IndexParams;
  /**
   * Stops training at FAISS's next k-means check (within seconds) and rejects with the signal's
   * reason (a `KnnError` `E_INTERRUPTED` from the CLI); nothing is written.
   */
  signal?: AbortSignal;
}

/**
 * Trains an empty index on a seeded sample of keys (read in ascending row order) and writes
 * it to `faiss.trained.index`, so adding can restart without training again.
 */
export async function trainIndex(
  opts: TrainIndexOptions,
): Promise<{ seconds: number; warnings: string[] }> {
  const t0 = performance.now();
  const paths = datastorePaths(opts.dir);
  using keys = MappedArray.open(paths.keys, { mode: "r", dtypes: ["<f4", "<f2"] });
  const d = keys.rowLength;
  const rows = sampleRows(keys.rows, opts.params.trainSize, opts.params.seed);
  // sample: [trainSize, d] in the keys' own dtype; float16 is widened in native code.
  const sample = keys.dtype === "<f2"
    ? new Uint16Array(rows.length * d)
    : new Float32Array(rows.length * d);
  keys.advise("random");
  for (let i = 0; i < rows.length; i++) sample.set(keys.view(rows[i], rows[i] + 1), i * d);
  using index = newIndex(d, opts.params);
  // warnings: FAISS's clustering warnings for a small sample, one line each (FAISS itself
  // would print one per PQ sub-quantizer).
  const { warnings } = await index.trainAsync(
    sample instanceof Uint16Array ? { dtype: "float16", data: sample } : sample,
    { signal: opts.signal },
  );
  index.write(paths.trainedIndex);
  return { seconds: (performance.now() - t0) / 1000, warnings };
}

/** Progress of {@link addToIndex}. */
export interface AddProgress {
  /** Keys added. */
  done: number;
  /** Keys to add. */
  total: number;
}

/** Options of {@link addToIndex}. */
export interface AddOptions {
  /** Datastore directory with `keys.npy` and `faiss.trained.index`. */
  dir: string;
  /** Parameters from {@link planIndex} (for nprobe). */
  params: IndexParams;
  /** Keys per `add_with_ids` call. Default: `params.addChunk`. */
  chunk?: number;
  /** Called after every chunk. */
  onProgress?: (p: AddProgress) => void;
  /**
   * Stops at the next 65 536-row slice of a chunk (nothing is written; adding restarts from the
   * trained index).
   */
  signal?: AbortSignal;
}

/**
 * Adds every key (id = row number) to the trained index, straight from the memory map, and
 * writes `faiss.index` atomically. Returns the index size.
 */
export async function addToIndex(opts: AddOptions): Promise<{ ntotal: number; seconds: number }> {
  const t0 = performance.now();
  const paths = datastorePaths(opts.dir);
  const chunk = opts.chunk ?? opts.params.addChunk ?? DEFAULT_CONFIG.index.addChunk;
  using keys = MappedArray.open(paths.keys, { mode: "r", dtypes: ["<f4", "<f2"] });
  using index = FaissIndex.read(paths.trainedIndex);
  if (index.d !== keys.rowLength) {
    throw new Error(
      `${paths.trainedIndex}: index dimension ${index.d} does not match ${paths.keys} ` +
        `rows of ${keys.rowLength}`,
    );
  }
  if (index.ntotal !== 0) {
    throw new Error(
      `${paths.trainedIndex}: expected an empty trained index, found ${index.ntotal} vectors`,
    );
  }
  // Codes go to a mapped faiss.ivfdata: the index grows in the page cache, not in this process.
  if (opts.params.invlists === "disk" && opts.params.nlist > 0) {
    await removeIfExists(paths.ivfdata);
    // FAISS records this name in faiss.index: absolute, so readers in any directory find it.
    index.useOnDiskLists(resolve(paths.ivfdata));
  }
  keys.advise("sequential");
  const n = keys.rows;
  opts.onProgress?.({ done: 0, total: n });
  for (let start = 0; start < n; start += chunk) {
    opts.signal?.throwIfAborted();
    const end = Math.min(n, start + chunk);
    const ids = new BigInt64Array(end - start);
    for (let i = 0; i < ids.length; i++) ids[i] = BigInt(start + i);
    await index.addWithIdsAsync(vectorsOf(keys, start, end), ids, { signal: opts.signal });
    opts.onProgress?.({ done: end, total: n });
  }
  if (opts.params.nlist > 0) index.nprobe = opts.params.nprobe;
  index.write(paths.index);
  return { ntotal: index.ntotal, seconds: (performance.now() - t0) / 1000 };
}
