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
 * With `kvCache` a model with past inputs runs the windows in segments carrying its KV cache:
 * each window then computes only its new positions (see `kvSegmentKeys` and the README's "Bring
 * your own model" for which keys equal the windowed ones).
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
import { planWindows, windowBatch, type WindowPlan } from "../model/windows.ts";
import type { KeyStream } from "../model/runner.ts";
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
  /** Starts a stream that carries the KV cache (present only where the model has one). */
  keyStream?(): KeyStream;
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
  /** Whether `keyStream` can carry a KV cache (as `OnnxLm.acceptsPast`). */
  readonly acceptsPast?: boolean;
  /** A stream carrying the KV cache (as `OnnxLm.keyStream`). */
  keyStream?(): KeyStream;
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
    ...(lm.acceptsPast && lm.keyStream ? { keyStream: () => lm.keyStream!() } : {}),
  };
}

/**
 * Windows per segment of a KV-cached gather: as many consecutive windows as fit in
 * `kvCache` positions (the first window's start to the last one's end), at least one.
 */
export function kvSegmentWindows(seqLen: number, stride: number, kvCache: number): number {
  return Math.max(1, Math.floor((kvCache - seqLen) / stride) + 1);
}

/**
 * The keys of windows [first, first + count) of `plan` computed as one KV-cached segment:
 * the first window runs whole from an empty cache (position ids from 0); each later window
 * feeds only its new tokens [scoreFrom, end) after the cached tokens [start, scoreFrom) of its
 * own window (older cache entries are dropped), positions continuing from the segment start.
 * Returns rows [plan.at(first).scoreFrom, plan.at(first + count - 1).end) contiguous, `[rows,
 * d]` float32.
 */
async function kvSegmentKeys(
  model: KeyModel,
  plan: Pick<WindowPlan, "at">,
  tokens: Int32Array,
  first: number,
  count: number,
): Promise<Float32Array> {
  const d = model.dModel;
  const stream = model.keyStream!();
  const w0 = plan.at(first);
  const out = new Float32Array((plan.at(first + count - 1).end - w0.scoreFrom) * d);
  for (let j = 0; j < count; j++) {
    const w = plan.at(first + j);
    const from = j === 0 ? w.start : w.scoreFrom;
    const keys = await stream.next(tokens.subarray(from, w.end), j === 0 ? 0 : from - w.start);
    if (keys.length !== (w.end - from) * d) {
      throw new Error(
        `model returned ${keys.length} key values for ${w.end - from} tokens; expected ` +
          `${(w.end - from) * d}`,
      );
    }
    out.set(keys.subarray((w.scoreFrom - from) * d), (w.scoreFrom - w0.scoreFrom) * d);
  }
  return out;
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
   * Carry the model's KV cache across windows, in segments whose position ids stay below this
   * many (the model's position table); `null`/absent: every window runs whole (default). See
   * the README's "Bring your own model": each window then computes only its new positions,
   * attending over the same tokens as the windowed run, but with cached keys/values that
   * were computed in their own windows. Needs a model with `keyStream` (past inputs);
   * replaces `batchSize` as the unit of work: one segment per model batch.
   */
  kvCache?: number | null;
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
  const kvCache = opts.kvCache ?? null;
  if (kvCache !== null) {
    if (!Number.isSafeInteger(kvCache) || kvCache < seqLen) {
      throw new KnnError(
        "E_CONFIG",
        `kvCache must be an integer ≥ seqLen (${seqLen}), found ${kvCache}`,
        { key: "kvCache" },
      );
    }
    if (!model.keyStream) {
      throw new KnnError(
        "E_CONFIG",
        `kvCache is set but the model has no KV cache to carry (it needs ` +
          `past_key_values.N.key/value inputs, present.N.key/value outputs and position_ids)`,
        { key: "kvCache", hint: "set kvCache to null, or export the model with past inputs" },
      );
    }
  }
  // Windows per unit of work (model batch, checkpoint): a batch, or a KV-cached segment.
  const perBatch = kvCache === null ? batchSize : kvSegmentWindows(seqLen, stride, kvCache);
  const fingerprint: GatherFingerprint = {
    ...opts.identity,
    nTokens: tokens.length,
    seqLen,
    stride,
    batchSize,
    keyDtype,
    ...(kvCache === null ? {} : { kvCache }),
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
  const nBatches = Math.ceil((wEnd - wFirst) / perBatch);
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
    // out: windowed, [n, L, d] (window j's new rows at j·L + scoreFrom − start); KV-cached,
    // the segment's new rows contiguous from its first window's scoreFrom.
    const launch = (b: number) => {
      if (kvCache !== null) {
        const first = b * perBatch;
        const n = Math.min(perBatch, sub.count - first);
        return { first, n, out: kvSegmentKeys(model, sub, tokens, first, n) };
      }
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
      const segFrom = sub.at(first).scoreFrom;
      if (kvCache === null && out.length !== n * L * d) {
        throw new Error(
          `model returned ${out.length} key values for a [${n}, ${L}] batch; ` +
            `expected ${n * L * d} (= ${n}·${L}·${d})`,
        );
      }
      const next = batchesDone + 1;
      pending = next < nBatches && !opts.signal?.aborted ? launch(next) : undefined;
      for (let j = 0; j < n; j++) {
        const w = sub.at(first + j);
        const from = kvCache === null
          ? (j * L + (w.scoreFrom - w.start)) * d
          : (w.scoreFrom - segFrom) * d;
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
