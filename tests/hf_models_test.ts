import assert from "node:assert/strict";
import { join } from "node:path";
import {
  buildIndex,
  Datastore,
  evaluate,
  KnnError,
  KnnLm,
  loadConfig,
  MappedArray,
  OnnxLm,
} from "../mod.ts";
import { inspectModel, openTokenizer } from "../lib/model/mod.ts";
import { loadBrownText } from "../lib/corpus/mod.ts";
import { writeGpt2TokenizerJson } from "./_gpt2_tokenizer.ts";

// Fixtures from tests/fixtures/make_hf_models.py: HF-style exports and PyTorch's keys.
const HF = new URL("./fixtures/hf/", import.meta.url).pathname;
const L = 32, S = 16; // the window plan the golden keys were computed with
// ORT and PyTorch run the same float32 arithmetic in different orders: keys of unit-scale
// norms agree to ~1e-6; 1e-4 absolute leaves room and still catches any wrong tensor.
const KEY_TOLERANCE = 1e-4;

interface Layout {
  name: string;
  /** What `knn model inspect` must recommend. */
  key: RegExp;
  inputs: string[];
}

const LAYOUTS: Layout[] = [
  {
    name: "gpt2",
    key: /h\.1\/ln_2\//,
    inputs: ["input_ids:tokens", "attention_mask:attention_mask", "position_ids:position_ids"],
  },
  {
    name: "llama",
    key: /layers\.1\/post_attention_layernorm\//,
    inputs: ["input_ids:tokens", "attention_mask:attention_mask", "position_ids:position_ids"],
  },
  {
    name: "gpt2_with_past",
    key: /h\.1\/ln_2\//,
    inputs: [
      "input_ids:tokens",
      "attention_mask:attention_mask",
      "position_ids:position_ids",
      "past_key_values.0.key:past",
      "past_key_values.0.value:past",
      "past_key_values.1.key:past",
      "past_key_values.1.value:past",
    ],
  },
  {
    name: "gpt2_merged",
    key: /h\.1\/ln_2\//,
    inputs: [
      "input_ids:tokens",
      "attention_mask:attention_mask",
      "position_ids:position_ids",
      "past_key_values.0.key:past",
      "past_key_values.0.value:past",
      "past_key_values.1.key:past",
      "past_key_values.1.value:past",
      "use_cache_branch:use_cache_branch",
    ],
  },
  {
    name: "wide_vocab",
    key: /h\.0\/ln_2\//,
    inputs: ["input_ids:tokens", "attention_mask:attention_mask"],
  },
];

function npy(path: string): { data: Float32Array | Int32Array; shape: number[] } {
  using a = MappedArray.open(path, { mode: "r" });
  const v = a.view();
  return {
    data: v instanceof Int32Array ? v.slice() : Float32Array.from(v as Float32Array),
    shape: [...a.shape],
  };
}

async function build(layout: Layout, dir: string, keyTensor: string, extra = {}) {
  const { config } = loadConfig({
    flags: {
      model: join(HF, `${layout.name}.onnx`),
      corpus: join(HF, `${layout.name}.tokens.npy`),
      "key-tensor": keyTensor,
      out: join(dir, layout.name),
      "seq-len": String(L),
      stride: String(S),
      "batch-size": "2",
      threads: "1",
      factory: "Flat",
      ...extra,
    },
  });
  return { config, manifest: await buildIndex(config) };
}

/** The window that scores position i (lib/model/windows.ts's plan, written out). */
function windowStart(i: number, positions: number): number {
  let start = 0;
  while (Math.min(start + L, positions) <= i) start += S;
  return start + L > positions ? Math.max(0, positions - L) : start;
}

