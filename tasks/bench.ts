/**
 * `deno task bench`: the toolkit against the Python reference pipeline (bench/reference.py)
 * on the same tokens, weights, index parameters and thread count; medians of several
 * repetitions, toolkit/reference ratios, peak memory. Writes bench/results/latest.json and
 * bench/results/latest.md and prints the Markdown.
 *
 *   deno task bench [--tokens N] [--eval-tokens N] [--reps N] [--threads N] [--nlist N] …
 *   deno task bench --stages [--rows N] [--queries N] [--keys FILE] …
 *
 * `--stages` runs the stage microbenchmark instead (bench/stages.ts): FAISS train, add and
 * search of the same arrays through the toolkit's binding and from Python, paired, and writes
 * bench/results/stages.json and stages.md.
 * @module
 */

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type BenchSettings, runBench } from "../bench/harness.ts";
import { renderMarkdown, type Side, SIDES } from "../bench/report.ts";
import { renderStagesMarkdown, runStageBench, type StageSettings } from "../bench/stages.ts";

const DEFAULTS = {
  corpus: "brown:train",
  "eval-corpus": "brown:test",
  tokens: 200_000,
  "eval-tokens": 10_000,
  reps: 3,
  threads: 0,
  "seq-len": 256,
  stride: 128,
  "batch-size": 8,
  nlist: 1024,
  m: 64,
  nbits: 8,
  nprobe: 8,
  // 50k training keys: enough for nlist 1024 (≥ 39 per centroid) and near FAISS's PQ cap of
  // 65,536 points per codebook, while keeping three repetitions of both sides in minutes.
  "train-size": 50_000,
  "add-chunk": 1024,
  seed: 1,
  k: 1024,
  lambda: 0.25,
  sides: "toolkit,reference",
  "model-dir": "models",
  "work-dir": "data/bench",
  "results-dir": "bench/results",
  python: "/usr/bin/python3",
  "interval-ms": 20,
  nice: 0,
  "wait-policy": "PASSIVE",
  "blas-core": "auto",
  rows: 100_000,
  queries: 2048,
  "search-batch": 1024,
  keys: "",
};

// Defaults that differ in --stages mode: a quick run (a few minutes on 2 idle cores) that still
// trains (10k rows: 39 per PQ centroid), adds and searches enough to show the binding's overhead.
const STAGE_DEFAULTS: Partial<Record<keyof typeof DEFAULTS, number>> = {
  nlist: 256,
  "train-size": 10_000,
  rows: 50_000,
};

