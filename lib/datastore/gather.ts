/**
 * Key gathering: run the model over the corpus in sliding windows and write one key row and
 * one value per position into memory-mapped `.npy` files.
 *
 * Rows are written in position order (row i = the context ending at token i, value = token
 * i + 1). A shard gathers a contiguous range of the windows (`windows`): its row 0 is then the
 * first position of its first window, and batches are cut from that window on. Work is checkpointed at batch boundaries: the arrays are flushed (msync) and then
 * `gather.progress.json` records how many batches are done, so a re-run after a crash or
 * Ctrl-C continues from there. Batches are formed the same way on every run, so the resumed
 * result is byte-identical to an uninterrupted one.
 *
 * Disk space is checked before anything is written and the arrays' blocks are reserved with
 * `posix_fallocate`, so a full disk is an `E_NO_SPACE` error naming the file, never a SIGBUS
 * while writing through the mapping. Every block of {@link CHECKSUM_BLOCK_ROWS} rows is hashed
 * (sha256) once written; the sums go to `checksums.json` for `knn verify`.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { fsError, KnnError } from "../core/errors.ts";
import { MappedArray } from "../storage/mmap.ts";
import { f32ArrayToF16 } from "../storage/half.ts";
import { ensureFreeSpace } from "../storage/space.ts";
import { readJsonIfExists, removeIfExists, renameFile, writeJsonAtomic } from "../core/_atomic.ts";
import { datastorePaths, type GatherFingerprint, refuseMismatch } from "./manifest.ts";
import { planWindows, windowBatch } from "../model/windows.ts";
import { DEFAULT_CONFIG, type KnnlmConfig } from "../config/mod.ts";

/** Rows per checksummed block of `keys.npy` / `vals.npy`. */
export const CHECKSUM_BLOCK_ROWS = 65536;

/**
 * `checksums.json`: sha256 of the data bytes (no header) of each block of `blockRows` rows of
 * `keys.npy` and `vals.npy`; block b covers rows [b·blockRows, min(rows, (b+1)·blockRows)),
 * or, when `starts` is given (a datastore merged from shards, whose blocks were summed while
 * each shard was gathered), rows [starts[b], starts[b+1] ?? rows).
 */
export interface GatherChecksums {
  /** Always "sha256". */
  algorithm: "sha256";
  /** Rows per block (the most a block holds). */
  blockRows: number;
  /** The first row of each block, when the blocks are not every `blockRows` rows. */
  starts?: number[];
  /** Rows covered (all of them once the gather is complete). */
  rows: number;
  /** Hex sha256 per block of `keys.npy`. */
  keys: string[];
  /** Hex sha256 per block of `vals.npy`. */
  vals: string[];
}

/** The sha256 (hex) of the data bytes of rows [start, end) of a mapped array. */
export function rowsSha256(arr: MappedArray, start: number, end: number): string {
  const v = arr.view(start, end);
  return createHash("sha256").update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength))
    .digest("hex");
}

/** What gathering needs from a model: its key width and a batched forward pass. */
export interface KeyModel {
  /** Width of a key row (the model's hidden size). */
  readonly dModel: number;
  /**
   * Runs `batch` windows of `seq` tokens (row-major `[batch, seq]`) and returns the key tensor
   * `[batch, seq, dModel]`, row-major float32.
   */
  runKeys(tokens: Int32Array, batch: number, seq: number): Promise<Float32Array>;
}

/** A model that can run without computing logits, as `OnnxLm` does with `{ logits: false }`. */
export interface KeysOnlyRunner {
  /** Width of a key row. */
  readonly dModel: number;
  /** Runs `[batch, seq]` tokens and returns at least the keys `[batch, seq, dModel]`. */
  run(
    tokens: Int32Array,
    batch: number,
    seq: number,
    options: { logits: false },
  ): Promise<{ keys: Float32Array }>;
}

/**
 * The {@linkcode KeyModel} of an LM such as `OnnxLm`: each call runs the model fetching only
 * the key tensor, not the logits.
 */
export function keyModelOf(lm: KeysOnlyRunner): KeyModel {
  return {
    dModel: lm.dModel,
    runKeys: async (tokens, batch, seq) =>
      (await lm.run(tokens, batch, seq, { logits: false })).keys,
  };
}

/** Progress of a gather, reported after every batch. */
export interface GatherProgress {
  /** Rows written so far, including those from an earlier run. */
  done: number;
  /** Rows in the finished datastore. */
  total: number;
  /** Rows that were already there when this run started (resume). */
  resumedFrom: number;
}

