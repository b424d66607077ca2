/**
 * The machine's single-SGEMM rate through the BLAS that FAISS uses (the shim's OpenBLAS), run
 * as a child process of the benchmark so it sees exactly the thread and BLAS environment the
 * sides see. Prints one JSON object: the OpenBLAS core and thread count, the matrix size, and
 * the best GFLOP/s (wall) over the repetitions.
 *
 *   deno run -A bench/sgemm_probe.ts [--threads N] [--size N] [--seconds S]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { blasInfo, setBlasThreads, setNumThreads, sgemm } from "../lib/index/mod.ts";

/** What the probe prints. */
export interface SgemmProbe {
  /** OpenBLAS kernel family in use, or `"not OpenBLAS"`. */
  core: string;
  /** OpenBLAS's description of its build. */
  config?: string;
  /** OpenBLAS threads during the probe. */
  threads: number;
  /** Square matrix size. */
  size: number;
  /** Best rate over the timed repetitions, 2·n³ FLOPs per call. */
  gflops: number;
  /** Timed calls. */
  calls: number;
}

/** Times `c = a·b` for n×n matrices until `seconds` have passed (after one warm-up call). */
export function probeSgemm(threads: number, size: number, seconds: number): SgemmProbe {
  setNumThreads(threads);
  setBlasThreads(threads);
  const n = size;
  const a = new Float32Array(n * n).map((_, i) => ((i * 7919) % 1000) / 1000);
  const b = new Float32Array(n * n).map((_, i) => ((i * 104729) % 1000) / 1000);
  const c = new Float32Array(n * n);
  sgemm(n, n, n, a, b, c);
  let best = Infinity;
  let calls = 0;
  const until = performance.now() + seconds * 1000;
  do {
    const t = performance.now();
    sgemm(n, n, n, a, b, c);
    best = Math.min(best, (performance.now() - t) / 1000);
    calls++;
  } while (performance.now() < until || calls < 3);
  const info = blasInfo();
  return {
    core: info?.core ?? "not OpenBLAS",
    config: info?.config,
    threads: info?.threads ?? threads,
    size: n,
    gflops: (2 * n ** 3) / best / 1e9,
    calls,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      threads: { type: "string", default: String(navigator.hardwareConcurrency || 1) },
      size: { type: "string", default: "2048" },
      seconds: { type: "string", default: "2" },
    },
  });
  const num = (k: "threads" | "size" | "seconds") => {
    const v = Number(values[k]);
    if (!(v > 0)) {
      console.error(`error: --${k}: expected a number > 0, found '${values[k]}'`);
      Deno.exit(2);
    }
    return v;
  };
  console.log(JSON.stringify(probeSgemm(num("threads"), num("size"), num("seconds"))));
}
