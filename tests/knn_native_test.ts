// The shim's speed block (lib/index/knn_native.ts) against the definitions it replaces: the JS
// kNN-LM formulas, FAISS's own search and training, and brute-force exact distances.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  blasInfo,
  FaissIndex,
  knnDistributions,
  knnLogProbs,
  knnLogProbsAsync,
  rerankExactAsync,
  searchIvfPqAsync,
  setBlasThreads,
  setNumThreads,
  sgemm,
  trainIvfPqToFile,
} from "../lib/index/mod.ts";
import { knnDistribution, knnLogProb } from "../lib/query/knn_math.ts";
import { KnnError } from "../lib/core/errors.ts";

// Deterministic uniform [0, 1) floats (mulberry32).
function uniform(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

// [n, d] rows clustered around `clusters` centres, so IVF lists are uneven as with real keys.
function clustered(n: number, d: number, clusters: number, seed: number): Float32Array {
  const r = uniform(seed);
  const centres = Float32Array.from({ length: clusters * d }, () => 4 * r());
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    const c = Math.floor(r() * clusters);
    for (let j = 0; j < d; j++) out[i * d + j] = centres[c * d + j] + r() - 0.5;
  }
  return out;
}

// A random vote batch: nq queries × k neighbours over a datastore of nvals rows and vocab tokens,
// with some "no result" labels (-1) and some queries without any neighbour.
function voteBatch(nq: number, k: number, nvals: number, vocab: number, seed: number) {
  const r = uniform(seed);
  const labels = new BigInt64Array(nq * k);
  const distances = new Float32Array(nq * k);
  for (let q = 0; q < nq; q++) {
    const empty = q % 17 === 5;
    for (let j = 0; j < k; j++) {
      const none = empty || r() < 0.05;
      labels[q * k + j] = none ? -1n : BigInt(Math.floor(r() * nvals));
      // Distances in the range real keys give, large enough to overflow a naive exp.
      distances[q * k + j] = none ? 3.4e38 : 50 + 900 * r();
    }
  }
  const vals = Int32Array.from({ length: nvals }, () => Math.floor(r() * vocab));
  const targets = Int32Array.from({ length: nq }, () => Math.floor(r() * vocab));
  return { labels, distances, vals, targets };
}

Deno.test("native log p_kNN equals the JS formula on random batches (|Δ| ≤ 1e-12)", async () => {
  for (const [temperature, sign] of [[1, 1], [3.5, 1], [0.25, -1]] as const) {
    const nq = 97;
    const k = 64;
    const { labels, distances, vals, targets } = voteBatch(nq, k, 500, 40, 11 + temperature);
    if (sign === -1) { for (let i = 0; i < distances.length; i++) distances[i] = -distances[i]; }
    const batch = { labels, distances, k, vals, temperature, sign } as const;
    const native = await knnLogProbsAsync(batch, targets);
    const sync = knnLogProbs(batch, targets);
    let finite = 0;
    for (let q = 0; q < nq; q++) {
      const row = distances.subarray(q * k, q * k + k);
      const nv = Array.from({ length: k }, (_, j) => {
        const l = Number(labels[q * k + j]);
        return l < 0 ? -1 : vals[l];
      });
      const js = knnLogProb(sign === -1 ? row.map((x) => -x) : row, nv, targets[q], temperature);
      if (js === -Infinity) {
        assert.equal(native[q], -Infinity, `query ${q}`);
      } else {
        finite++;
        assert.ok(Math.abs(native[q] - js) <= 1e-12, `query ${q}: ${native[q]} vs ${js}`);
      }
      assert.equal(sync[q], native[q]);
    }
    assert.ok(finite > 10, "the batch exercises finite log-probs too");
  }
});

Deno.test("native p_kNN distributions equal the JS distribution, rows of zeros without neighbours", () => {
  const nq = 40;
  const k = 32;
  const vocab = 30;
  const { labels, distances, vals } = voteBatch(nq, k, 200, vocab + 3, 5);
  const p = knnDistributions({ labels, distances, k, vals, temperature: 2 }, vocab);
  assert.equal(p.length, nq * vocab);
  for (let q = 0; q < nq; q++) {
    const nv = Array.from({ length: k }, (_, j) => {
      const l = Number(labels[q * k + j]);
      return l < 0 ? -1 : vals[l];
    });
    const js = knnDistribution(distances.subarray(q * k, q * k + k), nv, vocab, 2);
    for (let v = 0; v < vocab; v++) {
      assert.ok(Math.abs(p[q * vocab + v] - js[v]) <= 1e-12, `query ${q} token ${v}`);
    }
  }
  // Query 5 has no neighbour at all (see voteBatch).
  assert.ok(p.subarray(5 * vocab, 6 * vocab).every((x) => x === 0));
});

