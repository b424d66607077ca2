/**
 * Index building: train a FAISS index on a seeded sample of the keys, save it, then add every
 * key with its row number as id, in chunks read straight from the memory-mapped `keys.npy`.
 *
 * Defaults follow the reference pipeline (IVF with an IndexFlatL2 quantizer, 2048 centroids,
 * 64-byte PQ codes of 8 bits, nprobe 8, 200k training keys); {@link planIndex} clamps them,
 * with warnings, when the datastore is too small for them.
 *
 * @module
 */

import { FaissIndex, trainIvfPqToFile, type Vectors } from "../index/mod.ts";
import { MappedArray } from "../storage/mmap.ts";
import { datastorePaths, type IndexParams } from "./manifest.ts";
import { sampleRows } from "./sample.ts";
import { removeIfExists } from "../core/_atomic.ts";
import { resolve } from "node:path";

/** FAISS wants at least this many training points per centroid. */
export const MIN_POINTS_PER_CENTROID = 39;

/** Requested index settings, before clamping. */
export interface IndexRequest {
  /** A FAISS factory string that replaces the IVFPQ parameters (e.g. "Flat"). */
  factory?: string | null;
  /** IVF centroids. Default 2048. */
  nlist?: number;
  /** PQ code size in bytes; must divide d. Default 64. */
  m?: number;
  /** Bits per PQ code. Default 8. */
  nbits?: number;
  /** Distance. Default "l2". */
  metric?: "l2" | "ip";
  /** Lists probed per query. Default 8. */
  nprobe?: number;
  /** Training sample size. Default 200000. */
  trainSize?: number;
  /** Sample seed. Default 1. */
  seed?: number;
  /** IVF lists on disk (mapped `faiss.ivfdata`) or in memory. Default "disk". */
  invlists?: "disk" | "memory";
}

/** Fits the requested parameters to a datastore of `n` keys of width `d`. */
export function planIndex(
  n: number,
  d: number,
  req: IndexRequest = {},
): { params: IndexParams; warnings: string[] } {
  const warnings: string[] = [];
  const metric = req.metric ?? "l2";
  const seed = req.seed ?? 1;
  const invlists = req.invlists ?? "disk";
  let trainSize = req.trainSize ?? 200_000;
  if (n < 1) throw new Error("the datastore has no keys to index");
  if (trainSize > n) {
    warnings.push(`trainSize ${trainSize} > ${n} keys: training on all ${n} keys`);
    trainSize = n;
  }
  if (req.factory) {
    // Ids are row numbers: IVF indexes store them; anything else needs an IDMap around it.
    const factory = /IVF|IDMap/.test(req.factory) ? req.factory : `IDMap,${req.factory}`;
    const ivf = /IVF(\d+)/.exec(factory);
    // 4-bit fast-scan codes (PQ…x4fs) live in FAISS's block lists, which cannot be on disk.
    const fastScan = /x4fsr?(,|$)/.test(factory);
    if (fastScan && req.invlists === "disk") {
      warnings.push(`${factory}: fast-scan lists cannot be on disk; keeping them in memory`);
    }
    return {
      params: {
        factory,
        nlist: ivf ? Number(ivf[1]) : 0,
        m: 0,
        nbits: 0,
        metric,
        nprobe: req.nprobe ?? 8,
        trainSize,
        seed,
        invlists: ivf && !fastScan ? invlists : "memory",
      },
      warnings,
    };
  }
  const m = req.m ?? 64;
  if (!(d % m === 0)) {
    const divisors = Array.from({ length: d }, (_, i) => i + 1).filter((x) => d % x === 0);
    throw new Error(
      `index.m: the PQ code size (${m} bytes) must divide the key width d = ${d}; ` +
        `choose one of ${divisors.join(", ")}`,
    );
  }
  let nlist = req.nlist ?? 2048;
  const maxNlist = Math.max(1, Math.floor(trainSize / MIN_POINTS_PER_CENTROID));
  if (nlist > maxNlist) {
    warnings.push(
      `nlist ${nlist} needs ≥ ${nlist * MIN_POINTS_PER_CENTROID} training keys ` +
        `(${MIN_POINTS_PER_CENTROID} per centroid); ${trainSize} available: using nlist ${maxNlist}`,
    );
    nlist = maxNlist;
  }
  let nbits = req.nbits ?? 8;
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
        `${trainSize} available: codes will be coarse (FAISS warns too)`,
    );
  }
  let nprobe = req.nprobe ?? 8;
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
}

/**
 * Trains an empty index on a seeded sample of keys (read in ascending row order) and writes
 * it to `faiss.trained.index`, so adding can restart without training again.
 */
export async function trainIndex(opts: TrainIndexOptions): Promise<{ seconds: number }> {
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
  const x = sample instanceof Uint16Array ? { dtype: "float16" as const, data: sample } : sample;
  const p = opts.params;
  if (p.m > 0) {
    // FAISS's IVFPQ training with the PQ sub-quantizers spread over the threads (same codebooks).
    await trainIvfPqToFile({
      d,
      nlist: p.nlist,
      m: p.m,
      nbits: p.nbits,
      metric: p.metric,
      x,
      path: paths.trainedIndex,
    });
    return { seconds: (performance.now() - t0) / 1000 };
  }
  using index = newIndex(d, p);
  await index.trainAsync(x);
  await index.write(paths.trainedIndex);
  return { seconds: (performance.now() - t0) / 1000 };
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
  /** Keys per `add_with_ids` call. Default 65536. */
  chunk?: number;
  /** Called after every chunk. */
  onProgress?: (p: AddProgress) => void;
  /** Stops between chunks (nothing is written; adding restarts from the trained index). */
  signal?: AbortSignal;
}

/**
 * Adds every key (id = row number) to the trained index, straight from the memory map, and
 * writes `faiss.index` atomically. Returns the index size.
 */
export async function addToIndex(opts: AddOptions): Promise<{ ntotal: number; seconds: number }> {
  const t0 = performance.now();
  const paths = datastorePaths(opts.dir);
  const chunk = opts.chunk ?? 65536;
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
    await index.addWithIdsAsync(vectorsOf(keys, start, end), ids);
    opts.onProgress?.({ done: end, total: n });
  }
  if (opts.params.nlist > 0) index.nprobe = opts.params.nprobe;
  await index.write(paths.index);
  return { ntotal: index.ntotal, seconds: (performance.now() - t0) / 1000 };
}
