/**
 * The stage microbenchmark (`deno task bench --stages`): FAISS's IVFPQ train, add and search
 * of the SAME arrays (written once as `.npy`), through the toolkit's FFI binding
 * (`bench/stages_toolkit.ts`) and from Python (`bench/stages.py`), each side its own process,
 * alternating, under the same explicit thread environment. The same library does the work on
 * both sides, so a ratio away from 1 is the binding's (or the machine's noise: see the busiest-
 * thread column, which load does not inflate as much as wall time). The toolkit's parallel PQ
 * training is reported beside FAISS's own. Trained index files and search results are compared
 * byte for byte.
 *
 * @module
 */

import { join, resolve } from "node:path";
import type { BlasRecord, Side } from "./report.ts";
import { MappedArray } from "../lib/storage/mmap.ts";
import { probeBlas, removeDir } from "./harness.ts";
import { tail } from "../lib/core/_run.ts";
import { runMeasured } from "./proc.ts";
import { parseJsonOutput } from "./outputs.ts";
import { encodeFloat32Npy, gaussianMixture } from "./tokens.ts";
import { threadEnvironment } from "./thread_env.ts";
import { loadAverage, type MachineInfo, machineInfo } from "./machine.ts";
import { formatNumber, formatRatio, median, ratio } from "./stats.ts";
import type { StageMeasure } from "./stage_measure.ts";

/** Settings of a stage benchmark (both sides get the same). */
export interface StageSettings {
  /** Keys to add (rows of the keys file). */
  rows: number;
  /** Key width of the synthetic keys. */
  d: number;
  /** Query rows. */
  queries: number;
  /** Training rows (the first rows of the keys). */
  trainSize: number;
  nlist: number;
  m: number;
  nbits: number;
  nprobe: number;
  /** Neighbours per query. */
  k: number;
  /** Keys per `add_with_ids` call. */
  addChunk: number;
  /** Queries per search call. */
  searchBatch: number;
  /** Threads per side. */
  threads: number;
  /** Repetitions per side. */
  reps: number;
  /** Seed of the synthetic data. */
  seed: number;
  /** `OMP_WAIT_POLICY` of both sides. */
  waitPolicy: "PASSIVE" | "ACTIVE";
  /** `"auto"`, `"none"` or an `OPENBLAS_CORETYPE`. */
  blasCore: string;
  /** A float32 `keys.npy` to use instead of synthetic keys (e.g. a datastore's). */
  keysFile?: string;
  /** Extra environment for both sides. */
  env?: Record<string, string>;
}

/** Where things are. */
export interface StageEnvironment {
  /** Repository root. */
  root: string;
  /** Scratch directory (arrays, trained indexes). */
  workDir: string;
  /** Python with faiss and numpy. */
  python: string;
  /** Deno executable. */
  deno: string;
  /** Progress lines. */
  log: (line: string) => void;
}

/** One side's output in one repetition. */
export interface StageRun {
  rep: number;
  side: Side;
  /** Per stage: `train`, `trainParallel` (toolkit only), `add`, `search`, `searchFast` (toolkit). */
  stages: Record<string, StageMeasure>;
  trainedSha256: string;
  trainedParallelSha256?: string;
  labelsSha256: string;
  /** The toolkit's own IVFPQ search (toolkit only). */
  searchFastLabelsSha256?: string;
  /** Whole process, as the harness measured it. */
  processWallSeconds: number;
  peakRssAnon?: number;
}

/** Medians of one side's stage (seconds); `cpu` = user + sys. */
export interface StageMedians {
  wall?: number;
  user?: number;
  sys?: number;
  busiestThread?: number;
  cpu?: number;
}

/** Medians of one stage. */
export interface StageRow {
  /** Stage key. */
  stage: string;
  /** Row label. */
  label: string;
  /** The toolkit's medians for this stage. */
  toolkit: StageMedians;
  /** The reference's medians for the stage it is compared with. */
  reference: StageMedians;
  /** Median wall, toolkit / reference. */
  wallRatio?: number;
  /** Median busiest-thread CPU, toolkit / reference. */
  busiestRatio?: number;
  /** Median process CPU (user + sys), toolkit / reference. */
  cpuRatio?: number;
}

/** Everything `stages.json` holds. */
export interface StageResults {
  schema: 1;
  kind: "stages";
  startedAt: string;
  totalSeconds: number;
  machine: MachineInfo & { blas: BlasRecord; loadAverageEnd?: number };
  settings: StageSettings & { threadEnv: Record<string, string>; data: string };
  runs: StageRun[];
  rows: StageRow[];
  checks: {
    /** Every trained index file (both sides, stock and parallel) has the same bytes. */
    trainedIdentical: boolean;
    /** The search labels of both sides (and of the toolkit's IVFPQ search) are the same bytes. */
    labelsIdentical: boolean;
  };
}

