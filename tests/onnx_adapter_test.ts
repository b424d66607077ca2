import assert from "node:assert/strict";
import { join } from "node:path";
import { ort } from "../lib/model/_ort.ts";
import { concat, encodeLen, encodeString, encodeVarint, fields } from "../lib/model/_wire.ts";
import { exposeTensors } from "../lib/model/expose.ts";
import { formatModelInspection, inspectModel } from "../lib/model/inspect.ts";
import { parseOnnxModel, rewriteGraphOutputs } from "../lib/model/model_proto.ts";
import { OnnxLm } from "../lib/model/runner.ts";
import { KnnError } from "../lib/core/errors.ts";
import { tempDir } from "./_tmp.ts";
import { maxAbsDiff } from "./_close.ts";

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const TINY = fixture("tiny_lm.onnx");
const NOKEY = fixture("tiny_lm_nokey.onnx");
const HF = fixture("tiny_lm_hf.onnx");
const FP16 = fixture("fp16_probe.onnx");
// The last block's pre-FFN LayerNorm output in tiny_lm_nokey.onnx (named by the exporter).
const NOKEY_FF_INPUT = "/blocks.1/ln2/LayerNormalization_output_0";

// PyTorch reference outputs for these bytes, written by make_tiny_models.py (raw float32 LE).
const TOKENS = Int32Array.from(new TextEncoder().encode("the quick brown fox"));
const goldenF32 = (name: string) => {
  const b = Deno.readFileSync(fixture(name));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};
const golden = {
  tinyFfInput: goldenF32("tiny_lm.ff_input.f32"), // [19, 64]
  tinyLogitsLast: goldenF32("tiny_lm.logits_last.f32"), // [256]
  hfLogitsLast: goldenF32("tiny_lm_hf.logits_last.f32"), // [256]
};

