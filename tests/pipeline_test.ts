import assert from "node:assert/strict";
import { join } from "node:path";
import {
  buildIndex,
  Datastore,
  FaissIndex,
  KnnError,
  type KnnlmConfig,
  loadConfig,
  MappedArray,
  OnnxLm,
} from "../mod.ts";
import { f16ArrayToF32 } from "../lib/storage/mod.ts";
import { type DatastoreManifest, gather, keyModelOf, readManifest } from "../lib/datastore/mod.ts";
import { tempDir } from "./_tmp.ts";
import { maxAbsDiff } from "./_close.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);
const TINY = new URL("tiny_lm.onnx", FIXTURES).pathname;
const TINY_NOKEY = new URL("tiny_lm_nokey.onnx", FIXTURES).pathname;

// A corpus without repeated 16-byte contexts (so every stored key is distinct): printable
// bytes from a fixed linear congruential sequence.
function corpusText(n: number, seed = 7): string {
  let s = seed;
  let out = "";
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out += String.fromCharCode(32 + ((s >>> 16) % 95));
  }
  return out;
}

/** A corpus of `n` bytes in `dir` and a config that builds it into `dir/ds`. */
async function setup(dir: string, n = 1200, extra: Record<string, unknown> = {}) {
  const corpus = join(dir, "corpus.txt");
  await Deno.writeTextFile(corpus, corpusText(n));
  const flags = {
    model: TINY,
    corpus,
    out: join(dir, "ds"),
    "seq-len": "32",
    stride: "16",
    "batch-size": "4",
    threads: "1",
    "train-size": "100000",
    ...extra,
  };
  const { config } = loadConfig({ flags });
  return { config, corpus };
}

/**
 * Runs buildIndex in a child process with its own working directory and environment (global
 * to a process, so not to be changed in this one while other test modules run beside it).
 */
async function buildInChild(
  config: KnnlmConfig,
  opts: { cwd: string; env?: Record<string, string> },
): Promise<DatastoreManifest> {
  const child = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "--quiet",
      "--config",
      new URL("../deno.json", import.meta.url).pathname,
      new URL("build_index.ts", FIXTURES).pathname,
      JSON.stringify(config),
    ],
    cwd: opts.cwd,
    env: opts.env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(child.code, 0, new TextDecoder().decode(child.stderr));
  return JSON.parse(new TextDecoder().decode(child.stdout));
}

function bytes(path: string) {
  return Deno.readFileSync(path);
}

Deno.test("build-index writes keys equal to the model's key tensor and values equal to next tokens", async () => {
  using tmp = tempDir("knnlm_pipeline_");
  const dir = tmp.path;
  const { config } = await setup(dir, 600, { factory: "IVF4,Flat", nprobe: "4" });
  const manifest = await buildIndex(config);
  const tokens = new TextEncoder().encode(await Deno.readTextFile(config.corpus));
  const n = tokens.length - 1;
  assert.deepEqual(manifest.keys.shape, [n, 64]);
  using keys = MappedArray.open(join(config.out, "keys.npy"));
  using vals = MappedArray.open(join(config.out, "vals.npy"));
  const v = vals.view() as Int32Array;
  for (let i = 0; i < n; i++) assert.equal(v[i], tokens[i + 1], `vals[${i}]`);

  // Independently: position i comes from the first window (start 0, 16, 32, …; the last one
  // pulled back to end at n) whose end passes i.
  using lm = await OnnxLm.open(TINY, { keyTensor: "ff_input" });
  const L = 32, S = 16;
  for (const i of [0, 5, 31, 32, 47, 48, 300, n - 17, n - 1]) {
    let start = 0;
    while (Math.min(start + L, n) <= i) start += S;
    if (start + L > n) start = n - L;
    const window = Int32Array.from(tokens.subarray(start, start + L));
    const { keys: want } = await lm.run(window, 1, L, { logits: false });
    const row = keys.view(i, i + 1) as Float32Array;
    // The build ran 4 windows per call, this check runs 1: onnxruntime may block the float32
    // work differently for another batch size, so rows agree up to rounding, not bit for bit.
    // Keys are LayerNorm outputs of order 1; 1e-5 is the golden tests' tolerance, far above
    // float32 rounding here (0 today) and far below the distance to a neighbouring row (3 to 4).
    const diff = maxAbsDiff(row, want.subarray((i - start) * 64, (i - start + 1) * 64));
    assert.ok(diff <= 1e-5, `key row ${i} differs by ${diff}`);
  }
});

