/**
 * The arithmetic of kNN-LM: the neighbour vote p_kNN, interpolation with the LM in log space,
 * and perplexity. Pure functions on typed arrays, shared by evaluation, inspection and
 * {@link KnnLm}-style generation.
 *
 * @module
 */

/** log(exp(a) + exp(b)) without overflow; exact when one side is -Infinity. */
export function logAddExp(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log1p(Math.exp(-Math.abs(a - b)));
}

/**
 * log p_kNN(y) for one query: `log Σ_{i: vals_i = y} softmax(−d_i / T)_i`, or -Infinity when
 * no neighbour votes for `y`. Neighbours whose label is negative (FAISS's "no result") are
 * skipped.
 *
 * @param distances squared L2 distances of the k neighbours (or negated similarities)
 * @param neighbourVals the next token of each neighbour
 */
export function knnLogProb(
  distances: ArrayLike<number>,
  neighbourVals: ArrayLike<number>,
  y: number,
  temperature = 1,
): number {
  let max = -Infinity;
  for (let i = 0; i < distances.length; i++) {
    if (neighbourVals[i] < 0) continue;
    const s = -distances[i] / temperature;
    if (s > max) max = s;
  }
  if (max === -Infinity) return -Infinity;
  let all = 0;
  let hit = 0;
  for (let i = 0; i < distances.length; i++) {
    if (neighbourVals[i] < 0) continue;
    const e = Math.exp(-distances[i] / temperature - max);
    all += e;
    if (neighbourVals[i] === y) hit += e;
  }
  return hit > 0 ? Math.log(hit / all) : -Infinity;
}

/**
 * The whole p_kNN distribution over a vocabulary of `vocab` tokens for one query.
 * Probabilities, not logs; all zero when there are no neighbours.
 */
export function knnDistribution(
  distances: ArrayLike<number>,
  neighbourVals: ArrayLike<number>,
  vocab: number,
  temperature = 1,
): Float64Array {
  const p = new Float64Array(vocab);
  let max = -Infinity;
  for (let i = 0; i < distances.length; i++) {
    if (neighbourVals[i] >= 0) max = Math.max(max, -distances[i] / temperature);
  }
  if (max === -Infinity) return p;
  let all = 0;
  for (let i = 0; i < distances.length; i++) {
    const v = neighbourVals[i];
    if (v < 0) continue;
    const e = Math.exp(-distances[i] / temperature - max);
    all += e;
    if (v < vocab) p[v] += e;
  }
  for (let v = 0; v < vocab; v++) p[v] /= all;
  return p;
}

/** log p(y) = logaddexp(log(1−λ) + log p_LM, log λ + log p_kNN). λ = 0 returns `lmLogProb`. */
export function interpolate(lmLogProb: number, knnLogProb: number, lambda: number): number {
  if (lambda === 0) return lmLogProb;
  if (lambda === 1) return knnLogProb;
  return logAddExp(Math.log1p(-lambda) + lmLogProb, Math.log(lambda) + knnLogProb);
}

/** Log-softmax of one row of logits, returned as a new Float64Array. */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** exp(−mean(log p)) over natural-log probabilities. */
export function perplexity(logProbs: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < logProbs.length; i++) s -= logProbs[i];
  return Math.exp(s / logProbs.length);
}

/** Perplexity of the interpolated model for one λ, given per-token LM and kNN log-probs. */
export function interpolatedPerplexity(
  lm: ArrayLike<number>,
  knn: ArrayLike<number>,
  lambda: number,
): number {
  let s = 0;
  for (let i = 0; i < lm.length; i++) s -= interpolate(lm[i], knn[i], lambda);
  return Math.exp(s / lm.length);
}
