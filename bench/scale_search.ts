/**
 * The toolkit's search timing for `deno task bench-scale`: opens a datastore (checked, lists
 * mapped read-only), searches QUERIES (a float16 `.npy`) for K neighbours with NPROBE lists,
 * and prints `{"seconds", "queries"}` — the search alone, as `scale_reference.py search` does.
 *
 *   deno run -A bench/scale_search.ts DIR QUERIES.npy K NPROBE
 *
 * @module
 */

import { Datastore } from "../lib/datastore/mod.ts";
import { MappedArray } from "../lib/storage/mmap.ts";

const [dir, queries, k, nprobe] = Deno.args;
using ds = await Datastore.open(dir, { nprobe: Number(nprobe) });
using q = MappedArray.open(queries, { dtypes: ["<f2"] });
const data = Uint16Array.from(q.view() as Uint16Array);
const t0 = performance.now();
await ds.index.searchAsync({ dtype: "float16", data }, Number(k));
console.log(JSON.stringify({ seconds: (performance.now() - t0) / 1000, queries: q.rows }));
