import assert from "node:assert/strict";
import { type ErrorCode, KnnError } from "../lib/core/errors.ts";
import { FaissIndex } from "../lib/index/mod.ts";

// The KnnError code of what fn throws (or its promise rejects with).
async function codeOf(fn: () => unknown): Promise<ErrorCode> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof KnnError, `expected a KnnError, got ${e}`);
    return e.code;
  }
  assert.fail("expected an error");
}

// The thrown KnnError itself (sync).
function errorOf(fn: () => unknown): KnnError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KnnError, `expected a KnnError, got ${e}`);
    return e;
  }
  assert.fail("expected an error");
}

// Deterministic uniform [0, 1) floats: [n, d] row-major.
function randomRows(n: number, d: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n * d);
  for (let i = 0; i < out.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }
  return out;
}

// Exact k nearest rows of db for query row q, by squared L2 in float64.
function bruteForce(db: Float32Array, q: Float32Array, d: number, k: number) {
  const n = db.length / d;
  const dist: { i: number; dist: number }[] = [];
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += (db[i * d + j] - q[j]) ** 2;
    dist.push({ i, dist: s });
  }
  dist.sort((a, b) => a.dist - b.dist);
  return dist.slice(0, k);
}

// IEEE half bits of a value that float16 represents exactly (here: k / 256, |k| <= 512).
function halfBits(v: number): number {
  if (v === 0) return 0;
  const sign = v < 0 ? 0x8000 : 0;
  const a = Math.abs(v);
  const e = Math.floor(Math.log2(a));
  const mant = (a / 2 ** e - 1) * 1024;
  assert.ok(Number.isInteger(mant) && e >= -14 && e <= 15, `${v} is not exact in float16`);
  return sign | ((e + 15) << 10) | mant;
}

// Rows whose values are exact in float16, as float32 and as raw half bits.
function halfExactRows(n: number, d: number, seed: number) {
  const f32 = randomRows(n, d, seed).map((v) => Math.round((v * 4 - 2) * 256) / 256);
  const f16 = Uint16Array.from(f32, halfBits);
  return { f32, f16 };
}

Deno.test("a flat L2 index returns the brute-force nearest neighbours computed in TypeScript", () => {
  const d = 8, k = 5;
  const db = randomRows(300, d, 1);
  const queries = randomRows(7, d, 2);
  using index = FaissIndex.factory(d, "Flat");
  assert.equal(index.isTrained, true);
  index.add(db);
  assert.equal(index.ntotal, 300);
  const { distances, labels } = index.search(queries, k);
  assert.equal(labels.length, 7 * k);
  for (let qi = 0; qi < 7; qi++) {
    const expected = bruteForce(db, queries.subarray(qi * d, (qi + 1) * d), d, k);
    for (let r = 0; r < k; r++) {
      assert.equal(labels[qi * k + r], BigInt(expected[r].i), `query ${qi} rank ${r}`);
      assert.ok(Math.abs(distances[qi * k + r] - expected[r].dist) < 1e-5);
    }
  }
});

Deno.test("an inner-product flat index ranks by largest dot product", () => {
  const d = 4;
  using index = FaissIndex.factory(d, "Flat", "ip");
  assert.equal(index.metric, "ip");
  index.add(new Float32Array([1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0]));
  const { distances, labels } = index.search(new Float32Array([0, 1, 1, 0]), 3);
  assert.deepEqual([...labels], [2n, 1n, 0n]);
  assert.deepEqual([...distances], [3, 2, 0]);
});

Deno.test("IVFPQ with nprobe = nlist finds each stored vector as its own nearest neighbour", () => {
  // 10k rows: enough for 256 PQ centroids (FAISS warns below 39 points per centroid).
  const d = 8, nlist = 16;
  const db = randomRows(10_000, d, 3);
  using index = FaissIndex.ivfpq({ d, nlist, m: 4, nbits: 8 });
  assert.equal(index.type, "faiss::IndexIVFPQ");
  assert.equal(index.metric, "l2");
  assert.equal(index.isTrained, false);
  index.train(db);
  assert.equal(index.isTrained, true);
  index.add(db);
  assert.equal(index.nprobe, 1);
  index.nprobe = nlist;
  assert.equal(index.nprobe, nlist);
  const picks = Array.from({ length: 40 }, (_, i) => i * 250 + 7);
  const queries = new Float32Array(picks.length * d);
  picks.forEach((row, i) => queries.set(db.subarray(row * d, (row + 1) * d), i * d));
  const { distances, labels } = index.search(queries, 2);
  picks.forEach((row, i) => {
    assert.equal(labels[i * 2], BigInt(row), `stored row ${row} is its own nearest neighbour`);
    assert.ok(distances[i * 2] < distances[i * 2 + 1]);
  });
});