const ROWS: { stage: string; reference: string; label: string }[] = [
  { stage: "train", reference: "train", label: "train (FAISS's IndexIVFPQ::train)" },
  {
    stage: "trainParallel",
    reference: "train",
    label: "train, toolkit's parallel PQ vs FAISS's",
  },
  { stage: "add", reference: "add", label: "add_with_ids from the mapped .npy" },
  { stage: "search", reference: "search", label: "search (FAISS's IndexIVF::search)" },
  {
    stage: "searchFast",
    reference: "search",
    label: "search, toolkit's IVFPQ search vs FAISS's",
  },
];

/** Medians per stage and the toolkit/reference ratios. */
export function summarizeStages(runs: readonly StageRun[]): StageRow[] {
  return ROWS.map(({ stage, reference, label }) => {
    const pick = (side: Side, key: string): StageMedians => {
      const rs = runs.filter((r) => r.side === side && r.stages[key]);
      const med = (f: (m: StageMeasure) => number) => median(rs.map((r) => f(r.stages[key])));
      return {
        wall: med((m) => m.wall),
        user: med((m) => m.user),
        sys: med((m) => m.sys),
        busiestThread: med((m) => m.busiestThread),
        cpu: med((m) => m.user + m.sys),
      };
    };
    const tk = pick("toolkit", stage);
    const ref = pick("reference", reference);
    return {
      stage,
      label,
      toolkit: tk,
      reference: ref,
      wallRatio: ratio(tk.wall, ref.wall),
      busiestRatio: ratio(tk.busiestThread, ref.busiestThread),
      cpuRatio: ratio(tk.cpu, ref.cpu),
    };
  });
}

/** Runs the stage benchmark. */
export async function runStageBench(
  s: StageSettings,
  env: StageEnvironment,
): Promise<StageResults> {
  const startedAt = new Date().toISOString();
  const t0 = performance.now();
  const root = resolve(env.root);
  const work = resolve(env.workDir, "stages");
  await Deno.mkdir(work, { recursive: true });
  const machine = machineInfo();

  // The arrays both sides read: synthetic (seeded Gaussian mixture) unless a keys file is given.
  const queriesPath = join(work, "queries.npy");
  let keysPath: string;
  let data: string;
  if (s.keysFile) {
    keysPath = resolve(s.keysFile);
    data = `${keysPath} (first ${s.rows} rows); queries: ${s.queries} rows spread over them`;
    await writeQueriesFrom(keysPath, s, queriesPath);
  } else {
    keysPath = join(work, "keys.npy");
    data = `synthetic: ${s.rows} × ${s.d} float32, mixture of 1024 Gaussians, seed ${s.seed}; ` +
      `${s.queries} queries from the same mixture`;
    env.log(`writing ${data}`);
    const all = gaussianMixture(s.rows + s.queries, s.d, 1024, s.seed);
    await Deno.writeFile(keysPath, encodeFloat32Npy(all.subarray(0, s.rows * s.d), s.rows, s.d));
    await Deno.writeFile(
      queriesPath,
      encodeFloat32Npy(all.subarray(s.rows * s.d), s.queries, s.d),
    );
  }

  const blas = await probeBlas({ ...s, deno: env.deno, root, log: env.log });
  const threadEnv: Record<string, string> = {
    ...threadEnvironment({
      threads: s.threads,
      waitPolicy: s.waitPolicy,
      blasCore: blas.forcedCore,
    }),
    PYTHONDONTWRITEBYTECODE: "1",
    ...s.env,
  };
  env.log(
    `thread environment (both sides): ${
      Object.entries(threadEnv).map(([k, v]) => `${k}=${v}`).join(" ")
    }`,
  );
  const common = [
    "--keys",
    keysPath,
    "--queries",
    queriesPath,
    "--out",
    work,
    "--rows",
    String(s.rows),
    "--train-size",
    String(s.trainSize),
    "--nlist",
    String(s.nlist),
    "--m",
    String(s.m),
    "--nbits",
    String(s.nbits),
    "--nprobe",
    String(s.nprobe),
    "--k",
    String(s.k),
    "--add-chunk",
    String(s.addChunk),
    "--search-batch",
    String(s.searchBatch),
    "--threads",
    String(s.threads),
  ];
  const argv: Record<Side, string[]> = {
    toolkit: [env.deno, "run", "-A", "bench/stages_toolkit.ts", ...common],
    reference: [env.python, join(root, "bench", "stages.py"), ...common],
  };
  const runs: StageRun[] = [];
  try {
    for (let rep = 0; rep < s.reps; rep++) {
      const order: Side[] = rep % 2 === 0 ? ["toolkit", "reference"] : ["reference", "toolkit"];
      for (const side of order) {
        const [command, ...args] = argv[side];
        const run = await runMeasured({ command, args, cwd: root, env: threadEnv });
        if (run.code !== 0) {
          throw new Error(`${side} stages failed (exit ${run.code}):\n${tail(run.stderr)}`);
        }
        const out = parseJsonOutput(run.stdout) as Omit<StageRun, "rep" | "processWallSeconds">;
        runs.push({
          ...out,
          rep,
          side,
          processWallSeconds: run.wallSeconds,
          peakRssAnon: run.peakRssAnon,
        });
        const st = out.stages;
        env.log(
          `rep ${rep + 1}/${s.reps} ${side.padEnd(9)} ` +
            Object.entries(st).map(([k, v]) =>
              `${k} ${v.wall.toFixed(2)} s (busiest thread ${v.busiestThread.toFixed(2)} s)`
            ).join(", "),
        );
      }
    }
  } finally {
    for (const f of ["toolkit_trained.index", "toolkit_trained_parallel.index"]) {
      await Deno.remove(join(work, f)).catch(() => {});
    }
    await Deno.remove(join(work, "reference_trained.index")).catch(() => {});
  }
  const hashes = new Set(
    runs.flatMap((r) => [r.trainedSha256, r.trainedParallelSha256].filter((h) => h)),
  );
  const labels = new Set(
    runs.flatMap((r) => [r.labelsSha256, r.searchFastLabelsSha256].filter((h) => h)),
  );
  if (!s.keysFile) await removeDir(work);
  return {
    schema: 1,
    kind: "stages",
    startedAt,
    totalSeconds: (performance.now() - t0) / 1000,
    machine: { ...machine, blas, loadAverageEnd: loadAverage() },
    settings: { ...s, threadEnv, data },
    runs,
    rows: summarizeStages(runs),
    checks: { trainedIdentical: hashes.size === 1, labelsIdentical: labels.size === 1 },
  };
}

