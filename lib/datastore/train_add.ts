/**
 * Index building: train a FAISS index on a seeded sample of the keys, save it, then add the
 * keys with their row numbers as ids, shard by shard ({@link addShard}: a range of rows,
 * encoded into inverted lists in memory, read straight from the memory-mapped `keys.npy`), and
 * merge the shards' lists into one index whose on-disk lists are each sized exactly
 * ({@link mergeIndex}). A one-file datastore is one shard.
 *
 * Adding stops at block boundaries when its signal is raised: the partial index is saved
 * (`faiss.partial.index`) with `add.progress.json`, and the next run resumes after the last
 * finished block. A rebuild writes its on-disk lists under the name the live index does not
 * use ({@link IVFDATA_NAMES}), so the complete datastore stays readable until `datastore.json`
 * switches to the new index.
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
import { readJsonIfExists, removeIfExists, renameFile, writeJsonAtomic } from "../core/_atomic.ts";
import type { ShardAddRecord } from "./shards.ts";
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
 * Disk space that adding `n` keys takes: the shard index holding their codes and ids in memory
 * lists (`ivf.index`), then, for on-disk lists, the merged `faiss.ivfdata`, each list sized
 * exactly, plus a page per list, plus the quantizer.
 */
export function estimateAddBytes(p: IndexParams, n: number, d: number): number {
  const raw = n * bytesPerVector(p, d);
  const ondisk = p.invlists === "disk" && p.nlist > 0;
  return raw + (ondisk ? raw + p.nlist * 4096 : 0) + 2 * (p.nlist * d * 4) + (1 << 20);
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

/**
 * Where some of a datastore's keys are: `rows` rows of the `.npy` file `file` from its row
 * `fileRow` on, which are the datastore's rows [globalRow, globalRow + rows). A shard's own
 * `keys.npy` is one range (`fileRow` 0); a merged `keys.npy` may be cut into several.
 */
export interface KeyRange {
  /** The `.npy` file ([rows, d] float32 or float16). */
  file: string;
  /** First row of the file in the range. */
  fileRow: number;
  /** The datastore row (id) of that row. */
  globalRow: number;
  /** Number of rows. */
  rows: number;
}

/** The whole of a `keys.npy` as one {@link KeyRange} starting at datastore row 0. */
export function wholeKeys(file: string): KeyRange {
  using keys = MappedArray.open(file, { mode: "r", dtypes: ["<f4", "<f2"] });
  return { file, fileRow: 0, globalRow: 0, rows: keys.rows };
}

/** Options of {@link trainIndex}. */
export interface TrainIndexOptions {
  /** Datastore directory: `faiss.trained.index` is written there. */
  dir: string;
  /** Parameters from {@link planIndex}. */
  params: IndexParams;
  /**
   * The datastore's keys, in row order, covering rows 0..n−1 (e.g. one per shard). Default:
   * all of `dir/keys.npy`.
   */
  keys?: readonly KeyRange[];
  /**
   * Stops training at FAISS's next k-means check (within seconds) and rejects with the signal's
   * reason (a `KnnError` `E_INTERRUPTED` from the CLI); nothing is written.
   */
  signal?: AbortSignal;
}

/**
 * Trains an empty index on a seeded sample of keys and writes it to `faiss.trained.index`, so
 * adding can restart without training again. The sample is drawn from the datastore's rows
 * 0..n−1 and read in ascending row order, whichever files hold them, so a sharded datastore is
 * trained on exactly the keys a one-file one is. Refuses with `E_NO_SPACE` up front when the
 * directory cannot hold the trained index.
 */
export async function trainIndex(
  opts: TrainIndexOptions,
): Promise<{ seconds: number; warnings: string[] }> {
  const t0 = performance.now();
  const paths = datastorePaths(opts.dir);
  const ranges = opts.keys ?? [wholeKeys(paths.keys)];
  const files = new Map<string, MappedArray>();
  try {
    const open = (file: string) => {
      let a = files.get(file);
      if (!a) {
        // Default read-ahead: the sample's rows come in ascending order, a few pages apart.
        a = MappedArray.open(file, { mode: "r", dtypes: ["<f4", "<f2"] });
        files.set(file, a);
      }
      return a;
    };
    const first = open(ranges[0].file);
    const d = first.rowLength, dtype = first.dtype;
    let n = 0;
    for (const r of ranges) {
      const a = open(r.file);
      if (
        r.globalRow !== n || a.rowLength !== d || a.dtype !== dtype || r.fileRow + r.rows > a.rows
      ) {
        throw new KnnError(
          "E_MISMATCH",
          `${r.file}: rows [${r.fileRow}, ${r.fileRow + r.rows}) as datastore rows from ` +
            `${r.globalRow} do not follow on from the keys before (${n} rows of ${dtype} [${d}])`,
          { path: r.file },
        );
      }
      n += r.rows;
    }
    ensureFreeSpace(
      opts.dir,
      estimateTrainedBytes(opts.params, d),
      `training ${opts.params.factory} (${paths.trainedIndex})`,
    );
    const rows = sampleRows(n, opts.params.trainSize, opts.params.seed);
    // sample: [trainSize, d] in the keys' own dtype; float16 is widened in native code.
    const sample = dtype === "<f2"
      ? new Uint16Array(rows.length * d)
      : new Float32Array(rows.length * d);
    let part = 0;
    for (let i = 0; i < rows.length; i++) {
      while (rows[i] >= ranges[part].globalRow + ranges[part].rows) part++;
      const r = ranges[part];
      const at = r.fileRow + rows[i] - r.globalRow;
      sample.set(open(r.file).view(at, at + 1) as Float32Array | Uint16Array, i * d);
    }
    for (const a of files.values()) a.close();
    files.clear();
    if (opts.signal?.aborted) {
      throw interrupted(opts.signal, "training interrupted before it began");
    }
    using index = newIndex(d, opts.params);
    // warnings: FAISS's clustering warnings for a small sample, one line each (FAISS itself
    // would print one per PQ sub-quantizer).
    const { warnings } = await index.trainAsync(
      sample instanceof Uint16Array ? { dtype: "float16", data: sample } : sample,
      { signal: opts.signal },
    );
    writeIndexFile(index, paths.trainedIndex);
    return { seconds: (performance.now() - t0) / 1000, warnings };
  } finally {
    for (const a of files.values()) a.close();
  }
}

/** Progress of {@link addShard} / {@link addToIndex}. */
export interface AddProgress {
  /** Keys added, including those of an earlier, interrupted run. */
  done: number;
  /** Keys to add. */
  total: number;
  /** Keys that were already added when this run started (resume). */
  resumedFrom?: number;
}

/** File names of a shard add inside its directory. */
export const SHARD_ADD_FILES = {
  /** The finished shard index: the trained index with the shard's keys in memory lists. */
  index: "ivf.index",
  /** Its record ({@linkcode ShardAddRecord}). */
  record: "ivf.json",
  /** Checkpoint of an interrupted add. */
  progress: "add.progress.json",
  /** The partial index an interrupted add saved. */
  partial: "faiss.partial.index",
} as const;

/** Options of {@link addShard}. */
export interface AddShardOptions {
  /** Directory the shard's index and checkpoints go to (a shard directory, or the datastore). */
  dir: string;
  /** The keys to add; ids are their datastore rows. */
  keys: KeyRange;
  /** The trained, empty index (`faiss.trained.index`). */
  trainedIndex: string;
  /** Parameters from {@link planIndex}. */
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
  /**
   * What the up-front free-space check names as the files being made. Default: the shard
   * index.
   */
  spaceFor?: { bytes: number; what: string };
}

/** `add.progress.json`: how far an interrupted add got. */
interface AddCheckpoint {
  /** sha256 of the `faiss.trained.index` the partial index grew from. */
  trainedSha256: string;
  /** Parameters of the index being built. */
  params: IndexParams;
  /** Rows of the keys being added, and their width. */
  keys: [number, number];
  /** Datastore row of the first key (absent in checkpoints of older versions: 0). */
  globalRow?: number;
  /** Keys added (rows [0, keysDone) of the range). */
  keysDone: number;
  /** Blocks added. */
  blocksDone: number;
  /** Always null: the partial index holds its lists itself. */
  ivfdata: string | null;
  /** True when `faiss.partial.index` holds exactly `keysDone` keys. */
  saved: boolean;
}

/**
 * Encodes a range of keys (ids = datastore rows) with the trained index into inverted lists
 * in memory and writes them as `dir/ivf.index` (plus `dir/ivf.json`): one shard's part of the
 * index, for {@link mergeIndex}. The keys are read straight from the memory map in blocks. A
 * signal stops it at a block (or slice) boundary with the partial index saved; the next run
 * resumes after the last key added. A finished shard index is returned as is when its record
 * matches (same trained index, parameters and rows). Refuses with `E_NO_SPACE` up front when
 * `dir` cannot hold the shard index (see {@link estimateAddBytes}).
 */
export async function addShard(
  opts: AddShardOptions,
): Promise<ShardAddRecord & { resumedFrom: number; skipped: boolean }> {
  const t0 = performance.now();
  const p = opts.params;
  const chunk = opts.chunk ?? p.addChunk ?? DEFAULT_CONFIG.index.addChunk;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new RangeError(`chunk must be an integer ≥ 1, found ${chunk}`);
  }
  const files = {
    index: join(opts.dir, SHARD_ADD_FILES.index),
    record: join(opts.dir, SHARD_ADD_FILES.record),
    progress: join(opts.dir, SHARD_ADD_FILES.progress),
    partial: join(opts.dir, SHARD_ADD_FILES.partial),
  };
  const { keys: range } = opts;
  const rowsOf: [number, number] = [range.globalRow, range.globalRow + range.rows];
  const trainedSha256 = await sha256File(opts.trainedIndex);
  const done = await finishedShardAdd(opts.dir, trainedSha256, p, rowsOf);
  if (done) return { ...done, resumedFrom: range.rows, skipped: true };

  using keys = MappedArray.open(range.file, { mode: "r", dtypes: ["<f4", "<f2"] });
  const d = keys.rowLength;
  const n = range.rows;
  if (range.fileRow + n > keys.rows) {
    throw new KnnError(
      "E_CORRUPT",
      `${range.file}: ${keys.rows} rows, but rows [${range.fileRow}, ${
        range.fileRow + n
      }) are to be added`,
      { path: range.file },
    );
  }
  const cp = await readJsonIfExists<AddCheckpoint>(files.progress);
  let index: FaissIndex | undefined;
  let start = 0;
  let blocksDone = 0;
  if (
    cp?.saved && cp.trainedSha256 === trainedSha256 && sameIndexParams(cp.params, p) &&
    cp.keys[0] === n && cp.keys[1] === d && (cp.globalRow ?? 0) === range.globalRow &&
    cp.ivfdata === null
  ) {
    try {
      index = FaissIndex.read(files.partial);
    } catch {
      index = undefined; // unreadable: start over below
    }
    if (index && index.ntotal === cp.keysDone && index.d === d) {
      start = cp.keysDone;
      blocksDone = cp.blocksDone;
    } else {
      index?.close();
      index = undefined;
    }
  }
  try {
    if (!index) {
      await removeIfExists(files.partial);
      await removeIfExists(files.progress);
      index = FaissIndex.read(opts.trainedIndex);
      if (index.d !== d) {
        throw new KnnError(
          "E_MISMATCH",
          `${opts.trainedIndex}: index dimension ${index.d} does not match ${range.file} ` +
            `rows of ${d} (train the index again)`,
          { path: opts.trainedIndex },
        );
      }
      if (index.ntotal !== 0) {
        throw new KnnError(
          "E_CORRUPT",
          `${opts.trainedIndex}: expected an empty trained index, found ${index.ntotal} vectors`,
          { path: opts.trainedIndex },
        );
      }
      const space = opts.spaceFor ?? {
        bytes: n * bytesPerVector(p, d) + (1 << 20),
        what: `adding ${n} keys to ${p.factory} (${files.index})`,
      };
      ensureFreeSpace(opts.dir, space.bytes, space.what);
    }
    const checkpoint = (keysDone: number) =>
      writeJsonAtomic(
        files.progress,
        {
          trainedSha256,
          params: p,
          keys: [n, d],
          globalRow: range.globalRow,
          keysDone,
          blocksDone,
          ivfdata: null,
          saved: true,
        } satisfies AddCheckpoint,
      );

    keys.advise("sequential");
    const resumedFrom = start;
    opts.onProgress?.({ done: start, total: n, resumedFrom });
    // Saves the index holding rows [0, ntotal) and stops: the safe point of a signal.
    const stop = async (): Promise<never> => {
      const added = index!.ntotal;
      writeIndexFile(index!, files.partial);
      await checkpoint(added);
      throw interrupted(
        opts.signal,
        `add interrupted after ${added} of ${n} keys (${blocksDone} blocks); run it again to resume`,
      );
    };
    for (let s = start; s < n; s += chunk) {
      if (opts.signal?.aborted) await stop();
      const end = Math.min(n, s + chunk);
      const ids = rowIds(range.globalRow + s, end - s);
      try {
        await index.addWithIdsAsync(vectorsOf(keys, range.fileRow + s, range.fileRow + end), ids, {
          signal: opts.signal,
        });
      } catch (e) {
        // Stopped between FAISS's slices: the rows of the slices added so far stay, in order.
        if (KnnError.is(e, "E_INTERRUPTED") && opts.signal?.aborted) await stop();
        throw e;
      }
      // Read and encoded: the keys' pages are not needed again by this process.
      keys.advise("dontneed", range.fileRow + s, range.fileRow + end);
      blocksDone++;
      opts.onProgress?.({ done: end, total: n, resumedFrom });
    }
    if (p.nlist > 0) index.nprobe = p.nprobe;
    const ntotal = index.ntotal;
    writeIndexFile(index, files.index);
    index.close();
    const record: ShardAddRecord = {
      trainedSha256,
      params: p,
      rows: rowsOf,
      ntotal,
      bytes: (await Deno.stat(files.index)).size,
      seconds: (performance.now() - t0) / 1000,
    };
    await writeJsonAtomic(files.record, record);
    await removeIfExists(files.progress);
    await removeIfExists(files.partial);
    return { ...record, resumedFrom, skipped: false };
  } finally {
    if (index && !index.closed) index.close();
  }
}

