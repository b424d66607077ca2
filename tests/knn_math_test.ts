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

Deno.test("interpolation with λ = 0 returns the LM log-prob exactly, λ = 1 the kNN one", () => {
  assert.equal(interpolate(-2.345678, -Infinity, 0), -2.345678);
  assert.equal(interpolate(-2.345678, -0.5, 1), -0.5);
  const want = Math.log(0.75 * Math.exp(-2) + 0.25 * Math.exp(-1));
  assert.ok(Math.abs(interpolate(-2, -1, 0.25) - want) < 1e-12);
  assert.ok(Math.abs(interpolate(-2, -Infinity, 0.25) - (Math.log(0.75) - 2)) < 1e-12);
});

Deno.test("logAddExp and logSoftmax agree with direct formulas", () => {
  assert.ok(Math.abs(logAddExp(Math.log(2), Math.log(3)) - Math.log(5)) < 1e-12);
  assert.equal(logAddExp(-Infinity, -3), -3);
  const ls = logSoftmax([1, 2, 3]);
  const z = Math.exp(1) + Math.exp(2) + Math.exp(3);
  assert.ok(Math.abs(ls[2] - Math.log(Math.exp(3) / z)) < 1e-12);
});

Deno.test("perplexity is exp of the mean negative log-prob", () => {
  assert.ok(Math.abs(perplexity([Math.log(0.5), Math.log(0.25)]) - Math.sqrt(8)) < 1e-12);
  const lm = [Math.log(0.5), Math.log(0.25)];
  assert.equal(interpolatedPerplexity(lm, [-Infinity, -Infinity], 0), perplexity(lm));
});
