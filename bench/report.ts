/**
 * The benchmark's results: the metrics compared, their medians over repetitions and the
 * Markdown report. Pure functions over plain data (the harness fills it in).
 *
 * @module
 */

import type { MachineInfo } from "./machine.ts";
import type { SgemmProbe } from "./sgemm_probe.ts";
import {
  describeRatio,
  formatMiB,
  formatNumber,
  formatRatio,
  median,
  type MetricKind,
  ratio,
} from "./stats.ts";

/** The two implementations compared. */
export type Side = "toolkit" | "reference";

/** Both sides, in report order. */
export const SIDES: readonly Side[] = ["toolkit", "reference"];

/** One compared quantity. */
export interface MetricDef {
  /** Key in {@link RepResult.values}. */
  key: string;
  /** Row label; `{k}` is replaced by the number of neighbours. */
  label: string;
  /** Unit of the values. */
  unit: "tok/s" | "s" | "bytes" | "CPU s" | "GFLOP/s";
  /** Decides whether a higher or lower ratio is better. */
  kind: MetricKind;
  /** Headline metrics come first in the table; the others follow under "details". */
  headline: boolean;
}

/** The metrics, in table order. */
export const METRICS: readonly MetricDef[] = [
  {
    key: "gatherTokensPerSecond",
    label: "gather",
    unit: "tok/s",
    kind: "throughput",
    headline: true,
  },
  {
    key: "gatherGflops",
    label: "gather, model FLOPs achieved",
    unit: "GFLOP/s",
    kind: "throughput",
    headline: true,
  },
  { key: "trainSeconds", label: "index training", unit: "s", kind: "time", headline: true },
  { key: "addSeconds", label: "adding", unit: "s", kind: "time", headline: true },
  {
    key: "buildWallSeconds",
    label: "whole build (process wall)",
    unit: "s",
    kind: "time",
    headline: true,
  },
  {
    key: "evalTokensPerSecond",
    label: "eval, k = {k}",
    unit: "tok/s",
    kind: "throughput",
    headline: true,
  },
  {
    key: "buildPeakHwm",
    label: "build peak RSS (VmHWM)",
    unit: "bytes",
    kind: "memory",
    headline: true,
  },
  {
    key: "buildPeakRssAnon",
    label: "build peak RssAnon",
    unit: "bytes",
    kind: "memory",
    headline: true,
  },
  {
    key: "evalPeakHwm",
    label: "eval peak RSS (VmHWM)",
    unit: "bytes",
    kind: "memory",
    headline: true,
  },
  {
    key: "evalPeakRssAnon",
    label: "eval peak RssAnon",
    unit: "bytes",
    kind: "memory",
    headline: true,
  },
  { key: "gatherSeconds", label: "gather", unit: "s", kind: "time", headline: false },
  {
    key: "stagesSeconds",
    label: "gather + training + adding",
    unit: "s",
    kind: "time",
    headline: false,
  },
  { key: "evalSeconds", label: "eval loop", unit: "s", kind: "time", headline: false },
  {
    key: "evalWallSeconds",
    label: "eval (process wall)",
    unit: "s",
    kind: "time",
    headline: false,
  },
  {
    key: "buildCpuSeconds",
    label: "build CPU time",
    unit: "CPU s",
    kind: "cpu",
    headline: false,
  },
  {
    key: "evalCpuSeconds",
    label: "eval CPU time",
    unit: "CPU s",
    kind: "cpu",
    headline: false,
  },
];

/** All metric values of one side in one repetition (`undefined`: not measured). */
export interface RepResult {
  /** Repetition, from 0. */
  rep: number;
  /** Which implementation. */
  side: Side;
  /** Metric key → value. */
  values: Record<string, number | undefined>;
}

/** One side's numbers for one metric. */
export interface SideSummary {
  /** Median over repetitions. */
  median?: number;
  /** Every repetition's value, in order. */
  values: (number | undefined)[];
}

