/**
 * The shipped default model (models/byte_gpt.onnx) run by ONNX Runtime must reproduce the
 * PyTorch outputs saved by python/export_onnx.py --golden (tests/fixtures/model_golden_*.npy).
 *
 * The fixtures are read with a tiny local .npy parse (little-endian `<f4` / `<i4`, C order)
 * rather than lib/storage/npy.ts, so that this check does not lean on the toolkit's own code.
 */
import assert from "node:assert/strict";
import { ort } from "../lib/model/_ort.ts";
import { encodeBytes } from "../lib/model/tokenizer.ts";
import { maxAbsDiff } from "./_close.ts";

const root = new URL("../", import.meta.url);
const MODEL = new URL("models/byte_gpt.onnx", root);
const FIXTURES = new URL("tests/fixtures/", root);
// Must match GOLDEN_TEXT in python/export_onnx.py (64 ASCII bytes).
const GOLDEN_TEXT = "The jury said it found the court had been conducted fairly, too.";
const TOLERANCE = 1e-4;

interface Npy {
  descr: string;
  shape: number[];
  data: ArrayBuffer;
}

async function readNpy(name: string): Promise<Npy> {
  const bytes = await Deno.readFile(new URL(name, FIXTURES));
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const [len, start] = major === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = new TextDecoder().decode(bytes.subarray(start, start + len));
  const descr = /'descr':\s*'([^']+)'/.exec(header)![1];
  assert.match(header, /'fortran_order':\s*False/);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)![1].split(",").map((s) => s.trim())
    .filter((s) => s !== "").map(Number);
  return { descr, shape, data: bytes.slice(start + len).buffer };
}

function tokensTensor(rows: Int32Array[]): ort.Tensor {
  const n = rows[0].length;
  const data = new BigInt64Array(rows.length * n);
  rows.forEach((r, i) => r.forEach((t, j) => data[i * n + j] = BigInt(t)));
  return new ort.Tensor("int64", data, [rows.length, n]);
}

Deno.test("the shipped ONNX model matches PyTorch's golden logits and ff_input", async () => {
  const tokens = await readNpy("model_golden_tokens.npy");
  const logits = await readNpy("model_golden_logits.npy");
  const ffInput = await readNpy("model_golden_ff_input.npy");
  assert.equal(tokens.descr, "<i4");
  assert.equal(logits.descr, "<f4");
  assert.equal(ffInput.descr, "<f4");
  const ids = new Int32Array(tokens.data);
  assert.deepEqual(Array.from(ids), Array.from(encodeBytes(GOLDEN_TEXT)));
  assert.deepEqual(logits.shape, [1, 64, 256]);
  const d = ffInput.shape[2];
  assert.deepEqual(ffInput.shape, [1, 64, d]);
  assert.equal(d % 64, 0, "d_model divisible by 64 (64-byte PQ codes)");

  const session = await ort.InferenceSession.create(MODEL.pathname, { intraOpNumThreads: 2 });
  try {
    assert.deepEqual(session.inputNames, ["tokens"]);
    assert.deepEqual(session.outputNames, ["logits", "ff_input"]);
    const out = await session.run({ tokens: tokensTensor([ids]) });
    assert.deepEqual(out.logits.dims, [1, 64, 256]);
    assert.deepEqual(out.ff_input.dims, [1, 64, d]);
    assert.equal(out.logits.type, "float32");
    const dl = maxAbsDiff(out.logits.data as Float32Array, new Float32Array(logits.data));
    const df = maxAbsDiff(out.ff_input.data as Float32Array, new Float32Array(ffInput.data));
    assert.ok(dl <= TOLERANCE, `logits differ by ${dl}`);
    assert.ok(df <= TOLERANCE, `ff_input differs by ${df}`);
  } finally {
    await session.release();
  }
});

Deno.test("batch and sequence length are dynamic and the model is causal", async () => {
  const ids = new Int32Array((await readNpy("model_golden_tokens.npy")).data);
  const golden = new Float32Array((await readNpy("model_golden_logits.npy")).data);
  const session = await ort.InferenceSession.create(MODEL.pathname, { intraOpNumThreads: 2 });
  try {
    // Two rows of the first 32 tokens: each row must equal the golden first 32 positions,
    // since a causal model's output at position i depends only on tokens 0..i.
    const prefix = ids.subarray(0, 32);
    const out = await session.run({ tokens: tokensTensor([prefix, prefix]) });
    assert.deepEqual(out.logits.dims, [2, 32, 256]);
    const got = out.logits.data as Float32Array;
    const want = golden.subarray(0, 32 * 256);
    assert.ok(maxAbsDiff(got.subarray(0, 32 * 256), want) <= TOLERANCE);
    assert.ok(maxAbsDiff(got.subarray(32 * 256), want) <= TOLERANCE);
  } finally {
    await session.release();
  }
});

Deno.test("the model card lists the sha256 of every shipped model file", async () => {
  const card = await Deno.readTextFile(new URL("models/README.md", root));
  for (const name of ["byte_gpt.onnx", "byte_gpt.pt", "config.json"]) {
    const bytes = await Deno.readFile(new URL(`models/${name}`, root));
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    assert.ok(card.includes(hex), `models/README.md lacks sha256 ${hex} of ${name}`);
    assert.ok(bytes.length <= 16 * 1024 * 1024, `${name} is over 16 MB`);
  }
});
