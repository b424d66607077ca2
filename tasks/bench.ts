/**
 * `deno task bench`: the toolkit against the Python reference pipeline (bench/reference.py)
 * on the same tokens, weights, index parameters and thread count; medians of several
 * repetitions, toolkit/reference ratios, peak memory. Writes bench/results/latest.json and
 * bench/results/latest.md and prints the Markdown.
 *
 *   deno task bench [--tokens N] [--eval-tokens N] [--reps N] [--threads N] [--nlist N] …
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type BenchSettings, runBench } from "../bench/harness.ts";
import { renderMarkdown, type Side, SIDES } from "../bench/report.ts";

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
  --env KEY=VALUE     extra environment for both sides, repeatable (e.g.
                      OMP_WAIT_POLICY=PASSIVE on a machine shared with other work)
  --keep              keep the datastores in --work-dir
  -h, --help          this help`;

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
] as const;

function main(argv: string[]): Promise<number> | number {
  const options = Object.fromEntries([
    ...Object.keys(DEFAULTS).map((k) => [k, { type: "string" }]),
    ["keep", { type: "boolean" }],
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
  const str = (k: keyof typeof DEFAULTS) =>
    (values[k] as string | undefined) ?? String(DEFAULTS[k]);
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
  const env: Record<string, string> = {};
  for (const kv of (values.env as string[] | undefined) ?? []) {
    const eq = kv.indexOf("=");
    if (eq < 1) {
      console.error(`error: --env: expected KEY=VALUE, found '${kv}'`);
      return 2;
    }
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const settings: BenchSettings = {
    corpus: str("corpus"),
    evalCorpus: str("eval-corpus"),
    tokens: ints.tokens,
    evalTokens: ints["eval-tokens"],
    reps: ints.reps,
    threads: ints.threads || navigator.hardwareConcurrency || 1,
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
    env,
  };
  return run(settings, values);
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
    await Deno.mkdir(resultsDir, { recursive: true });
    for (
      const [name, text] of [
        ["latest.json", JSON.stringify(results, null, 2) + "\n"],
        ["latest.md", md],
      ]
    ) {
      const path = join(resultsDir, name);
      await Deno.writeTextFile(`${path}.tmp`, text);
      await Deno.rename(`${path}.tmp`, path);
    }
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
