import assert from "node:assert/strict";
import { join } from "node:path";
import {
  buildIndex,
  Datastore,
  evaluate,
  KnnError,
  loadConfig,
  MappedArray,
  OnnxLm,
} from "../mod.ts";
import { inspectModel, planWindows } from "../lib/model/mod.ts";
import { gather, keyModelOf, kvSegmentWindows } from "../lib/datastore/gather.ts";

// tests/fixtures/make_hf_models.py: GPT-2 layout (learned absolute positions, a table of 64),
// exported as a decoder with past, and an 80-token corpus.
const HF = new URL("./fixtures/hf/", import.meta.url).pathname;
const MODEL = join(HF, "gpt2_with_past.onnx");
const CORPUS = join(HF, "gpt2_with_past.tokens.npy");
const L = 32, S = 16, POSITIONS = 64;
// Same arithmetic in ONNX Runtime, only chunked differently (a [1, 16] call after a cache
// instead of a [1, 32] call): unit-scale norm outputs agree to ~1e-6.
const SAME_CONTEXT_TOLERANCE = 1e-5;

function rows(path: string): { data: Float32Array | Int32Array; shape: number[] } {
  using a = MappedArray.open(path, { mode: "r" });
  const v = a.view();
  return {
    data: v instanceof Int32Array ? v.slice() : Float32Array.from(v as Float32Array),
    shape: [...a.shape],
  };
}

function corpusTokens(): Int32Array {
  return rows(CORPUS).data as Int32Array;
}