/**
 * Ids `first, first + 1, …` (n of them) as int64, written as pairs of 32-bit halves: no BigInt
 * per row, whose garbage would grow the JS heap by tens of bytes per key added.
 */
function rowIds(first: number, n: number): BigInt64Array {
  const ids = new BigInt64Array(n);
  const halves = new Uint32Array(ids.buffer);
  for (let i = 0; i < n; i++) {
    const id = first + i;
    halves[2 * i] = id >>> 0; // little-endian: low half first
    halves[2 * i + 1] = Math.floor(id / 4294967296);
  }
  return ids;
}

/**
 * The record of a finished shard add in `dir` when it still holds: the same trained index,
 * parameters and rows, and `ivf.index` of the recorded size. Otherwise undefined.
 */
export async function finishedShardAdd(
  dir: string,
  trainedSha256: string,
  params: IndexParams,
  rows: [number, number],
): Promise<ShardAddRecord | undefined> {
  const rec = await readJsonIfExists<ShardAddRecord>(join(dir, SHARD_ADD_FILES.record))
    .catch(() => undefined);
  if (
    !rec || rec.trainedSha256 !== trainedSha256 || !sameIndexParams(rec.params, params) ||
    rec.rows?.[0] !== rows[0] || rec.rows?.[1] !== rows[1] ||
    rec.ntotal !== rows[1] - rows[0]
  ) return undefined;
  try {
    if ((await Deno.stat(join(dir, SHARD_ADD_FILES.index))).size !== rec.bytes) return undefined;
  } catch {
    return undefined;
  }
  return rec;
}