async function sha256(path: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("inspectModel lists inputs, outputs and ranks ff_input first among key candidates", async () => {
  const info = await inspectModel(TINY);
  assert.equal(info.irVersion, 8);
  assert.deepEqual(info.opsets, ["ai.onnx 17"]);
  assert.deepEqual(info.inputs, [
    { name: "tokens", elemType: "int64", shape: ["batch", "seq"], role: "tokens" },
  ]);
  assert.deepEqual(info.outputs, [
    { name: "logits", elemType: "float32", shape: ["batch", "seq", 256] },
    { name: "ff_input", elemType: "float32", shape: ["batch", "seq", 64] },
  ]);
  assert.deepEqual(
    info.keyCandidates.map((c) => [c.tensor, c.producerOp, c.consumerOps, c.isGraphOutput, c.role]),
    [
      ["ff_input", "LayerNormalization", ["MatMul"], true, "last block: FFN input (recommended)"],
      [
        "/ln_f/LayerNormalization_output_0",
        "LayerNormalization",
        ["MatMul"],
        false,
        "final norm (LM head input)",
      ],
      [
        "/blocks.1/ln1/LayerNormalization_output_0",
        "LayerNormalization",
        ["MatMul"],
        false,
        "last block: attention input",
      ],
      [
        "/blocks.0/ln2/LayerNormalization_output_0",
        "LayerNormalization",
        ["MatMul"],
        false,
        "block -2: FFN input",
      ],
    ],
  );
});

Deno.test("inspectModel finds the hidden FFN input of a model exported without ff_input", async () => {
  const info = await inspectModel(NOKEY);
  assert.deepEqual(info.outputs.map((o) => o.name), ["logits"]);
  const [best] = info.keyCandidates;
  assert.equal(best.tensor, NOKEY_FF_INPUT);
  assert.equal(best.isGraphOutput, false);
  assert.equal(best.role, "last block: FFN input (recommended)");
});

Deno.test("inspectModel recognises decomposed LayerNorm and Hugging Face-style inputs", async () => {
  const info = await inspectModel(HF);
  assert.deepEqual(info.inputs.map((i) => [i.name, i.elemType, i.role]), [
    ["input_ids", "int64", "tokens"],
    ["attention_mask", "int64", "attention_mask"],
    ["position_ids", "int64", "position_ids"],
  ]);
  // One block: attention norm, FFN norm, final norm, each ending in the bias Add.
  assert.deepEqual(info.keyCandidates.map((c) => [c.tensor, c.producerOp, c.role]), [
    ["/blocks.0/ln2/Add_1_output_0", "Add", "last block: FFN input (recommended)"],
    ["/ln_f/Add_1_output_0", "Add", "final norm (LM head input)"],
    ["/blocks.0/ln1/Add_1_output_0", "Add", "last block: attention input"],
  ]);
});

Deno.test("formatModelInspection prints inputs, outputs and candidates as aligned tables", async () => {
  const text = formatModelInspection(await inspectModel(HF));
  const lines = text.split("\n");
  assert.match(lines[0], /tiny_lm_hf\.onnx: ONNX IR 7, ai\.onnx 14, \d+ nodes/);
  assert.ok(lines.some((l) => /^\s+attention_mask\s+int64\s+\[batch, seq\]\s+all ones$/.test(l)));
  assert.ok(lines.some((l) => /^\s+logits\s+float32\s+\[batch, seq, 256\]$/.test(l)));
  assert.ok(
    lines.some((l) =>
      /^\s+\/blocks\.0\/ln2\/Add_1_output_0\s+last block: FFN input \(recommended\)\s+Add\s+MatMul/
        .test(l)
    ),
  );
});

Deno.test("a missing model file is an E_NOT_FOUND error naming the path", async () => {
  using tmp = tempDir("knnlm-onnx-cache-");
  const path = join(tmp.path, "absent.onnx");
  const notFound = (e: unknown) =>
    KnnError.is(e, "E_NOT_FOUND") && e.path === path &&
    e.message === `${path}: model file not found`;
  await assert.rejects(() => inspectModel(path), notFound);
  await assert.rejects(() => OnnxLm.open(path), notFound);
});

Deno.test("a file that is not ONNX is rejected naming the path", async () => {
  using tmp = tempDir("knnlm-onnx-cache-");
  const path = join(tmp.path, "notes.onnx");
  Deno.writeTextFileSync(path, "these are not protobuf bytes\n");
  await assert.rejects(() => inspectModel(path), (e: Error) => {
    assert.match(e.message, new RegExp(`^${path}: not an ONNX model: `));
    return true;
  });
});

Deno.test("ff_input from tiny_lm.onnx matches PyTorch's for the golden input", async () => {
  using lm = await OnnxLm.open(TINY, { threads: 1 });
  assert.equal(lm.vocabSize, 256);
  assert.equal(lm.dModel, 64);
  assert.equal(lm.sessionPath, TINY); // already an output: no edited copy
  const { logits, keys } = await lm.run(TOKENS, 1, TOKENS.length);
  assert.equal(golden.tinyFfInput.length, TOKENS.length * 64);
  assert.ok(maxAbsDiff(keys, golden.tinyFfInput) < 1e-5);
  const last = logits.subarray((TOKENS.length - 1) * 256);
  assert.ok(maxAbsDiff(last, golden.tinyLogitsLast) < 1e-4);
});

Deno.test("a model exported without ff_input yields the same keys once the intermediate is exposed", async () => {
  using tmp = tempDir("knnlm-onnx-cache-");
  const cacheDir = tmp.path;
  using a = await OnnxLm.open(TINY, { threads: 1, keyTensor: "ff_input" });
  using b = await OnnxLm.open(NOKEY, { threads: 1, keyTensor: NOKEY_FF_INPUT, cacheDir });
  assert.notEqual(b.sessionPath, NOKEY);
  assert.ok(b.sessionPath.startsWith(cacheDir));
  assert.equal(b.dModel, 64);
  // Two windows of the golden text, batch 2.
  const seq = 16;
  const tokens = new Int32Array(2 * seq);
  tokens.set(TOKENS.subarray(0, seq), 0);
  tokens.set(TOKENS.subarray(TOKENS.length - seq), seq);
  const ra = await a.run(tokens, 2, seq);
  const rb = await b.run(tokens, 2, seq);
  assert.equal(ra.keys.length, 2 * seq * 64);
  assert.equal(rb.keys.length, ra.keys.length);
  // Same weights and ops, but two graphs: onnxruntime may fuse or order the float32 work
  // differently when an intermediate is also an output, so the results are equal up to
  // rounding, not bit for bit. Keys are LayerNorm outputs of order 1 and logits of order 10;
  // the tolerances are the golden tests' (1e-5, 1e-4), far above float32 rounding in this
  // 2-block, d = 64 network (0 on x86-64 today) and far below a wrong tensor's difference
  // (block 1's attention input differs from its FFN input by 1.9).
  assert.ok(maxAbsDiff(rb.keys, ra.keys) <= 1e-5, `keys differ by ${maxAbsDiff(rb.keys, ra.keys)}`);
  assert.ok(maxAbsDiff(rb.logits, ra.logits) <= 1e-4);
});

Deno.test("exposing a tensor leaves the user's model file byte-identical and reuses the cache", async () => {
  using tmp = tempDir("knnlm-onnx-cache-");
  const cacheDir = tmp.path;
  const before = await sha256(NOKEY);
  const first = await exposeTensors(NOKEY, [NOKEY_FF_INPUT], { cacheDir });
  assert.equal(first.created, true);
  assert.deepEqual(first.added, [NOKEY_FF_INPUT]);
  const second = await exposeTensors(NOKEY, [NOKEY_FF_INPUT], { cacheDir });
  assert.equal(second.created, false);
  assert.equal(second.path, first.path);
  assert.equal(await sha256(NOKEY), before);
  assert.deepEqual([...Deno.readDirSync(cacheDir)].map((e) => e.name), [
    first.path.slice(cacheDir.length + 1),
  ]);
  // The cached model declares the new output with the type onnxruntime inferred.
  const cached = parseOnnxModel(await Deno.readFile(first.path));
  assert.deepEqual(cached.outputs.map((o) => [o.name, o.type]), [
    ["logits", { elemType: 1, elemTypeName: "float32", shape: ["batch", "seq", 256] }],
    [NOKEY_FF_INPUT, { elemType: 1, elemTypeName: "float32", shape: [null, null, 64] }],
  ]);
  // Existing outputs need no copy.
  const none = await exposeTensors(TINY, ["ff_input", "logits"], { cacheDir });
  assert.deepEqual(none, { path: TINY, added: [], created: false });
});

Deno.test("the graph edit only appends outputs: dropping them restores the original bytes", async () => {
  const original = await Deno.readFile(NOKEY);
  const edited = rewriteGraphOutputs(original, { add: [{ name: NOKEY_FF_INPUT }] });
  assert.ok(edited.length > original.length);
  const restored = rewriteGraphOutputs(edited, { keep: (n) => n !== NOKEY_FF_INPUT });
  assert.deepEqual(restored, original);
});

Deno.test("fields the reader does not know survive the edit, at model and graph level", () => {
  const original = Deno.readFileSync(NOKEY);
  // Add an unknown field 99 inside the graph and an unknown field 1000 at the top level.
  const graph = [...fields(original)].find((f) => f.field === 7)!;
  const graphPayload = concat([
    original.subarray(graph.valueStart, graph.end),
    encodeString(99, "graph-extension"),
  ]);
  const withUnknown = concat([
    original.subarray(0, graph.start),
    encodeLen(7, graphPayload),
    original.subarray(graph.end),
    encodeVarint(1000 * 8 + 2),
    encodeVarint(5),
    new TextEncoder().encode("hello"),
  ]);
  const edited = rewriteGraphOutputs(withUnknown, { add: [{ name: NOKEY_FF_INPUT }] });
  const top = [...fields(edited)];
  assert.equal(top.filter((f) => f.field === 1000).length, 1);
  const g = top.find((f) => f.field === 7)!;
  const inGraph = [...fields(edited, g.valueStart, g.end)];
  assert.equal(inGraph.filter((f) => f.field === 99).length, 1);
  assert.deepEqual(
    parseOnnxModel(edited).outputs.map((o) => o.name),
    ["logits", NOKEY_FF_INPUT],
  );
});

Deno.test("exposing a tensor that does not exist lists close names", async () => {
  using tmp = tempDir("knnlm-onnx-cache-");
  await assert.rejects(
    () => exposeTensors(NOKEY, ["/blocks.1/ln2/LayerNorm_output_0"], { cacheDir: tmp.path }),
    (e: Error) => {
      assert.match(
        e.message,
        new RegExp(`^${NOKEY}: tensor "/blocks\\.1/ln2/LayerNorm_output_0": no such tensor`),
      );
      assert.ok(e.message.includes(`closest names: "${NOKEY_FF_INPUT}"`));
      assert.ok(e.message.includes("knn model inspect"));
      return true;
    },
  );
  await assert.rejects(
    () => OnnxLm.open(NOKEY, { keyTensor: "tokens", cacheDir: tmp.path }),
    /tensor "tokens": is a graph input, not a computed tensor/,
  );
});

Deno.test("a model with input_ids, attention_mask and position_ids runs and matches PyTorch", async () => {
  using tmp = tempDir("knnlm-onnx-cache-");
  using lm = await OnnxLm.open(HF, {
    threads: 1,
    keyTensor: "/blocks.0/ln2/Add_1_output_0",
    cacheDir: tmp.path,
  });
  assert.deepEqual(lm.inputs.map((i) => i.role), ["tokens", "attention_mask", "position_ids"]);
  assert.equal(lm.vocabSize, 256);
  assert.equal(lm.dModel, 32);
  const { logits, keys } = await lm.run(TOKENS, 1, TOKENS.length);
  assert.equal(keys.length, TOKENS.length * 32);
  const last = logits.subarray((TOKENS.length - 1) * 256);
  assert.ok(maxAbsDiff(last, golden.hfLogitsLast) < 1e-4);
});

Deno.test("run with logits: false fetches only the keys, unchanged", async () => {
  using lm = await OnnxLm.open(TINY, { threads: 1 });
  const both = await lm.run(TOKENS, 1, TOKENS.length);
  const keysOnly = await lm.run(TOKENS, 1, TOKENS.length, { logits: false });
  assert.equal(keysOnly.logits, null);
  assert.deepEqual(keysOnly.keys, both.keys);
});

Deno.test("run rejects wrong sizes, out-of-vocabulary ids, and use after close", async () => {
  const lm = await OnnxLm.open(TINY, { threads: 1 });
  await assert.rejects(() => lm.run(new Int32Array(5), 2, 3), /expected 2×3 = 6 tokens, got 5/);
  await assert.rejects(
    () => lm.run(Int32Array.from([1, 256]), 1, 2),
    /token id 256 at index 1 is outside the model's vocabulary 0\.\.255/,
  );
  lm.close();
  lm.close();
  await assert.rejects(() => lm.run(new Int32Array(2), 1, 2), /OnnxLm is closed/);
});

Deno.test("a window longer than the model's context fails naming the shape, with a hint", async () => {
  using lm = await OnnxLm.open(TINY, { threads: 1 });
  await assert.rejects(() => lm.run(new Int32Array(40), 1, 40), (e: Error) => {
    assert.ok(e.message.startsWith(`${TINY}: inference failed on a [1, 40] batch: `));
    assert.ok(e.message.endsWith("(is seq = 40 longer than the model's context?)"));
    return true;
  });
  // The session stays usable.
  assert.equal((await lm.run(new Int32Array(32), 1, 32)).keys.length, 32 * 64);
});

Deno.test("open names unsupported inputs and a missing logits output", async () => {
  await assert.rejects(
    () => OnnxLm.open(FP16),
    (e: Error) => {
      assert.match(
        e.message,
        new RegExp(`^${FP16}: input "x" \\(float16\\) is not one the runner can feed`),
      );
      assert.match(e.message, /Supported inputs: tokens or input_ids/);
      return true;
    },
  );
  await assert.rejects(
    () => OnnxLm.open(TINY, { logitsOutput: "logit" }),
    new Error(
      `${TINY}: no graph output "logit" for the logits; outputs are "logits", "ff_input" ` +
        `(did you mean "logits"?)`,
    ),
  );
});

Deno.test("float16 tensors cross the onnxruntime binding in both directions under Deno", async () => {
  const session = await ort.InferenceSession.create(FP16);
  try {
    // 1.0, -2.0, 0.333 (nearest half) as IEEE half bits.
    const x = Uint16Array.from([0x3c00, 0xc000, 0x3555]);
    const out = await session.run({ x: new ort.Tensor("float16", x, [3]) });
    assert.deepEqual(out.y.data, Float32Array.from([1, -2, 0.333251953125]));
    assert.ok(out.z.data instanceof Uint16Array);
    assert.deepEqual(out.z.data, x);
    // The rest of the program keeps Deno's Float16Array.
    assert.equal(typeof (globalThis as { Float16Array?: unknown }).Float16Array, "function");
  } finally {
    await session.release();
  }
});