/** One row of the comparison. */
export interface SummaryRow extends MetricDef {
  /** Per side. */
  toolkit: SideSummary;
  /** Per side. */
  reference: SideSummary;
  /** Median toolkit / median reference. */
  ratio?: number;
  /** Words for the ratio, e.g. `1.50× faster`. */
  verdict: string;
}

/** Medians and ratios of every metric. */
export function summarize(
  reps: readonly RepResult[],
  metrics: readonly MetricDef[] = METRICS,
): SummaryRow[] {
  return metrics.map((def) => {
    const side = (s: Side): SideSummary => {
      const values = reps.filter((r) => r.side === s).sort((a, b) => a.rep - b.rep)
        .map((r) => r.values[def.key]);
      return { median: median(values), values };
    };
    const toolkit = side("toolkit");
    const reference = side("reference");
    const r = ratio(toolkit.median, reference.median);
    return { ...def, toolkit, reference, ratio: r, verdict: describeRatio(r, def.kind) };
  });
}

/** A value in its unit, for a table cell. */
export function formatValue(x: number | undefined, unit: MetricDef["unit"]): string {
  if (unit === "bytes") return formatMiB(x);
  if (unit === "tok/s") return formatNumber(x, 0);
  if (unit === "CPU s" || unit === "GFLOP/s") return formatNumber(x, 1);
  return formatNumber(x, 2);
}

/** Relative difference |a − b| / |b|, or `undefined`. */
export function relativeDifference(a: number | undefined, b: number | undefined) {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) {
    return undefined;
  }
  return Math.abs(a - b) / Math.abs(b);
}

/** Cross-checks that both sides computed the same thing (informational, never pass/fail). */
export interface BenchChecks {
  /** LM perplexity on the eval tokens (same weights, same windows: should agree closely). */
  lmPerplexity?: { toolkit?: number; reference?: number; relativeDifference?: number };
  /** kNN-LM perplexity at λ (indexes are trained on different samples: close, not equal). */
  knnPerplexity?: { toolkit?: number; reference?: number; relativeDifference?: number };
  /** `bench/reference.py compare` of the two datastores built in the first repetition. */
  keys?: Record<string, unknown>;
}

/** The BLAS both sides ran with: what OpenBLAS chose itself and what was used. */
export interface BlasRecord {
  /** The SGEMM probe under OpenBLAS's own CPU detection. */
  detected: SgemmProbe;
  /** The probe under the kernels both sides ran with (equal to `detected` unless forced). */
  used: SgemmProbe;
  /** The `OPENBLAS_CORETYPE` both sides got, if any. */
  forcedCore?: string;
}

/** Everything `latest.json` holds. */
export interface BenchResults {
  /** Layout version of this file. */
  schema: 1;
  startedAt: string;
  finishedAt: string;
  /** Seconds the whole benchmark took. */
  totalSeconds: number;
  machine: MachineInfo & { blas?: BlasRecord };
  /** Versions each side reported. */
  versions: Partial<Record<Side, Record<string, string>>>;
  /** The settings used (the same for both sides). */
  settings: Record<string, unknown>;
  /** The token files both sides read. */
  corpus: Record<string, unknown>;
  /** Per repetition and side. */
  reps: RepResult[];
  /** Medians and ratios. */
  summary: SummaryRow[];
  /** Agreement between the sides. */
  checks: BenchChecks;
  /** Each measured process: command, wall time, memory peaks and its parsed JSON output. */
  runs: Record<string, unknown>[];
}

/** A 1-minute load average at the start at or above this means other work was running. */
export const BUSY_LOAD = 0.5;
/** A share of the machine's CPU time used by other processes at or above this is flagged. */
export const BUSY_SHARE = 0.1;

function versionLine(v: Record<string, string> | undefined): string {
  return v ? Object.entries(v).map(([k, x]) => `${k} ${x}`).join(", ") : "not run";
}