Deno.test("every stored key finds itself as nearest neighbour in the built index", async () => {
  using tmp = tempDir("knnlm_pipeline_");
  const dir = tmp.path;
  const { config } = await setup(dir, 1500, { factory: "IVF8,Flat", nprobe: "8" });
  await buildIndex(config);
  using keys = MappedArray.open(join(config.out, "keys.npy"));
  using index = FaissIndex.read(join(config.out, "faiss.index"));
  assert.equal(index.ntotal, keys.rows);
  for (const i of [0, 1, 100, 777, keys.rows - 1]) {
    const q = Float32Array.from(keys.view(i, i + 1) as Float32Array);
    const { labels, distances } = index.search(q, 1);
    assert.equal(labels[0], BigInt(i));
    assert.equal(distances[0], 0);
  }
});

Deno.test("the default IVFPQ index is clamped to a small datastore and still retrieves stored keys", async () => {
  using tmp = tempDir("knnlm_pipeline_");
  const dir = tmp.path;
  const { config } = await setup(dir, 10_500);
  const events: string[] = [];
  const m = await buildIndex(config, {
    onEvent: (e) => e.type === "warning" && events.push(e.message),
  });
  assert.ok(m.index, "index recorded");
  assert.equal(m.index.m, 64);
  assert.equal(m.index.nlist, Math.floor(10_499 / 39), "nlist clamped to 39 keys per centroid");
  assert.ok(events.some((w) => /nlist 2048 needs/.test(w)), events.join("\n"));
  using keys = MappedArray.open(join(config.out, "keys.npy"));
  using index = FaissIndex.read(join(config.out, "faiss.index"));
  index.nprobe = m.index.nlist;
  let found = 0;
  for (let i = 0; i < keys.rows; i += 97) {
    const q = Float32Array.from(keys.view(i, i + 1) as Float32Array);
    const { labels } = index.search(q, 5);
    if (labels.includes(BigInt(i))) found++;
  }
  const asked = Math.ceil(keys.rows / 97);
  assert.ok(found >= asked - 1, `found ${found} of ${asked} stored keys in their top 5`);
});

Deno.test("an interrupted gather resumes to files byte-identical to an uninterrupted one", async () => {
  using aTmp = tempDir("knnlm_pipeline_");
  const a = { dir: aTmp.path, ...(await setup(aTmp.path, 1500)) };
  using bTmp = tempDir("knnlm_pipeline_");
  const b = { dir: bTmp.path, ...(await setup(bTmp.path, 1500)) };
  await Deno.mkdir(a.config.out, { recursive: true });
  await Deno.mkdir(b.config.out, { recursive: true });
  const tokens = Int32Array.from(new TextEncoder().encode(await Deno.readTextFile(a.corpus)));
  using lm = await OnnxLm.open(TINY, { keyTensor: "ff_input" });
  const base = {
    model: keyModelOf(lm),
    tokens,
    identity: { modelSha256: "m", keyTensor: "ff_input", corpusIdentity: "c" },
    seqLen: 32,
    stride: 16,
    batchSize: 4,
    checkpointRows: 100,
  };
  await gather({ ...base, dir: a.config.out });

  const controller = new AbortController();
  await assert.rejects(
    gather({
      ...base,
      dir: b.config.out,
      signal: controller.signal,
      onProgress: (p) => p.done > 500 && controller.abort(),
    }),
    (e) => KnnError.is(e, "E_INTERRUPTED"),
  );
  const progress = JSON.parse(
    await Deno.readTextFile(join(b.config.out, "gather.progress.json")),
  );
  assert.ok(progress.rowsDone > 500 && progress.rowsDone < 1499, `rows ${progress.rowsDone}`);
  // A crash may leave garbage after the checkpoint: the resume must overwrite it.
  {
    using k = MappedArray.open(join(b.config.out, "keys.npy.tmp"), { mode: "r+" });
    (k.view(progress.rowsDone, k.rows) as Float32Array).fill(123);
  }
  const r = await gather({ ...base, dir: b.config.out });
  assert.equal(r.resumedFrom, progress.rowsDone);
  for (const f of ["keys.npy", "vals.npy"]) {
    assert.deepEqual(bytes(join(b.config.out, f)), bytes(join(a.config.out, f)), f);
  }
});