// Queries for a real keys file: `queries` rows spread evenly over its first `rows` rows.
async function writeQueriesFrom(keysPath: string, s: StageSettings, out: string) {
  using keys = MappedArray.open(keysPath, { mode: "r", dtypes: ["<f4"] });
  const d = keys.rowLength;
  const n = Math.min(s.rows, keys.rows);
  const q = new Float32Array(s.queries * d);
  for (let i = 0; i < s.queries; i++) {
    const row = Math.floor((i * n) / s.queries);
    q.set(keys.view(row, row + 1) as Float32Array, i * d);
  }
  await Deno.writeFile(out, encodeFloat32Npy(q, s.queries, d));
}

/** The Markdown report of a stage benchmark. */
export function renderStagesMarkdown(res: StageResults): string {
  const s = res.settings;
  const m = res.machine;
  const sec = (x: number | undefined) => formatNumber(x, 2);
  const row = (r: StageRow) =>
    `| ${r.label} | ${sec(r.toolkit.wall)} | ${sec(r.reference.wall)} | ${
      formatRatio(r.wallRatio)
    } | ${sec(r.toolkit.busiestThread)} | ${sec(r.reference.busiestThread)} | ${
      formatRatio(r.busiestRatio)
    } | ${sec(r.toolkit.cpu)} | ${sec(r.reference.cpu)} | ${sec(r.toolkit.sys)} | ${
      sec(r.reference.sys)
    } |`;
  const b = m.blas;
  return [
    "# knnlm stage benchmark: FAISS through the toolkit's binding vs Python",
    "",
    `${res.startedAt} · ${m.cpu}, ${m.cores} cores · ${m.os}, load average ${
      m.loadAverage ?? "?"
    } at start, ${m.loadAverageEnd ?? "?"} at end · took ${formatNumber(res.totalSeconds, 0)} s`,
    "",
    `- data: ${s.data}`,
    `- IVF${s.nlist},PQ${s.m}x${s.nbits}, trained on the first ${s.trainSize} rows; add in ` +
    `chunks of ${s.addChunk}; search k ${s.k}, nprobe ${s.nprobe}, ${s.searchBatch} queries per call`,
    `- ${s.threads} threads per side, ${s.reps} repetition${s.reps === 1 ? "" : "s"} ` +
    `alternating, medians; thread ` +
    `environment of both sides: ${
      Object.entries(s.threadEnv).filter(([k]) => /THREADS|OMP_|OPENBLAS|MKL/.test(k))
        .map(([k, v]) => `\`${k}=${v}\``).join(", ")
    }`,
    `- SGEMM ${b.used.size}², ${s.threads} threads: ${formatNumber(b.used.gflops, 0)} GFLOP/s ` +
    `(${b.used.core})` +
    (b.forcedCore
      ? `; OpenBLAS alone picked ${b.detected.core}: ${formatNumber(b.detected.gflops, 0)} GFLOP/s`
      : ""),
    `- trained index files identical on both sides (and for the parallel PQ training): ` +
    `${res.checks.trainedIdentical}; search labels identical (both sides, and the toolkit's ` +
    `IVFPQ search): ${res.checks.labelsIdentical}`,
    "",
    "| stage | toolkit wall s | Python wall s | wall ratio | toolkit busiest thread s | " +
    "Python busiest thread s | busiest ratio | toolkit CPU s | Python CPU s | toolkit sys s | " +
    "Python sys s |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...res.rows.map(row),
    "",
    "Each side is its own process; a stage is timed inside it around the FAISS calls only " +
    "(arrays loaded and copied before the clock starts). Busiest thread: the CPU time of the " +
    "thread that worked most during the stage, a floor for the stage's wall time on an idle " +
    "machine that other load inflates far less than the wall time itself. Ratios are toolkit / " +
    "Python (below 1: the toolkit is faster).",
    "",
  ].join("\n");
}
