/**
 * Index building: train a FAISS index on a seeded sample of the keys, save it, then add every
 * key with its row number as id, in blocks read straight from the memory-mapped `keys.npy`.
 *
 * Adding stops at block boundaries when its signal is raised: the partial index is saved
 * (`faiss.partial.index`, its on-disk lists in place) with `add.progress.json`, and the next
 * run resumes after the last finished block. A rebuild writes its on-disk lists under the
 * name the live index does not use ({@link IVFDATA_NAMES}), so the complete datastore stays
 * readable until `datastore.json` switches to the new index.
 *
 * The defaults (`DEFAULT_CONFIG.index`) follow the reference pipeline (IVF with an IndexFlatL2 quantizer, 2048 centroids,
 * 64-byte PQ codes of 8 bits, nprobe 8, 200k training keys); {@link planIndex} clamps them,
 * with warnings, when the datastore is too small for them.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { FaissIndex, type Vectors } from "../index/mod.ts";
import { MappedArray } from "../storage/mmap.ts";
import { ensureFreeSpace } from "../storage/space.ts";
import { KnnError } from "../core/errors.ts";
import { sha256File } from "../core/_hash.ts";
import { readJsonIfExists, removeIfExists, writeJsonAtomic } from "../core/_atomic.ts";
import { datastorePaths, type IndexParams, IVFDATA_NAMES, readManifest } from "./manifest.ts";
import { ivfdataFile } from "./_checks.ts";
import { sampleRows } from "./sample.ts";
import { DEFAULT_CONFIG, type IndexConfig } from "../config/mod.ts";

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
        nprobe: req.nprobe ?? def.nprobe,
        trainSize,
        addChunk,
        seed,
        invlists: ivf && !fastScan ? invlists : "memory",
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

/**
 * True when two parameter sets build the same index: `nprobe` (a query-time setting) and
 * `addChunk` (how keys are added, not what the index holds; older manifests lack it) aside.
 */
export function sameIndexParams(a: IndexParams | undefined, b: IndexParams): boolean {
  if (!a) return false;
  return (Object.keys(b) as (keyof IndexParams)[]).every((k) =>
    k === "nprobe" || k === "addChunk" || a[k] === b[k]
  );
}

/** True when two parameter sets train the same index (where the lists live does not matter). */
export function sameTraining(a: IndexParams | undefined, b: IndexParams): boolean {
  return sameIndexParams(a && { ...a, invlists: b.invlists }, b);
}

/** Bytes per stored vector (code + 8-byte id) of an index built with `p` over width `d`. */
export function bytesPerVector(p: IndexParams, d: number): number {
  let code = 4 * d; // Flat, and the conservative guess for unknown encodings
  if (p.m > 0) code = Math.ceil((p.m * p.nbits) / 8);
  else {
    const pq = /PQ(\d+)(?:x(\d+))?/.exec(p.factory);
    if (pq) code = Math.ceil((Number(pq[1]) * Number(pq[2] ?? 8)) / 8);
    else if (/SQ8\b/.test(p.factory)) code = d;
    else if (/SQ4\b/.test(p.factory)) code = Math.ceil(d / 2);
    else if (/SQfp16|SQ16/.test(p.factory)) code = 2 * d;
  }
  return code + 8;
}

/**
 * Disk space that adding `n` keys takes, estimated: codes and ids, times 2.5 for on-disk lists
 * (FAISS rounds each list up to a power of two and leaves the slots it moved out of behind;
 * measured 2.35× at 100k keys), plus a page per list, plus the quantizer.
 */
export function estimateAddBytes(p: IndexParams, n: number, d: number): number {
  const raw = n * bytesPerVector(p, d);
  const ondisk = p.invlists === "disk" && p.nlist > 0;
  return Math.ceil(ondisk ? raw * 2.5 + p.nlist * 8192 : raw) + p.nlist * d * 4 + (1 << 20);
}