/** Options of {@link mergeIndex}. */
export interface MergeIndexOptions {
  /** Datastore directory: `faiss.index` (and its lists file) are written there. */
  dir: string;
  /** The shards' `ivf.index` files, in row order. */
  shards: readonly string[];
  /** The trained, empty index they were encoded with. */
  trainedIndex: string;
  /** Parameters from {@link planIndex}. */
  params: IndexParams;
  /** Aborting stops the merge with `E_INTERRUPTED` (nothing is left under a final name). */
  signal?: AbortSignal;
}

/** What {@link mergeIndex} (and {@link addToIndex}) wrote. */
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

/**
 * Makes the datastore's `faiss.index` from the shards' indexes: for on-disk lists (IVF,
 * `invlists: "disk"`), FAISS's `merge_ondisk` recipe — one lists file, each list sized exactly
 * (shard 0's entries, then shard 1's, …), under the name the live index does not use
 * ({@link IVFDATA_NAMES}); otherwise the single shard's index as it is. Writes `faiss.index`
 * atomically; `datastore.json` is the caller's to update.
 */
export async function mergeIndex(opts: MergeIndexOptions): Promise<AddResult> {
  const t0 = performance.now();
  const paths = datastorePaths(opts.dir);
  const p = opts.params;
  const ondisk = p.invlists === "disk" && p.nlist > 0;
  if (!ondisk) {
    if (opts.shards.length !== 1) {
      throw new KnnError(
        "E_CONFIG",
        `${opts.dir}: ${opts.shards.length} shards can only be merged into on-disk inverted ` +
          `lists (an IVF index with invlists "disk"), not ${p.factory} with invlists "${p.invlists}"`,
        { key: "index.invlists" },
      );
    }
    await renameFile(opts.shards[0], paths.index);
    using index = FaissIndex.read(paths.index, { mmap: true });
    return {
      ntotal: index.ntotal,
      seconds: (performance.now() - t0) / 1000,
      resumedFrom: 0,
      bytes: (await Deno.stat(paths.index)).size,
    };
  }
  // Never the file the live index reads: readers of the complete datastore keep it.
  const live = ivfdataFile((await readManifest(opts.dir))?.index);
  const ivfName = IVFDATA_NAMES.find((name) => name !== live)!;
  const ivfPath = resolve(join(opts.dir, ivfName));
  let listBytes = 0;
  for (const s of opts.shards) listBytes += (await Deno.stat(s)).size;
  ensureFreeSpace(
    opts.dir,
    listBytes + p.nlist * 4096 + (1 << 20),
    `merging ${opts.shards.length} shard indexes into ${ivfName} and ${paths.index}`,
  );
  await removeIfExists(ivfPath);
  using trained = FaissIndex.read(opts.trainedIndex);
  let merged: FaissIndex | undefined;
  try {
    merged = await FaissIndex.mergeOnDisk({
      trained,
      shards: opts.shards,
      ivfdata: ivfPath,
      signal: opts.signal,
    });
    merged.nprobe = p.nprobe;
    writeIndexFile(merged, paths.index);
    const ntotal = merged.ntotal;
    merged.close();
    return {
      ntotal,
      seconds: (performance.now() - t0) / 1000,
      resumedFrom: 0,
      bytes: (await Deno.stat(paths.index)).size,
      ivfdata: { file: ivfName, bytes: (await Deno.stat(ivfPath)).size },
    };
  } catch (e) {
    merged?.close();
    await removeIfExists(ivfPath);
    throw e;
  }
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
  /** See {@link AddShardOptions.signal}. */
  signal?: AbortSignal;
}