/** Brute-force kNN-LM log-probabilities: every stored key, sorted by squared L2. */
async function bruteForce(model: OnnxLm, dsDir: string, tokens: Int32Array, k: number) {
  using keys = MappedArray.open(join(dsDir, "keys.npy"));
  using vals = MappedArray.open(join(dsDir, "vals.npy"));
  const K = keys.view() as Float32Array;
  const Vals = vals.view() as Int32Array;
  const d = keys.rowLength;
  const V = model.vocabSize;
  const n = tokens.length - 1;
  const lm: number[] = [], knn: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = windowStart(i, n);
    const len = Math.min(L, n);
    const { logits, keys: q } = await model.run(tokens.slice(start, start + len), 1, len);
    const row = i - start;
    const lo = Array.from(logits.subarray(row * V, row * V + V));
    const mx = lo.reduce((a, b) => Math.max(a, b), -Infinity);
    const z = lo.reduce((a, x) => a + Math.exp(x - mx), 0);
    const y = tokens[i + 1];
    lm.push(lo[y] - mx - Math.log(z));
    const query = q.subarray(row * d, row * d + d);
    const dist: [number, number][] = [];
    for (let j = 0; j < keys.rows; j++) {
      let s = 0;
      for (let t = 0; t < d; t++) s += (query[t] - K[j * d + t]) ** 2;
      dist.push([s, Vals[j]]);
    }
    dist.sort((a, b) => a[0] - b[0]);
    const top = dist.slice(0, k);
    const w = top.map(([s]) => Math.exp(-(s - top[0][0])));
    const hit = top.reduce((a, [, v], j) => a + (v === y ? w[j] : 0), 0);
    knn.push(Math.log(hit / w.reduce((a, b) => a + b)));
  }
  const ppl = (lp: number[]) => Math.exp(-lp.reduce((a, b) => a + b) / lp.length);
  return (l: number) =>
    ppl(lm.map((a, i) => Math.log((1 - l) * Math.exp(a) + l * Math.exp(knn[i]))));
}

