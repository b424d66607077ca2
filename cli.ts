#!/usr/bin/env -S deno run --allow-all
/**
 * `knn`: the knnlm command line. It parses arguments, calls the library and prints; the
 * pipeline itself lives in `lib/`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { exitStatus, KnnError } from "./lib/core/mod.ts";
import {
  configArgOptions,
  describeConfigKeys,
  type KnnlmConfig,
  loadConfig,
} from "./lib/config/mod.ts";
import { loadCorpus } from "./lib/corpus/mod.ts";
import {
  byteTokenLabel,
  decodeBytes,
  encodeBytes,
  formatModelInspection,
  inspectModel,
} from "./lib/model/mod.ts";
import { setNumThreads } from "./lib/index/mod.ts";
import {
  buildIndex,
  type BuildOptions,
  Datastore,
  datastorePaths,
  type PipelineEvent,
  readManifest,
  type Stage,
} from "./lib/datastore/mod.ts";
import { evaluate, KnnLm, openDatastoreModel } from "./lib/query/mod.ts";
import {
  formatCount,
  formatDuration,
  lambdaPlotSvg,
  ProgressBar,
  Spinner,
} from "./lib/present/mod.ts";

/** A command-line mistake: one line plus an optional hint, exit status 2. */
function usageError(message: string, hint?: string): KnnError {
  return new KnnError("E_USAGE", message, { hint });
}

const COMMON = {
  help: { type: "boolean", short: "h" },
  json: { type: "boolean" },
  verbose: { type: "boolean", short: "v" },
} as const;

const CONFIG_FLAGS = {
  ...COMMON,
  config: { type: "string", short: "c" },
  force: { type: "boolean" },
  ...configArgOptions(),
} as const;

const NOT_CONFIG = ["help", "json", "verbose", "config", "force"];

const COMMANDS: Record<string, { summary: string; run: (argv: string[]) => Promise<void> }> = {
  "build-index": {
    summary: "gather keys, train the index and add the keys (skips finished stages)",
    run: (argv) => pipelineCommand("build-index", argv, ["gather", "train", "add"]),
  },
  gather: {
    summary: "run the model over the corpus and write keys.npy / vals.npy (resumable)",
    run: (argv) => pipelineCommand("gather", argv, ["gather"]),
  },
  "train-index": {
    summary: "train the FAISS index on a seeded sample of the keys",
    run: (argv) => pipelineCommand("train-index", argv, ["train"]),
  },
  add: {
    summary: "add every key to the trained index and write faiss.index",
    run: (argv) => pipelineCommand("add", argv, ["add"]),
  },
  info: { summary: "describe a datastore directory", run: infoCommand },
  model: { summary: "model tools: `knn model inspect FILE`", run: modelCommand },
  eval: { summary: "perplexity of the LM and the kNN-LM on held-out text", run: evalCommand },
  neighbors: { summary: "show the neighbours retrieved for a text", run: neighborsCommand },
};

function mainHelp(): string {
  const rows = Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(12)} ${c.summary}`);
  return `knn — build and query kNN-LM datastores (Khandelwal et al., 2020)

Usage: knn <command> [options]

Commands:
${rows.join("\n")}

Every command takes --help. With no options, \`knn build-index\` builds data/default/ from the
bundled byte-level model on the Brown corpus's train split.

Common options:
  -h, --help      this help
      --json      print the result as JSON on stdout (no progress bars)
  -v, --verbose   stack traces on errors
`;
}

function configHelp(): string {
  const rows = describeConfigKeys().map((k) =>
    `  ${k.flags.join(", ").padEnd(34)} ${k.description} (${k.type}; default ${k.default})`
  );
  return `Configuration (defaults < --config FILE (JSON/JSONC, same keys, nested) < flags):
${rows.join("\n")}`;
}

