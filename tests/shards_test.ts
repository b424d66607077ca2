// Sharded builds, on real `knn` child processes: a build split into N shards (worker processes,
// or separate processes per shard as a scheduler runs them, at the same time and in any order)
// equals the one-process build — byte-identical keys, values and inverted lists, the same
// search results with nprobe = nlist — and keeps the locking, signal and resume behaviour of a
// one-process build.
import assert from "node:assert/strict";
import { join } from "node:path";
import { KnnError, MappedArray } from "../mod.ts";
import {
  autoShardCount,
  parseShardSpec,
  readManifest,
  shardFromEnvironment,
  shardRange,
} from "../lib/datastore/mod.ts";
import { concatNpy } from "../lib/storage/mod.ts";
import { planWindows } from "../lib/model/windows.ts";
import { corpusText, knn, StoppingChild, TINY } from "./_child.ts";
import { assertSameDatastore } from "./_equivalent.ts";
import { tempDir } from "./_tmp.ts";

Deno.test("--shard I/N is parsed, and the scheduler's environment names the shard", () => {
  assert.deepEqual(parseShardSpec("2/4"), { index: 2, count: 4 });
  for (const bad of ["4/4", "1", "-1/3", "a/b", "0/0"]) {
    assert.throws(() => parseShardSpec(bad), (e) => KnnError.is(e, "E_USAGE"), bad);
  }
  const slurm = { SLURM_ARRAY_TASK_ID: "3", SLURM_ARRAY_TASK_COUNT: "4" };
  assert.deepEqual(shardFromEnvironment(slurm), { index: 3, count: 4 });
  // --array=1-4: task ids count from SLURM_ARRAY_TASK_MIN.
  assert.deepEqual(
    shardFromEnvironment({ ...slurm, SLURM_ARRAY_TASK_ID: "4", SLURM_ARRAY_TASK_MIN: "1" }),
    { index: 3, count: 4 },
  );
  assert.throws(() => shardFromEnvironment(slurm, 3), (e) => KnnError.is(e, "E_USAGE"));
  assert.deepEqual(shardFromEnvironment({ JOB_COMPLETION_INDEX: "1" }, 2), { index: 1, count: 2 });
  assert.throws(
    () => shardFromEnvironment({ JOB_COMPLETION_INDEX: "1" }),
    (e) => KnnError.is(e, "E_USAGE") && /--shards/.test(e.message),
  );
  assert.throws(() => shardFromEnvironment({ JOB_COMPLETION_INDEX: "2" }, 2), KnnError);
  assert.equal(shardFromEnvironment({}), undefined);
  assert.equal(autoShardCount(1), 1);
  assert.equal(autoShardCount(2_000_001), 2);
});

Deno.test("shards are whole batches of windows whose rows follow on and cover every position", () => {
  for (
    const [nTokens, seqLen, stride, batchSize, count] of [
      [1000, 32, 16, 4, 3],
      [1001, 32, 16, 4, 7],
      [5000, 64, 64, 8, 5],
      [300, 16, 1, 1, 4],
    ]
  ) {
    const fp = { nTokens, seqLen, stride, batchSize };
    const plan = planWindows(nTokens, seqLen, stride);
    let window = 0, row = 0;
    for (let i = 0; i < count; i++) {
      const r = shardRange(fp, { index: i, count });
      assert.equal(r.windows[0], window, `shard ${i} starts where ${i - 1} ended`);
      assert.equal(r.windows[0] % batchSize, 0, "a shard starts at a batch boundary");
      assert.ok(r.windows[1] > r.windows[0], "no empty shard");
      assert.equal(r.rows[0], row);
      window = r.windows[1];
      row = r.rows[1];
    }
    assert.equal(window, plan.count);
    assert.equal(row, nTokens - 1);
  }
  assert.throws(
    () =>
      shardRange({ nTokens: 100, seqLen: 32, stride: 32, batchSize: 8 }, { index: 0, count: 2 }),
    (e) => KnnError.is(e, "E_CONFIG"),
  );
});

Deno.test("concatNpy writes one .npy of the parts' rows, and refuses parts of another width", async () => {
  using tmp = tempDir("knnlm_concat_");
  const parts = [3, 0, 5].map((rows, i) => {
    const path = join(tmp.path, `p${i}.npy`);
    using a = MappedArray.create(path, { dtype: "<f2", shape: [rows, 4] });
    (a.view() as Uint16Array).forEach((_, j, v) => (v[j] = i * 1000 + j));
    a.flush();
    return path;
  });
  const out = join(tmp.path, "all.npy");
  const r = await concatNpy({ inputs: parts, output: out });
  assert.deepEqual(r.shape, [8, 4]);
  using all = MappedArray.open(out);
  assert.deepEqual(all.shape, [8, 4]);
  const want = [
    ...Array.from({ length: 12 }, (_, j) => j),
    ...Array.from({ length: 20 }, (_, j) => 2000 + j),
  ];
  assert.deepEqual(Array.from(all.view() as Uint16Array), want);
  const other = join(tmp.path, "wide.npy");
  MappedArray.create(other, { dtype: "<f2", shape: [2, 5] }).close();
  await assert.rejects(
    concatNpy({ inputs: [parts[0], other], output: join(tmp.path, "x.npy") }),
    (e) => KnnError.is(e, "E_MISMATCH") && e.path === other,
  );
});