for (const layout of LAYOUTS) {
  Deno.test(`${layout.name}: inspect recommends the last block's pre-FFN norm and the runner feeds every input`, async () => {
    const info = await inspectModel(join(HF, `${layout.name}.onnx`));
    assert.match(info.keyCandidates[0].tensor, layout.key);
    assert.match(info.keyCandidates[0].role, /recommended/);
    assert.deepEqual(info.inputs.map((i) => `${i.name}:${i.role}`), layout.inputs);
    assert.equal(info.merged ?? false, layout.name === "gpt2_merged");
  });

  Deno.test(`${layout.name}: build-index stores PyTorch's keys and eval matches a brute-force kNN-LM`, async () => {
    const dir = await Deno.makeTempDir({ prefix: `knnlm_hf_${layout.name}_` });
    try {
      const key = (await inspectModel(join(HF, `${layout.name}.onnx`))).keyCandidates[0].tensor;
      const { config, manifest } = await build(layout, dir, key);
      const golden = npy(join(HF, `${layout.name}.keys.npy`));
      const tokens = npy(join(HF, `${layout.name}.tokens.npy`)).data as Int32Array;
      assert.deepEqual(manifest.keys.shape, golden.shape);
      const stored = npy(join(config.out, "keys.npy"));
      let maxErr = 0;
      for (let i = 0; i < golden.data.length; i++) {
        maxErr = Math.max(maxErr, Math.abs(stored.data[i] - golden.data[i]));
      }
      assert.ok(maxErr < KEY_TOLERANCE, `max |key - golden| = ${maxErr}`);
      assert.deepEqual(
        Array.from(npy(join(config.out, "vals.npy")).data),
        Array.from(tokens.subarray(1)),
      );
      assert.equal(manifest.tokenizer?.kind, "none"); // ids came pre-tokenized, no tokenizer named
      if (layout.name === "wide_vocab") {
        assert.equal(manifest.model.vocabSize, 70_000);
        assert.ok(tokens.some((t) => t > 65_535), "some ids need more than 16 bits");
      }

      // Eval on other ids of the same vocabulary, against brute force.
      const V = manifest.model.vocabSize;
      let s = 11;
      const evalTokens = Int32Array.from({ length: 50 }, () => {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        return (s >>> 8) % V;
      });
      using ds = await Datastore.open(config.out);
      using model = await OnnxLm.open(config.model, { keyTensor: key });
      const k = 8, lambdas = [0.25, 0.6];
      const r = await evaluate({
        datastore: ds,
        model,
        tokens: evalTokens,
        k,
        lambdas,
        batchSize: 2,
      });
      const mix = await bruteForce(model, config.out, evalTokens, k);
      assert.ok(
        Math.abs(r.lmPerplexity - mix(0)) < 1e-4 * mix(0),
        `${r.lmPerplexity} vs ${mix(0)}`,
      );
      lambdas.forEach((l, j) => {
        const got = r.modes.exact!.perplexities[j];
        assert.ok(Math.abs(got - mix(l)) < 1e-3 * mix(l), `λ=${l}: ${got} vs ${mix(l)}`);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("a GPT-2-layout model with a GPT-2 BPE tokenizer builds from text, decodes neighbours and refuses another tokenizer", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_hf_tok_" });
  try {
    // GPT-2 cut to the fixture's 1024 ids (its first 768 merges): a real byte-level BPE.
    const tokPath = await writeGpt2TokenizerJson(join(dir, "gpt2_1024"), true, 1024);
    const corpus = join(dir, "train.txt");
    await Deno.writeTextFile(corpus, (await loadBrownText("train")).slice(0, 4000));
    const model = join(HF, "gpt2.onnx");
    const key = (await inspectModel(model)).keyCandidates[0].tensor;
    const { config } = loadConfig({
      flags: {
        model,
        tokenizer: join(dir, "gpt2_1024"),
        corpus,
        "key-tensor": key,
        out: join(dir, "ds"),
        "seq-len": String(L),
        stride: String(S),
        threads: "1",
        factory: "Flat",
      },
    });
    const manifest = await buildIndex(config);
    const tok = await openTokenizer(tokPath);
    assert.deepEqual(manifest.tokenizer, { ...tok.identity, path: tokPath });
    assert.equal(manifest.tokenizer?.vocabSize, 1024);
    const text = (await loadBrownText("train")).slice(0, 4000);
    assert.equal(manifest.corpus.nTokens, tok.encode(text).length);

    // KnnLm uses the recorded tokenizer: text in, subword neighbours out.
    {
      using lm = await KnnLm.open({ datastore: config.out, k: 4 });
      assert.equal(lm.tokenizer.identity.sha256, tok.identity.sha256);
      const next = await lm.next("The Fulton County Grand");
      assert.equal(next.neighbours.length, 4);
      const context = lm.tokenizer.decode(
        lm.corpusTokens(next.neighbours[0].row - 5, next.neighbours[0].row + 1),
      );
      assert.ok(
        text.includes(context),
        `decoded context ${JSON.stringify(context)} is corpus text`,
      );
    }

    // Any other tokenizer is refused: full GPT-2 (same merges, more of them), and bytes.
    const full = await writeGpt2TokenizerJson(join(dir, "gpt2_full"));
    await assert.rejects(
      KnnLm.open({ datastore: config.out, tokenizer: full }),
      (e) => KnnError.is(e, "E_MISMATCH"),
    );
    const cli = new URL("../cli.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, "eval", "--datastore", config.out, "--tokenizer", full, "--k", "4"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 1);
    assert.match(new TextDecoder().decode(out.stderr), /not the tokenizer .* was built with/);

    // A tokenizer whose ids the model cannot embed is refused at build time.
    await assert.rejects(
      buildIndex({ ...config, tokenizer: full, out: join(dir, "ds_full") }),
      (e) => KnnError.is(e, "E_MISMATCH"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a byte-level datastore refuses a subword tokenizer at eval", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_hf_bytes_" });
  try {
    const corpus = join(dir, "c.txt");
    await Deno.writeTextFile(corpus, (await loadBrownText("train")).slice(0, 1500));
    const { config } = loadConfig({
      flags: {
        model: new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname,
        corpus,
        out: join(dir, "ds"),
        "seq-len": "32",
        stride: "16",
        threads: "1",
        factory: "Flat",
      },
    });
    const m = await buildIndex(config);
    assert.equal(m.tokenizer?.kind, "bytes");
    const tokPath = await writeGpt2TokenizerJson(join(dir, "gpt2"));
    await assert.rejects(
      KnnLm.open({ datastore: config.out, tokenizer: tokPath }),
      (e) => KnnError.is(e, "E_MISMATCH"),
    );
    using lm = await KnnLm.open({ datastore: config.out, k: 2 });
    assert.equal(lm.tokenizer.identity.kind, "bytes");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a relative --tokenizer path is resolved against the working directory", () => {
  const { config } = loadConfig({ flags: { tokenizer: "models/gpt2" } });
  assert.equal(config.tokenizer, join(Deno.cwd(), "models/gpt2"));
  assert.equal(loadConfig({ flags: { tokenizer: "null" } }).config.tokenizer, null);
});