function pipelineHelp(name: string): string {
  const what: Record<string, string> = {
    "build-index": `Runs every stage into --out: gather (model → keys.npy [n, d], vals.npy [n]),
train-index (IVFPQ on a seeded sample) and add (all keys, ids = rows) → faiss.index, then
datastore.json. Finished stages are skipped; an interrupted gather resumes where it stopped.
A directory holding a datastore made with another model or settings is refused.`,
    gather: `Runs the model over the corpus in sliding windows and writes keys.npy / vals.npy.
Ctrl-C stops after the batch in flight; running it again resumes.`,
    "train-index": `Trains the index on a seeded sample of the gathered keys and writes
faiss.trained.index (before anything is added).`,
    add: `Adds every key with its row number as id, straight from the memory map, and writes
faiss.index atomically.`,
  };
  return `Usage: knn ${name} [options]

${what[name]}

Options:
  -c, --config FILE   JSON/JSONC configuration file
      --force         redo the stage(s) even if complete
      --json          print datastore.json on stdout when done
  -v, --verbose       stack traces on errors
  -h, --help          this help

${configHelp()}
`;
}

function parse<T extends Record<string, { type: "string" | "boolean"; short?: string }>>(
  argv: string[],
  options: T,
  allowPositionals = false,
) {
  try {
    return parseArgs({ args: argv, options, allowPositionals, strict: true });
  } catch (e) {
    throw usageError((e as Error).message.split("\n")[0], "see --help");
  }
}

function loadCliConfig(values: Record<string, unknown>): KnnlmConfig {
  return loadConfig({
    file: values.config as string | undefined,
    flags: values,
    ignoreFlags: NOT_CONFIG,
  }).config;
}

/**
 * An abort signal raised by the first SIGINT or SIGTERM (its reason: an `E_INTERRUPTED`
 * {@linkcode KnnError} naming the signal); stages stop at their next safe point. A second
 * signal quits at once with 130 / 143.
 */
function interruptSignal(): AbortSignal {
  const controller = new AbortController();
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      if (controller.signal.aborted) Deno.exit(sig === "SIGTERM" ? 143 : 130);
      controller.abort(new KnnError("E_INTERRUPTED", `interrupted by ${sig}`, { signal: sig }));
      console.error(
        `\ninterrupting (${sig}): stopping at the next safe point (again to quit now)…`,
      );
    });
  }
  return controller.signal;
}

function eventPrinter(silent: boolean): (e: PipelineEvent) => void {
  let bar: ProgressBar | undefined;
  let spinner: Spinner | undefined;
  const say = (s: string) => silent || console.error(s);
  return (e) => {
    switch (e.type) {
      case "corpus":
        say(
          `corpus ${e.spec} (${e.name}): ${formatCount(e.nTokens)} of ${
            formatCount(e.totalTokens)
          } tokens`,
        );
        break;
      case "model":
        say(`model ${e.path}: keys from '${e.keyTensor}' (d=${e.dModel}), vocab ${e.vocabSize}`);
        break;
      case "skip":
        say(`skip ${e.stage}: ${e.reason}`);
        break;
      case "warning":
        say(`warning: ${e.message}`);
        break;
      case "start":
        say(`${e.stage}: ${e.detail}`);
        if (e.stage === "train") spinner = new Spinner("training index", { silent });
        break;
      case "gather-progress":
        bar ??= new ProgressBar("gather", e.progress.total, {
          unit: "tok",
          silent,
          initial: e.progress.resumedFrom,
        });
        bar.update(e.progress.done);
        break;
      case "add-progress":
        bar ??= new ProgressBar("add   ", e.progress.total, { unit: "keys", silent });
        bar.update(e.progress.done);
        break;
      case "done":
        bar?.finish();
        bar = undefined;
        if (spinner) spinner.finish();
        spinner = undefined;
        say(`${e.stage} done in ${formatDuration(e.seconds)}`);
        break;
    }
  };
}

