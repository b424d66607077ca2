/**
 * kNN-LM evaluation: per-token LM log-probabilities on held-out text, the k nearest keys of
 * every position from the datastore, p_kNN from FAISS's distances and from exact L2
 * recomputed against `keys.npy`, and perplexity for the base LM and for each λ of a sweep.
 *
 * The loop is a pipeline: while FAISS searches one batch of windows (and the native vote turns
 * its neighbours into p_kNN for all its positions at once), ONNX Runtime already runs the next
 * batch. The toolkit's own IVFPQ index is searched by `searchIvfPqAsync` (FAISS's results,
 * computed with less work for large k). With `rerank`, FAISS returns more candidates than `k` (e.g. from a 4-bit fast-scan
 * index) and the exact top-k of them, by L2 recomputed from `keys.npy`, are the neighbours.
 *
 * @module
 */

import type { Datastore } from "../datastore/datastore.ts";
import { KnnError } from "../core/errors.ts";
import { interpolatedPerplexity, perplexity } from "./knn_math.ts";
import { planWindows, windowBatch } from "../model/windows.ts";
import { DEFAULT_CONFIG, type EvalConfig } from "../config/mod.ts";
import {
  knnLogProbsAsync,
  rerankExactAsync,
  searchIvfPqAsync,
  type VoteBatch,
} from "../index/knn_native.ts";

/** What evaluation needs from a model: logits and keys for a batch of windows. */
export interface ScoringModel {
  /** Width of a key row. */
  readonly dModel: number;
  /** Vocabulary size (width of a logits row). */
  readonly vocabSize: number;
  /** `[batch, seq]` tokens → logits `[batch, seq, vocab]` and keys `[batch, seq, dModel]`. */
  run(
    tokens: Int32Array,
    batch: number,
    seq: number,
  ): Promise<{ logits: Float32Array; keys: Float32Array }>;
}

/** How neighbour distances are measured: FAISS's PQ estimates or exact, from `keys.npy`. */
export type DistanceMode = Exclude<EvalConfig["distance"], "both">;

/** Options of {@link evaluate}. */
export interface EvalOptions {
  /** The open datastore. */
  datastore: Datastore;
  /** The model (must be the one the datastore was built with). */
  model: ScoringModel;
  /** Held-out tokens. */
  tokens: Int32Array;
  /** Neighbours per query. Default: `DEFAULT_CONFIG.eval.k`. */
  k?: number;
  /** Softmax temperature on distances. Default: `DEFAULT_CONFIG.eval.temperature`. */
  temperature?: number;
  /** λ values to sweep. Default: `DEFAULT_CONFIG.eval.lambdas`. */
  lambdas?: number[];
  /** Distance modes to compute. Default: `DEFAULT_CONFIG.eval.distance` ("both": both). */
  modes?: DistanceMode[];
  /**
   * Exact re-ranking: FAISS returns this many candidates (≥ k) per position, and the k nearest
   * of them by exact L2 from `keys.npy` are the neighbours of the `exact` mode (the `faiss`
   * mode keeps FAISS's own first k). Meant for a fast approximate index (`IVF…,PQ…x4fs`).
   * Default 0: off (exact distances of FAISS's top k).
   */
  rerank?: number;
  /** Window length. Default: the datastore's. */
  seqLen?: number;
  /** Window stride. Default: the datastore's. */
  stride?: number;
  /** Windows per model call. Default: `DEFAULT_CONFIG.batchSize`. */
  batchSize?: number;
  /** Called after every batch with positions done / total. */
  onProgress?: (p: { done: number; total: number }) => void;
  /** Stops between batches. */
  signal?: AbortSignal;
  /** Also return the per-position log-probabilities ({@link EvalResult.perToken}). */
  perToken?: boolean;
}

/** Perplexities for one distance mode. */
export interface ModeResult {
  /** Perplexity at each λ of the sweep (same order as `lambdas`). */
  perplexities: number[];
  /** Best λ (of the sweep and a 0.01-step grid) and its perplexity; λ = 0 if none helps. */
  best: { lambda: number; perplexity: number };
  /** Fraction of positions where no neighbour has the right next token. */
  missRate: number;
}