const HELP = `Usage: deno task bench [options]

Builds a datastore and evaluates it with the toolkit (deno run -A cli.ts build-index / eval)
and with the Python reference (/usr/bin/python3 bench/reference.py build / eval), alternately,
on the same tokens (written by the toolkit's corpus loader), the same weights (models/
byte_gpt.onnx and byte_gpt.pt), the same index parameters and thread count. Reports medians,
toolkit/reference ratios and peak memory (VmHWM, RssAnon sampled from /proc) and writes
bench/results/latest.json and latest.md.

Options (defaults in brackets):
  --tokens N          datastore tokens, the first N of --corpus [${DEFAULTS.tokens}]
  --eval-tokens N     evaluation tokens, the first N of --eval-corpus [${DEFAULTS["eval-tokens"]}]
  --corpus SPEC       datastore corpus, toolkit syntax [${DEFAULTS.corpus}]
  --eval-corpus SPEC  evaluation corpus [${DEFAULTS["eval-corpus"]}]
  --reps N            repetitions per side [${DEFAULTS.reps}]
  --threads N         threads for both sides, 0 = all cores [all cores]
  --seq-len N --stride N --batch-size N        windows [256, 128, 8]
  --nlist N --m N --nbits N --nprobe N         IVFPQ [${DEFAULTS.nlist}, 64, 8, 8]
  --train-size N      training sample [${DEFAULTS["train-size"]}, clamped to the keys]
  --add-chunk N       keys per add_with_ids call, both sides [${DEFAULTS["add-chunk"]}]
  --seed N            sample seed [1]
  --k N               neighbours per eval query [${DEFAULTS.k}]
  --lambda X          interpolation weight reported [${DEFAULTS.lambda}]
  --sides LIST        toolkit,reference or one of them [${DEFAULTS.sides}]
  --model-dir DIR     byte_gpt.onnx, byte_gpt.pt, config.json [${DEFAULTS["model-dir"]}]
  --work-dir DIR      token files and datastores [${DEFAULTS["work-dir"]}]
  --results-dir DIR   where latest.json / latest.md go [${DEFAULTS["results-dir"]}]
  --python PATH       Python with torch, faiss, numpy [${DEFAULTS.python}]
  --interval-ms N     /proc sampling interval [${DEFAULTS["interval-ms"]}]
  --nice N            run both sides under nice -n N [0: not]
  --wait-policy P     OMP_WAIT_POLICY for both sides, PASSIVE or ACTIVE [${DEFAULTS["wait-policy"]}]
  --blas-core C       OpenBLAS kernels for both sides: auto (force the family the CPU
                      supports when OpenBLAS falls back to a generic core), none (its own
                      choice) or an OPENBLAS_CORETYPE name [${DEFAULTS["blas-core"]}]
  --env KEY=VALUE     extra environment for both sides, repeatable (wins over the above)
  --keep              keep the datastores in --work-dir
  -h, --help          this help

Stage microbenchmark (--stages): FAISS's IVFPQ train, add and search of the same arrays, the
toolkit's FaissIndex (FFI) against Python FAISS, each its own process, alternating, with the
same thread environment; plus the toolkit's parallel PQ training. Writes stages.json/.md.
Uses --reps --threads --nlist [256 here] --m --nbits --nprobe --train-size [10000 here]
--add-chunk --k --seed --wait-policy --blas-core --env --python --work-dir --results-dir, and:
  --stages            run the stage benchmark instead of the pipeline one
  --rows N            keys added [${STAGE_DEFAULTS.rows}]
  --queries N         queries searched [${DEFAULTS.queries}]
  --search-batch N    queries per search call [${DEFAULTS["search-batch"]}]
  --keys FILE         a float32 keys.npy to use instead of synthetic d=192 keys`;

const INT_FLAGS = [
  "tokens",
  "eval-tokens",
  "reps",
  "threads",
  "seq-len",
  "stride",
  "batch-size",
  "nlist",
  "m",
  "nbits",
  "nprobe",
  "train-size",
  "add-chunk",
  "seed",
  "k",
  "interval-ms",
  "nice",
  "rows",
  "queries",
  "search-batch",
] as const;