async function pipelineCommand(name: string, argv: string[], stages: Stage[]) {
  const { values, positionals } = parse(argv, CONFIG_FLAGS, true);
  if (values.help) return void console.log(pipelineHelp(name));
  if (positionals.length) {
    throw usageError(`unexpected argument '${positionals[0]}'`, `see knn ${name} --help`);
  }
  const config = loadCliConfig(values);
  const opts: BuildOptions = {
    stages,
    force: values.force,
    onEvent: eventPrinter(!!values.json),
    signal: interruptSignal(),
  };
  const manifest = await buildIndex(config, opts);
  if (values.json) console.log(JSON.stringify(manifest, null, 2));
  else {
    const p = datastorePaths(config.out);
    console.error(
      `datastore ${config.out}: ${manifest.keys.shape[0]} keys of width ${manifest.keys.shape[1]}` +
        (manifest.index
          ? `, index ${manifest.index.factory} (nprobe ${manifest.index.nprobe})`
          : "") +
        `\n  ${p.keys}\n  ${p.vals}` + (manifest.index ? `\n  ${p.index}` : "") +
        `\n  ${p.manifest}`,
    );
  }
}

async function infoCommand(argv: string[]) {
  const { values, positionals } = parse(argv, COMMON, true);
  if (values.help) {
    return void console.log(`Usage: knn info DIR [--json]

Prints what datastore.json records about a datastore: model, corpus, shapes, index, timings.`);
  }
  const dir = positionals[0];
  if (!dir || positionals.length > 1) throw usageError("expected one DIR", "knn info DIR");
  const m = await readManifest(dir);
  if (!m) {
    let partial = "";
    try {
      await Deno.stat(datastorePaths(dir).gatherProgress);
      partial = " (an unfinished gather is there: run build-index again to resume)";
    } catch { /* nothing partial either */ }
    throw usageError(`${dir}: no datastore.json${partial}`);
  }
  if (values.json) return void console.log(JSON.stringify(m, null, 2));
  const lines = [
    `datastore   ${dir} (format ${m.format}, ${m.toolkit.name} ${m.toolkit.version}, ${m.updatedAt})`,
    `model       ${m.model.path}`,
    `            sha256 ${
      m.model.sha256.slice(0, 16)
    }…, key '${m.model.keyTensor}', d=${m.model.dModel}, vocab ${m.model.vocabSize}`,
    `corpus      ${m.corpus.spec} (${m.corpus.name}): ${m.corpus.nTokens} of ${m.corpus.totalTokens} tokens`,
    `keys        ${m.keys.file} ${m.keys.dtype} [${m.keys.shape}]`,
    `vals        ${m.vals.file} ${m.vals.dtype} [${m.vals.shape}]`,
    `gather      seqLen ${m.gather.seqLen}, stride ${m.gather.stride}, batch ${m.gather.batchSize}: ` +
    `${formatDuration(m.gather.seconds)} (${formatCount(m.gather.tokensPerSecond)} tok/s)`,
    m.trained
      ? `trained     ${m.trained.factory} on ${m.trained.trainSize} keys (seed ${m.trained.seed}) in ${
        formatDuration(m.trained.seconds)
      }`
      : "trained     no",
    m.index
      ? `index       ${m.index.file}: ${m.index.ntotal} keys, ${m.index.metric}, nprobe ${m.index.nprobe}, added in ${
        formatDuration(m.index.seconds)
      }`
      : "index       not built",
    `versions    ${Object.entries(m.versions).map(([k, v]) => `${k} ${v}`).join(", ")}`,
  ];
  for (const w of m.index?.warnings ?? m.trained?.warnings ?? []) lines.push(`warning     ${w}`);
  console.log(lines.join("\n"));
}

