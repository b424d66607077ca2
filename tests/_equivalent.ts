/**
 * Equivalence of two datastores as the sharding issue defines it: byte-identical `keys.npy`,
 * `vals.npy` and on-disk lists, and the same search results (labels and distances) with
 * nprobe = nlist.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { arrays } from "./_child.ts";

/**
 * Labels and distances of every 7th key's 5 nearest neighbours, searching every list, computed
 * in a child process (tests/fixtures/search_all.ts): thread settings are process-wide, and
 * test files running beside this one change them.
 */
export async function searchAll(dir: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./fixtures/search_all.ts", import.meta.url).pathname, dir],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  assert.equal(out.code, 0, dec.decode(out.stderr));
  const r = JSON.parse(dec.decode(out.stdout)) as { labels: string[]; distances: number[] };
  return {
    labels: BigInt64Array.from(r.labels, BigInt),
    distances: Float32Array.from(r.distances),
  };
}

/** Asserts that datastore `dir` equals `ref`: bytes of keys, values and lists; searches. */
export async function assertSameDatastore(dir: string, ref: string): Promise<void> {
  assert.deepEqual(await arrays(dir), await arrays(ref), "keys.npy / vals.npy bytes");
  const ivf = async (d: string) => {
    const m = JSON.parse(await Deno.readTextFile(join(d, "datastore.json")));
    return await Deno.readFile(join(d, m.index.ivfdata.file));
  };
  assert.deepEqual(await ivf(dir), await ivf(ref), "on-disk lists bytes");
  const [a, b] = [await searchAll(dir), await searchAll(ref)];
  assert.deepEqual(a.labels, b.labels, "labels");
  assert.deepEqual(a.distances, b.distances, "distances");
}
