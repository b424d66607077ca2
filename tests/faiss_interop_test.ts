// Index files are a contract: Python FAISS (/usr/bin/python3, python3-faiss) reads what the
// toolkit writes and the toolkit reads what Python FAISS writes, with the same search results.
import assert from "node:assert/strict";
import { FaissIndex } from "../lib/index/mod.ts";

const PYTHON = "/usr/bin/python3";

function python(script: string, args: string[]): string {
  // One OpenMP thread: spinning OpenMP workers crawl on a shared 2-core machine.
  const env = { OMP_NUM_THREADS: "1", OMP_WAIT_POLICY: "PASSIVE" };
  const out = new Deno.Command(PYTHON, { args: ["-c", script, ...args], env }).outputSync();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `python failed (needs python3-faiss and python3-numpy):\n${stderr}`);
  return new TextDecoder().decode(out.stdout);
}

function rows(n: number, d: number, seed: number): Float32Array {
  let s = seed;
  return new Float32Array(n * d).map(() => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s / 2 ** 31;
  });
}

function bytesOf(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

Deno.test("an IVFPQ index written by the toolkit is read by Python FAISS with the same results", () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_interop_" });
  try {
    const d = 16, k = 4;
    const data = rows(3_000, d, 1);
    const queries = rows(9, d, 2);
    using index = FaissIndex.ivfpq({ d, nlist: 8, m: 4, nbits: 6 });
    index.train(data);
    index.addWithIds(data, BigInt64Array.from({ length: 3_000 }, (_, i) => BigInt(i) * 10n));
    index.nprobe = 8;
    index.write(`${dir}/ours.index`);
    Deno.writeFileSync(`${dir}/queries.f32`, bytesOf(queries));
    const ours = index.search(queries, k);

    const script = `
import json, sys, faiss, numpy as np
d, k, path, qpath = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
q = np.fromfile(qpath, dtype=np.float32).reshape(-1, d)
out = {}
for name, flags in (("plain", 0), ("mmap", faiss.IO_FLAG_MMAP)):
    ix = faiss.read_index(path, flags)
    D, I = ix.search(q, k)
    out[name] = {"type": type(ix).__name__, "ntotal": ix.ntotal,
                 "nprobe": faiss.extract_index_ivf(ix).nprobe,
                 "labels": I.ravel().tolist(), "distances": D.ravel().tolist()}
print(json.dumps(out))
`;
    const res = JSON.parse(
      python(script, [String(d), String(k), `${dir}/ours.index`, `${dir}/queries.f32`]),
    );
    for (const name of ["plain", "mmap"]) {
      const py = res[name];
      assert.equal(py.type, "IndexIVFPQ");
      assert.equal(py.ntotal, 3_000);
      assert.equal(py.nprobe, 8);
      assert.deepEqual(py.labels.map(BigInt), [...ours.labels]);
      py.distances.forEach((dist: number, i: number) =>
        assert.ok(Math.abs(dist - ours.distances[i]) <= 1e-5 * Math.max(1, dist), `distance ${i}`)
      );
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("an index written by Python FAISS is read by the toolkit with the same results", () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_interop_" });
  try {
    const d = 12, k = 3;
    const script = `
import json, sys, faiss, numpy as np
d, k, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rs = np.random.RandomState(7)
x = rs.rand(2000, d).astype(np.float32)
q = rs.rand(6, d).astype(np.float32)
ix = faiss.index_factory(d, "IDMap,IVF8,PQ4x6np")  # np: skip slow polysemous training
ix.train(x)
ix.add_with_ids(x, np.arange(2000, dtype=np.int64) * 3 + 5)
faiss.extract_index_ivf(ix).nprobe = 5
faiss.write_index(ix, out + "/python.index")
q.tofile(out + "/queries.f32")
D, I = ix.search(q, k)
print(json.dumps({"labels": I.ravel().tolist(), "distances": D.ravel().tolist()}))
`;
    const py = JSON.parse(python(script, [String(d), String(k), dir]));
    const queries = new Float32Array(Deno.readFileSync(`${dir}/queries.f32`).buffer);
    for (const mmap of [false, true]) {
      using index = FaissIndex.read(`${dir}/python.index`, { mmap });
      assert.equal(index.d, d);
      assert.equal(index.ntotal, 2_000);
      assert.equal(index.nprobe, 5);
      const ours = index.search(queries, k);
      assert.deepEqual([...ours.labels], py.labels.map(BigInt));
      py.distances.forEach((dist: number, i: number) =>
        assert.ok(Math.abs(dist - ours.distances[i]) <= 1e-5 * Math.max(1, dist), `distance ${i}`)
      );
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("mergeOnDisk writes the same faiss.ivfdata bytes as Python's merge_ondisk, and each reads the other's", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_interop_" });
  try {
    const d = 16, k = 5, nlist = 16, n = 6_000;
    const data = rows(n, d, 3);
    const queries = rows(12, d, 4);
    using trained = FaissIndex.ivfpq({ d, nlist, m: 4, nbits: 6 });
    trained.train(data);
    trained.write(`${dir}/trained.index`);
    const shards = [0, 1, 2].map((p) => {
      using shard = FaissIndex.read(`${dir}/trained.index`);
      const [a, b] = [p * 2_000, (p + 1) * 2_000];
      const ids = BigInt64Array.from({ length: b - a }, (_, i) => BigInt(a + i));
      shard.addWithIds(data.subarray(a * d, b * d), ids);
      shard.write(`${dir}/shard${p}.index`);
      return `${dir}/shard${p}.index`;
    });
    Deno.mkdirSync(`${dir}/ours`);
    using merged = await FaissIndex.mergeOnDisk({
      trained,
      shards,
      ivfdata: `${dir}/ours/faiss.ivfdata`,
    });
    merged.nprobe = nlist;
    merged.write(`${dir}/ours/faiss.index`);
    const ours = merged.search(queries, k);
    Deno.writeFileSync(`${dir}/queries.f32`, bytesOf(queries));

    const script = `
import json, sys, faiss, numpy as np
from faiss.contrib.ondisk import merge_ondisk
d, k, nlist, dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
q = np.fromfile(dir + "/queries.f32", dtype=np.float32).reshape(-1, d)
index = faiss.read_index(dir + "/trained.index")
merge_ondisk(index, [dir + "/shard%d.index" % p for p in range(3)], dir + "/py/faiss.ivfdata")
faiss.extract_index_ivf(index).nprobe = nlist
faiss.write_index(index, dir + "/py/faiss.index")
theirs = faiss.read_index(dir + "/ours/faiss.index")  # our merged index, lists by recorded path
faiss.extract_index_ivf(theirs).nprobe = nlist
out = {}
for name, ix in (("python", index), ("ours", theirs)):
    D, I = ix.search(q, k)
    out[name] = {"ntotal": ix.ntotal, "labels": I.ravel().tolist(), "distances": D.ravel().tolist()}
print(json.dumps(out))  # last line: FAISS's merge prints "resizing ..." before it
`;
    Deno.mkdirSync(`${dir}/py`);
    const stdout = python(script, [String(d), String(k), String(nlist), dir]).trim().split("\n");
    const py = JSON.parse(stdout[stdout.length - 1]);
    assert.deepEqual(
      Deno.readFileSync(`${dir}/ours/faiss.ivfdata`),
      Deno.readFileSync(`${dir}/py/faiss.ivfdata`),
      "byte-identical lists",
    );
    for (const name of ["python", "ours"]) {
      assert.equal(py[name].ntotal, n);
      assert.deepEqual(py[name].labels.map(BigInt), [...ours.labels], name);
      py[name].distances.forEach((dist: number, i: number) =>
        assert.ok(Math.abs(dist - ours.distances[i]) <= 1e-5 * Math.max(1, dist), `${name} ${i}`)
      );
    }
    using theirs = FaissIndex.read(`${dir}/py/faiss.index`, { readOnly: true });
    assert.equal(theirs.onDiskLists?.path, `${dir}/py/faiss.ivfdata`);
    assert.deepEqual(theirs.search(queries, k), ours);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