Deno.test("nprobe reaches the IVF index through IDMap and PreTransform wrappers", async () => {
  using index = FaissIndex.factory(8, "IDMap,PCA4,IVF4,Flat");
  assert.equal(index.nprobe, 1);
  index.nprobe = 3;
  assert.equal(index.nprobe, 3);
  using flat = FaissIndex.factory(8, "Flat");
  const e = errorOf(() => flat.nprobe);
  assert.equal(e.code, "E_NATIVE");
  assert.ok(e.message.includes("IndexFlat"), e.message);
  assert.equal(await codeOf(() => (index.nprobe = 0)), "E_CONFIG");
});

Deno.test("add numbers vectors sequentially and addWithIds keeps the given ids", () => {
  const d = 4;
  const a = randomRows(5, d, 4);
  const b = randomRows(3, d, 5);
  using seq = FaissIndex.factory(d, "Flat");
  seq.add(a);
  seq.add(b);
  assert.equal(seq.ntotal, 8);
  const hits = seq.search(b, 1).labels;
  assert.deepEqual([...hits], [5n, 6n, 7n]);

  using mapped = FaissIndex.factory(d, "IDMap,Flat");
  const ids = BigInt64Array.from([1000n, 2000n, 3000n, 9_007_199_254_740_993n, -5n]);
  mapped.addWithIds(a, ids);
  assert.deepEqual([...mapped.search(a, 1).labels], [...ids]);
  const e = errorOf(() => seq.addWithIds(a, ids));
  assert.equal(e.code, "E_NATIVE");
  assert.ok(e.message.includes("add_with_ids not implemented"), `FAISS's message: ${e.message}`);
});

Deno.test("a search for more neighbours than stored vectors pads labels with -1", () => {
  using index = FaissIndex.factory(2, "Flat");
  index.add(new Float32Array([0, 0, 1, 1]));
  const { labels } = index.search(new Float32Array([0, 0]), 4);
  assert.deepEqual([...labels], [0n, 1n, -1n, -1n]);
});

Deno.test("float16 input gives the same index and results as float32 of the same values", () => {
  const d = 8;
  const data = halfExactRows(2_000, d, 6);
  const queries = halfExactRows(20, d, 7);
  const build = (x: Float32Array | { dtype: "float16"; data: Uint16Array }) => {
    const index = FaissIndex.ivfpq({ d, nlist: 8, m: 4, nbits: 4 });
    index.train(x);
    index.add(x);
    index.nprobe = 8;
    return index;
  };
  using i32 = build(data.f32);
  using i16 = build({ dtype: "float16", data: data.f16 });
  const r32 = i32.search(queries.f32, 5);
  const r16 = i16.search({ dtype: "float16", data: queries.f16 }, 5);
  assert.deepEqual([...r16.labels], [...r32.labels]);
  assert.deepEqual([...r16.distances], [...r32.distances]);
});

Deno.test("float16 input longer than one 65536-row slice keeps ids and result rows aligned", () => {
  const d = 2, n = 70_000;
  const rows = halfExactRows(n, d, 8);
  const ids = BigInt64Array.from({ length: n }, (_, i) => BigInt(i * 3 + 1));
  using index = FaissIndex.factory(d, "IDMap,Flat");
  index.addWithIds({ dtype: "float16", data: rows.f16 }, ids);
  assert.equal(index.ntotal, n);
  // Queries from both slices: rows 5 and 69_990 (second slice starts at row 65_536).
  const q = new Float32Array([
    ...rows.f32.subarray(10, 12),
    ...rows.f32.subarray(139_980, 139_982),
  ]);
  const { distances } = index.search(q, 1);
  assert.deepEqual([...distances], [0, 0]);

  // Many float16 queries against a small index: row i of the result belongs to query i.
  using small = FaissIndex.factory(d, "Flat");
  small.add(rows.f32.subarray(0, 200));
  const many = small.search({ dtype: "float16", data: rows.f16.subarray(0, 66_000 * d) }, 1);
  const many32 = small.search(rows.f32.subarray(0, 66_000 * d), 1);
  assert.deepEqual(many.labels, many32.labels);
  assert.equal(many.labels[99], 99n);
});