Deno.test("a model exported without ff_input gives the same datastore once the tensor is exposed", async () => {
  using aTmp = tempDir("knnlm_pipeline_");
  const a = { dir: aTmp.path, ...(await setup(aTmp.path, 400, { factory: "Flat" })) };
  const { config: nokey } = loadConfig({
    flags: {
      model: TINY_NOKEY,
      corpus: a.corpus,
      out: join(a.dir, "nokey"),
      "seq-len": "32",
      stride: "16",
      "batch-size": "4",
      threads: "1",
      factory: "Flat",
      "key-tensor": await intermediateKeyName(),
    },
  });
  await buildIndex(a.config);
  // The edited copy of the model goes to this test's own cache, not the user's.
  const cache = join(a.dir, "cache");
  await buildInChild(nokey, { cwd: a.dir, env: { KNNLM_CACHE_DIR: cache } });
  const edited = [...Deno.readDirSync(join(cache, "onnx"))].map((e) => e.name);
  assert.equal(edited.length, 1, edited.join());
  assert.match(edited[0], /^[0-9a-f]{64}\.onnx$/);
  using want = MappedArray.open(join(a.config.out, "keys.npy"));
  using got = MappedArray.open(join(nokey.out, "keys.npy"));
  assert.deepEqual(got.shape, want.shape);
  // Two graphs of the same network agree up to float32 rounding (see onnx_adapter_test.ts).
  const diff = maxAbsDiff(got.view() as Float32Array, want.view() as Float32Array);
  assert.ok(diff <= 1e-5, `keys differ by ${diff}`);
  assert.deepEqual(bytes(join(nokey.out, "vals.npy")), bytes(join(a.config.out, "vals.npy")));
});

async function intermediateKeyName(): Promise<string> {
  const { inspectModel } = await import("../lib/model/mod.ts");
  const info = await inspectModel(TINY_NOKEY);
  return info.keyCandidates[0].tensor;
}

Deno.test("a finished build is skipped on a second run and a different setting is refused", async () => {
  using tmp = tempDir("knnlm_pipeline_");
  const dir = tmp.path;
  const { config } = await setup(dir, 500, { factory: "Flat" });
  await buildIndex(config);
  const skipped: string[] = [];
  await buildIndex(config, { onEvent: (e) => e.type === "skip" && skipped.push(e.stage) });
  assert.deepEqual(skipped, ["gather", "train", "add"]);
  const other: KnnlmConfig = { ...config, stride: 8 };
  await assert.rejects(buildIndex(other), /different model or settings \(stride: 16 → 8\)/);
  const otherModel: KnnlmConfig = { ...config, model: TINY_NOKEY, keyTensor: "logits" };
  await assert.rejects(buildIndex(otherModel), /modelSha256: .* → .*; keyTensor/);
  const m = await readManifest(config.out);
  assert.equal(m?.gather.stride, 16, "the datastore is untouched");
});

Deno.test("bad inputs fail with errors that name the file or setting", async () => {
  using tmp = tempDir("knnlm_pipeline_");
  const dir = tmp.path;
  const { config } = await setup(dir, 300, { factory: "Flat" });
  const missing = join(dir, "missing.onnx");
  await assert.rejects(
    buildIndex({ ...config, model: missing, out: join(dir, "a") }),
    (e) => KnnError.is(e, "E_NOT_FOUND") && e.path === missing && e.message.startsWith(missing),
  );
  await assert.rejects(
    buildIndex({ ...config, keyTensor: "no_such_tensor", out: join(dir, "b") }),
    /no_such_tensor/,
  );
  const short = join(dir, "short.txt");
  await Deno.writeTextFile(short, "too short");
  await assert.rejects(
    buildIndex({ ...config, corpus: short, out: join(dir, "c") }),
    /short\.txt.* 9 tokens; one window needs 33/,
  );
  assert.throws(
    () => loadConfig({ flags: { "seq-len": "0" } }),
    /--seq-len: seqLen: expected an integer/,
  );
  await assert.rejects(
    buildIndex({
      ...config,
      index: { ...config.index, factory: null, m: 48 },
      out: join(dir, "d"),
    }),
    /index\.m: the PQ code size \(48 bytes\) must divide the key width d = 64/,
  );
});

