// Evaluation with a 4-bit fast-scan index and exact re-ranking (eval.rerank).
import assert from "node:assert/strict";
import { join } from "node:path";
import { buildIndex, Datastore, evaluate, loadConfig, OnnxLm } from "../mod.ts";
import { KnnError } from "../lib/core/errors.ts";

const TINY = new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname;

// Text with repeated words but no long exact repeats (as in eval_test.ts).
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

async function build(dir: string, name: string, factory: string) {
  const corpus = join(dir, "train.txt");
  await Deno.writeTextFile(corpus, text(3000, 1));
  const { config } = loadConfig({
    flags: {
      model: TINY,
      corpus,
      out: join(dir, name),
      "seq-len": "32",
      stride: "16",
      "batch-size": "4",
      threads: "1",
      factory,
      "train-size": "3000",
    },
  });
  const manifest = await buildIndex(config);
  return { out: config.out, manifest };
}

Deno.test("fast-scan with every key re-ranked gives the exact index's exact-distance perplexity", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_rerank_" });
  try {
    const flat = await build(dir, "flat", "Flat");
    const fs = await build(dir, "fs", "IVF4,PQ16x4fs");
    // Fast-scan lists cannot be mapped from disk: the plan keeps them in memory.
    assert.equal(fs.manifest.index?.invlists, "memory");
    const tokens = Int32Array.from(new TextEncoder().encode(text(300, 42)));
    using model = await OnnxLm.open(TINY, { keyTensor: "ff_input" });
    using exact = await Datastore.open(flat.out);
    using fast = await Datastore.open(fs.out, { nprobe: 4 });
    const lambdas = [0.1, 0.4];
    const k = 8;
    const want = await evaluate({ datastore: exact, model, tokens, k, lambdas, modes: ["exact"] });
    const got = await evaluate({
      datastore: fast,
      model,
      tokens,
      k,
      lambdas,
      modes: ["faiss", "exact"],
      rerank: fast.size, // every key is a candidate: the exact top k of the whole datastore
    });
    assert.equal(got.rerank, fast.size);
    lambdas.forEach((l, j) => {
      const a = got.modes.exact!.perplexities[j];
      const b = want.modes.exact!.perplexities[j];
      assert.ok(Math.abs(a - b) <= 1e-9 * b, `λ=${l}: re-ranked ${a} vs exact index ${b}`);
    });
    // The fast-scan index's own (approximate) distances give a different perplexity.
    assert.notEqual(got.modes.faiss!.perplexities[1], got.modes.exact!.perplexities[1]);
    await assert.rejects(
      evaluate({ datastore: fast, model, tokens, k, rerank: k - 1 }),
      (e) => KnnError.is(e, "E_CONFIG") && e.key === "eval.rerank",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