/** Result of {@link evaluate}. */
export interface EvalResult {
  /** Positions scored. */
  tokens: number;
  /** Base LM perplexity (λ = 0). */
  lmPerplexity: number;
  /** λ values swept. */
  lambdas: number[];
  /** Results per distance mode. */
  modes: Partial<Record<DistanceMode, ModeResult>>;
  /** Neighbours per query. */
  k: number;
  /** Candidates per query re-ranked exactly (0: no re-ranking). */
  rerank: number;
  /** nprobe used. */
  nprobe: number;
  /** Seconds spent and throughput. */
  seconds: number;
  /** Positions per second. */
  tokensPerSecond: number;
  /**
   * With `perToken: true`: natural-log probabilities of each position's next token, [tokens]:
   * `lm[i]` = log p_LM(token i+1 | context), `knn[mode][i]` = log p_kNN (−Infinity when no
   * neighbour votes for it). The perplexities above are computed from exactly these.
   */
  perToken?: { lm: Float64Array; knn: Partial<Record<DistanceMode, Float64Array>> };
}

/** The distance modes an `eval.distance` setting asks for ("both": FAISS's and exact). */
export function distanceModes(distance: EvalConfig["distance"]): DistanceMode[] {
  return distance === "both" ? ["faiss", "exact"] : [distance];
}

