/**
 * The benchmark harness: writes the tokens both sides read, then runs the toolkit
 * (`cli.ts build-index` and `eval`) and the Python reference (`bench/reference.py build` and
 * `eval`) as child processes, alternating which goes first, several times; every process is
 * measured the same way (wall time, peak memory from `/proc`), and each side's own JSON gives
 * the stage times.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { loadCorpus } from "../lib/corpus/mod.ts";
import { tail } from "../lib/core/_run.ts";
import { loadAverage, machineInfo, systemCpu } from "./machine.ts";
import {
  type MeasuredRun,
  type MemoryPeaks,
  parsePidCpuSeconds,
  runMeasured,
  USER_HZ,
} from "./proc.ts";
import {
  type BenchChecks,
  type BenchResults,
  type BlasRecord,
  relativeDifference,
  type RepResult,
  type Side,
  summarize,
} from "./report.ts";
import { encodeTokensNpy } from "./tokens.ts";
import { parseJsonOutput, referenceValues, toolkitValues } from "./outputs.ts";
import {
  blasCoreOverride,
  keyFlopsPerWindowToken,
  parseCpuFlags,
  parseModelShape,
  threadEnvironment,
} from "./thread_env.ts";
import type { SgemmProbe } from "./sgemm_probe.ts";
import { planWindows } from "../lib/model/windows.ts";

/** Settings of one benchmark; the same values go to both sides. */
export interface BenchSettings {
  /** Datastore corpus spec (toolkit syntax). Default `brown:train`. */
  corpus: string;
  /** Evaluation corpus spec. Default `brown:test`. */
  evalCorpus: string;
  /** Datastore tokens (the first N of the corpus). */
  tokens: number;
  /** Evaluation tokens. */
  evalTokens: number;
  /** Repetitions per side. */
  reps: number;
  /** Threads for each side (model and FAISS; OMP/OpenBLAS env too). */
  threads: number;
  seqLen: number;
  stride: number;
  batchSize: number;
  nlist: number;
  m: number;
  nbits: number;
  nprobe: number;
  trainSize: number;
  addChunk: number;
  seed: number;
  /** Neighbours per eval query. */
  k: number;
  /** Interpolation weight reported. */
  lambda: number;
  /** Which sides run. */
  sides: Side[];
  /** Directory with `byte_gpt.onnx` (toolkit) and `config.json` + `byte_gpt.pt` (reference). */
  modelDir: string;
  /** `/proc` sampling interval in ms. */
  intervalMs: number;
  /** Niceness for the children (0: none). */
  nice: number;
  /** `OMP_WAIT_POLICY` for both sides. */
  waitPolicy: "PASSIVE" | "ACTIVE";
  /**
   * OpenBLAS kernels for both sides: `"auto"` forces the family the CPU supports when
   * OpenBLAS's own detection falls back to a generic core, `"none"` leaves its choice, any
   * other value is an `OPENBLAS_CORETYPE` for both.
   */
  blasCore: string;
  /** Extra environment variables for both sides (they win over the thread settings). */
  env?: Record<string, string>;
}

/** Where things are, and what to tell the user along the way. */
export interface BenchEnvironment {
  /** Repository root (children run there). */
  root: string;
  /** Scratch directory for token files and datastores. */
  workDir: string;
  /** Python with torch, faiss and numpy. */
  python: string;
  /** Deno executable for the toolkit side. */
  deno: string;
  /** Keep the datastores afterwards. */
  keep: boolean;
  /** Progress lines. */
  log: (line: string) => void;
}

/** A measured process, as recorded in the results: its memory peaks and CPU time, and more. */
interface RunRecord extends MemoryPeaks {
  rep: number;
  side: Side;
  step: "build" | "eval" | "compare";
  command: string[];
  wallSeconds: number;
  output: unknown;
}

type Json = Record<string, unknown>;

