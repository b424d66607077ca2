/**
 * Equivalence of two datastores as the sharding issue defines it: byte-identical `keys.npy`,
 * `vals.npy` and on-disk lists, and the same search results (labels and distances) with
 * nprobe = nlist.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { Datastore } from "../mod.ts";
import { arrays } from "./_child.ts";

/** Labels and distances of every 7th key's 5 nearest neighbours, searching every list. */
export async function searchAll(dir: string) {
  using ds = await Datastore.open(dir);
  ds.index.nprobe = ds.manifest.index!.nlist;
  const d = ds.keys.rowLength;
  const rows = Array.from({ length: Math.ceil(ds.size / 7) }, (_, i) => i * 7);
  const q = new Float32Array(rows.length * d);
  rows.forEach((r, i) => {
    const row = ds.keys.view(r, r + 1);
    q.set(row instanceof Float32Array ? row : new Float32Array(row as ArrayLike<number>), i * d);
  });
  return await ds.index.searchAsync(q, 5);
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