async function modelCommand(argv: string[]) {
  const [sub, ...rest] = argv;
  const { values, positionals } = parse(rest, COMMON, true);
  if (sub !== "inspect" || values.help) {
    return void console.log(`Usage: knn model inspect FILE [--json]

Lists an ONNX model's inputs and outputs with shapes, and the tensors that can serve as keys
(LayerNorm outputs / feed-forward inputs of the last block). Pass one of them as --key-tensor
to build-index; intermediate tensors are exposed in a cached copy, never in FILE itself.`);
  }
  const file = positionals[0];
  if (!file) throw usageError("expected a model FILE", "knn model inspect FILE");
  const info = await inspectModel(file);
  console.log(values.json ? JSON.stringify(info, null, 2) : formatModelInspection(info));
}

const EVAL_FLAGS = {
  ...COMMON,
  config: { type: "string", short: "c" },
  datastore: { type: "string", short: "d" },
  corpus: { type: "string" },
  "max-tokens": { type: "string" },
  k: { type: "string" },
  nprobe: { type: "string" },
  temperature: { type: "string" },
  lambdas: { type: "string" },
  distance: { type: "string" },
  rerank: { type: "string" },
  "batch-size": { type: "string" },
  threads: { type: "string" },
  plot: { type: "string" },
} as const;

async function evalCommand(argv: string[]) {
  const { values } = parse(argv, EVAL_FLAGS);
  if (values.help) {
    return void console.log(`Usage: knn eval --datastore DIR [options]

Scores held-out text with the datastore's model: per-token LM log-probabilities, the k nearest
keys of every position, p_kNN(y) = Σ_{i: v_i = y} softmax(−d_i / T)_i, and the perplexity of
log((1−λ)·p_LM + λ·p_kNN) for each λ. Distances come from FAISS (approximate, PQ) and/or are
recomputed exactly from keys.npy (the paper's default).

Options:
  -d, --datastore DIR    datastore directory (required)
      --corpus SPEC      brown:test (default), brown:valid, or a text/.npy/.bin path
      --max-tokens N     cap on evaluated tokens (default 100000)
      --k N              neighbours per query (default 1024)
      --nprobe N         lists probed per query (default: the datastore's)
      --temperature T    softmax temperature on distances (default 1)
      --lambdas LIST     comma-separated λ values (default 0.05,0.1,…,0.5)
      --distance MODE    faiss | exact | both (default both)
      --rerank N         search N ≥ k candidates and keep the k nearest by exact L2 from
                         keys.npy as the exact neighbours (for a fast index built with e.g.
                         --factory IVF1024,PQ64x4fs; default 0: off)
      --batch-size N     windows per model call (default 8)
      --threads N        threads (default: all cores)
      --plot FILE.svg    write perplexity against λ as an SVG plot
  -c, --config FILE      configuration file (its eval section)
      --json             print the result as JSON`);
  }
  if (!values.datastore) {
    throw usageError("--datastore DIR is required", "e.g. knn eval --datastore data/default");
  }
  const flags: Record<string, unknown> = {
    "eval.corpus": values.corpus,
    "eval.max-tokens": values["max-tokens"],
    "eval.k": values.k,
    "eval.temperature": values.temperature,
    "eval.lambdas": values.lambdas,
    "eval.distance": values.distance,
    "eval.rerank": values.rerank,
    "batch-size": values["batch-size"],
    threads: values.threads,
    "index.nprobe": values.nprobe,
  };
  const { config } = loadConfig({ file: values.config, flags });
  const json = !!values.json;
  // FAISS's OpenMP pool follows --threads too, not only ONNX Runtime.
  setNumThreads(config.threads > 0 ? config.threads : navigator.hardwareConcurrency || 1);
  using ds = await Datastore.open(values.datastore, {
    nprobe: values.nprobe ? config.index.nprobe : undefined,
  });
  // FAISS searches one batch while the model runs the next: ONNX Runtime's threads must not
  // spin-wait on the cores FAISS is using.
  using model = await openDatastoreModel(ds, {
    threads: config.threads || undefined,
    spinning: false,
  });
  const corpus = await loadCorpus(config.eval.corpus);
  const tokens = corpus.tokens.subarray(
    0,
    Math.min(corpus.tokens.length, config.eval.maxTokens ?? Infinity),
  );
  if (!json) {
    console.error(
      `eval on ${config.eval.corpus}: ${formatCount(tokens.length)} tokens, k=${config.eval.k}, ` +
        `nprobe ${ds.index.nprobe}, distances: ${config.eval.distance}`,
    );
  }
  let bar: ProgressBar | undefined;
  const result = await evaluate({
    datastore: ds,
    model,
    tokens,
    k: config.eval.k,
    temperature: config.eval.temperature,
    lambdas: config.eval.lambdas,
    modes: config.eval.distance === "both" ? ["faiss", "exact"] : [config.eval.distance],
    rerank: config.eval.rerank,
    batchSize: config.batchSize,
    onProgress: (p) => {
      bar ??= new ProgressBar("eval", p.total, { unit: "tok", silent: json });
      bar.update(p.done);
    },
    signal: interruptSignal(),
  });
  bar?.finish();
  if (values.plot) {
    const svg = lambdaPlotSvg({
      title: `kNN-LM perplexity on ${config.eval.corpus} (${result.tokens} tokens, k=${result.k})`,
      lambdas: [0, ...result.lambdas],
      baseline: result.lmPerplexity,
      series: Object.entries(result.modes).map(([mode, r]) => ({
        name: mode === "exact" ? "exact L2" : "FAISS (PQ)",
        y: [result.lmPerplexity, ...r!.perplexities],
        best: { x: r!.best.lambda, y: r!.best.perplexity },
      })),
    });
    await Deno.writeTextFile(values.plot, svg);
  }
  if (json) return void console.log(JSON.stringify(result, null, 2));
  const modes = Object.keys(result.modes) as ("faiss" | "exact")[];
  const header = `| λ | ${modes.map((m) => `ppl (${m})`).join(" | ")} |`;
  const rows = [
    header,
    `|---|${modes.map(() => "---:").join("|")}|`,
    `| 0 (LM) | ${modes.map(() => result.lmPerplexity.toFixed(3)).join(" | ")} |`,
    ...result.lambdas.map((l, i) =>
      `| ${l} | ${modes.map((m) => result.modes[m]!.perplexities[i].toFixed(3)).join(" | ")} |`
    ),
    `| best | ${
      modes.map((m) => {
        const b = result.modes[m]!.best;
        return `${b.perplexity.toFixed(3)} (λ=${b.lambda})`;
      }).join(" | ")
    } |`,
  ];
  console.log(rows.join("\n"));
  console.log(
    `\n${result.tokens} tokens in ${formatDuration(result.seconds)} ` +
      `(${formatCount(result.tokensPerSecond)} tok/s)` +
      (values.plot ? `; plot: ${values.plot}` : ""),
  );
}