Deno.test("float16 keys are stored as half bits of the model's keys and still index and search", async () => {
  using aTmp = tempDir("knnlm_pipeline_");
  const a = {
    dir: aTmp.path,
    ...(await setup(aTmp.path, 800, { factory: "IVF4,Flat", nprobe: "4" })),
  };
  using bTmp = tempDir("knnlm_pipeline_");
  const b = {
    dir: bTmp.path,
    ...(await setup(bTmp.path, 800, { factory: "IVF4,Flat", nprobe: "4", "key-dtype": "float16" })),
  };
  await buildIndex(a.config);
  const m = await buildIndex(b.config);
  assert.equal(m.keys.dtype, "<f2");
  using k32 = MappedArray.open(join(a.config.out, "keys.npy"), { dtypes: ["<f4"] });
  using k16 = MappedArray.open(join(b.config.out, "keys.npy"), { dtypes: ["<f2"] });
  // The expectation comes from the runtime's own Float16Array (IEEE round to nearest even),
  // not from the library's converter that the pipeline uses.
  assert.deepEqual(k16.view(), new Uint16Array(Float16Array.from(k32.view()).buffer));
  using index = FaissIndex.read(join(b.config.out, "faiss.index"));
  assert.equal(index.ntotal, k16.rows);
  const q = f16ArrayToF32(k16.view(300, 301));
  const { labels, distances } = index.search(q, 1);
  assert.equal(labels[0], 300n);
  assert.equal(distances[0], 0);
});

Deno.test("on-disk inverted lists live in faiss.ivfdata, survive a move and read in Python FAISS", async () => {
  using tmp = tempDir("knnlm_pipeline_");
  const dir = tmp.path;
  const { config } = await setup(dir, 3000, { factory: "IVF8,Flat", nprobe: "8" });
  const mem = loadConfig({
    flags: { ...configFlags(config), out: join(dir, "mem"), invlists: "memory" },
  }).config;
  // Built with a relative --out: the name FAISS records must still work from elsewhere.
  const m = await buildInChild({ ...config, out: "ds" }, { cwd: dir });
  assert.equal(m.index?.invlists, "disk");
  const ivfdata = await Deno.stat(join(config.out, "faiss.ivfdata"));
  const index = await Deno.stat(join(config.out, "faiss.index"));
  assert.ok(ivfdata.size >= 2999 * (64 * 4 + 8), `codes and ids on disk: ${ivfdata.size} B`);
  assert.ok(index.size < 100_000, `faiss.index holds no codes: ${index.size} B`);

  await buildIndex(mem);
  assert.ok((await Deno.stat(join(mem.out, "faiss.index"))).size > 2999 * 64 * 4);
  await assert.rejects(Deno.stat(join(mem.out, "faiss.ivfdata")), Deno.errors.NotFound);

  // In place, plain faiss.read_index finds faiss.ivfdata from any working directory.
  const inPlace = await new Deno.Command("/usr/bin/python3", {
    args: [
      "-c",
      "import faiss,sys; print(faiss.read_index(sys.argv[1]).ntotal)",
      join(config.out, "faiss.index"),
    ],
    cwd: "/",
    stdout: "piped",
    stderr: "null",
  }).output();
  assert.equal(new TextDecoder().decode(inPlace.stdout).trim(), "2999");

  const moved = join(dir, "moved");
  await Deno.rename(config.out, moved);
  using ds = await Datastore.open(moved);
  const q = Float32Array.from(ds.keys.view(1234, 1235) as Float32Array);
  assert.equal((await ds.index.searchAsync(q, 1)).labels[0], 1234n);
  const py = await new Deno.Command("/usr/bin/python3", {
    args: [
      "-c",
      "import faiss,sys; ix=faiss.read_index(sys.argv[1], faiss.IO_FLAG_ONDISK_SAME_DIR); " +
      "print(ix.ntotal)",
      join(moved, "faiss.index"),
    ],
    stdout: "piped",
    stderr: "null",
  }).output();
  // FAISS itself prints a note about the moved ivfdata on stdout first.
  assert.equal(new TextDecoder().decode(py.stdout).trim().split("\n").at(-1), "2999");
});

/** The flags that reproduce a test config (for a variant with one setting changed). */
function configFlags(c: KnnlmConfig): Record<string, string> {
  return {
    model: c.model,
    corpus: c.corpus,
    "seq-len": String(c.seqLen),
    stride: String(c.stride),
    "batch-size": String(c.batchSize),
    threads: String(c.threads),
    factory: c.index.factory ?? "",
    nprobe: String(c.index.nprobe),
  };
}