/** Evaluates the LM and the kNN-LM on `tokens`. */
export async function evaluate(opts: EvalOptions): Promise<EvalResult> {
  const t0 = performance.now();
  const ds = opts.datastore;
  const { model, tokens } = opts;
  const defaults = DEFAULT_CONFIG.eval;
  const k = opts.k ?? defaults.k;
  const T = opts.temperature ?? defaults.temperature;
  const lambdas = opts.lambdas ?? [...defaults.lambdas];
  const modes = opts.modes ?? distanceModes(defaults.distance);
  const seqLen = opts.seqLen ?? ds.manifest.gather.seqLen;
  const stride = opts.stride ?? ds.manifest.gather.stride;
  const batchSize = opts.batchSize ?? DEFAULT_CONFIG.batchSize;
  const rerank = opts.rerank ?? DEFAULT_CONFIG.eval.rerank;
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`k must be an integer ≥ 1, found ${k}`);
  if (k > ds.size) {
    throw new RangeError(`k = ${k} is larger than the datastore (${ds.size} keys in ${ds.dir})`);
  }
  if (!Number.isInteger(rerank) || (rerank !== 0 && (rerank < k || rerank > ds.size))) {
    throw new KnnError(
      "E_CONFIG",
      `eval.rerank: expected 0 (off) or an integer in k..${ds.size} (k = ${k}, the datastore ` +
        `has ${ds.size} keys), found ${rerank}`,
      { key: "eval.rerank" },
    );
  }
  // The native vote reads vals.npy directly: values outside the vocabulary are E_CORRUPT here.
  ds.checkValues();
  if (model.dModel !== ds.keys.rowLength) {
    throw new Error(
      `the model's keys have width ${model.dModel}, the datastore's ${ds.keys.rowLength}`,
    );
  }
  const plan = planWindows(tokens.length, seqLen, stride);
  const n = plan.positions;
  const d = model.dModel;
  const V = model.vocabSize;
  const L = plan.length;
  const lm = new Float64Array(n);
  const knn: Partial<Record<DistanceMode, Float64Array>> = {};
  for (const m of modes) knn[m] = new Float64Array(n);
  const nBatches = Math.ceil(plan.count / batchSize);
  const launch = (b: number) => {
    const { first, count, tokens: input } = windowBatch(plan, tokens, batchSize, b);
    return { first, nw: count, out: model.run(input, count, L) };
  };
  // vals.npy stays mapped while the datastore is open; the native vote reads it in place.
  const vals = { pointer: ds.vals.pointer(0), length: ds.size };
  const sign = ds.manifest.index?.metric === "ip" ? -1 : 1;
  const kSearch = rerank || k;
  let pending: ReturnType<typeof launch> | undefined = launch(0);
  try {
    for (let b = 0; b < nBatches; b++) {
      opts.signal?.throwIfAborted();
      const { first, nw, out } = pending!;
      const { logits, keys } = await out;
      // ONNX Runtime starts on the next batch while FAISS works on this one.
      pending = b + 1 < nBatches ? launch(b + 1) : undefined;
      // This batch's new positions: LM log-prob of the true next token, the query, the target.
      let nq = 0;
      for (let j = 0; j < nw; j++) {
        const w = plan.at(first + j);
        nq += w.end - w.scoreFrom;
      }
      const queries = new Float32Array(nq * d);
      const positions = new Int32Array(nq);
      const targets = new Int32Array(nq);
      let q = 0;
      for (let j = 0; j < nw; j++) {
        const w = plan.at(first + j);
        for (let p = w.scoreFrom; p < w.end; p++, q++) {
          const row = j * L + (p - w.start);
          queries.set(keys.subarray(row * d, row * d + d), q * d);
          positions[q] = p;
          targets[q] = tokens[p + 1];
          const lo = logits.subarray(row * V, row * V + V);
          let max = -Infinity;
          for (let v = 0; v < V; v++) if (lo[v] > max) max = lo[v];
          let sum = 0;
          for (let v = 0; v < V; v++) sum += Math.exp(lo[v] - max);
          lm[p] = lo[tokens[p + 1]] - max - Math.log(sum);
        }
      }
      // labels, distances: [nq, kSearch], FAISS's order (nearest first by its estimate).
      const found = await searchIvfPqAsync(ds.index, queries, kSearch);
      const top = kSearch === k ? found : firstColumns(found, nq, kSearch, k);
      const votes: Partial<Record<DistanceMode, Promise<Float64Array>>> = {};
      if (knn.faiss) {
        votes.faiss = knnLogProbsAsync(
          { ...top, k, vals, sign, temperature: T } satisfies VoteBatch,
          targets,
        );
      }
      if (knn.exact) {
        // Exact L2 from keys.npy: of FAISS's k neighbours, or the k nearest of its rerank
        // candidates. (The vote is a sum over neighbours, so their order does not matter.)
        const exact = await rerankExactAsync(queries, keyRows(ds), found.labels, kSearch, k);
        votes.exact = knnLogProbsAsync({ ...exact, k, vals, temperature: T }, targets);
      }
      for (const mode of modes) {
        const lp = await votes[mode]!;
        const dst = knn[mode]!;
        for (let i = 0; i < nq; i++) dst[positions[i]] = lp[i];
      }
      opts.onProgress?.({ done: positions[nq - 1] + 1, total: n });
    }
  } finally {
    // A model call still in flight must not reject unobserved after an error.
    pending?.out.catch(() => {});
  }
  const result: EvalResult = {
    tokens: n,
    lmPerplexity: perplexity(lm),
    lambdas,
    modes: {},
    k,
    rerank,
    nprobe: ds.manifest.index?.nlist ? ds.index.nprobe : 0,
    seconds: 0,
    tokensPerSecond: 0,
  };
  for (const m of modes) {
    const kv = knn[m]!;
    const perplexities = lambdas.map((l) => interpolatedPerplexity(lm, kv, l));
    // The best λ: the sweep's values plus a 0.01-step grid over [0.01, 0.99].
    let best = { lambda: 0, perplexity: result.lmPerplexity };
    const grid = [...lambdas, ...Array.from({ length: 99 }, (_, i) => (i + 1) / 100)];
    for (const l of grid) {
      const p = l === 0 ? result.lmPerplexity : interpolatedPerplexity(lm, kv, l);
      if (p < best.perplexity) best = { lambda: l, perplexity: p };
    }
    let misses = 0;
    for (let i = 0; i < n; i++) if (kv[i] === -Infinity) misses++;
    result.modes[m] = {
      perplexities,
      best,
      missRate: misses / n,
    };
  }
  if (opts.perToken) result.perToken = { lm, knn };
  result.seconds = (performance.now() - t0) / 1000;
  result.tokensPerSecond = n / result.seconds;
  return result;
}

// The first k of every row of [nq, kc] search results.
function firstColumns(
  r: { labels: BigInt64Array; distances: Float32Array },
  nq: number,
  kc: number,
  k: number,
): { labels: BigInt64Array; distances: Float32Array } {
  const labels = new BigInt64Array(nq * k);
  const distances = new Float32Array(nq * k);
  for (let i = 0; i < nq; i++) {
    labels.set(r.labels.subarray(i * kc, i * kc + k), i * k);
    distances.set(r.distances.subarray(i * kc, i * kc + k), i * k);
  }
  return { labels, distances };
}

// The datastore's keys as rows the native re-ranking reads in place.
function keyRows(ds: Datastore) {
  return {
    pointer: ds.keys.pointer(0),
    rows: ds.keys.rows,
    d: ds.keys.rowLength,
    dtype: ds.keys.dtype === "<f2" ? "float16" as const : "float32" as const,
  };
}