// ---------------------------------------------------------------------------------------------
// Builds on real processes.

const N = 24_000; // corpus bytes → 23999 keys of width 64
const root = await Deno.makeTempDir({ prefix: "knnlm_shards_" });
const corpus = join(root, "corpus.txt");
await Deno.writeTextFile(corpus, corpusText(N));

/** The test builds' flags: the tiny model, IVFPQ with 8 lists. */
function args(out: string, ...extra: string[]): string[] {
  return [
    "--model",
    TINY,
    "--corpus",
    corpus,
    "--out",
    out,
    "--seq-len",
    "32",
    "--stride",
    "16",
    "--batch-size",
    "4",
    "--threads",
    "2",
    "--nlist",
    "8",
    "--m",
    "8",
    "--nbits",
    "6",
    "--nprobe",
    "8",
    "--add-chunk",
    "1000",
    ...extra,
  ];
}

let refDir: Promise<string> | undefined;
/** The one-process build (one shard, in DIR) everything is compared with. */
function reference(): Promise<string> {
  refDir ??= (async () => {
    const out = join(root, "ref");
    const r = await knn("build-index", ...args(out, "--shards", "1"));
    assert.equal(r.code, 0, r.stderr);
    return out;
  })();
  return refDir;
}

/** `dir` equals the one-process build: bytes of keys, values and lists; search results. */
async function assertEquivalent(dir: string) {
  await assertSameDatastore(dir, await reference());
  const v = await knn("verify", dir, "--json");
  assert.equal(v.code, 0, v.stdout + v.stderr);
  assert.equal(JSON.parse(v.stdout).ok, true);
  await assert.rejects(Deno.stat(join(dir, "shards")), Deno.errors.NotFound, "shards removed");
}

Deno.test("a build in 3 shards by 2 worker processes equals the one-process build, and numpy reads it", async () => {
  const out = join(root, "workers");
  const r = await knn("build-index", ...args(out, "--shards", "3", "--workers", "2"));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /gather: 24000 tokens in 3 shards, 2 worker processes/);
  assert.match(r.stderr, /train: IVF8,PQ8x6 on 23999 keys drawn across 3 shards/);
  await assertEquivalent(out);
  const m = (await readManifest(out))!;
  assert.equal(m.shards?.count, 3);
  assert.deepEqual(m.shards?.rows.at(-1), 23999);
  assert.equal(m.index?.ivfdata?.bytes, 23999 * (8 * 6 / 8 + 8), "each list sized exactly");
  // numpy reads the concatenated keys as the reference's.
  const py = await new Deno.Command("/usr/bin/python3", {
    args: [
      "-c",
      "import numpy as np, sys; a = np.load(sys.argv[1], mmap_mode='r'); " +
      "b = np.load(sys.argv[2], mmap_mode='r'); print(a.shape, a.dtype, bool((a == b).all()))",
      join(out, "keys.npy"),
      join(await reference(), "keys.npy"),
    ],
    stdout: "piped",
  }).output();
  assert.equal(new TextDecoder().decode(py.stdout).trim(), "(23999, 64) float32 True");
  // The checksums kept each shard's blocks: a flipped byte of the last row names shard 2's.
  const keys = join(out, "keys.npy");
  const bytes = await Deno.readFile(keys);
  bytes[bytes.length - 3] ^= 0x40;
  await Deno.writeFile(keys, bytes);
  const bad = await knn("verify", out);
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, new RegExp(`keys\\.npy: rows \\[${m.shards!.rows[2]}, 23999\\) differ`));
});