/** The Markdown report of a benchmark. */
export function renderMarkdown(res: BenchResults): string {
  const s = res.settings;
  const m = res.machine;
  const ram = m.memTotalBytes ? `${(m.memTotalBytes / 2 ** 30).toFixed(1)} GiB RAM` : "RAM ?";
  const load = m.loadAverage === undefined
    ? ""
    : `, load average ${m.loadAverage} at start, ${m.loadAverageEnd ?? "?"} at end`;
  // The load average at the end counts this benchmark itself; at the start it does not.
  const busy = (m.loadAverage ?? 0) >= BUSY_LOAD || (m.otherCpuShare ?? 0) >= BUSY_SHARE;
  const others = m.otherCpuShare === undefined
    ? ""
    : `; other processes used ${(m.otherCpuShare * 100).toFixed(0)} % of the CPU meanwhile`;
  const row = (r: SummaryRow) => {
    const unit = r.unit === "bytes" ? "" : ` (${r.unit})`;
    return `| ${r.label.replace("{k}", String(s.k))}${unit} | ${
      formatValue(r.toolkit.median, r.unit)
    } | ${formatValue(r.reference.median, r.unit)} | ${formatRatio(r.ratio)} | ${r.verdict} |`;
  };
  const head = [
    "| metric | toolkit | reference | toolkit / reference | toolkit is |",
    "|---|---:|---:|---:|---|",
  ];
  const c = res.checks;
  const threadEnv = (s.threadEnv ?? {}) as Record<string, string>;
  const envLine = `- thread environment, the same for both sides: ${
    Object.entries(threadEnv).filter(([k]) => /THREADS|OMP_|OPENBLAS|MKL/.test(k))
      .map(([k, v]) => `\`${k}=${v}\``).join(", ")
  }`;
  const blasLines = blasReport(m.blas, res.summary, s.threads as number);
  const pct = (x: number | undefined) => x === undefined ? "—" : `${(x * 100).toFixed(3)} %`;
  const checkLines: string[] = [];
  if (c.lmPerplexity) {
    checkLines.push(
      `- LM perplexity on the eval tokens: toolkit ${formatNumber(c.lmPerplexity.toolkit, 4)}, ` +
        `reference ${formatNumber(c.lmPerplexity.reference, 4)} ` +
        `(difference ${pct(c.lmPerplexity.relativeDifference)}; same weights and windows).`,
    );
  }
  if (c.knnPerplexity) {
    checkLines.push(
      `- kNN-LM perplexity at λ = ${s.lambda}: toolkit ${
        formatNumber(c.knnPerplexity.toolkit, 4)
      }, ` +
        `reference ${formatNumber(c.knnPerplexity.reference, 4)} ` +
        `(difference ${pct(c.knnPerplexity.relativeDifference)}; the two indexes are trained on ` +
        `different seeded samples, or the same keys in another order, so close rather than ` +
        `equal).`,
    );
  }
  if (c.keys) {
    const k = c.keys;
    checkLines.push(
      k.sameShape
        ? `- Keys of the first repetition: ${k.rows} rows, values equal: ${k.valsEqual}, ` +
          `max |Δkey| ${Number(k.keysMaxAbsDiff).toExponential(2)}, ` +
          `mean |Δkey| ${Number(k.keysMeanAbsDiff).toExponential(2)} (ONNX Runtime vs PyTorch).`
        : `- Keys of the first repetition differ in shape: ${JSON.stringify(k)}.`,
    );
  }
  const corpus = res.corpus as Record<string, { spec: string; count: number; total: number }>;
  const ds = corpus.datastore;
  const ev = corpus.eval;
  return [
    "# knnlm benchmark: toolkit vs Python reference",
    "",
    `${res.startedAt} · ${m.cpu}, ${m.cores} cores, ${ram} · ${m.os}${load}${others}`,
    "",
    `- toolkit: ${versionLine(res.versions.toolkit)}`,
    `- reference: ${versionLine(res.versions.reference)}`,
    `- datastore: first ${ds.count.toLocaleString("en-US")} tokens of \`${ds.spec}\`; eval: ` +
    `first ${ev.count.toLocaleString("en-US")} tokens of \`${ev.spec}\``,
    `- seqLen ${s.seqLen}, stride ${s.stride}, batch ${s.batchSize}; index ${s.factory} ` +
    `(requested nlist ${s.nlist}, m ${s.m}, nbits ${s.nbits}), nprobe ${s.nprobe}, ` +
    `trainSize ${s.trainSize}, add chunk ${s.addChunk}, seed ${s.seed}; k ${s.k}, λ ${s.lambda}`,
    `- threads: ${s.threads} per side; ${s.reps} repetition${s.reps === 1 ? "" : "s"}, ` +
    `sides alternating; ` +
    `medians below; took ${formatNumber(res.totalSeconds, 0)} s`,
    envLine,
    ...blasLines,
    "- what the toolkit does differently inside that environment: IVFPQ training trains the " +
    "PQ sub-quantizers in parallel, one per thread with OpenBLAS at 1 thread for that step " +
    "(FAISS's codebooks, byte for byte); eval searches with the toolkit's IVFPQ search " +
    "(FAISS's results, bit for bit), computes p_kNN natively, and keeps ONNX Runtime's " +
    "threads from spinning while FAISS runs beside them",
    "",
    ...(busy
      ? [
        `**The machine was busy** (load average ≥ ${BUSY_LOAD} at the start, or other processes ` +
        `took ≥ ${BUSY_SHARE * 100} % of the CPU while this ran): timings with ` +
        "more than one thread suffer from spin-waiting thread pools (OpenMP in PyTorch and " +
        "FAISS, ONNX Runtime's own pool) far more than from the work itself, and not equally " +
        "for both sides. Compare on an idle machine, or with `--threads 1`.",
        "",
      ]
      : []),
    ...head,
    ...res.summary.filter((r) => r.headline).map(row),
    "",
    "Details:",
    "",
    ...head,
    ...res.summary.filter((r) => !r.headline).map(row),
    "",
    ...(checkLines.length ? ["Cross-checks (informational):", "", ...checkLines, ""] : []),
    "How it is measured: each side runs as its own process (toolkit: `deno run -A cli.ts " +
    "build-index … --json` then `eval … --distance faiss`; reference: `/usr/bin/python3 " +
    "bench/reference.py build` then `eval`). Stage seconds are what each side reports for " +
    "the stage itself (model loading excluded); process wall times include start-up. Peak " +
    "memory is sampled by the harness from `/proc/<pid>/status` every ~" +
    `${s.intervalMs} ms for both sides alike: VmHWM counts mapped datastore pages, RssAnon ` +
    "only allocated memory. Timings depend on the machine and its load; they are never " +
    "pass/fail tests.",
    "",
  ].join("\n");
}

