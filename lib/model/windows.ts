/**
 * Sliding-window plan shared by key gathering and evaluation.
 *
 * A stream of `nTokens` tokens has `nTokens - 1` positions with a next token; position i is
 * the context ending at token i and its value is token i + 1. The model sees windows of
 * `seqLen` tokens that advance by `stride`; each position is produced once, by the first
 * window that reaches it, so every position after the first window has at least
 * `seqLen - stride` tokens of left context. The last window is pulled back to end exactly at
 * the last position, so every window has the same length (one tensor shape per batch).
 *
 * @module
 */

/** One model call's worth of context. */
export interface Window {
  /** First token fed to the model. */
  start: number;
  /** One past the last token fed to the model (and the last position produced). */
  end: number;
  /** First position this window produces; positions [scoreFrom, end) are new. */
  scoreFrom: number;
}

/** Windows over a token stream, addressable by index so huge corpora need no list. */
export interface WindowPlan {
  /** Number of positions with a next token: `nTokens - 1`. */
  positions: number;
  /** Tokens per window: `min(seqLen, positions)`. */
  length: number;
  /** Number of windows. */
  count: number;
  /** The window at index `k` (0 ≤ k < count). */
  at(k: number): Window;
}

/** Plans the windows for `nTokens` tokens; throws when there is not one position to key. */
export function planWindows(nTokens: number, seqLen: number, stride: number): WindowPlan {
  if (!Number.isSafeInteger(nTokens) || nTokens < 2) {
    throw new RangeError(
      `a token stream needs at least 2 tokens (one context and its next token), found ${nTokens}`,
    );
  }
  if (!Number.isSafeInteger(seqLen) || seqLen < 1) {
    throw new RangeError(`seqLen must be an integer ≥ 1, found ${seqLen}`);
  }
  if (!Number.isSafeInteger(stride) || stride < 1 || stride > seqLen) {
    throw new RangeError(`stride must be an integer in 1..seqLen (${seqLen}), found ${stride}`);
  }
  const positions = nTokens - 1;
  const length = Math.min(seqLen, positions);
  const count = positions <= seqLen ? 1 : Math.ceil((positions - seqLen) / stride) + 1;
  const endOf = (k: number) =>
    k < 0 ? 0 : k === count - 1 ? positions : Math.min(k * stride + seqLen, positions);
  return {
    positions,
    length,
    count,
    at(k: number): Window {
      if (!Number.isInteger(k) || k < 0 || k >= count) {
        throw new RangeError(`window ${k} is out of range 0..${count - 1}`);
      }
      const end = endOf(k);
      return { start: end - length, end, scoreFrom: endOf(k - 1) };
    },
  };
}

/** One model call: windows [first, first + count) of a plan, stacked `[count, length]`. */
export interface WindowBatch {
  /** Index of the first window. */
  first: number;
  /** Number of windows (the last batch may be short). */
  count: number;
  /** Their tokens, row-major `[count, plan.length]`. */
  tokens: Int32Array;
}

/**
 * Batch `b` of `batchSize` windows: batches are cut the same way on every run, so a resumed
 * gather feeds the model exactly the tensors an uninterrupted one did.
 */
export function windowBatch(
  plan: WindowPlan,
  tokens: Int32Array,
  batchSize: number,
  b: number,
): WindowBatch {
  const first = b * batchSize;
  const count = Math.min(batchSize, plan.count - first);
  if (!(count > 0)) throw new RangeError(`batch ${b} is past the last window`);
  const out = new Int32Array(count * plan.length);
  for (let j = 0; j < count; j++) {
    const w = plan.at(first + j);
    out.set(tokens.subarray(w.start, w.end), j * plan.length);
  }
  return { first, count, tokens: out };
}
