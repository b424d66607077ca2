import assert from "node:assert/strict";
import {
  interpolate,
  interpolatedPerplexity,
  knnDistribution,
  knnLogProb,
  logAddExp,
  logSoftmax,
  perplexity,
} from "../lib/query/knn_math.ts";

Deno.test("p_kNN sums the softmax of negative distances over neighbours with the target", () => {
  const d = [1, 2, 4];
  const v = [7, 3, 7];
  const w = d.map((x) => Math.exp(-x));
  const z = w.reduce((a, b) => a + b);
  assert.ok(Math.abs(knnLogProb(d, v, 7) - Math.log((w[0] + w[2]) / z)) < 1e-12);
  assert.ok(
    Math.abs(
      knnLogProb(d, v, 3, 2) - Math.log(
        Math.exp(-1) /
          (Math.exp(-0.5) + Math.exp(-1) + Math.exp(-2)),
      ),
    ) < 1e-12,
  );
  assert.equal(knnLogProb(d, v, 5), -Infinity);
});

Deno.test("p_kNN stays finite for distances far beyond exp's range", () => {
  const lp = knnLogProb([5000, 5001], [1, 2], 1);
  assert.ok(Math.abs(lp - Math.log(1 / (1 + Math.exp(-1)))) < 1e-12);
});

Deno.test("neighbours labelled -1 (FAISS found fewer than k) are ignored", () => {
  assert.ok(Math.abs(knnLogProb([1, 3.4e38], [4, -1], 4)) < 1e-12);
  const p = knnDistribution([1, 2, 3.4e38], [0, 1, -1], 3);
  const z = Math.exp(-1) + Math.exp(-2);
  assert.deepEqual(Array.from(p).map((x) => +x.toFixed(12)), [
    +(Math.exp(-1) / z).toFixed(12),
    +(Math.exp(-2) / z).toFixed(12),
    0,
  ]);
});

Deno.test("interpolation equals log((1 − λ)·p_LM + λ·p_kNN) for λ from 0 to 1", () => {
  // The direct formula in probability space, with no special case for λ = 0 or 1.
  const direct = (lm: number, knn: number, l: number) =>
    Math.log((1 - l) * Math.exp(lm) + l * Math.exp(knn));
  const pairs = [[-2.345678, -0.5], [-2, -1], [-0.1, -7], [-2, -Infinity], [-Infinity, -0.5]];
  for (const [lm, knn] of pairs) {
    for (const l of [0, 1e-9, 0.25, 0.5, 1 - 1e-9, 1]) {
      const want = direct(lm, knn, l);
      const got = interpolate(lm, knn, l);
      assert.ok(
        got === want || Math.abs(got - want) < 1e-12,
        `lm=${lm} knn=${knn} λ=${l}: ${got} vs ${want}`,
      );
    }
  }
});

Deno.test("interpolation stays finite for log-probs far below exp's range", () => {
  // exp(-2000) underflows to 0 in the direct formula; shifting both log-probs by c shifts the
  // interpolated log-prob by c.
  for (const l of [0.1, 0.5, 0.9]) {
    const want = Math.log((1 - l) * Math.exp(-2) + l * Math.exp(-1)) - 2000;
    assert.ok(Math.abs(interpolate(-2002, -2001, l) - want) < 1e-9, `λ=${l}`);
  }
});

Deno.test("logAddExp and logSoftmax agree with direct formulas", () => {
  assert.ok(Math.abs(logAddExp(Math.log(2), Math.log(3)) - Math.log(5)) < 1e-12);
  assert.equal(logAddExp(-Infinity, -3), -3);
  const ls = logSoftmax([1, 2, 3]);
  const z = Math.exp(1) + Math.exp(2) + Math.exp(3);
  assert.ok(Math.abs(ls[2] - Math.log(Math.exp(3) / z)) < 1e-12);
});

Deno.test("perplexity is exp of the mean negative log-prob", () => {
  // p = 0.5 and 0.25: the geometric mean of 1/p is sqrt(2 · 4).
  assert.ok(Math.abs(perplexity([Math.log(0.5), Math.log(0.25)]) - Math.sqrt(8)) < 1e-12);
});

Deno.test("the interpolated perplexity mixes per-token probabilities before averaging", () => {
  const lm = [Math.log(0.5), Math.log(0.25)];
  const knn = [Math.log(0.25), 0]; // p_kNN = 0.25 and 1
  // λ = 0.5: mixed p = 0.375 and 0.625.
  const want = 1 / Math.sqrt(0.375 * 0.625);
  assert.ok(Math.abs(interpolatedPerplexity(lm, knn, 0.5) - want) < 1e-12);
  // λ = 0: the LM's perplexity, even where p_kNN = 0.
  assert.ok(Math.abs(interpolatedPerplexity(lm, [-Infinity, -Infinity], 0) - Math.sqrt(8)) < 1e-12);
  // λ = 1 with a token p_kNN gives zero probability: infinite perplexity.
  assert.equal(interpolatedPerplexity(lm, [0, -Infinity], 1), Infinity);
});