function main(argv: string[]): Promise<number> | number {
  const options = Object.fromEntries([
    ...Object.keys(DEFAULTS).map((k) => [k, { type: "string" }]),
    ["keep", { type: "boolean" }],
    ["stages", { type: "boolean" }],
    ["env", { type: "string", multiple: true }],
    ["help", { type: "boolean", short: "h" }],
  ]) as Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }>;
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    values = parseArgs({ args: argv, options, strict: true }).values as typeof values;
  } catch (e) {
    console.error(`error: ${(e as Error).message.split("\n")[0]}\nhint: deno task bench --help`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const stages = !!values.stages;
  const str = (k: keyof typeof DEFAULTS) =>
    (values[k] as string | undefined) ??
      String((stages ? STAGE_DEFAULTS[k] : undefined) ?? DEFAULTS[k]);
  const ints: Record<string, number> = {};
  for (const k of INT_FLAGS) {
    const n = Number(str(k));
    const min = k === "threads" || k === "nice" || k === "seed" ? 0 : 1;
    if (!Number.isInteger(n) || n < min) {
      console.error(`error: --${k}: expected an integer ≥ ${min}, found '${str(k)}'`);
      return 2;
    }
    ints[k] = n;
  }
  const lambda = Number(str("lambda"));
  if (!(lambda > 0 && lambda < 1)) {
    console.error(`error: --lambda: expected a number in (0, 1), found '${str("lambda")}'`);
    return 2;
  }
  const sides = str("sides").split(",").map((x) => x.trim()).filter((x) => x);
  const unknown = sides.filter((x) => !(SIDES as readonly string[]).includes(x));
  if (unknown.length || sides.length === 0) {
    console.error(`error: --sides: expected toolkit, reference or both, found '${str("sides")}'`);
    return 2;
  }
  const waitPolicy = str("wait-policy").toUpperCase();
  if (waitPolicy !== "PASSIVE" && waitPolicy !== "ACTIVE") {
    console.error(`error: --wait-policy: expected PASSIVE or ACTIVE, found '${waitPolicy}'`);
    return 2;
  }
  const blasCore = str("blas-core");
  if (!/^[A-Za-z0-9_]+$/.test(blasCore)) {
    console.error(`error: --blas-core: expected auto, none or a core name, found '${blasCore}'`);
    return 2;
  }
  const env: Record<string, string> = {};
  for (const kv of (values.env as string[] | undefined) ?? []) {
    const eq = kv.indexOf("=");
    if (eq < 1) {
      console.error(`error: --env: expected KEY=VALUE, found '${kv}'`);
      return 2;
    }
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const threads = ints.threads || navigator.hardwareConcurrency || 1;
  if (stages) {
    return runStages({
      rows: ints.rows,
      d: 192,
      queries: ints.queries,
      trainSize: ints["train-size"],
      nlist: ints.nlist,
      m: ints.m,
      nbits: ints.nbits,
      nprobe: ints.nprobe,
      k: ints.k,
      addChunk: ints["add-chunk"],
      searchBatch: ints["search-batch"],
      threads,
      reps: ints.reps,
      seed: ints.seed,
      waitPolicy,
      blasCore,
      keysFile: str("keys") || undefined,
      env,
    }, values);
  }
  const settings: BenchSettings = {
    corpus: str("corpus"),
    evalCorpus: str("eval-corpus"),
    tokens: ints.tokens,
    evalTokens: ints["eval-tokens"],
    reps: ints.reps,
    threads,
    seqLen: ints["seq-len"],
    stride: ints.stride,
    batchSize: ints["batch-size"],
    nlist: ints.nlist,
    m: ints.m,
    nbits: ints.nbits,
    nprobe: ints.nprobe,
    trainSize: ints["train-size"],
    addChunk: ints["add-chunk"],
    seed: ints.seed,
    k: ints.k,
    lambda,
    sides: [...new Set(sides)] as Side[],
    modelDir: str("model-dir"),
    intervalMs: ints["interval-ms"],
    nice: ints.nice,
    waitPolicy,
    blasCore,
    env,
  };
  return run(settings, values);
}

async function writeResults(dir: string, files: [string, string][]) {
  await Deno.mkdir(dir, { recursive: true });
  for (const [name, text] of files) {
    const path = join(dir, name);
    await Deno.writeTextFile(`${path}.tmp`, text);
    await Deno.rename(`${path}.tmp`, path);
  }
}

async function runStages(settings: StageSettings, values: Record<string, unknown>) {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const resultsDir = resolve(root, (values["results-dir"] as string) ?? DEFAULTS["results-dir"]);
  try {
    const results = await runStageBench(settings, {
      root,
      workDir: resolve(root, (values["work-dir"] as string) ?? DEFAULTS["work-dir"]),
      python: (values.python as string) ?? DEFAULTS.python,
      deno: Deno.execPath(),
      log: (line) => console.error(line),
    });
    const md = renderStagesMarkdown(results);
    await writeResults(resultsDir, [
      ["stages.json", JSON.stringify(results, null, 2) + "\n"],
      ["stages.md", md],
    ]);
    console.log(md);
    console.error(`results: ${join(resultsDir, "stages.json")}, ${join(resultsDir, "stages.md")}`);
    return 0;
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
}

async function run(settings: BenchSettings, values: Record<string, unknown>): Promise<number> {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const resultsDir = resolve(root, (values["results-dir"] as string) ?? DEFAULTS["results-dir"]);
  try {
    const results = await runBench(settings, {
      root,
      workDir: resolve(root, (values["work-dir"] as string) ?? DEFAULTS["work-dir"]),
      python: (values.python as string) ?? DEFAULTS.python,
      deno: Deno.execPath(),
      keep: !!values.keep,
      log: (line) => console.error(line),
    });
    const md = renderMarkdown(results);
    await writeResults(resultsDir, [
      ["latest.json", JSON.stringify(results, null, 2) + "\n"],
      ["latest.md", md],
    ]);
    console.log(md);
    console.error(`results: ${join(resultsDir, "latest.json")}, ${join(resultsDir, "latest.md")}`);
    return 0;
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    if (settings.sides.includes("toolkit")) {
      console.error("hint: --sides reference runs the Python side alone");
    }
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