/** Removes a directory tree; a missing one is fine. */
export async function removeDir(path: string) {
  try {
    await Deno.remove(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

async function mustExist(path: string, what: string, hint: string) {
  try {
    await Deno.stat(path);
  } catch {
    throw new Error(`${path}: ${what} not found (${hint})`);
  }
}

/** Writes the first `max` tokens of `spec` (toolkit loader) as an int32 `.npy`. */
async function writeTokenFile(spec: string, max: number, path: string) {
  const corpus = await loadCorpus(spec);
  const count = Math.min(max, corpus.tokens.length);
  if (count < 2) throw new Error(`${spec}: ${count} tokens; a benchmark needs at least 2`);
  await Deno.writeFile(`${path}.tmp`, encodeTokensNpy(corpus.tokens.subarray(0, count)));
  await Deno.rename(`${path}.tmp`, path);
  return {
    path,
    spec,
    description: corpus.description,
    count,
    total: corpus.tokens.length,
    identity: corpus.identity,
  };
}

/** Runs the benchmark and returns its results (the caller writes and prints them). */
export async function runBench(s: BenchSettings, env: BenchEnvironment): Promise<BenchResults> {
  const startedAt = new Date().toISOString();
  const t0 = performance.now();
  const machine = machineInfo();
  const cpuAtStart = systemCpu();
  const root = resolve(env.root);
  const work = resolve(env.workDir);
  const modelDir = resolve(root, s.modelDir);
  const onnx = join(modelDir, "byte_gpt.onnx");
  const reference = join(root, "bench", "reference.py");
  if (s.sides.includes("toolkit")) {
    await mustExist(onnx, "ONNX model", "set --model-dir to the folder holding byte_gpt.onnx");
    await mustExist(join(root, "cli.ts"), "toolkit CLI", "run from the repository root");
  }
  if (s.sides.includes("reference")) {
    for (const f of ["config.json", "byte_gpt.pt"]) {
      await mustExist(
        join(modelDir, f),
        "PyTorch model file",
        "the reference loads config.json + byte_gpt.pt with python/model.py",
      );
    }
  }
  await Deno.mkdir(work, { recursive: true });

  env.log(`writing tokens: ${s.tokens} of ${s.corpus}, ${s.evalTokens} of ${s.evalCorpus}`);
  const dsTokens = await writeTokenFile(s.corpus, s.tokens, join(work, "datastore_tokens.npy"));
  const evTokens = await writeTokenFile(s.evalCorpus, s.evalTokens, join(work, "eval_tokens.npy"));
  if (dsTokens.count < s.tokens) {
    env.log(`warning: ${s.corpus} has only ${dsTokens.count} tokens; using all of them`);
  }

  // The same explicit thread environment for both sides: every pool they link, the OpenMP wait
  // policy (so the toolkit loader's PASSIVE default never applies to one side only) and, when
  // OpenBLAS does not recognise the CPU, the same kernel family for both.
  const blas = await probeBlas({ ...s, deno: env.deno, root, log: env.log });
  const threadEnv: Record<string, string> = {
    ...threadEnvironment({
      threads: s.threads,
      waitPolicy: s.waitPolicy,
      blasCore: blas.forcedCore,
    }),
    ONNXRUNTIME_NODE_INSTALL_CUDA: "skip",
    PYTHONDONTWRITEBYTECODE: "1",
    ...s.env,
  };
  env.log(
    `thread environment (both sides): ${
      Object.entries(threadEnv).map(([k, v]) => `${k}=${v}`).join(" ")
    }`,
  );
  const gatherFlopsPerKey = await flopsPerKey(modelDir, dsTokens.count, s.seqLen, s.stride);
  const dirOf = (side: Side) => join(work, side === "toolkit" ? "toolkit_ds" : "reference_ds");
  const shared = {
    seqLen: ["--seq-len", String(s.seqLen)],
    common: [
      "--stride",
      String(s.stride),
      "--batch-size",
      String(s.batchSize),
      "--threads",
      String(s.threads),
    ],
    index: [
      "--nlist",
      String(s.nlist),
      "--m",
      String(s.m),
      "--nbits",
      String(s.nbits),
      "--nprobe",
      String(s.nprobe),
      "--train-size",
      String(s.trainSize),
      "--add-chunk",
      String(s.addChunk),
      "--seed",
      String(s.seed),
    ],
  };
  const commands = {
    toolkit: {
      build: [
        env.deno,
        "run",
        "-A",
        "cli.ts",
        "build-index",
        "--out",
        dirOf("toolkit"),
        "--corpus",
        dsTokens.path,
        "--max-tokens",
        String(dsTokens.count),
        "--model",
        onnx,
        ...shared.seqLen,
        ...shared.common,
        ...shared.index,
        "--json",
      ],
      eval: [
        env.deno,
        "run",
        "-A",
        "cli.ts",
        "eval",
        "--datastore",
        dirOf("toolkit"),
        "--corpus",
        evTokens.path,
        "--max-tokens",
        String(evTokens.count),
        "--k",
        String(s.k),
        "--distance",
        "faiss",
        "--lambdas",
        String(s.lambda),
        "--batch-size",
        String(s.batchSize),
        "--threads",
        String(s.threads),
        "--json",
      ],
    },
    reference: {
      build: [
        env.python,
        reference,
        "build",
        "--tokens",
        dsTokens.path,
        "--model-dir",
        modelDir,
        "--out",
        dirOf("reference"),
        ...shared.seqLen,
        ...shared.common,
        ...shared.index,
      ],
      eval: [
        env.python,
        reference,
        "eval",
        "--tokens",
        evTokens.path,
        "--model-dir",
        modelDir,
        "--out",
        dirOf("reference"),
        ...shared.seqLen,
        ...shared.common,
        ...shared.index,
        "--k",
        String(s.k),
        "--lambdas",
        String(s.lambda),
      ],
    },
  } satisfies Record<Side, Record<"build" | "eval", string[]>>;

  const runs: RunRecord[] = [];
  const measure = async (
    rep: number,
    side: Side,
    step: RunRecord["step"],
    argv: string[],
  ): Promise<{ run: MeasuredRun; output: unknown }> => {
    const [cmd, ...args] = s.nice > 0 ? ["nice", "-n", String(s.nice), ...argv] : argv;
    const run = await runMeasured({
      command: cmd,
      args,
      cwd: root,
      env: threadEnv,
      intervalMs: s.intervalMs,
    });
    if (run.code !== 0) {
      throw new Error(
        `${side} ${step} failed (exit ${run.code}): ${argv.join(" ")}\n${tail(run.stderr, 15)}`,
      );
    }
    const output = parseJsonOutput(run.stdout);
    const { code: _c, stdout: _o, stderr: _e, ...measured } = run;
    runs.push({ rep, side, step, command: argv, ...measured, output });
    return { run, output };
  };

  const reps: RepResult[] = [];
  const versions: BenchResults["versions"] = {};
  const factories: Partial<Record<Side, string>> = {};
  const perplexities: Partial<Record<Side, { lm?: number; knn?: number }>> = {};
  let keysCheck: Json | undefined;
  try {
    for (let rep = 0; rep < s.reps; rep++) {
      // Alternate which side goes first, so drift in machine load hits both alike.
      const order = rep % 2 === 0 ? [...s.sides] : [...s.sides].reverse();
      for (const side of order) {
        await removeDir(dirOf(side));
        const b = await measure(rep, side, "build", commands[side].build);
        const e = await measure(rep, side, "eval", commands[side].eval);
        const values = side === "toolkit"
          ? toolkitValues(b.output, e.output)
          : referenceValues(b.output, e.output, s.lambda);
        Object.assign(values, {
          gatherGflops: values.gatherTokensPerSecond !== undefined && gatherFlopsPerKey
            ? values.gatherTokensPerSecond * gatherFlopsPerKey / 1e9
            : undefined,
          buildWallSeconds: b.run.wallSeconds,
          buildPeakHwm: b.run.peakHwm,
          buildPeakRssAnon: b.run.peakRssAnon,
          buildCpuSeconds: b.run.cpuSeconds,
          evalWallSeconds: e.run.wallSeconds,
          evalPeakHwm: e.run.peakHwm,
          evalPeakRssAnon: e.run.peakRssAnon,
          evalCpuSeconds: e.run.cpuSeconds,
        });
        reps.push({ rep, side, values });
        versions[side] ??= (b.output as Json).versions as Record<string, string>;
        factories[side] ??= side === "toolkit"
          ? ((b.output as Json).index as Json | undefined)?.factory as string
          : ((b.output as Json).train as Json | undefined)?.factory as string;
        perplexities[side] ??= { lm: values.lmPerplexity, knn: values.knnPerplexity };
        env.log(
          `rep ${rep + 1}/${s.reps} ${side.padEnd(9)} build ${b.run.wallSeconds.toFixed(1)} s ` +
            `(gather ${values.gatherSeconds?.toFixed(1)} s, train ${
              values.trainSeconds?.toFixed(1)
            } s, ` +
            `add ${values.addSeconds?.toFixed(1)} s), eval ${e.run.wallSeconds.toFixed(1)} s ` +
            `(${values.evalTokensPerSecond?.toFixed(0)} tok/s)`,
        );
      }
      if (rep === 0 && s.sides.length === 2) {
        // Same tokens, same weights, same windows: the keys should agree to float noise.
        const c = await measure(rep, "reference", "compare", [
          env.python,
          reference,
          "compare",
          "--out",
          dirOf("toolkit"),
          "--other",
          dirOf("reference"),
        ]);
        keysCheck = (c.output as Json).compare as Json;
      }
    }
  } finally {
    // Datastores are scratch: gone afterwards (also after a failure) unless --keep.
    if (!env.keep) { for (const side of s.sides) await removeDir(dirOf(side)); }
  }

  // CPU the rest of the machine used meanwhile: all busy time minus ours and our children's.
  let otherCpuShare: number | undefined;
  const cpuAtEnd = systemCpu();
  const own = parsePidCpuSeconds(Deno.readTextFileSync("/proc/self/stat")) ?? 0;
  if (cpuAtStart && cpuAtEnd && cpuAtEnd.total > cpuAtStart.total) {
    const children = runs.reduce((a, r) => a + (r.cpuSeconds ?? 0), 0);
    const busy = (cpuAtEnd.busy - cpuAtStart.busy) / USER_HZ - children - own;
    otherCpuShare = Math.max(0, busy / ((cpuAtEnd.total - cpuAtStart.total) / USER_HZ));
  }

  const checks: BenchChecks = {};
  if (perplexities.toolkit || perplexities.reference) {
    const [tk, ref] = [perplexities.toolkit, perplexities.reference];
    checks.lmPerplexity = {
      toolkit: tk?.lm,
      reference: ref?.lm,
      relativeDifference: relativeDifference(tk?.lm, ref?.lm),
    };
    checks.knnPerplexity = {
      toolkit: tk?.knn,
      reference: ref?.knn,
      relativeDifference: relativeDifference(tk?.knn, ref?.knn),
    };
  }
  if (keysCheck) checks.keys = keysCheck;
  return {
    schema: 1,
    startedAt,
    finishedAt: new Date().toISOString(),
    totalSeconds: (performance.now() - t0) / 1000,
    machine: { ...machine, loadAverageEnd: loadAverage(), otherCpuShare, blas },
    versions,
    settings: {
      ...s,
      factory: factories.reference ?? factories.toolkit,
      factories,
      threadEnv,
      gatherFlopsPerKey,
    },
    corpus: { datastore: dsTokens, eval: evTokens },
    reps,
    summary: summarize(reps),
    checks,
    runs: runs as unknown as Record<string, unknown>[],
  };
}

function readOr(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** What {@link probeBlas} needs: the sides' thread settings and where deno is. */
export interface BlasProbeOptions {
  /** Threads per side. */
  threads: number;
  /** `OMP_WAIT_POLICY` of both sides. */
  waitPolicy: "PASSIVE" | "ACTIVE";
  /** `"auto"`, `"none"` or an `OPENBLAS_CORETYPE` (see {@link BenchSettings.blasCore}). */
  blasCore: string;
  /** Extra environment for both sides. */
  env?: Record<string, string>;
  /** Deno executable. */
  deno: string;
  /** Repository root. */
  root: string;
  /** Progress lines. */
  log: (line: string) => void;
}

/**
 * Runs `bench/sgemm_probe.ts` under the sides' thread settings: once as OpenBLAS detects the
 * CPU, and, when `blasCore` asks for it, once more with the forced kernel family.
 */
export async function probeBlas(o: BlasProbeOptions): Promise<BlasRecord> {
  const probe = async (core?: string): Promise<SgemmProbe> => {
    const probeEnv = {
      ...threadEnvironment({ threads: o.threads, waitPolicy: o.waitPolicy, blasCore: core }),
      ...o.env,
    };
    const run = await runMeasured({
      command: o.deno,
      args: ["run", "-A", "bench/sgemm_probe.ts", "--threads", String(o.threads)],
      cwd: o.root,
      env: probeEnv,
      intervalMs: 100,
    });
    if (run.code !== 0) {
      throw new Error(`SGEMM probe failed (exit ${run.code}):\n${tail(run.stderr)}`);
    }
    return parseJsonOutput(run.stdout) as SgemmProbe;
  };
  const detected = await probe();
  let forcedCore: string | undefined;
  if (o.blasCore === "auto") {
    forcedCore = blasCoreOverride(detected.core, parseCpuFlags(readOr("/proc/cpuinfo")));
  } else if (o.blasCore !== "none") {
    forcedCore = o.blasCore;
  }
  const used = forcedCore ? await probe(forcedCore) : detected;
  o.log(
    `SGEMM (${o.threads} threads): ${detected.gflops.toFixed(0)} GFLOP/s with OpenBLAS's ` +
      `${detected.core} kernels` +
      (forcedCore
        ? `; ${used.gflops.toFixed(0)} GFLOP/s with ${used.core} (both sides use it)`
        : ""),
  );
  return { detected, used, forcedCore };
}

/** The model FLOPs behind one key of the gather (see keyFlopsPerWindowToken), or undefined. */
async function flopsPerKey(
  modelDir: string,
  nTokens: number,
  seqLen: number,
  stride: number,
): Promise<number | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(join(modelDir, "config.json"));
  } catch {
    return undefined; // no config.json (toolkit side alone with another model): no GFLOP/s
  }
  const plan = planWindows(nTokens, seqLen, stride);
  const perToken = keyFlopsPerWindowToken(
    parseModelShape(text, join(modelDir, "config.json")),
    plan.length,
  );
  return perToken * plan.count * plan.length / plan.positions;
}
