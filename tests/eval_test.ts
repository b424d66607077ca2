import assert from "node:assert/strict";
import { join } from "node:path";
import { buildIndex, Datastore, evaluate, KnnLm, loadConfig, MappedArray, OnnxLm } from "../mod.ts";
import { tempDir } from "./_tmp.ts";
import { maxAbsDiff } from "./_close.ts";

const TINY = new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname;
const L = 32;
const S = 16;

// Text with structure a datastore can exploit (repeated words) but no long exact repeats.
function text(n: number, seed: number): string {
  const words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away"];
  let s = seed;
  let out = "";
  while (out.length < n) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out += words[(s >>> 16) % words.length] + ((s >>> 8) % 7 === 0 ? ". " : " ");
  }
  return out.slice(0, n);
}

async function datastore(dir: string) {
  const corpus = join(dir, "train.txt");
  await Deno.writeTextFile(corpus, text(3000, 1));
  const { config } = loadConfig({
    flags: {
      model: TINY,
      corpus,
      out: join(dir, "ds"),
      "seq-len": String(L),
      stride: String(S),
      "batch-size": "4",
      threads: "1",
      factory: "Flat",
    },
  });
  await buildIndex(config);
  return { corpus, out: config.out };
}

/** The window that scores position i, computed without the library's window plan. */
function windowStart(i: number, positions: number): number {
  let start = 0;
  while (Math.min(start + L, positions) <= i) start += S;
  return start + L > positions ? Math.max(0, positions - L) : start;
}

/** softmax of one row of logits, in float64. */
function softmax(row: ArrayLike<number>): number[] {
  const x = Array.from(row);
  const mx = Math.max(...x);
  const e = x.map((v) => Math.exp(v - mx));
  const z = e.reduce((a, b) => a + b);
  return e.map((v) => v / z);
}

/** Every key of keys.npy as [squared L2 distance to `query`, row], nearest first, in float64. */
function bruteForceNeighbours(keys: MappedArray, query: ArrayLike<number>): [number, number][] {
  const K = keys.view() as Float32Array;
  const d = keys.rowLength;
  const dist: [number, number][] = [];
  for (let j = 0; j < keys.rows; j++) {
    let s = 0;
    for (let t = 0; t < d; t++) s += (query[t] - K[j * d + t]) ** 2;
    dist.push([s, j]);
  }
  return dist.sort((a, b) => a[0] - b[0]);
}

Deno.test("with an exact index, the LM, p_kNN, the λ sweep and the best λ equal a brute-force computation", async () => {
  await using tmp = tempDir("knnlm_eval_");
  const { out } = await datastore(tmp.path);
  const evalTokens = Int32Array.from(new TextEncoder().encode(text(200, 99)));
  const k = 8;
  // λ = 0 and a λ just above it check the base LM through the same path as the others.
  const lambdas = [0, 1e-6, 0.1, 0.3, 0.7];
  using ds = await Datastore.open(out);
  using model = await OnnxLm.open(TINY, { keyTensor: "ff_input" });
  const result = await evaluate({
    datastore: ds,
    model,
    tokens: evalTokens,
    k,
    lambdas,
    batchSize: 3,
  });

  // Brute force: every key of keys.npy, sorted by squared L2 distance.
  using keys = MappedArray.open(join(out, "keys.npy"));
  using vals = MappedArray.open(join(out, "vals.npy"));
  const V = vals.view() as Int32Array;
  const d = keys.rowLength;
  const n = evalTokens.length - 1;
  const lm: number[] = [];
  const knn: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = windowStart(i, n);
    const len = Math.min(L, n);
    const { logits, keys: q } = await model.run(evalTokens.slice(start, start + len), 1, len);
    const row = i - start;
    const y = evalTokens[i + 1];
    lm.push(Math.log(softmax(logits.subarray(row * 256, row * 256 + 256))[y]));
    const top = bruteForceNeighbours(keys, q.subarray(row * d, row * d + d)).slice(0, k);
    const w = top.map(([s]) => Math.exp(-(s - top[0][0])));
    const hit = top.reduce((a, [, j], r) => a + (V[j] === y ? w[r] : 0), 0);
    knn.push(Math.log(hit / w.reduce((a, b) => a + b)));
  }
  const ppl = (lp: number[]) => Math.exp(-lp.reduce((a, b) => a + b) / lp.length);
  const mix = (l: number) =>
    ppl(lm.map((a, i) => Math.log((1 - l) * Math.exp(a) + l * Math.exp(knn[i]))));
  const misses = knn.filter((x) => x === -Infinity).length / n;
  // Relative tolerances: the library sums float32 distances natively, the test in float64.
  const near = (a: number, b: number, rel: number) => Math.abs(a - b) <= rel * b;

  assert.equal(result.tokens, n);
  assert.ok(near(result.lmPerplexity, ppl(lm), 1e-4), `${result.lmPerplexity} vs ${ppl(lm)}`);
  assert.ok(misses > 0 && misses < 1, `a useful test has hits and misses (${misses})`);
  // The best λ of the sweep and of the 0.01-step grid, found by trying them all here.
  const grid = [...lambdas, ...Array.from({ length: 99 }, (_, i) => (i + 1) / 100)];
  const bestHere = Math.min(...grid.map(mix));
  for (const mode of ["faiss", "exact"] as const) {
    const r = result.modes[mode]!;
    lambdas.forEach((l, j) =>
      assert.ok(
        near(r.perplexities[j], mix(l), 1e-3),
        `${mode} λ=${l}: ${r.perplexities[j]} vs brute force ${mix(l)}`,
      )
    );
    assert.equal(r.missRate, misses, `${mode} miss rate`);
    assert.ok(near(r.best.perplexity, bestHere, 1e-3), `${mode} best ${r.best.perplexity}`);
    assert.ok(grid.includes(r.best.lambda), `${mode} best λ ${r.best.lambda} is on the grid`);
    assert.ok(near(mix(r.best.lambda), r.best.perplexity, 1e-3), `${mode} best λ's perplexity`);
    assert.ok(r.best.perplexity < ppl(lm), "the datastore helps on this text");
  }
});

