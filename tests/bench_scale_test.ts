import assert from "node:assert/strict";
import { join } from "node:path";
import { descendants, runMeasured } from "../bench/proc.ts";
import { doneSeconds } from "../tasks/bench_scale.ts";
import { type Mixture, writeGeneratorFile, writeShard } from "../bench/scale_keys.ts";
import { gatheredShards } from "../lib/datastore/mod.ts";
import { MappedArray } from "../lib/storage/mod.ts";
import { f16ArrayToF32 } from "../lib/storage/mod.ts";
import { tempDir } from "./_tmp.ts";

Deno.test("stage times are read back from the CLI's 'done in' lines in each of its formats", () => {
  const err = "gather done in 0.3s\nadd done in 1m02s\nmerge done in 1h02m\n";
  assert.equal(doneSeconds(err, "gather"), 0.3);
  assert.equal(doneSeconds(err, "add"), 62);
  assert.equal(doneSeconds(err, "merge"), 3720);
  assert.throws(() => doneSeconds(err, "train"));
});

Deno.test("the process tree is found from /proc, and its RssAnon summed over the workers", async () => {
  assert.deepEqual(descendants(Deno.pid).slice(0, 1), [Deno.pid]);
  // A shell whose two children each allocate ~64 MiB of anonymous memory.
  const hog = `a = bytearray(64 << 20); import time; time.sleep(1.5)`;
  const r = await runMeasured({
    command: "sh",
    args: ["-c", `python3 -c '${hog}' & python3 -c '${hog}' & wait`],
    tree: true,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.peakProcessRssAnon! >= 64 << 20, `one process: ${r.peakProcessRssAnon}`);
  assert.ok(r.peakTreeRssAnon! >= 128 << 20, `the tree: ${r.peakTreeRssAnon}`);
  assert.ok((r.peakRssAnon ?? 0) < 32 << 20, "the shell itself holds little");
});

Deno.test("synthetic shards follow on, hold the mixture's rows whatever the shard count, and record their gather", async () => {
  using tmp = tempDir("knnlm_scale_keys_");
  const m: Mixture = { n: 10_000, d: 8, components: 4, sigma: 0.5, seed: 3 };
  const generator = join(tmp.path, "generator.json");
  await writeGeneratorFile(generator, m);
  const rowsOf = async (dir: string, count: number) => {
    for (let index = 0; index < count; index++) {
      await writeShard({ dir, mixture: m, shard: { index, count }, generator });
    }
    const g = (await gatheredShards(dir))!;
    assert.equal(g.count, count);
    const keys: number[] = [], vals: number[] = [];
    for (let i = 0; i < count; i++) {
      using k = MappedArray.open(join(dir, "shards", String(i), "keys.npy"));
      using v = MappedArray.open(join(dir, "shards", String(i), "vals.npy"));
      keys.push(...f16ArrayToF32(k.view() as Uint16Array));
      vals.push(...(v.view() as Int32Array));
    }
    return { keys, vals };
  };
  const two = await rowsOf(join(tmp.path, "two"), 2);
  const three = await rowsOf(join(tmp.path, "three"), 3);
  assert.equal(two.vals.length, 10_000);
  assert.deepEqual(two, three, "the same rows, cut differently");
  assert.ok(new Set(two.vals).size === 4 && two.vals.every((c) => c >= 0 && c < 4));
  // Rows of one component lie near each other: within-component spread ≈ sigma.
  const first = two.vals.indexOf(two.vals[0], 1);
  const dist = Math.hypot(...two.keys.slice(0, 8).map((x, j) => x - two.keys[first * 8 + j]));
  assert.ok(dist < 0.5 * Math.sqrt(2 * 8) * 2, `same component distance ${dist}`);
});