/** Disk space of a trained, empty index: the coarse centroids and PQ codebooks, estimated. */
export function estimateTrainedBytes(p: IndexParams, d: number): number {
  return p.nlist * d * 4 + (p.m > 0 ? 2 ** p.nbits * d * 4 : 0) + (1 << 20);
}

/** The E_INTERRUPTED error for a stage stopped by `signal` (its reason, when that is one). */
export function interrupted(signal: AbortSignal | undefined, message: string): KnnError {
  const reason = signal?.reason;
  return new KnnError("E_INTERRUPTED", message, {
    signal: KnnError.is(reason) ? reason.signal : undefined,
  });
}

/**
 * `index.write(path)` (to `path.tmp`, then renamed) with FAISS's failures as
 * {@linkcode KnnError}s naming the file: a full disk is `E_NO_SPACE`.
 */
export function writeIndexFile(index: FaissIndex, path: string): void {
  try {
    index.write(path);
  } catch (e) {
    if (KnnError.is(e)) throw e;
    const msg = (e as Error).message;
    const full = /No space left|File too large|Disk quota/i.test(msg);
    throw new KnnError(
      full ? "E_NO_SPACE" : "E_NATIVE",
      msg.startsWith(path) ? msg : `${path}: ${msg}`,
      {
        path,
        cause: e,
      },
    );
  }
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
 * it to `faiss.trained.index`, so adding can restart without training again. Refuses with
 * `E_NO_SPACE` up front when the directory cannot hold the trained index.
 */
export async function trainIndex(
  opts: TrainIndexOptions,
): Promise<{ seconds: number; warnings: string[] }> {
  const t0 = performance.now();
  const paths = datastorePaths(opts.dir);
  using keys = MappedArray.open(paths.keys, { mode: "r", dtypes: ["<f4", "<f2"] });
  const d = keys.rowLength;
  ensureFreeSpace(
    opts.dir,
    estimateTrainedBytes(opts.params, d),
    `training ${opts.params.factory} (${paths.trainedIndex})`,
  );
  const rows = sampleRows(keys.rows, opts.params.trainSize, opts.params.seed);
  // sample: [trainSize, d] in the keys' own dtype; float16 is widened in native code.
  const sample = keys.dtype === "<f2"
    ? new Uint16Array(rows.length * d)
    : new Float32Array(rows.length * d);
  keys.advise("random");
  for (let i = 0; i < rows.length; i++) sample.set(keys.view(rows[i], rows[i] + 1), i * d);
  if (opts.signal?.aborted) throw interrupted(opts.signal, "training interrupted before it began");
  using index = newIndex(d, opts.params);
  // warnings: FAISS's clustering warnings for a small sample, one line each (FAISS itself
  // would print one per PQ sub-quantizer).
  const { warnings } = await index.trainAsync(
    sample instanceof Uint16Array ? { dtype: "float16", data: sample } : sample,
    { signal: opts.signal },
  );
  writeIndexFile(index, paths.trainedIndex);
  return { seconds: (performance.now() - t0) / 1000, warnings };
}

/** Progress of {@link addToIndex}. */
export interface AddProgress {
  /** Keys added, including those of an earlier, interrupted run. */
  done: number;
  /** Keys to add. */
  total: number;
  /** Keys that were already added when this run started (resume). */
  resumedFrom?: number;
}

/** Options of {@link addToIndex}. */
export interface AddOptions {
  /** Datastore directory with `keys.npy` and `faiss.trained.index`. */
  dir: string;
  /** Parameters from {@link planIndex} (for nprobe). */
  params: IndexParams;
  /** Keys per block (one `add_with_ids` call). Default: `params.addChunk`. */
  chunk?: number;
  /** Called after every block. */
  onProgress?: (p: AddProgress) => void;
  /**
   * Stops at the next block boundary, or within a block between FAISS's slices of 65 536 rows:
   * the partial index is saved with `add.progress.json` and the next run resumes after the last
   * key added.
   */
  signal?: AbortSignal;
}

/** What {@link addToIndex} wrote. */
export interface AddResult {
  /** Vectors in the index. */
  ntotal: number;
  /** Seconds spent in this run. */
  seconds: number;
  /** Keys found added by an interrupted run and not added again. */
  resumedFrom: number;
  /** Size of `faiss.index` in bytes. */
  bytes: number;
  /** The on-disk inverted lists, when the index has them. */
  ivfdata?: { file: string; bytes: number };
}

/** `add.progress.json`: how far an interrupted add got. */
interface AddCheckpoint {
  /** sha256 of the `faiss.trained.index` the partial index grew from. */
  trainedSha256: string;
  /** Parameters of the index being built. */
  params: IndexParams;
  /** Shape of `keys.npy`. */
  keys: [number, number];
  /** Keys added (rows [0, keysDone)). */
  keysDone: number;
  /** Blocks added. */
  blocksDone: number;
  /** On-disk inverted lists file of the partial index, or null. */
  ivfdata: string | null;
  /**
   * True when `faiss.partial.index` (and its lists) hold exactly `keysDone` keys; false while
   * adding is under way (after a crash then, the lists may have moved on: start over).
   */
  saved: boolean;
}

/**
 * Adds every key (id = row number) to the trained index, straight from the memory map, and
 * writes `faiss.index` atomically. Resumes an add that its signal stopped (see
 * {@link AddOptions.signal}); refuses with `E_NO_SPACE` up front when the directory cannot hold
 * the index (see {@link estimateAddBytes}).
 */
export async function addToIndex(opts: AddOptions): Promise<AddResult> {
  const t0 = performance.now();
  const paths = datastorePaths(opts.dir);
  const chunk = opts.chunk ?? opts.params.addChunk ?? DEFAULT_CONFIG.index.addChunk;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new RangeError(`chunk must be an integer ≥ 1, found ${chunk}`);
  }
  const p = opts.params;
  using keys = MappedArray.open(paths.keys, { mode: "r", dtypes: ["<f4", "<f2"] });
  const n = keys.rows, d = keys.rowLength;
  const trainedSha256 = await sha256File(paths.trainedIndex);
  const ondisk = p.invlists === "disk" && p.nlist > 0;

  const cp = await readJsonIfExists<AddCheckpoint>(paths.addProgress);
  let index: FaissIndex | undefined;
  let start = 0;
  let blocksDone = 0;
  let ivfName: string | null = null;
  if (
    cp?.saved && cp.trainedSha256 === trainedSha256 && sameIndexParams(cp.params, p) &&
    cp.keys[0] === n && cp.keys[1] === d && (cp.ivfdata !== null) === ondisk
  ) {
    // FAISS finds the lists beside the partial index (absolute, so `write` records it so).
    try {
      index = FaissIndex.read(resolve(paths.partialIndex));
    } catch {
      index = undefined; // unreadable: start over below
    }
    if (index && index.ntotal === cp.keysDone && index.d === d) {
      start = cp.keysDone;
      blocksDone = cp.blocksDone;
      ivfName = cp.ivfdata;
    } else {
      index?.close();
      index = undefined;
    }
  }
  try {
    if (!index) {
      await removeIfExists(paths.partialIndex);
      index = FaissIndex.read(paths.trainedIndex);
      if (index.d !== d) {
        throw new KnnError(
          "E_MISMATCH",
          `${paths.trainedIndex}: index dimension ${index.d} does not match ${paths.keys} ` +
            `rows of ${d} (train the index again)`,
          { path: paths.trainedIndex },
        );
      }
      if (index.ntotal !== 0) {
        throw new KnnError(
          "E_CORRUPT",
          `${paths.trainedIndex}: expected an empty trained index, found ${index.ntotal} vectors`,
          { path: paths.trainedIndex },
        );
      }
      ensureFreeSpace(
        opts.dir,
        estimateAddBytes(p, n, d),
        `adding ${n} keys to ${p.factory} (${ondisk ? "faiss.ivfdata, " : ""}${paths.index})`,
      );
      if (ondisk) {
        // Never the file the live index reads: readers of the complete datastore keep it.
        const live = ivfdataFile((await readManifest(opts.dir))?.index);
        ivfName = IVFDATA_NAMES.find((name) => name !== live)!;
        const ivfPath = join(opts.dir, ivfName);
        await removeIfExists(ivfPath);
        // Codes go to a mapped file: the index grows in the page cache, not in this process.
        // FAISS records this name in the index: absolute, so readers in any directory find it.
        index.useOnDiskLists(resolve(ivfPath));
      }
    }
    const checkpoint = (keysDone: number, saved: boolean) =>
      writeJsonAtomic(
        paths.addProgress,
        {
          trainedSha256,
          params: p,
          keys: [n, d],
          keysDone,
          blocksDone,
          ivfdata: ivfName,
          saved,
        } satisfies AddCheckpoint,
      );
    // The lists are about to change: a saved partial index stops matching them.
    await checkpoint(start, false);

    keys.advise("sequential");
    const resumedFrom = start;
    opts.onProgress?.({ done: start, total: n, resumedFrom });
    // Saves the index holding rows [0, ntotal) and stops: the safe point of a signal.
    const stop = async (): Promise<never> => {
      const done = index!.ntotal;
      writeIndexFile(index!, paths.partialIndex);
      await checkpoint(done, true);
      throw interrupted(
        opts.signal,
        `add interrupted after ${done} of ${n} keys (${blocksDone} blocks); run it again to resume`,
      );
    };
    for (let s = start; s < n; s += chunk) {
      if (opts.signal?.aborted) await stop();
      const end = Math.min(n, s + chunk);
      const ids = new BigInt64Array(end - s);
      for (let i = 0; i < ids.length; i++) ids[i] = BigInt(s + i);
      try {
        await index.addWithIdsAsync(vectorsOf(keys, s, end), ids, { signal: opts.signal });
      } catch (e) {
        // Stopped between FAISS's slices: the rows of the slices added so far stay, in order.
        if (KnnError.is(e, "E_INTERRUPTED") && opts.signal?.aborted) await stop();
        throw e;
      }
      blocksDone++;
      opts.onProgress?.({ done: end, total: n, resumedFrom });
    }
    if (p.nlist > 0) index.nprobe = p.nprobe;
    const ntotal = index.ntotal;
    writeIndexFile(index, paths.index);
    index.close();
    await removeIfExists(paths.addProgress);
    await removeIfExists(paths.partialIndex);
    const bytes = (await Deno.stat(paths.index)).size;
    const ivfdata = ivfName
      ? { file: ivfName, bytes: (await Deno.stat(join(opts.dir, ivfName))).size }
      : undefined;
    return {
      ntotal,
      seconds: (performance.now() - t0) / 1000,
      resumedFrom,
      bytes,
      ...(ivfdata ? { ivfdata } : {}),
    };
  } finally {
    if (index && !index.closed) index.close();
  }
}

/**
 * Removes the on-disk inverted lists files of `dir` that the finished index in `datastore.json`
 * does not use (the previous build's, once the manifest has switched). Readers that still have
 * one open keep reading it: unlinking does not take a mapped file away.
 */
export async function removeStaleIvfdata(dir: string): Promise<void> {
  const live = ivfdataFile((await readManifest(dir))?.index);
  const cp = await readJsonIfExists<AddCheckpoint>(datastorePaths(dir).addProgress);
  for (const name of IVFDATA_NAMES) {
    if (name !== live && name !== cp?.ivfdata) await removeIfExists(join(dir, name));
  }
}