const NEIGHBOR_FLAGS = {
  ...COMMON,
  datastore: { type: "string", short: "d" },
  text: { type: "string", short: "t" },
  k: { type: "string" },
  lambda: { type: "string" },
  nprobe: { type: "string" },
  context: { type: "string" },
  distance: { type: "string" },
} as const;

function intFlag(name: string, v: string | undefined, def: number, min = 1): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw usageError(`--${name}: expected an integer ≥ ${min}, found '${v}'`);
  }
  return n;
}

async function neighborsCommand(argv: string[]) {
  const { values } = parse(argv, NEIGHBOR_FLAGS);
  if (values.help) {
    return void console.log(`Usage: knn neighbors --datastore DIR --text "..." [options]

For the last position of the text: the retrieved neighbours with the corpus text before them,
the token that followed them and their distance, and the top-5 next tokens by the LM, by kNN
and interpolated.

Options:
  -d, --datastore DIR   datastore directory (required)
  -t, --text TEXT       the context (required)
      --k N             neighbours retrieved, shown and voting (default 8)
      --lambda L        interpolation weight (default 0.25)
      --nprobe N        lists probed (default: the datastore's)
      --distance MODE   exact (default) or faiss
      --context N       bytes of corpus text shown before each neighbour (default 60)
      --json            print the result as JSON`);
  }
  if (!values.datastore || values.text === undefined) {
    throw usageError(
      "--datastore DIR and --text TEXT are required",
      "see knn neighbors --help",
    );
  }
  const k = intFlag("k", values.k, 8);
  const lambda = values.lambda === undefined ? 0.25 : Number(values.lambda);
  if (!(lambda >= 0 && lambda <= 1)) {
    throw usageError(`--lambda: expected a number in [0, 1], found '${values.lambda}'`);
  }
  const distance = (values.distance ?? "exact") as "exact" | "faiss";
  if (distance !== "exact" && distance !== "faiss") {
    throw usageError(`--distance: expected 'exact' or 'faiss', found '${values.distance}'`);
  }
  const width = intFlag("context", values.context, 60);
  using knn = await KnnLm.open({
    datastore: values.datastore,
    k,
    lambda,
    distance,
    nprobe: values.nprobe ? intFlag("nprobe", values.nprobe, 8) : undefined,
  });
  const context = encodeBytes(values.text);
  const next = await knn.next(context);
  const neighbours = next.neighbours.map((n) => ({
    row: n.row,
    distance: n.distance,
    next: byteTokenLabel(n.token),
    context: decodeBytes(knn.corpusTokens(n.row - width + 1, n.row + 1)),
  }));
  const top = (p: Float64Array) =>
    Array.from(p.keys()).filter((t) => p[t] > 0).sort((a, b) => p[b] - p[a]).slice(0, 5).map((
      t,
    ) => ({
      token: byteTokenLabel(t),
      p: p[t],
    }));
  const result = {
    text: values.text,
    k,
    lambda,
    distance,
    neighbours,
    top: { lm: top(next.lm), knn: top(next.knn), interpolated: top(next.mixed) },
  };
  if (values.json) return void console.log(JSON.stringify(result, null, 2));
  console.log(`context: …${JSON.stringify(values.text.slice(-width))}\n`);
  console.log(`${"#".padStart(3)}  ${"row".padStart(9)}  ${"dist".padStart(9)}  next  context`);
  neighbours.forEach((n, i) =>
    console.log(
      `${String(i + 1).padStart(3)}  ${String(n.row).padStart(9)}  ${
        n.distance.toFixed(3).padStart(9)
      }  ` +
        `${n.next.padEnd(4)}  …${JSON.stringify(n.context)}`,
    )
  );
  const fmt = (xs: { token: string; p: number }[]) =>
    xs.map((x) => `${x.token} ${x.p.toFixed(3)}`).join("  ");
  console.log(`\ntop-5 LM:           ${fmt(result.top.lm)}`);
  console.log(`top-5 kNN:          ${fmt(result.top.knn)}`);
  console.log(`top-5 interpolated: ${fmt(result.top.interpolated)}  (λ=${lambda})`);
}

/** Runs the CLI on `argv`; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  const verbose = argv.includes("--verbose") || argv.includes("-v");
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(mainHelp());
    return cmd ? 0 : 2;
  }
  if (cmd === "--version") {
    console.log((await import("./lib/core/version.ts")).TOOLKIT_VERSION);
    return 0;
  }
  const command = COMMANDS[cmd];
  try {
    if (!command) throw usageError(`unknown command '${cmd}'`, "see knn --help");
    await command.run(rest);
    return 0;
  } catch (e) {
    const err = e as Error;
    if (verbose) console.error(err);
    else console.error(`error: ${err.message.replaceAll("\n", "\n       ")}`);
    if (KnnError.is(err) && err.hint) console.error(`hint: ${err.hint}`);
    else if (!verbose && !KnnError.is(err)) console.error("hint: run with --verbose for details");
    return exitStatus(err);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