Deno.test("the native vote rejects labels past the values and malformed batches", async () => {
  const vals = new Int32Array([1, 2, 3]);
  const targets = new Int32Array([1]);
  const distances = new Float32Array([1, 2]);
  await assert.rejects(
    knnLogProbsAsync({ labels: new BigInt64Array([0n, 3n]), distances, k: 2, vals }, targets),
    (e) => KnnError.is(e, "E_NATIVE") && /label 3/.test(e.message),
  );
  assert.throws(
    () => knnLogProbs({ labels: new BigInt64Array([0n]), distances, k: 2, vals }, targets),
    (e) => KnnError.is(e, "E_USAGE"),
  );
  assert.throws(
    () =>
      knnLogProbs(
        { labels: new BigInt64Array([0n, 1n]), distances, k: 2, vals, temperature: 0 },
        targets,
      ),
    (e) => KnnError.is(e, "E_USAGE"),
  );
});

// Exact float64 squared L2 of the candidates, their k nearest (ties: smaller row first).
function exactTopK(
  base: Float32Array,
  query: Float32Array,
  d: number,
  candidates: bigint[],
  k: number,
): { label: bigint; dist: number }[] {
  const scored = candidates.filter((c) => c >= 0n).map((c) => {
    let s = 0;
    const row = Number(c) * d;
    for (let j = 0; j < d; j++) s += (query[j] - base[row + j]) ** 2;
    return { label: c, dist: s };
  });
  scored.sort((a, b) => a.dist - b.dist || Number(a.label - b.label));
  return scored.slice(0, k);
}

Deno.test("4-bit fast-scan candidates re-ranked exactly give the exact top-k of the candidates", async () => {
  setNumThreads(2);
  const d = 32;
  const n = 6000;
  const keys = clustered(n, d, 40, 3);
  using index = FaissIndex.factory(d, "IVF16,PQ16x4fs");
  index.train(keys);
  index.addWithIds(keys, BigInt64Array.from({ length: n }, (_, i) => BigInt(i)));
  index.nprobe = 4;
  const nq = 50;
  const queries = clustered(nq, d, 40, 99);
  const kc = 200;
  const k = 20;
  const found = await index.searchAsync(queries, kc);
  const base = { pointer: Deno.UnsafePointer.of(keys)!, rows: n, d, dtype: "float32" as const };
  const r = await rerankExactAsync(queries, base, found.labels, kc, k);
  let reordered = 0;
  for (let q = 0; q < nq; q++) {
    const cand = Array.from(found.labels.subarray(q * kc, q * kc + kc));
    const want = exactTopK(keys, queries.subarray(q * d, q * d + d), d, cand, k);
    for (let j = 0; j < k; j++) {
      assert.equal(r.labels[q * k + j], want[j].label, `query ${q} rank ${j}`);
      assert.ok(Math.abs(r.distances[q * k + j] - want[j].dist) <= 1e-4 * want[j].dist + 1e-6);
    }
    // The approximate order of the fast-scan codes is not the exact one: re-ranking matters.
    if (want.some((w, j) => w.label !== found.labels[q * kc + j])) reordered++;
  }
  assert.ok(reordered > 0);
});

Deno.test("re-ranking pads with -1 and +Infinity when a query has fewer than k candidates", async () => {
  const d = 4;
  const keys = Float32Array.from({ length: 5 * d }, (_, i) => i);
  const base = { pointer: Deno.UnsafePointer.of(keys)!, rows: 5, d, dtype: "float32" as const };
  const query = new Float32Array([8, 9, 10, 11]); // row 2 exactly
  const labels = new BigInt64Array([4n, -1n, 2n, -1n]);
  const r = await rerankExactAsync(query, base, labels, 4, 3);
  assert.deepEqual(Array.from(r.labels), [2n, 4n, -1n]);
  assert.deepEqual(Array.from(r.distances), [0, 4 * 64, Infinity]);
  await assert.rejects(
    rerankExactAsync(query, base, new BigInt64Array([7n, 0n, 0n, 0n]), 4, 3),
    (e) => KnnError.is(e, "E_NATIVE"),
  );
});

