import assert from "node:assert/strict";
import { planWindows } from "../lib/model/windows.ts";

function coverage(nTokens: number, seqLen: number, stride: number) {
  const plan = planWindows(nTokens, seqLen, stride);
  const seen = new Int32Array(plan.positions);
  const minContext = new Int32Array(plan.positions).fill(1 << 30);
  for (let k = 0; k < plan.count; k++) {
    const w = plan.at(k);
    assert.equal(w.end - w.start, plan.length, `window ${k} has the common length`);
    for (let p = w.scoreFrom; p < w.end; p++) {
      seen[p]++;
      minContext[p] = p - w.start + 1;
    }
  }
  return { plan, seen, minContext };
}

Deno.test("every position is produced by exactly one window, for many shapes", () => {
  for (
    const [n, L, S] of [[2, 4, 1], [10, 4, 2], [300, 256, 128], [1000, 64, 64], [1001, 64, 17]]
  ) {
    const { seen } = coverage(n, L, S);
    assert.ok(seen.every((c) => c === 1), `n=${n} L=${L} S=${S}`);
  }
});

Deno.test("positions after the first window keep at least seqLen - stride tokens of context", () => {
  const L = 64, S = 16;
  const { minContext } = coverage(1000, L, S);
  for (let p = L; p < minContext.length; p++) {
    assert.ok(minContext[p] >= L - S + 1, `position ${p}`);
  }
  for (let p = 0; p < L; p++) assert.equal(minContext[p], p + 1);
});

Deno.test("the last window ends exactly at the last position with a next token", () => {
  const plan = planWindows(1001, 64, 17);
  const last = plan.at(plan.count - 1);
  assert.equal(last.end, 1000);
  assert.equal(last.start, 1000 - 64);
});

Deno.test("a stream shorter than one window gives one shorter window", () => {
  const plan = planWindows(5, 256, 128);
  assert.equal(plan.count, 1);
  assert.deepEqual(plan.at(0), { start: 0, end: 4, scoreFrom: 0 });
});

Deno.test("bad window settings are rejected with the setting named", () => {
  assert.throws(() => planWindows(1, 8, 4), /at least 2 tokens/);
  assert.throws(() => planWindows(100, 8, 9), /stride must be .* 1\.\.seqLen \(8\)/);
  assert.throws(() => planWindows(100, 0, 1), /seqLen must be/);
  assert.throws(() => planWindows(100, 8, 4).at(1000), /out of range/);
});