Deno.test("vectors given as a raw pointer give the same results as the typed array", async () => {
  const d = 4;
  const db = randomRows(50, d, 9);
  const half = halfExactRows(6, d, 10);
  using index = FaissIndex.factory(d, "Flat");
  index.add({ pointer: Deno.UnsafePointer.of(db)!, n: 50, dtype: "float32" });
  assert.equal(index.ntotal, 50);
  const viaArray = index.search(half.f32, 3);
  const viaPointer = index.search({
    pointer: Deno.UnsafePointer.of(half.f16)!,
    n: 6,
    dtype: "float16",
  }, 3);
  assert.deepEqual(viaPointer, viaArray);
  const viaPointerAsync = await index.searchAsync(
    { pointer: Deno.UnsafePointer.of(half.f32)!, n: 6, dtype: "float32" },
    3,
  );
  assert.deepEqual(viaPointerAsync, viaArray);
});

Deno.test("async train, add, addWithIds and search match their sync forms", async () => {
  const d = 8;
  const data = randomRows(1_000, d, 11);
  const queries = randomRows(10, d, 12);
  const ids = BigInt64Array.from({ length: 1_000 }, (_, i) => BigInt(i) + 10_000n);
  using syncIndex = FaissIndex.factory(d, "IDMap,IVF8,Flat");
  syncIndex.train(data, { n: 800 });
  syncIndex.addWithIds(data, ids);
  syncIndex.nprobe = 8;
  using asyncIndex = FaissIndex.factory(d, "IDMap,IVF8,Flat");
  await asyncIndex.trainAsync(data, { n: 800 });
  await asyncIndex.addWithIdsAsync(data, ids);
  asyncIndex.nprobe = 8;
  const [a, b] = await Promise.all([
    asyncIndex.searchAsync(queries, 4),
    asyncIndex.searchAsync(queries, 4),
  ]);
  assert.deepEqual(a, syncIndex.search(queries, 4));
  assert.deepEqual(b, a);

  using flat = FaissIndex.factory(d, "Flat");
  await flat.addAsync(data);
  assert.equal(flat.ntotal, 1_000);
  assert.deepEqual([...(await flat.searchAsync(data.subarray(0, d), 1)).labels], [0n]);
});