/** Options of {@link gather}. */
export interface GatherOptions {
  /** The model (e.g. an `OnnxLm`). */
  model: KeyModel;
  /** Token stream; `tokens.length - 1` rows are produced. */
  tokens: Int32Array;
  /** Datastore directory (must exist). */
  dir: string;
  /** What identifies the model and corpus in the fingerprint. */
  identity: Pick<GatherFingerprint, "modelSha256" | "keyTensor" | "corpusIdentity">;
  /** Window length in tokens. Default: `DEFAULT_CONFIG.seqLen`. */
  seqLen?: number;
  /** Window stride in tokens. Default: `DEFAULT_CONFIG.stride`. */
  stride?: number;
  /** Windows per model call. Default: `DEFAULT_CONFIG.batchSize`. */
  batchSize?: number;
  /** Storage dtype of keys. Default: `DEFAULT_CONFIG.keyDtype`. */
  keyDtype?: KnnlmConfig["keyDtype"];
  /** Flush and checkpoint after at least this many rows. Default 65536. */
  checkpointRows?: number;
  /** Called after each batch. */
  onProgress?: (p: GatherProgress) => void;
  /** Stops after the batch in flight, leaving a resumable checkpoint. */
  signal?: AbortSignal;
  /** Rows per checksummed block. Default {@link CHECKSUM_BLOCK_ROWS}. */
  checksumRows?: number;
  /**
   * Windows [first, end) of the plan to gather (a shard); default all. Batches are cut from
   * `first`, so a shard's model calls are a one-process gather's when `first` is a multiple of
   * `batchSize` (as `shardRange` makes it).
   */
  windows?: [number, number];
}

/** Result of {@link gather}. */
export interface GatherResult {
  /** The fingerprint recorded for these keys. */
  fingerprint: GatherFingerprint;
  /** Rows in `keys.npy` / `vals.npy`. */
  rows: number;
  /** The position (global row) of row 0: 0 unless a shard was gathered. */
  rowStart: number;
  /** Key width. */
  dModel: number;
  /** Number of model windows gathered. */
  windows: number;
  /** Rows found done from an earlier run. */
  resumedFrom: number;
  /** Seconds spent in this run. */
  seconds: number;
}

interface ProgressFile {
  fingerprint: GatherFingerprint;
  /** Windows [first, end) being gathered (absent in checkpoints of older versions: all). */
  windows?: [number, number];
  dModel: number;
  batchesDone: number;
  rowsDone: number;
  /** Sums of the blocks completed so far (absent in checkpoints of older versions). */
  checksums?: GatherChecksums;
}

/**
 * The error a gather throws when its signal stops it: `E_INTERRUPTED`, after the checkpoint
 * of every finished batch is on disk, so running it again resumes.
 */
export function gatherInterrupted(rowsDone: number, total: number, signal?: AbortSignal): KnnError {
  const reason = signal?.reason;
  return new KnnError(
    "E_INTERRUPTED",
    `gather interrupted after ${rowsDone} of ${total} rows; run it again to resume`,
    { signal: KnnError.is(reason) ? reason.signal : undefined },
  );
}

async function finishRenames(tmp: string, final: string) {
  try {
    await Deno.rename(tmp, final);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw fsError(e, tmp, `rename to ${final}`);
    try {
      await Deno.stat(final); // already renamed: it must be there
    } catch {
      throw new KnnError(
        "E_NOT_FOUND",
        `${final}: missing, and so is ${tmp}; delete ${final.replace(/[^/]*$/, "")}` +
          `gather.progress.json to gather again`,
        { path: final },
      );
    }
  }
}

/** Hashes every block of rows that is complete in [sums.rows, rowsDone); final: the tail too. */
function hashBlocks(
  sums: GatherChecksums,
  keys: MappedArray,
  vals: MappedArray,
  rowsDone: number,
  final: boolean,
): void {
  const B = sums.blockRows;
  while (sums.rows + B <= rowsDone || (final && sums.rows < rowsDone)) {
    const end = Math.min(rowsDone, sums.rows + B);
    sums.keys.push(rowsSha256(keys, sums.rows, end));
    sums.vals.push(rowsSha256(vals, sums.rows, end));
    sums.rows = end;
  }
}