Deno.test("shards gathered and added by separate processes, at once and in any order, then trained and merged, equal the one-process build", async () => {
  const out = join(root, "separate");
  // Gather: shards 2, 0 by --shard, shard 1 as a Slurm array task, all at the same time.
  const gathers = await Promise.all([
    knn("gather", ...args(out, "--shard", "2/3")),
    knn("gather", ...args(out, "--shard", "0/3")),
    knnEnv({ SLURM_ARRAY_TASK_ID: "1", SLURM_ARRAY_TASK_COUNT: "3" }, "gather", ...args(out)),
  ]);
  for (const g of gathers) assert.equal(g.code, 0, g.stderr);
  assert.match(gathers[2].stdout, /^shard 1\/3 of .*: gather done/);
  assert.equal(await readManifest(out), undefined, "no datastore.json before the merge");
  // Adding before training, or merging before adding, says what is missing.
  const early = await knn("add", ...args(out, "--shard", "0/3"));
  assert.equal(early.code, 1, early.stderr);
  assert.match(early.stderr, /no trained index for IVF8,PQ8x6 \(run `knn train-index` first\)/);
  const train = await knn("train-index", ...args(out));
  assert.equal(train.code, 0, train.stderr);
  // Add: shard 1 as a Kubernetes Indexed Job pod, the others by --shard, at once.
  const adds = await Promise.all([
    knnEnv({ JOB_COMPLETION_INDEX: "1" }, "add", ...args(out, "--shards", "3")),
    knn("add", ...args(out, "--shard", "2/3")),
  ]);
  for (const a of adds) assert.equal(a.code, 0, a.stderr);
  const notYet = await knn("merge", ...args(out));
  assert.equal(notYet.code, 1, notYet.stderr);
  assert.match(notYet.stderr, /shard 0 of 3 not added yet\nhint: run knn add --shard 0\/3/);
  const last = await knn("add", ...args(out, "--shard", "0/3"));
  assert.equal(last.code, 0, last.stderr);
  const again = await knn("add", ...args(out, "--shard", "0/3"));
  assert.match(again.stderr, /skip add: shard 0\/3 already added/);
  const merge = await knn("merge", ...args(out));
  assert.equal(merge.code, 0, merge.stderr);
  await assertEquivalent(out);
  // A finished datastore: every stage is skipped, per shard too.
  const redo = await knn("gather", ...args(out, "--shard", "1/3"));
  assert.equal(redo.code, 0, redo.stderr);
  assert.match(redo.stderr, /skip gather/);
});

Deno.test("one shard's process excludes the same shard and datastore-wide writers, not the other shards", async () => {
  const out = join(root, "locks");
  const first = new StoppingChild(["gather", ...args(out, "--shard", "0/3")], [
    String.raw`^gather .*%`,
  ]);
  try {
    await first.stopped();
    const same = await knn("gather", ...args(out, "--shard", "0/3"));
    assert.equal(same.code, 75, same.stderr);
    assert.match(same.stderr, new RegExp(`process ${first.pid} \\(knn gather --shard 0/3\\)`));
    const other = await knn("gather", ...args(out, "--shard", "1/3"));
    assert.equal(other.code, 0, other.stderr);
    for (const cmd of [["train-index"], ["build-index", "--shards", "3"]]) {
      const r = await knn(cmd[0], ...args(out, ...cmd.slice(1)));
      assert.equal(r.code, 75, `${cmd}: ${r.stderr}`);
      assert.match(
        r.stderr,
        new RegExp(
          `being written by shard processes: process ${first.pid} \\(knn gather --shard 0/3\\)`,
        ),
      );
    }
    // Another shard count than the shards on disk is refused.
    const count = await knn("gather", ...args(out, "--shard", "1/2"));
    assert.equal(count.code, 1, count.stderr);
    assert.match(count.stderr, /holds 3 shards, not 2/);
    await first.resume();
    const r = await first.finished();
    assert.equal(r.code, 0, r.stderr);
  } finally {
    try {
      Deno.kill(first.pid, "SIGKILL");
    } catch { /* exited */ }
  }
});

Deno.test("SIGINT during a sharded build stops every worker with nothing complete, and the rerun resumes to the same datastore", async () => {
  const out = join(root, "sigint");
  const a = args(out, "--shards", "4", "--workers", "2");
  const child = new StoppingChild(["build-index", ...a], [String.raw`^gather .* [1-9]\d*\.\d%`]);
  await child.stopped();
  await child.signal("SIGINT");
  const r = await child.finished();
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /\nerror: gather interrupted/);
  assert.equal(await readManifest(out), undefined);
  const again = await knn("build-index", ...a);
  assert.equal(again.code, 0, again.stderr);
  await assertEquivalent(out);
});

Deno.test("the workers of a build that is killed quit with it", async () => {
  const out = join(root, "killed");
  const child = new StoppingChild(
    ["build-index", ...args(out, "--shards", "2", "--workers", "2")],
    [String.raw`^gather .*%`],
  );
  await child.stopped();
  const workers = childrenOf(child.pid);
  assert.equal(workers.length, 2, "two worker processes");
  Deno.kill(child.pid, "SIGKILL");
  await child.finished();
  const t0 = Date.now();
  while (workers.some(alive) && Date.now() - t0 < 20_000) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual(workers.filter(alive), [], "no worker outlives its build");
  // What they left resumes.
  const again = await knn("build-index", ...args(out, "--shards", "2", "--workers", "2"));
  assert.equal(again.code, 0, again.stderr);
  await assertEquivalent(out);
});

Deno.test({
  name: "shards test cleanup",
  fn: async () => {
    await Deno.remove(root, { recursive: true });
  },
});

/** `knn ARGS…` with extra environment variables (a scheduler's). */
async function knnEnv(env: Record<string, string>, ...argv: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../cli.ts", import.meta.url).pathname, ...argv],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Pids of the children of `pid` (from /proc). */
function childrenOf(pid: number): number[] {
  const text = Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim();
  return text ? text.split(/\s+/).map(Number) : [];
}

function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}