/** Lines on the BLAS and the machine's SGEMM rate, and how close the gather comes to it. */
export function blasReport(
  blas: BlasRecord | undefined,
  summary: readonly SummaryRow[],
  threads: number,
): string[] {
  if (!blas) return [];
  const { detected, used, forcedCore } = blas;
  const lines = [
    `- single SGEMM (${used.size}², ${threads} threads, the OpenBLAS FAISS and PyTorch use): ` +
    `${formatNumber(used.gflops, 0)} GFLOP/s with ${used.core} kernels` +
    (forcedCore
      ? `; OpenBLAS's own detection picked ${detected.core} (${
        formatNumber(detected.gflops, 0)
      } GFLOP/s), so both sides ran with \`OPENBLAS_CORETYPE=${forcedCore}\``
      : ""),
  ];
  const g = summary.find((r) => r.key === "gatherGflops");
  if (g && used.gflops > 0) {
    const pct = (x: number | undefined) =>
      x === undefined ? "—" : `${(100 * x / used.gflops).toFixed(0)} %`;
    lines.push(
      `- gather: ${formatNumber(g.toolkit.median, 1)} (toolkit) and ${
        formatNumber(g.reference.median, 1)
      } (reference) GFLOP/s of model FLOPs needed for the keys = ${pct(g.toolkit.median)} and ` +
        `${pct(g.reference.median)} of that SGEMM rate`,
    );
  }
  return lines;
}