/**
 * Adds every key of `dir/keys.npy` (id = row number) to the trained index and writes
 * `faiss.index`: {@link addShard} over all the keys, then {@link mergeIndex} of that one
 * shard. Resumes an add that its signal stopped; refuses with `E_NO_SPACE` up front when the
 * directory cannot hold the index (see {@link estimateAddBytes}).
 */
export async function addToIndex(opts: AddOptions): Promise<AddResult> {
  const t0 = performance.now();
  const paths = datastorePaths(opts.dir);
  const keys = wholeKeys(paths.keys);
  const d = (() => {
    using k = MappedArray.open(paths.keys, { mode: "r", dtypes: ["<f4", "<f2"] });
    return k.rowLength;
  })();
  const p = opts.params;
  const ondisk = p.invlists === "disk" && p.nlist > 0;
  const a = await addShard({
    dir: opts.dir,
    keys,
    trainedIndex: paths.trainedIndex,
    params: p,
    chunk: opts.chunk,
    onProgress: opts.onProgress,
    signal: opts.signal,
    spaceFor: {
      bytes: estimateAddBytes(p, keys.rows, d),
      what: `adding ${keys.rows} keys to ${p.factory} (${
        ondisk ? "faiss.ivfdata, " : ""
      }${paths.index})`,
    },
  });
  const shardIndex = join(opts.dir, SHARD_ADD_FILES.index);
  const m = await mergeIndex({
    dir: opts.dir,
    shards: [shardIndex],
    trainedIndex: paths.trainedIndex,
    params: p,
    signal: opts.signal,
  });
  await removeIfExists(shardIndex);
  await removeIfExists(join(opts.dir, SHARD_ADD_FILES.record));
  return {
    ...m,
    resumedFrom: a.skipped ? 0 : a.resumedFrom,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * Removes the on-disk inverted lists files of `dir` that the finished index in `datastore.json`
 * does not use (the previous build's, once the manifest has switched). Readers that still have
 * one open keep reading it: unlinking does not take a mapped file away.
 */
export async function removeStaleIvfdata(dir: string): Promise<void> {
  const live = ivfdataFile((await readManifest(dir))?.index);
  for (const name of IVFDATA_NAMES) {
    if (name !== live) await removeIfExists(join(dir, name));
  }
}
