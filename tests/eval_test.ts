import assert from "node:assert/strict";
import { join } from "node:path";
import { buildIndex, Datastore, evaluate, KnnLm, loadConfig, MappedArray, OnnxLm } from "../mod.ts";

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

async function datastore() {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_eval_" });
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
  return { dir, out: config.out };
}

/** The window that scores position i, computed without the library's window plan. */
function windowStart(i: number, positions: number): number {
  let start = 0;
  while (Math.min(start + L, positions) <= i) start += S;
  return start + L > positions ? Math.max(0, positions - L) : start;
}

Deno.test("with an exact index, p_kNN and the kNN-LM perplexity equal a brute-force computation", async () => {
  const { dir, out } = await datastore();
  try {
    const evalTokens = Int32Array.from(new TextEncoder().encode(text(200, 99)));
    const k = 8;
    const lambdas = [0.1, 0.3, 0.7];
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
    const K = keys.view() as Float32Array;
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
      const lo = Array.from(logits.subarray(row * 256, row * 256 + 256));
      const mx = Math.max(...lo);
      const z = lo.reduce((a, x) => a + Math.exp(x - mx), 0);
      const y = evalTokens[i + 1];
      lm.push(lo[y] - mx - Math.log(z));
      const query = q.subarray(row * d, row * d + d);
      const dist: [number, number][] = [];
      for (let j = 0; j < keys.rows; j++) {
        let s = 0;
        for (let t = 0; t < d; t++) s += (query[t] - K[j * d + t]) ** 2;
        dist.push([s, V[j]]);
      }
      dist.sort((a, b) => a[0] - b[0]);
      const top = dist.slice(0, k);
      const w = top.map(([s]) => Math.exp(-(s - top[0][0])));
      const hit = top.reduce((a, [, v], j) => a + (v === y ? w[j] : 0), 0);
      knn.push(Math.log(hit / w.reduce((a, b) => a + b)));
    }
    const ppl = (lp: number[]) => Math.exp(-lp.reduce((a, b) => a + b) / lp.length);
    const mix = (l: number) =>
      ppl(lm.map((a, i) => Math.log((1 - l) * Math.exp(a) + l * Math.exp(knn[i]))));

    assert.equal(result.tokens, n);
    assert.ok(Math.abs(result.lmPerplexity - ppl(lm)) < 1e-4 * ppl(lm));
    for (const mode of ["faiss", "exact"] as const) {
      const r = result.modes[mode]!;
      lambdas.forEach((l, j) =>
        assert.ok(
          Math.abs(r.perplexities[j] - mix(l)) < 1e-3 * mix(l),
          `${mode} λ=${l}: ${r.perplexities[j]} vs brute force ${mix(l)}`,
        )
      );
    }
    assert.ok(result.modes.exact!.best.perplexity <= Math.min(...result.modes.exact!.perplexities));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("λ = 0 reproduces the base LM's perplexity exactly", async () => {
  const { dir, out } = await datastore();
  try {
    using ds = await Datastore.open(out);
    using model = await OnnxLm.open(TINY, { keyTensor: "ff_input" });
    const tokens = Int32Array.from(new TextEncoder().encode(text(120, 5)));
    const r = await evaluate({ datastore: ds, model, tokens, k: 4, lambdas: [0, 0.5] });
    assert.equal(r.modes.exact!.perplexities[0], r.lmPerplexity);
    assert.equal(r.modes.faiss!.perplexities[0], r.lmPerplexity);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("KnnLm returns distributions that sum to one and mix with λ", async () => {
  const { dir, out } = await datastore();
  try {
    using knn = await KnnLm.open({ datastore: out, k: 16, lambda: 0.4 });
    const next = await knn.next(Int32Array.from(new TextEncoder().encode("the cat sat on a ")));
    for (const p of [next.lm, next.knn, next.mixed]) {
      assert.ok(Math.abs(p.reduce((a, b) => a + b) - 1) < 1e-9);
    }
    for (let v = 0; v < 256; v++) {
      assert.ok(Math.abs(next.mixed[v] - (0.6 * next.lm[v] + 0.4 * next.knn[v])) < 1e-12);
    }
    assert.equal(next.neighbours.length, 16);
    for (let j = 1; j < 16; j++) {
      assert.ok(next.neighbours[j].distance >= next.neighbours[j - 1].distance);
    }
    const ctx = knn.corpusTokens(next.neighbours[0].row - 3, next.neighbours[0].row + 2);
    assert.equal(ctx[4], next.neighbours[0].token, "the neighbour's next token follows it");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("eval refuses missing files, a different model and k larger than the datastore", async () => {
  const { dir, out } = await datastore();
  try {
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
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