/** Gathers keys and values into `dir/keys.npy` and `dir/vals.npy`, resuming if it can. */
export async function gather(opts: GatherOptions): Promise<GatherResult> {
  const t0 = performance.now();
  const seqLen = opts.seqLen ?? DEFAULT_CONFIG.seqLen;
  const stride = opts.stride ?? DEFAULT_CONFIG.stride;
  const batchSize = opts.batchSize ?? DEFAULT_CONFIG.batchSize;
  const keyDtype = opts.keyDtype ?? DEFAULT_CONFIG.keyDtype;
  const checkpointRows = opts.checkpointRows ?? 65536;
  const { tokens, model } = opts;
  const d = model.dModel;
  if (!Number.isInteger(d) || d < 1) throw new Error(`model key width must be ≥ 1, found ${d}`);
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`batchSize must be an integer ≥ 1, found ${batchSize}`);
  }
  const plan = planWindows(tokens.length, seqLen, stride);
  const [wFirst, wEnd] = opts.windows ?? [0, plan.count];
  if (
    !(Number.isSafeInteger(wFirst) && Number.isSafeInteger(wEnd) && 0 <= wFirst && wFirst < wEnd &&
      wEnd <= plan.count)
  ) {
    throw new RangeError(
      `windows must be a range within 0..${plan.count}, found [${wFirst}, ${wEnd})`,
    );
  }
  // Rows [rowStart, rowStart + rows) of the whole datastore; row r here is position rowStart + r.
  const rowStart = plan.at(wFirst).scoreFrom;
  const rows = plan.at(wEnd - 1).end - rowStart;
  const fingerprint: GatherFingerprint = {
    ...opts.identity,
    nTokens: tokens.length,
    seqLen,
    stride,
    batchSize,
    keyDtype,
  };
  const paths = datastorePaths(opts.dir);
  const keysTmp = `${paths.keys}.tmp`;
  const valsTmp = `${paths.vals}.tmp`;
  const keyNpy = keyDtype === "float16" ? "<f2" : "<f4";
  const checksumRows = opts.checksumRows ?? CHECKSUM_BLOCK_ROWS;
  if (!Number.isInteger(checksumRows) || checksumRows < 1) {
    throw new RangeError(`checksumRows must be an integer ≥ 1, found ${checksumRows}`);
  }

  // Resume from a checkpoint of the same gather, or start afresh (stale .tmp files are reset).
  const progress = await readJsonIfExists<ProgressFile>(paths.gatherProgress);
  const nBatches = Math.ceil((wEnd - wFirst) / batchSize);
  const [pFirst, pEnd] = progress?.windows ?? [0, plan.count];
  if (progress && (pFirst !== wFirst || pEnd !== wEnd)) {
    throw new KnnError(
      "E_MISMATCH",
      `${opts.dir}: holds an unfinished gather of windows [${pFirst}, ${pEnd}), not ` +
        `[${wFirst}, ${wEnd}) (another shard count?); delete ${opts.dir} to start over`,
      { path: paths.gatherProgress },
    );
  }
  if (progress && progress.batchesDone === nBatches) {
    // A finished gather that stopped before its files were renamed: finish the renames.
    refuseMismatch(opts.dir, progress.fingerprint, fingerprint, "an unfinished gather");
    if (progress.checksums?.rows === rows) {
      await writeJsonAtomic(paths.checksums, progress.checksums);
    }
    await finishRenames(keysTmp, paths.keys);
    await finishRenames(valsTmp, paths.vals);
    return {
      fingerprint,
      rows,
      rowStart,
      dModel: d,
      windows: wEnd - wFirst,
      resumedFrom: rows,
      seconds: (performance.now() - t0) / 1000,
    };
  }
  let keys: MappedArray;
  let vals: MappedArray;
  let batchesDone = 0;
  let rowsDone = 0;
  let sums: GatherChecksums = {
    algorithm: "sha256",
    blockRows: checksumRows,
    rows: 0,
    keys: [],
    vals: [],
  };
  // Sums of another gather (a --force regather) must not describe these files.
  await removeIfExists(paths.checksums);
  if (progress) {
    refuseMismatch(opts.dir, progress.fingerprint, fingerprint, "an unfinished gather");
    keys = MappedArray.open(keysTmp, { mode: "r+", dtypes: [keyNpy] });
    vals = MappedArray.open(valsTmp, { mode: "r+", dtypes: ["<i4"] });
    if (keys.rows !== rows || keys.rowLength !== d || vals.rows !== rows) {
      keys.close();
      vals.close();
      throw new KnnError(
        "E_CORRUPT",
        `${keysTmp}: shape [${keys.shape}] does not match the checkpoint ([${rows}, ${d}]); ` +
          `delete ${paths.gatherProgress} to start the gather over`,
        { path: keysTmp },
      );
    }
    batchesDone = progress.batchesDone;
    rowsDone = progress.rowsDone;
    if (progress.checksums?.blockRows === checksumRows) sums = progress.checksums;
  } else {
    const itemBytes = keyDtype === "float16" ? 2 : 4;
    // + headers; the arrays' blocks are reserved below, so this is what the gather will use.
    ensureFreeSpace(
      opts.dir,
      rows * d * itemBytes + rows * 4 + 2 * 4096,
      `gathering ${rows} keys of width ${d} (${keysTmp}, ${valsTmp})`,
    );
    keys = MappedArray.create(keysTmp, { dtype: keyNpy, shape: [rows, d], allocate: true });
    try {
      vals = MappedArray.create(valsTmp, { dtype: "<i4", shape: [rows], allocate: true });
    } catch (e) {
      keys.close();
      await removeIfExists(keysTmp);
      throw e;
    }
  }

  const resumedFrom = rowsDone;
  let stopPending = () => {};

  try {
    // No "sequential" advice here: it slows writing fresh pages several-fold.
    const L = plan.length;
    // Batch b of this gather is windows [wFirst + b·batchSize, …): the plan seen from wFirst.
    const sub = wFirst === 0 && wEnd === plan.count ? plan : {
      ...plan,
      count: wEnd - wFirst,
      at: (k: number) => plan.at(wFirst + k),
    };
    const launch = (b: number) => {
      const { first, count, tokens: input } = windowBatch(sub, tokens, batchSize, b);
      return { first, n: count, out: model.runKeys(input, count, L) };
    };

    let sinceCheckpoint = 0;
    let checkpointFrom = rowsDone;
    const checkpoint = async () => {
      if (rowsDone > checkpointFrom) {
        keys.flush(checkpointFrom, rowsDone);
        vals.flush(checkpointFrom, rowsDone);
        hashBlocks(sums, keys, vals, rowsDone, rowsDone === rows);
        // Written and on disk: drop them from this process so its RSS stays bounded.
        keys.advise("dontneed", checkpointFrom, rowsDone);
      }
      await writeJsonAtomic(
        paths.gatherProgress,
        {
          fingerprint,
          windows: [wFirst, wEnd],
          dModel: d,
          batchesDone,
          rowsDone,
          checksums: sums,
        } satisfies ProgressFile,
      );
      checkpointFrom = rowsDone;
      sinceCheckpoint = 0;
    };
    if (!progress) await checkpoint();
    opts.onProgress?.({ done: rowsDone, total: rows, resumedFrom });

    // One batch in flight while the previous one is copied into the maps.
    let pending = batchesDone < nBatches ? launch(batchesDone) : undefined;
    // A batch still in flight after an error must not reject unobserved.
    stopPending = () => pending?.out.catch(() => {});
    while (pending) {
      const { first, n } = pending;
      const out = await pending.out;
      if (out.length !== n * L * d) {
        throw new Error(
          `model returned ${out.length} key values for a [${n}, ${L}] batch; ` +
            `expected ${n * L * d} (= ${n}·${L}·${d})`,
        );
      }
      const next = batchesDone + 1;
      pending = next < nBatches && !opts.signal?.aborted ? launch(next) : undefined;
      for (let j = 0; j < n; j++) {
        const w = sub.at(first + j);
        const from = (j * L + (w.scoreFrom - w.start)) * d;
        const src = out.subarray(from, from + (w.end - w.scoreFrom) * d);
        const dst = keys.view(w.scoreFrom - rowStart, w.end - rowStart);
        if (keyDtype === "float16") f32ArrayToF16(src, dst as Uint16Array);
        else (dst as Float32Array).set(src);
        (vals.view(w.scoreFrom - rowStart, w.end - rowStart) as Int32Array).set(
          tokens.subarray(w.scoreFrom + 1, w.end + 1),
        );
        sinceCheckpoint += w.end - w.scoreFrom;
        rowsDone = w.end - rowStart;
      }
      batchesDone = next;
      if (sinceCheckpoint >= checkpointRows || batchesDone === nBatches) await checkpoint();
      opts.onProgress?.({ done: rowsDone, total: rows, resumedFrom });
      if (opts.signal?.aborted && batchesDone < nBatches) {
        await checkpoint();
        throw gatherInterrupted(rowsDone, rows, opts.signal);
      }
    }
  } finally {
    stopPending();
    keys.close();
    vals.close();
  }

  // Complete: record the sums, then give the arrays their final names. The checkpoint stays
  // until the caller has recorded the gather in datastore.json (then it removes it).
  await writeJsonAtomic(paths.checksums, sums);
  await renameFile(keysTmp, paths.keys);
  await renameFile(valsTmp, paths.vals);
  return {
    fingerprint,
    rows,
    rowStart,
    dModel: d,
    windows: wEnd - wFirst,
    resumedFrom,
    seconds: (performance.now() - t0) / 1000,
  };
}