function maxDiff(
  a: Float32Array | Int32Array,
  b: Float32Array | Int32Array,
  from: number,
  to: number,
  d: number,
) {
  let m = 0;
  for (let i = from * d; i < to * d; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

async function build(dir: string, name: string, extra: Record<string, string> = {}) {
  const key = (await inspectModel(MODEL)).keyCandidates[0].tensor;
  const { config } = loadConfig({
    flags: {
      model: MODEL,
      corpus: CORPUS,
      "key-tensor": key,
      out: join(dir, name),
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

Deno.test("a segment holds the windows whose positions fit in kvCache", () => {
  assert.equal(kvSegmentWindows(32, 16, 64), 3); // 0..32, 16..48, 32..64
  assert.equal(kvSegmentWindows(32, 16, 63), 2);
  assert.equal(kvSegmentWindows(32, 16, 32), 1); // every window restarts: the windowed plan
  assert.equal(kvSegmentWindows(1024, 512, 1024), 1);
  assert.equal(kvSegmentWindows(256, 128, 1 << 20), 8191);
});

Deno.test("a KV-cached gather stores the windowed keys at every position a segment's first window scores, and the datastore builds and evaluates", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_kv_" });
  try {
    const windowed = await build(dir, "windowed");
    const cached = await build(dir, "cached", { "kv-cache": String(POSITIONS) });
    assert.equal(cached.manifest.gather.kvCache, POSITIONS);
    assert.equal(windowed.manifest.gather.kvCache, undefined);
    const a = rows(join(windowed.config.out, "keys.npy"));
    const b = rows(join(cached.config.out, "keys.npy"));
    assert.deepEqual(b.shape, a.shape);
    const [n, d] = a.shape;
    assert.ok(b.data.every(Number.isFinite));
    assert.deepEqual(
      Array.from(rows(join(cached.config.out, "vals.npy")).data),
      Array.from(rows(join(windowed.config.out, "vals.npy")).data),
    );

    // 79 positions: windows end at 32, 48, 64, 79 (the last pulled back to start at 47); with
    // 64 positions a segment is 3 windows, so windows 0 and 3 start segments (empty cache,
    // positions from 0) and compute exactly what the windowed run does.
    const plan = planWindows(n + 1, L, S);
    const W = kvSegmentWindows(L, S, POSITIONS);
    const same: [number, number][] = [];
    const other: [number, number][] = [];
    for (let k = 0; k < plan.count; k++) {
      const w = plan.at(k);
      (k % W === 0 ? same : other).push([w.scoreFrom, w.end]);
    }
    assert.deepEqual(same, [[0, 32], [64, 79]]);
    for (const [from, to] of same) {
      const e = maxDiff(a.data, b.data, from, to, d);
      assert.ok(e < SAME_CONTEXT_TOLERANCE, `rows ${from}..${to}: max |cached - windowed| = ${e}`);
    }
    // Windows 1 and 2 attend over the same tokens, but the cached entries were computed in
    // earlier windows (deeper context) at positions counted from the segment start: the keys
    // differ, which shows the cache was carried rather than each window run whole.
    for (const [from, to] of other) {
      assert.ok(maxDiff(a.data, b.data, from, to, d) > 1e-3, `rows ${from}..${to} differ`);
    }

    using ds = await Datastore.open(cached.config.out);
    using model = await OnnxLm.open(MODEL, { keyTensor: cached.config.keyTensor });
    const r = await evaluate({
      datastore: ds,
      model,
      tokens: corpusTokens(),
      k: 4,
      lambdas: [0.25],
      batchSize: 2,
    });
    assert.ok(Number.isFinite(r.lmPerplexity) && r.lmPerplexity > 1);
    const knn = r.modes.exact!.perplexities[0];
    // Evaluating on the datastore's own corpus: the kNN part finds the stored positions.
    assert.ok(knn < r.lmPerplexity, `kNN-LM ${knn} vs LM ${r.lmPerplexity}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a windowed datastore is not continued with the KV cache, nor the other way round", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_kv_fp_" });
  try {
    await build(dir, "ds");
    await assert.rejects(
      build(dir, "ds", { "kv-cache": String(POSITIONS) }),
      (e) => KnnError.is(e, "E_MISMATCH"),
    );
    await build(dir, "kv", { "kv-cache": String(POSITIONS) });
    await assert.rejects(build(dir, "kv"), (e) => KnnError.is(e, "E_MISMATCH"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kvCache is refused for a model without past inputs, a merged decoder, fewer positions than seqLen, or a sharded gather", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_kv_refuse_" });
  try {
    const tokens = corpusTokens();
    for (const name of ["gpt2", "gpt2_merged"]) {
      const path = join(HF, `${name}.onnx`);
      const key = (await inspectModel(path)).keyCandidates[0].tensor;
      using lm = await OnnxLm.open(path, { keyTensor: key, threads: 1 });
      assert.equal(lm.acceptsPast, false);
      assert.throws(() => lm.keyStream(), /no KV cache to carry/);
      await assert.rejects(
        gather({
          model: keyModelOf(lm),
          tokens,
          dir,
          identity: { modelSha256: "x", keyTensor: key, corpusIdentity: "y" },
          seqLen: L,
          stride: S,
          kvCache: POSITIONS,
        }),
        (e) => KnnError.is(e, "E_CONFIG"),
      );
    }
    const key = (await inspectModel(MODEL)).keyCandidates[0].tensor;
    using lm = await OnnxLm.open(MODEL, { keyTensor: key, threads: 1 });
    assert.equal(lm.acceptsPast, true);
    await assert.rejects(
      gather({
        model: keyModelOf(lm),
        tokens,
        dir,
        identity: { modelSha256: "x", keyTensor: key, corpusIdentity: "y" },
        seqLen: L,
        stride: S,
        kvCache: L - 1,
      }),
      (e) => KnnError.is(e, "E_CONFIG"),
    );
    const { config } = loadConfig({
      flags: { model: MODEL, corpus: CORPUS, "key-tensor": key, out: join(dir, "sharded") },
    });
    await assert.rejects(
      buildIndex({ ...config, seqLen: L, stride: S, kvCache: POSITIONS }, { shards: 2 }),
      (e) => KnnError.is(e, "E_CONFIG") && e.key === "kvCache",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a KV-cached gather interrupted after its first segment resumes to the same bytes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_kv_resume_" });
  try {
    const tokens = corpusTokens();
    const key = (await inspectModel(MODEL)).keyCandidates[0].tensor;
    using lm = await OnnxLm.open(MODEL, { keyTensor: key, threads: 1 });
    const opts = {
      model: keyModelOf(lm),
      tokens,
      identity: { modelSha256: "x", keyTensor: key, corpusIdentity: "y" },
      seqLen: L,
      stride: S,
      kvCache: POSITIONS,
    };
    await Deno.mkdir(join(dir, "whole"));
    await gather({ ...opts, dir: join(dir, "whole") });
    await Deno.mkdir(join(dir, "resumed"));
    const stop = new AbortController();
    await assert.rejects(
      gather({
        ...opts,
        dir: join(dir, "resumed"),
        checkpointRows: 1,
        signal: stop.signal,
        onProgress: (p) => {
          if (p.done > 0) stop.abort();
        },
      }),
      (e) => KnnError.is(e, "E_INTERRUPTED"),
    );
    const r = await gather({ ...opts, dir: join(dir, "resumed") });
    assert.equal(r.resumedFrom, 64); // the first segment: windows 0..2, rows 0..64
    for (const f of ["keys.npy", "vals.npy"]) {
      assert.deepEqual(
        await Deno.readFile(join(dir, "resumed", f)),
        await Deno.readFile(join(dir, "whole", f)),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