async function ivfpqIndex(
  keys: Float32Array,
  d: number,
  nlist: number,
  m: number,
  dir: string,
  ondisk: boolean,
) {
  const index = FaissIndex.ivfpq({ d, nlist, m, nbits: 8 });
  await index.trainAsync(keys, { parallelPq: false });
  if (ondisk) index.useOnDiskLists(join(dir, "lists.ivfdata"));
  const n = keys.length / d;
  await index.addWithIdsAsync(keys, BigInt64Array.from({ length: n }, (_, i) => BigInt(i)));
  return index;
}

Deno.test("the IVFPQ search returns FAISS's labels and distances bit for bit", async () => {
  setNumThreads(2);
  const dir = await Deno.makeTempDir({ prefix: "knnlm_native_" });
  try {
    const d = 48;
    const n = 10_000;
    const keys = clustered(n, d, 60, 7);
    const queries = clustered(300, d, 60, 8);
    for (const ondisk of [false, true]) {
      using index = await ivfpqIndex(keys, d, 64, 16, dir, ondisk);
      for (const [nprobe, k] of [[1, 5], [4, 300], [64, 40], [2, 2000]]) {
        index.nprobe = nprobe;
        const want = await index.searchAsync(queries, k);
        const got = await searchIvfPqAsync(index, queries, k);
        assert.equal(got.fast, true);
        assert.deepEqual(got.distances, want.distances, `nprobe ${nprobe} k ${k} ondisk ${ondisk}`);
        assert.deepEqual(got.labels, want.labels, `nprobe ${nprobe} k ${k} ondisk ${ondisk}`);
      }
    }
    // k = 2000 with nprobe 2 leaves queries with fewer candidates than k: FAISS's padding.
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("other indexes are searched by FAISS itself", async () => {
  const d = 8;
  const keys = clustered(500, d, 5, 1);
  using index = FaissIndex.factory(d, "Flat");
  index.add(keys);
  const q = keys.subarray(0, 3 * d);
  const got = await searchIvfPqAsync(index, q, 7);
  const want = index.search(q, 7);
  assert.equal(got.fast, false);
  assert.deepEqual(got.labels, want.labels);
  assert.deepEqual(got.distances, want.distances);
});

Deno.test("parallel PQ training writes the same index file as FAISS's own training", async () => {
  setNumThreads(2);
  const dir = await Deno.makeTempDir({ prefix: "knnlm_train_" });
  try {
    const d = 24;
    const keys = clustered(4000, d, 30, 4);
    using stock = FaissIndex.ivfpq({ d, nlist: 16, m: 8, nbits: 6 });
    const plain = await stock.trainAsync(keys, { parallelPq: false }); // FAISS's own training
    assert.equal(plain.parallelPq, false);
    stock.write(join(dir, "stock.index"));
    const r = await trainIvfPqToFile({
      d,
      nlist: 16,
      m: 8,
      nbits: 6,
      x: keys,
      path: join(dir, "parallel.index"),
    });
    assert.equal(r.parallel, true);
    assert.deepEqual(
      await Deno.readFile(join(dir, "parallel.index")),
      await Deno.readFile(join(dir, "stock.index")),
    );
    using back = FaissIndex.read(join(dir, "parallel.index"));
    assert.equal(back.isTrained, true);
    await assert.rejects(
      trainIvfPqToFile({ d, nlist: 16, m: 5, x: keys, path: join(dir, "bad.index") }),
      (e) => KnnError.is(e, "E_CONFIG"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sgemm multiplies row-major matrices and OpenBLAS's thread count can be set", () => {
  const a = new Float32Array([1, 2, 3, 4, 5, 6]); // [2, 3]
  const b = new Float32Array([7, 8, 9, 10, 11, 12]); // [3, 2]
  const c = new Float32Array(4);
  sgemm(2, 2, 3, a, b, c);
  assert.deepEqual(Array.from(c), [58, 64, 139, 154]);
  assert.throws(() => sgemm(2, 2, 2, a, b, c), (e) => KnnError.is(e, "E_USAGE"));
  const info = blasInfo();
  if (info) {
    const before = setBlasThreads(1);
    assert.equal(before, info.threads);
    assert.equal(blasInfo()!.threads, 1);
    setBlasThreads(before);
    assert.ok(info.core.length > 0 && /OpenBLAS/.test(info.config));
  } else {
    assert.equal(setBlasThreads(1), -1);
  }
});
