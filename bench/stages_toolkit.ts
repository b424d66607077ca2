/**
 * The toolkit side of the stage microbenchmark (`deno task bench --stages`): FAISS's train,
 * add and search through `FaissIndex` (the FFI binding) on the same `.npy` arrays the Python
 * side (`bench/stages.py`) reads, plus the toolkit's own paths: training with the PQ
 * sub-quantizers in parallel, and its IVFPQ search (`searchIvfPqAsync`, used by eval). Each stage is measured from inside the process: wall time, the process's user and
 * system CPU, and the CPU of its busiest thread (on an idle machine the wall time cannot be
 * shorter than that). Prints one JSON object.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { FaissIndex, searchIvfPqAsync, setNumThreads, trainIvfPqToFile } from "../lib/index/mod.ts";
import { MappedArray } from "../lib/storage/mmap.ts";
import { sha256File, sha256Hex } from "../lib/core/_hash.ts";
import { type StageMeasure, stageOf, threadCpu } from "./stage_measure.ts";

const INTS = [
  "rows",
  "train-size",
  "nlist",
  "m",
  "nbits",
  "nprobe",
  "k",
  "add-chunk",
  "search-batch",
  "threads",
] as const;

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: Object.fromEntries(
      ["keys", "queries", "out", ...INTS].map((k) => [k, { type: "string" as const }]),
    ),
  });
  const v = values as Record<string, string | undefined>;
  const int: Record<string, number> = {};
  for (const k of INTS) {
    const n = Number(v[k]);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${k}: expected an integer ≥ 1`);
    int[k] = n;
  }
  for (const k of ["keys", "queries", "out"]) if (!v[k]) throw new Error(`--${k} is required`);
  setNumThreads(int.threads);
  using keys = MappedArray.open(v.keys!, { mode: "r", dtypes: ["<f4"] });
  using queries = MappedArray.open(v.queries!, { mode: "r", dtypes: ["<f4"] });
  const d = keys.rowLength;
  const rows = Math.min(int.rows, keys.rows);
  const params = { d, nlist: int.nlist, m: int.m, nbits: int.nbits };
  // Training rows copied into memory before the clock starts, as the Python side does.
  const trainX = (keys.view(0, Math.min(int["train-size"], rows)) as Float32Array).slice();
  const stages: Record<string, StageMeasure> = {};
  const stockPath = join(v.out!, "toolkit_trained.index");
  const parallelPath = join(v.out!, "toolkit_trained_parallel.index");

  stages.train = await stageOf(async () => {
    using index = FaissIndex.ivfpq(params);
    await index.trainAsync(trainX, { parallelPq: false }); // FAISS as Python runs it
    index.write(stockPath);
  });
  stages.trainParallel = await stageOf(async () => {
    await trainIvfPqToFile({ ...params, x: trainX, path: parallelPath });
  });

  using index = FaissIndex.read(stockPath);
  stages.add = await stageOf(async () => {
    const chunk = int["add-chunk"];
    for (let s = 0; s < rows; s += chunk) {
      const e = Math.min(rows, s + chunk);
      const ids = new BigInt64Array(e - s);
      for (let i = 0; i < ids.length; i++) ids[i] = BigInt(s + i);
      await index.addWithIdsAsync({ pointer: keys.pointer(s), n: e - s, dtype: "float32" }, ids);
    }
    index.nprobe = int.nprobe;
  });

  const nq = queries.rows;
  const k = int.k;
  const labels = new BigInt64Array(nq * k);
  stages.search = await stageOf(async () => {
    const batch = int["search-batch"];
    for (let s = 0; s < nq; s += batch) {
      const e = Math.min(nq, s + batch);
      const r = await index.searchAsync(
        { pointer: queries.pointer(s), n: e - s, dtype: "float32" },
        k,
      );
      labels.set(r.labels, s * k);
    }
  });

  // The toolkit's own IVFPQ search (what eval uses): the same results with less work.
  const fastLabels = new BigInt64Array(nq * k);
  stages.searchFast = await stageOf(async () => {
    const batch = int["search-batch"];
    for (let s = 0; s < nq; s += batch) {
      const e = Math.min(nq, s + batch);
      const q = (queries.view(s, e) as Float32Array).slice();
      const r = await searchIvfPqAsync(index, q, k);
      fastLabels.set(r.labels, s * k);
    }
  });

  console.log(JSON.stringify({
    side: "toolkit",
    threads: int.threads,
    rows,
    nq,
    stages,
    threadsAtEnd: threadCpu().size,
    trainedSha256: await sha256File(stockPath),
    trainedParallelSha256: await sha256File(parallelPath),
    labelsSha256: sha256Hex(new Uint8Array(labels.buffer)),
    searchFastLabelsSha256: sha256Hex(new Uint8Array(fastLabels.buffer)),
  }));
}

if (import.meta.main) await main();
