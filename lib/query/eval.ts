/**
 * kNN-LM evaluation: per-token LM log-probabilities on held-out text, the k nearest keys of
 * every position from the datastore, p_kNN from FAISS's distances and from exact L2
 * recomputed against `keys.npy`, and perplexity for the base LM and for each λ of a sweep.
 *
 * @module
 */

import type { Datastore } from "../datastore/datastore.ts";
import { interpolatedPerplexity, knnLogProb, perplexity } from "./knn_math.ts";
import { planWindows, windowBatch } from "../model/windows.ts";
import { DEFAULT_CONFIG, type EvalConfig } from "../config/mod.ts";

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
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`k must be an integer ≥ 1, found ${k}`);
  if (k > ds.size) {
    throw new RangeError(`k = ${k} is larger than the datastore (${ds.size} keys in ${ds.dir})`);
  }
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
  const neighbourVals = new Int32Array(k);
  let pending: ReturnType<typeof launch> | undefined = launch(0);
  try {
    for (let b = 0; b < nBatches; b++) {
      opts.signal?.throwIfAborted();
      const { first, nw, out } = pending!;
      const { logits, keys } = await out;
      pending = b + 1 < nBatches ? launch(b + 1) : undefined;
      // Collect this batch's new positions: LM log-prob of the true next token and the query.
      let nq = 0;
      for (let j = 0; j < nw; j++) {
        const w = plan.at(first + j);
        nq += w.end - w.scoreFrom;
      }
      const queries = new Float32Array(nq * d);
      const positions = new Int32Array(nq);
      let q = 0;
      for (let j = 0; j < nw; j++) {
        const w = plan.at(first + j);
        for (let p = w.scoreFrom; p < w.end; p++, q++) {
          const row = j * L + (p - w.start);
          queries.set(keys.subarray(row * d, row * d + d), q * d);
          positions[q] = p;
          const lo = logits.subarray(row * V, row * V + V);
          let max = -Infinity;
          for (let v = 0; v < V; v++) if (lo[v] > max) max = lo[v];
          let sum = 0;
          for (let v = 0; v < V; v++) sum += Math.exp(lo[v] - max);
          lm[p] = lo[tokens[p + 1]] - max - Math.log(sum);
        }
      }
      const { distances, labels } = await ds.index.searchAsync(queries, k);
      const exact = knn.exact ? await ds.exactDistances(queries, labels, k) : undefined;
      for (let i = 0; i < nq; i++) {
        const y = tokens[positions[i] + 1];
        for (let j = 0; j < k; j++) {
          const label = Number(labels[i * k + j]);
          neighbourVals[j] = label < 0 ? -1 : ds.val(label);
        }
        if (knn.faiss) {
          const dist = distances.subarray(i * k, i * k + k);
          knn.faiss[positions[i]] = knnLogProb(
            ds.voteDistances(dist),
            neighbourVals,
            y,
            T,
          );
        }
        if (knn.exact && exact) {
          knn.exact[positions[i]] = knnLogProb(
            exact.subarray(i * k, i * k + k),
            neighbourVals,
            y,
            T,
          );
        }
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