Deno.test("write then read (with and without mmap) gives identical search results", async () => {
  const d = 16;
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_test_" });
  try {
    const data = randomRows(2_000, d, 13);
    const queries = randomRows(12, d, 14);
    using index = FaissIndex.ivfpq({ d, nlist: 8, m: 4, nbits: 4 });
    index.train(data);
    index.add(data);
    index.nprobe = 4;
    const expected = index.search(queries, 5);
    const path = `${dir}/keys.index`;
    index.write(path);
    assert.deepEqual(Array.from(Deno.readDirSync(dir), (e) => e.name), ["keys.index"]);

    using loaded = FaissIndex.read(path);
    assert.equal(loaded.ntotal, 2_000);
    assert.equal(loaded.nprobe, 4);
    assert.deepEqual(loaded.search(queries, 5), expected);

    using mapped = FaissIndex.read(path, { mmap: true });
    assert.equal(mapped.type, "faiss::IndexIVFPQ");
    assert.deepEqual(mapped.search(queries, 5), expected);
    assert.equal(await codeOf(() => mapped.add(data)), "E_NATIVE");

    await index.writeAsync(`${dir}/again.index`);
    assert.deepEqual(Deno.readFileSync(`${dir}/again.index`), Deno.readFileSync(path));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("shape errors are caught in TypeScript as E_CONFIG naming the problem", async () => {
  using index = FaissIndex.factory(4, "Flat");
  const bad: [string, () => unknown, string][] = [
    ["length 7", () => index.add(new Float32Array(7)), "array length 7 is not a multiple of d = 4"],
    ["empty", () => index.add(new Float32Array(0)), "no vectors"],
    ["k 0", () => index.search(new Float32Array(4), 0), "k must be an integer in 1.."],
    ["k 1.5", () => index.search(new Float32Array(4), 1.5), "k must be an integer"],
    [
      "ids",
      () => index.addWithIds(new Float32Array(8), new BigInt64Array(3)),
      "3 ids for 2 vectors",
    ],
    ["n > rows", () => index.train(new Float32Array(8), { n: 3 }), "n = 3 but only 2 rows"],
    [
      "pointer n 0",
      () =>
        index.add({ pointer: Deno.UnsafePointer.of(new Float32Array(4))!, n: 0, dtype: "float32" }),
      "n must be an integer",
    ],
    [
      "float64",
      () => index.add(new Float64Array(4) as unknown as Float32Array),
      "vectors must be a Float32Array",
    ],
    ["m | d", () => FaissIndex.ivfpq({ d: 10, nlist: 4, m: 3 }), "m (3) must divide d (10)"],
    ["d 0", () => FaissIndex.factory(0, "Flat"), "d must be an integer"],
  ];
  for (const [name, fn, says] of bad) {
    const e = errorOf(fn);
    assert.equal(e.code, "E_CONFIG", name);
    assert.ok(e.message.includes(says), `${name}: ${e.message}`);
  }
  assert.equal(await codeOf(() => index.searchAsync(new Float32Array(3), 1)), "E_CONFIG");
});

Deno.test("adding to an untrained IVF index throws before calling FAISS", async () => {
  using index = FaissIndex.ivfpq({ d: 8, nlist: 4, m: 2 });
  assert.equal(await codeOf(() => index.add(new Float32Array(8))), "E_USAGE");
  assert.equal(
    await codeOf(() => index.addWithIdsAsync(new Float32Array(8), new BigInt64Array(1))),
    "E_USAGE",
  );
  assert.equal(index.ntotal, 0);
});

Deno.test("FAISS errors are E_NATIVE with FAISS's own message; a missing file is E_NOT_FOUND", () => {
  const e = errorOf(() => FaissIndex.factory(8, "IVF4,Bogus"));
  assert.equal(e.code, "E_NATIVE");
  assert.ok(e.message.includes("could not parse"), `FAISS's message: ${e.message}`);
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_test_" });
  try {
    const missing = `${dir}/no_such.index`;
    const nf = errorOf(() => FaissIndex.read(missing));
    assert.equal(nf.code, "E_NOT_FOUND");
    assert.equal(nf.path, missing);
    assert.ok(nf.message.startsWith(`${missing}: `), nf.message);
    Deno.writeTextFileSync(`${dir}/junk.index`, "not an index");
    const junk = errorOf(() => FaissIndex.read(`${dir}/junk.index`));
    assert.equal(junk.code, "E_CORRUPT");
    assert.equal(junk.path, `${dir}/junk.index`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("every method throws E_USAGE after close, and close is idempotent", async () => {
  const index = FaissIndex.factory(2, "Flat");
  index.add(new Float32Array([1, 2]));
  index.close();
  index.close();
  assert.equal(index.closed, true);
  const q = new Float32Array([1, 2]);
  const calls: [string, () => unknown][] = [
    ["search", () => index.search(q, 1)],
    ["add", () => index.add(q)],
    ["ntotal", () => index.ntotal],
    ["d", () => index.d],
    ["write", () => index.write("/tmp/never.index")],
    ["reset", () => index.reset()],
    ["onDiskLists", () => index.onDiskLists],
    ["searchAsync", () => index.searchAsync(q, 1)],
    ["trainAsync", () => index.trainAsync(q)],
  ];
  for (const [name, call] of calls) assert.equal(await codeOf(call), "E_USAGE", name);
});

Deno.test("an index busy with an async call refuses close and modification until it settles", async () => {
  const d = 8;
  using index = FaissIndex.factory(d, "Flat");
  index.add(randomRows(2_000, d, 15));
  const pending = index.searchAsync(randomRows(200, d, 16), 5);
  assert.equal(await codeOf(() => index.close()), "E_USAGE");
  assert.equal(await codeOf(() => index.add(new Float32Array(d))), "E_USAGE");
  const concurrent = index.searchAsync(new Float32Array(d), 1);
  const result = await pending;
  await concurrent;
  assert.equal(result.labels.length, 1_000);
  const adding = index.addAsync(new Float32Array(d));
  assert.equal(await codeOf(() => index.searchAsync(new Float32Array(d), 1)), "E_USAGE");
  await adding;
  assert.equal(index.ntotal, 2_001);
  index.reset();
  assert.equal(index.ntotal, 0);
});

Deno.test("setNumThreads changes the OpenMP thread count that getNumThreads reports", async () => {
  // FAISS's thread count is process-wide: change it in a child process, not under the other
  // test files that share this one.
  const mod = new URL("../lib/index/mod.ts", import.meta.url).href;
  const code = `import { getNumThreads, setNumThreads } from ${JSON.stringify(mod)};
    const before = getNumThreads();
    setNumThreads(before === 1 ? 2 : 1);
    let rejected = "";
    try { setNumThreads(0); } catch (e) { rejected = e.code; }
    console.log(JSON.stringify({ before, after: getNumThreads(), rejected }));`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const r = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.ok(r.before >= 1);
  assert.equal(r.after, r.before === 1 ? 2 : 1);
  assert.equal(r.rejected, "E_CONFIG");
});

Deno.test("exactL2Async recomputes squared L2 to labelled rows, float32 and float16 alike", async () => {
  const { exactL2Async } = await import("../lib/index/mod.ts");
  const { f32ArrayToF16, f16ArrayToF32 } = await import("../lib/storage/mod.ts");
  const d = 5, rows = 40, k = 3;
  const base = Float32Array.from({ length: rows * d }, (_, i) => Math.sin(i) * 3);
  const queries = Float32Array.from({ length: 2 * d }, (_, i) => Math.cos(i));
  const labels = BigInt64Array.of(0n, 39n, -1n, 7n, 7n, 20n);
  const want = (b: Float32Array) =>
    Array.from(labels, (l, i) => {
      if (l < 0n) return Infinity;
      const q = Math.floor(i / k);
      let s = 0;
      for (let t = 0; t < d; t++) s += (queries[q * d + t] - b[Number(l) * d + t]) ** 2;
      return s;
    });
  const f32 = await exactL2Async(
    queries,
    { pointer: Deno.UnsafePointer.of(base)!, rows, d, dtype: "float32" },
    labels,
    k,
  );
  const close = (x: number, y: number) => x === y || Math.abs(x - y) < 1e-4;
  Array.from(f32).forEach((x, i) => assert.ok(close(x, want(base)[i]), `f32 ${i}`));
  assert.equal(f32[2], Infinity);
  const half = f32ArrayToF16(base);
  const f16 = await exactL2Async(
    queries,
    { pointer: Deno.UnsafePointer.of(half)!, rows, d, dtype: "float16" },
    labels,
    k,
  );
  const widened = f16ArrayToF32(half);
  Array.from(f16).forEach((x, i) => assert.ok(close(x, want(widened)[i]), `f16 ${i}`));
  const outOfRange = await codeOf(() =>
    exactL2Async(
      queries,
      { pointer: Deno.UnsafePointer.of(base)!, rows: 39, d, dtype: "float32" },
      labels,
      k,
    )
  );
  assert.equal(outOfRange, "E_NATIVE"); // label 39 of 39 rows: caught natively, not read
  const wrongK = await codeOf(() =>
    exactL2Async(
      queries,
      { pointer: Deno.UnsafePointer.of(base)!, rows, d, dtype: "float32" },
      labels,
      4,
    )
  );
  assert.equal(wrongK, "E_CONFIG");
});

// Runs TypeScript in a child Deno process; returns its exit, stdout and stderr.
async function child(code: string, env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, signal: out.signal, stdout: text(out.stdout), stderr: text(out.stderr) };
}

const INDEX_MOD = JSON.stringify(new URL("../lib/index/mod.ts", import.meta.url).href);

Deno.test("on-disk lists grow, write and read back without a line of FAISS output, searching like in-memory lists", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_quiet_" });
  try {
    // 3000 keys for PQ codebooks of 256 centroids: FAISS would print its clustering warning
    // once per sub-quantizer; every add would print "resizing …/faiss.ivfdata"; every read with
    // IO_FLAG_ONDISK_SAME_DIR "updating ondisk filename".
    const r = await child(`
      import { FaissIndex } from ${INDEX_MOD};
      const d = 16, n = 3000, dir = ${JSON.stringify(dir)};
      let s = 1;
      const x = new Float32Array(n * d).map(() => (s = (s * 16807) % 2147483647) / 2147483647);
      const build = async (ondisk) => {
        const ix = FaissIndex.ivfpq({ d, nlist: 32, m: 4, nbits: 8 });
        const { warnings } = await ix.trainAsync(x);
        if (ondisk) ix.useOnDiskLists(dir + "/faiss.ivfdata");
        for (let i = 0; i < n; i += 250) await ix.addAsync(x.subarray(i * d, (i + 250) * d));
        ix.add(x.subarray(0, 7 * d));
        ix.nprobe = 32;
        return { ix, warnings };
      };
      const mem = await build(false);
      const disk = await build(true);
      disk.ix.write(dir + "/faiss.index");
      const lists = disk.ix.onDiskLists;
      Deno.mkdirSync(dir + "/moved");
      Deno.renameSync(dir + "/faiss.index", dir + "/moved/faiss.index");
      Deno.renameSync(dir + "/faiss.ivfdata", dir + "/moved/faiss.ivfdata");
      const back = FaissIndex.read(dir + "/moved/faiss.index", { readOnly: true });
      const q = x.subarray(0, 50 * d);
      const res = (ix) => { const r = ix.search(q, 4); return [[...r.labels].map(Number), [...r.distances]]; };
      Deno.writeTextFileSync(dir + "/result.json", JSON.stringify({
        warnings: disk.warnings, lists, backLists: back.onDiskLists, ntotal: back.ntotal,
        mem: res(mem.ix), disk: res(disk.ix), back: res(back),
      }));
    `);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "", "nothing on stdout");
    assert.equal(r.stderr, "", "nothing on stderr");
    const out = JSON.parse(Deno.readTextFileSync(`${dir}/result.json`));
    assert.equal(out.ntotal, 3007);
    assert.deepEqual(out.disk, out.mem, "on-disk lists search like in-memory lists");
    assert.deepEqual(out.back, out.mem, "read back from the moved directory");
    assert.equal(out.warnings.length, 1, "one warning for the 4 PQ sub-quantizers");
    assert.ok(out.warnings[0].includes("PQ codebooks"), out.warnings[0]);
    assert.equal(out.lists.path, `${dir}/faiss.ivfdata`);
    assert.equal(out.backLists.path, `${dir}/moved/faiss.ivfdata`);
    assert.equal(out.backLists.readOnly, true);
    assert.ok(out.lists.bytesUsed >= 3007 * (4 + 8), "codes and ids of every key are stored");
    assert.ok(out.lists.bytesMapped >= out.lists.bytesUsed);
    assert.equal(Deno.statSync(`${dir}/moved/faiss.ivfdata`).size, out.lists.bytesMapped);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("training with enough vectors reports no warnings; a small sample reports each clustering once", () => {
  const d = 8;
  using big = FaissIndex.ivfpq({ d, nlist: 4, m: 2, nbits: 4 });
  assert.deepEqual(big.train(randomRows(1_000, d, 21)).warnings, []);
  using small = FaissIndex.ivfpq({ d, nlist: 16, m: 2, nbits: 6 });
  const { warnings } = small.train(randomRows(200, d, 22));
  assert.equal(warnings.length, 2, warnings.join("\n"));
  assert.ok(warnings[0].startsWith("coarse quantizer (nlist 16): 200 training vectors"));
  assert.ok(warnings[1].startsWith("PQ codebooks (2 × 64 centroids): 200 training vectors"));
});

Deno.test("aborting trainAsync stops k-means and rejects with the signal's reason; the index trains again afterwards", async () => {
  // 80k vectors into 2048 lists: each k-means iteration searches 80k × 2048 × 32 (25 of them),
  // far longer than the moment the abort comes; FAISS checks between 4096-query blocks.
  const d = 32, nlist = 2048;
  const data = randomRows(nlist * 39, d, 23);
  using index = FaissIndex.factory(d, `IVF${nlist},Flat`);
  const reason = new KnnError("E_INTERRUPTED", "interrupted by SIGTERM", { signal: "SIGTERM" });
  const ac = new AbortController();
  const training = index.trainAsync(data, { signal: ac.signal });
  setTimeout(() => ac.abort(reason), 50);
  await assert.rejects(training, (e) => e === reason);
  assert.equal(index.isTrained, false);

  const plain = new AbortController();
  plain.abort("stop");
  assert.equal(
    await codeOf(() => index.trainAsync(data, { signal: plain.signal })),
    "E_INTERRUPTED",
  );

  // The interrupted k-means left no centroids behind: a retrain trains the quantizer anew (with
  // as many vectors as lists, FAISS takes them as the centroids) and matches a fresh index.
  const first = data.subarray(0, nlist * d);
  using fresh = FaissIndex.factory(d, `IVF${nlist},Flat`);
  fresh.train(first);
  index.train(first);
  fresh.add(first);
  index.add(first);
  fresh.nprobe = index.nprobe = 4;
  const q = data.subarray(0, 20 * d);
  assert.deepEqual(index.search(q, 3), fresh.search(q, 3));
});

Deno.test("aborting addAsync stops at a 65536-row slice boundary with E_INTERRUPTED", async () => {
  const d = 16, nlist = 1024, n = 10 * 65_536;
  const data = randomRows(n, d, 24);
  using index = FaissIndex.factory(d, `IVF${nlist},Flat`);
  index.train(data.subarray(0, nlist * d)); // n == nlist: FAISS copies the points as centroids
  const ac = new AbortController();
  const adding = index.addAsync(data, { signal: ac.signal });
  setTimeout(() => ac.abort(), 20);
  assert.equal(await codeOf(() => adding), "E_INTERRUPTED");
  const kept = index.ntotal;
  assert.ok(kept < n, `stopped early (${kept} of ${n})`);
  assert.equal(kept % 65_536, 0, "whole slices only");
});

// Each of `parts` gets a copy of the trained index (written and read back) filled with its
// contiguous range of rows.
function shardsOf(trained: FaissIndex, data: Float32Array, d: number, parts: number, dir: string) {
  trained.write(`${dir}/trained.index`);
  const n = data.length / d;
  return Array.from({ length: parts }, (_, p) => {
    const shard = FaissIndex.read(`${dir}/trained.index`);
    const [a, b] = [Math.floor((p * n) / parts), Math.floor(((p + 1) * n) / parts)];
    shard.addWithIds(
      data.subarray(a * d, b * d),
      BigInt64Array.from({ length: b - a }, (_, i) => BigInt(a + i)),
    );
    return shard;
  });
}

Deno.test("mergeOnDisk builds one exactly sized on-disk index whose results equal a one-index build", async () => {
  const d = 16, nlist = 32, m = 8, n = 12_000;
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_merge_" });
  try {
    const data = randomRows(n, d, 25);
    using trained = FaissIndex.ivfpq({ d, nlist, m, nbits: 8 });
    trained.train(data);
    using whole = FaissIndex.read((trained.write(`${dir}/t0.index`), `${dir}/t0.index`));
    whole.add(data);
    whole.nprobe = nlist;

    const shards = shardsOf(trained, data, d, 3, dir);
    using merged = await FaissIndex.mergeOnDisk({
      trained,
      shards,
      ivfdata: `${dir}/faiss.ivfdata`,
    });
    shards.forEach((s) => s.close());
    assert.equal(merged.ntotal, n);
    merged.nprobe = nlist;
    const q = randomRows(40, d, 26);
    assert.deepEqual(merged.search(q, 10), whole.search(q, 10));

    const entry = m + 8; // PQ code bytes + int64 id
    const size = Deno.statSync(`${dir}/faiss.ivfdata`).size;
    assert.ok(size <= 1.05 * n * entry + 4096 * nlist, `faiss.ivfdata is ${size} bytes`);
    assert.equal(size, n * entry, "each list sized exactly");
    assert.deepEqual(merged.onDiskLists, {
      path: `${dir}/faiss.ivfdata`,
      bytesUsed: n * entry,
      bytesMapped: n * entry,
      readOnly: false,
    });

    // Written and read back; shards given as paths (mapped, not loaded) merge the same.
    merged.write(`${dir}/faiss.index`);
    using back = FaissIndex.read(`${dir}/faiss.index`, { readOnly: true });
    back.nprobe = nlist;
    assert.deepEqual(back.search(q, 10), whole.search(q, 10));
    const paths = shardsOf(trained, data, d, 3, dir).map((s, i) => {
      s.write(`${dir}/shard${i}.index`);
      s.close();
      return `${dir}/shard${i}.index`;
    });
    using fromPaths = await FaissIndex.mergeOnDisk({
      trained,
      shards: paths,
      ivfdata: `${dir}/b.ivfdata`,
    });
    fromPaths.nprobe = nlist;
    assert.deepEqual(fromPaths.search(q, 10), whole.search(q, 10));
    assert.deepEqual(
      Deno.readFileSync(`${dir}/b.ivfdata`),
      Deno.readFileSync(`${dir}/faiss.ivfdata`),
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("mergeOnDisk refuses shards from another training with E_MISMATCH and leaves no file", async () => {
  const d = 8;
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_merge_" });
  try {
    using trained = FaissIndex.ivfpq({ d, nlist: 4, m: 2, nbits: 4 });
    trained.train(randomRows(1_000, d, 27));
    using other = FaissIndex.ivfpq({ d, nlist: 4, m: 2, nbits: 4 });
    other.train(randomRows(1_000, d, 28));
    other.add(randomRows(100, d, 29));
    const e = await codeOf(() =>
      FaissIndex.mergeOnDisk({ trained, shards: [other], ivfdata: `${dir}/x.ivfdata` })
    );
    assert.equal(e, "E_MISMATCH");
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    assert.equal(other.ntotal, 100, "shards are unchanged");
    using flat = FaissIndex.factory(d, "Flat");
    assert.equal(
      await codeOf(() =>
        FaissIndex.mergeOnDisk({ trained: flat, shards: [other], ivfdata: `${dir}/y` })
      ),
      "E_NATIVE",
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("storedIdBlocks yields every stored id once: per inverted list, id map, or sequential", () => {
  const d = 8;
  const n = 2_000;
  const x = randomRows(n, d, 5);
  const ids = BigInt64Array.from({ length: n }, (_, i) => BigInt(3 * i + 1));
  const sorted = (blocks: Iterable<BigInt64Array>) =>
    Array.from(blocks).flatMap((b) => Array.from(b)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  {
    using ivf = FaissIndex.ivfpq({ d, nlist: 16, m: 4, nbits: 4 });
    ivf.train(x);
    ivf.addWithIds(x, ids);
    const blocks = Array.from(ivf.storedIdBlocks());
    assert.equal(blocks.length, 16, "one block per inverted list");
    assert.deepEqual(sorted(blocks), Array.from(ids));
    ivf.addWithIds(x.subarray(0, d), ids.subarray(0, 1)); // the same id stored twice
    assert.equal(sorted(ivf.storedIdBlocks()).filter((v) => v === 1n).length, 2);
  }
  {
    using idmap = FaissIndex.factory(d, "IDMap,Flat");
    idmap.addWithIds(x, ids);
    assert.deepEqual(sorted(idmap.storedIdBlocks()), Array.from(ids));
  }
  {
    using flat = FaissIndex.factory(d, "Flat");
    flat.add(x.subarray(0, 5 * d));
    assert.deepEqual(sorted(flat.storedIdBlocks()), [0n, 1n, 2n, 3n, 4n]);
  }
});