Deno.test("KnnLm's p_LM, p_kNN, mixture and neighbours equal a brute-force computation", async () => {
  await using tmp = tempDir("knnlm_eval_");
  const { corpus, out } = await datastore(tmp.path);
  const corpusBytes = await Deno.readFile(corpus);
  // Longer than a window: KnnLm must use the last L tokens.
  const context = Int32Array.from(new TextEncoder().encode(text(50, 11)));
  const k = 16, lambda = 0.4;

  // Brute force, from the model's outputs for the last window and every key in keys.npy.
  using model = await OnnxLm.open(TINY, { keyTensor: "ff_input" });
  const window = context.slice(context.length - L);
  const { logits, keys: q } = await model.run(window, 1, L);
  const pLm = softmax(logits.subarray((L - 1) * 256));
  using keys = MappedArray.open(join(out, "keys.npy"));
  using vals = MappedArray.open(join(out, "vals.npy"));
  const V = vals.view() as Int32Array;
  const all = bruteForceNeighbours(keys, q.subarray((L - 1) * 64));
  const top = all.slice(0, k);
  const pKnn = new Array(256).fill(0);
  for (const [s, j] of top) pKnn[V[j]] += Math.exp(-(s - top[0][0]));
  const z = pKnn.reduce((a, b) => a + b);
  for (let v = 0; v < 256; v++) pKnn[v] /= z;
  const mixed = pLm.map((p, v) => (1 - lambda) * p + lambda * pKnn[v]);
  assert.ok(
    new Set(top.map(([, j]) => V[j])).size > 1,
    "neighbours disagree: p_kNN is not one-hot",
  );

  for (const distance of ["exact", "faiss"] as const) {
    using knn = await KnnLm.open({ datastore: out, k, lambda, distance });
    const next = await knn.next(context);
    // p_LM: the same float32 logits, softmax in float64 on both sides.
    assert.ok(maxAbsDiff(next.lm, pLm) < 1e-9, `${distance}: p_LM`);
    // p_kNN and the mixture: the library's float32 distances differ from the test's float64
    // ones by ~2e-7 relative (distances here are ~0.1), which moves p_kNN by ~4e-9; 1e-4
    // leaves room for another CPU's rounding and still catches a wrong weight or λ.
    assert.ok(maxAbsDiff(next.knn, pKnn) < 1e-4, `${distance}: p_kNN`);
    assert.ok(maxAbsDiff(next.mixed, mixed) < 1e-4, `${distance}: mixture`);
    // The neighbours: the brute force's k nearest rows, nearest first, with their distances
    // and next tokens.
    assert.equal(next.neighbours.length, k);
    next.neighbours.forEach((nb, r) => {
      const [s, j] = top[r];
      assert.ok(Math.abs(nb.distance - s) <= 1e-4 * s, `${distance} rank ${r}: ${nb.distance}`);
      const exact = all.find(([, row]) => row === nb.row)!;
      assert.ok(Math.abs(nb.distance - exact[0]) <= 1e-4 * exact[0], `${distance} row ${j}`);
      assert.equal(nb.token, V[nb.row]);
      // Row i of the datastore is the context ending at corpus byte i; its value is byte i+1.
      assert.equal(nb.token, corpusBytes[nb.row + 1]);
    });
    const row = next.neighbours[0].row;
    assert.deepEqual(
      Array.from(knn.corpusTokens(row - 3, row + 2)),
      Array.from(corpusBytes.subarray(row - 3, row + 2)),
    );
  }
});

Deno.test("eval refuses missing files, a different model and k larger than the datastore", async () => {
  await using tmp = tempDir("knnlm_eval_");
  const dir = tmp.path;
  const { out } = await datastore(dir);
  using model = await OnnxLm.open(TINY, { keyTensor: "ff_input" });
  const tokens = Int32Array.from(new TextEncoder().encode(text(100, 3)));
  {
    using ds = await Datastore.open(out);
    await assert.rejects(
      evaluate({ datastore: ds, model, tokens, k: ds.size + 1 }),
      /k = 3000 is larger than the datastore \(2999 keys/,
    );
  }
  const moved = join(dir, "tiny_copy.onnx");
  const bytes = await Deno.readFile(TINY);
  bytes[bytes.length - 1] ^= 1;
  await Deno.writeFile(moved, bytes);
  await assert.rejects(
    KnnLm.open({ datastore: out, model: moved, k: 4 }),
    /tiny_copy\.onnx: not the model .* was built with/,
  );
  await Deno.rename(join(out, "vals.npy"), join(out, "vals.moved"));
  await assert.rejects(Datastore.open(out), /vals\.npy: missing; the datastore .* is incomplete/);
  await assert.rejects(Datastore.open(join(dir, "nowhere")), /no datastore\.json/);
});
