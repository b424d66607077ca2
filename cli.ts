#!/usr/bin/env -S deno run --allow-all
/**
 * `knn`: the knnlm command line. It parses arguments against one declarative table per
 * command ({@linkcode COMMANDS}), calls the library and prints: results on stdout (a table, or
 * JSON with `--json`), progress, notes and warnings on stderr. Errors print one line plus a
 * hint; the exit status comes from the error's code (see `exitStatus`).
 *
 * @module
 */

import { dirname, join, resolve } from "node:path";
import { exitStatus, KnnError } from "./lib/core/mod.ts";
import { fsError } from "./lib/core/errors.ts";
import {
  ConfigError,
  type ConfigIssue,
  describeConfigKeys,
  describeOptions,
  loadConfig,
  type LoadedConfig,
  type OptionSpec,
  parseCommandLine,
  type ParsedCommandLine,
} from "./lib/config/mod.ts";
import { loadCorpus } from "./lib/corpus/mod.ts";
import { describeTokenizer, formatModelInspection, inspectModel } from "./lib/model/mod.ts";
import { setNumThreads } from "./lib/index/mod.ts";
import {
  Datastore,
  type DatastoreManifest,
  datastorePaths,
  LOCK_FILE,
  parseShardSpec,
  type PipelineEvent,
  readManifest,
  runPipeline,
  shardFromEnvironment,
  SHARDS_DIR,
  type ShardSpec,
  type Stage,
  type VerifyCheck,
  verifyDatastore,
} from "./lib/datastore/mod.ts";
import {
  distanceModes,
  evaluate,
  KnnLm,
  openDatastoreModel,
  openDatastoreTokenizer,
} from "./lib/query/mod.ts";
import {
  formatCount,
  formatDuration,
  lambdaPlotSvg,
  ProgressBar,
  Spinner,
} from "./lib/present/mod.ts";
import { serve } from "./lib/serve/mod.ts";

// ---------------------------------------------------------------------------------------------
// The option tables. A command lists configuration keys ({ key }: flag, type, range, default
// and description come from the schema in lib/config/schema.ts) and its own options.

const HELP: OptionSpec = { name: "help", short: "h", doc: "this help" };
const VERBOSE: OptionSpec = { name: "verbose", short: "v", doc: "stack traces on errors" };
const JSON_OUT: OptionSpec = { name: "json", doc: "print the result as JSON (no progress bars)" };
const CONFIG_FILE: OptionSpec = {
  name: "config",
  short: "c",
  value: { kind: "string" },
  arg: "FILE",
  doc: "JSON/JSONC configuration file (flags override it)",
};
const DATASTORE: OptionSpec = {
  name: "datastore",
  short: "d",
  value: { kind: "string" },
  arg: "DIR",
  doc: "datastore directory",
  required: true,
};
const NPROBE: OptionSpec = { key: "index.nprobe", defaultText: "the datastore's" };
/** Query commands: the datastore's own tokenizer (recorded in datastore.json), if it moved. */
const TOKENIZER: OptionSpec = { key: "tokenizer", defaultText: "the datastore's" };

/** The `--tokenizer` a query command was given, or undefined for the datastore's own. */
function tokenizerOverride(loaded: LoadedConfig): string | null | undefined {
  return loaded.sources.tokenizer === "default" ? undefined : loaded.config.tokenizer;
}

/** Every setting outside the `eval` section: what the build commands take. */
const BUILD_SETTINGS: OptionSpec[] = describeConfigKeys()
  .filter((k) => !k.key.startsWith("eval."))
  .map((k) => ({ key: k.key }));

const FORCE: OptionSpec = { name: "force", doc: "redo the stage(s) even if complete" };
const BUILD_JSON: OptionSpec = {
  name: "json",
  doc: "print datastore.json on stdout when done (no progress bars)",
};
const SHARD: OptionSpec = {
  name: "shard",
  value: { kind: "string" },
  arg: "I/N",
  doc: "only shard I of N (from 0); default: the Slurm array task or Indexed Job pod, if any",
};
const SHARDS: OptionSpec = {
  name: "shards",
  value: { kind: "integer", min: 1, max: 1_000_000 },
  arg: "N",
  doc: "number of shards",
  defaultText: "the datastore's, else 1 to gather and 1 per 2M keys to add",
};
const WORKERS: OptionSpec = {
  name: "workers",
  value: { kind: "integer", min: 1, max: 1024 },
  arg: "N",
  doc: "worker processes for the shards, splitting --threads",
  defaultText: "--threads (all cores)",
};

/** Options of the build commands: the command's own, then every build setting. */
function buildOptions(...own: OptionSpec[]): OptionSpec[] {
  return [CONFIG_FILE, ...own, BUILD_JSON, VERBOSE, HELP, ...BUILD_SETTINGS];
}

const BUILD_OPTIONS: OptionSpec[] = buildOptions(FORCE);

/** One `knn` command: its help, its option table and what it does with the parsed line. */
interface Command {
  /** One line for `knn --help`. */
  summary: string;
  /** The usage line. */
  usage: string;
  /** What it does, for `knn CMD --help`. */
  about: string;
  /** Every option it accepts, in help order. */
  options: readonly OptionSpec[];
  /** How many positional arguments it takes. */
  positionals?: number;
  /** Runs it. */
  run: (args: ParsedCommandLine) => Promise<void>;
}

/**
 * Every command. To add one, add an entry: its options (configuration keys as `{ key }`, its
 * own as `{ name, doc, value? }`) are parsed, validated and listed in `--help` from here.
 */
const COMMANDS: Record<string, Command> = {
  "build-index": {
    summary: "gather keys, train the index, add the keys and merge (skips finished stages)",
    usage: "knn build-index [options]",
    about: `Runs every stage into --out: gather (model → keys.npy [n, d], vals.npy [n]),
train-index (IVFPQ on a seeded sample), add (all keys, ids = rows, shard by shard) and merge
(one faiss.index with exactly sized on-disk lists), then datastore.json. Finished stages are
skipped; an interrupted gather or add resumes where it stopped. With --shards N the keys are
gathered in N shards (DIR/shards/I) and gather and add run in --workers processes. A directory
holding a datastore made with another model or settings is refused.`,
    options: buildOptions(FORCE, SHARDS, WORKERS),
    run: (a) => pipelineCommand(a, ["gather", "train", "add", "merge"], "build-index"),
  },
  gather: {
    summary: "run the model over the corpus and write keys.npy / vals.npy (resumable)",
    usage: "knn gather [--shard I/N | --shards N] [options]",
    about: `Runs the model over the corpus in sliding windows and writes keys.npy / vals.npy.
Ctrl-C stops after the batch in flight; running it again resumes. With --shard I/N (or in a
Slurm array task, or an Indexed Job pod with --shards N) only shard I: the I-th contiguous
range of windows, into DIR/shards/I, beside the other shards' processes on any machine
sharing DIR. With --shards N alone, all N shards in --workers processes.`,
    options: buildOptions(FORCE, SHARD, SHARDS, WORKERS),
    run: (a) => pipelineCommand(a, ["gather"], "gather"),
  },
  "train-index": {
    summary: "train the FAISS index on a seeded sample of the keys (of all shards)",
    usage: "knn train-index [options]",
    about: `Trains the index on a seeded sample of the gathered keys — drawn across all shards,
read in row order, so the same sample as a one-file datastore's — and writes
faiss.trained.index (before anything is added).`,
    options: BUILD_OPTIONS,
    run: (a) => pipelineCommand(a, ["train"], "train-index"),
  },
  add: {
    summary: "add the keys to the trained index, shard by shard, and merge them",
    usage: "knn add [--shard I/N | --shards N] [options]",
    about: `Encodes the keys (ids = row numbers, straight from the memory map) with the trained
index into inverted lists in memory, shard by shard in --workers processes, writing each
shard's DIR/shards/I/ivf.index, then merges them into faiss.index. With --shard I/N (or in a
Slurm array task, or an Indexed Job pod with --shards N) only shard I, not merged: run knn
merge once every shard is added. A finished shard is skipped; an interrupted one resumes.`,
    options: buildOptions(FORCE, SHARD, SHARDS, WORKERS),
    run: (a) => pipelineCommand(a, ["add"], "add"),
  },
  merge: {
    summary: "merge the shards into keys.npy, vals.npy and one faiss.index",
    usage: "knn merge --out DIR [options]",
    about: `Once every shard is gathered and added: writes keys.npy and vals.npy (the shards'
files one after another after one header), checksums.json, faiss.index with one on-disk
lists file in which each list is sized exactly (FAISS's merge_ondisk), then datastore.json,
and removes DIR/shards.`,
    options: buildOptions(SHARDS),
    run: (a) => pipelineCommand(a, ["merge"], "merge"),
  },
  info: {
    summary: "describe a datastore directory",
    usage: "knn info DIR [options]",
    about:
      "Prints what datastore.json records about a datastore: model, corpus, shapes, index, timings.",
    options: [JSON_OUT, VERBOSE, HELP],
    positionals: 1,
    run: infoCommand,
  },
  verify: {
    summary: "check a datastore's files against datastore.json",
    usage: "knn verify DIR [options]",
    about:
      `Checks a datastore without trusting it: datastore.json, keys.npy / vals.npy headers, shapes
and sizes, every value within the model's vocabulary, the per-block sha256 sums recorded at
gather time, faiss.index / faiss.ivfdata sizes, the index's size against index.ntotal, ids
0..n-1 each once, and optionally a sampled self-recall. Exits 1 when a check fails.`,
    options: [
      { name: "no-checksums", doc: "skip recomputing the checksums (they read every byte)" },
      {
        name: "recall",
        value: { kind: "integer", min: 0, max: 10_000_000 },
        default: 0,
        arg: "N",
        doc: "search N sampled keys and report how many find themselves",
      },
      {
        name: "min-recall",
        value: { kind: "number", min: 0, max: 1 },
        default: 0,
        arg: "R",
        doc: "fail when that self-recall is below R (0: report only)",
      },
      {
        name: "k",
        value: { kind: "integer", min: 1, max: 4096 },
        default: 8,
        doc: "neighbours searched per sampled key",
      },
      JSON_OUT,
      VERBOSE,
      HELP,
    ],
    positionals: 1,
    run: verifyCommand,
  },
  model: {
    summary: "model tools: `knn model inspect FILE`",
    usage: "knn model inspect FILE [options]",
    about:
      `Lists an ONNX model's inputs and outputs with shapes, and the tensors that can serve as keys
(LayerNorm outputs / feed-forward inputs of the last block). Pass one of them as --key-tensor
to build-index; intermediate tensors are exposed in a cached copy, never in FILE itself.`,
    options: [JSON_OUT, VERBOSE, HELP],
    positionals: 2,
    run: modelCommand,
  },
  eval: {
    summary: "perplexity of the LM and the kNN-LM on held-out text",
    usage: "knn eval --datastore DIR [options]",
    about:
      `Scores held-out text with the datastore's model: per-token LM log-probabilities, the k nearest
keys of every position, p_kNN(y) = Σ_{i: v_i = y} softmax(−d_i / T)_i, and the perplexity of
log((1−λ)·p_LM + λ·p_kNN) for each λ. Distances come from FAISS (approximate, PQ) and/or are
recomputed exactly from keys.npy (the paper's default).`,
    options: [
      DATASTORE,
      TOKENIZER,
      { key: "eval.corpus" },
      { key: "eval.maxTokens" },
      { key: "eval.k" },
      NPROBE,
      { key: "eval.temperature" },
      { key: "eval.lambdas" },
      { key: "eval.distance" },
      { key: "eval.rerank" },
      { key: "batchSize" },
      { key: "threads" },
      {
        name: "plot",
        value: { kind: "string" },
        arg: "FILE.svg",
        doc: "write perplexity against λ as an SVG plot",
      },
      CONFIG_FILE,
      JSON_OUT,
      VERBOSE,
      HELP,
    ],
    run: evalCommand,
  },
  neighbors: {
    summary: "show the neighbours retrieved for a text",
    usage: 'knn neighbors --datastore DIR --text "..." [options]',
    about:
      `For the last position of the text: the retrieved neighbours with the corpus text before them,
the token that followed them and their distance, and the top-5 next tokens by the LM, by kNN
and interpolated.`,
    options: [
      DATASTORE,
      {
        name: "text",
        short: "t",
        value: { kind: "string" },
        arg: "TEXT",
        doc: "the context",
        required: true,
      },
      TOKENIZER,
      { key: "eval.k", default: 8 },
      { key: "eval.lambda" },
      NPROBE,
      { key: "eval.distance", default: "exact", only: ["exact", "faiss"] },
      {
        name: "context",
        value: { kind: "integer", min: 1, max: 10_000 },
        default: 60,
        doc: "characters of corpus text shown before each neighbour",
      },
      JSON_OUT,
      VERBOSE,
      HELP,
    ],
    run: neighborsCommand,
  },
  serve: {
    summary: "serve the JSON API and the explorer page over one datastore",
    usage: "knn serve --datastore DIR [--host 127.0.0.1] [--port 8080] [options]",
    about:
      `Opens the datastore and its model once and serves, with Deno.serve, a JSON API (GET /v1/info,
POST /v1/next, POST /v1/score: the numbers of knn neighbors and knn eval) and a page that
colours each token of a text by what retrieval gained. Listens on 127.0.0.1 unless --host
says otherwise. --k, --lambda and --temperature are the defaults of requests that leave them
out. SIGINT/SIGTERM stop accepting, let the requests in flight finish and exit 0.`,
    options: [
      DATASTORE,
      {
        name: "host",
        value: { kind: "string" },
        arg: "HOST",
        default: "127.0.0.1",
        doc: "interface to listen on; 0.0.0.0 opens it to the network",
      },
      {
        name: "port",
        value: { kind: "integer", min: 0, max: 65535 },
        default: 8080,
        doc: "port to listen on; 0 picks a free one",
      },
      { key: "eval.k", defaultText: "eval.k, at most the datastore's size" },
      { key: "eval.lambda" },
      { key: "eval.temperature" },
      { key: "eval.distance", default: "exact", only: ["exact", "faiss"] },
      NPROBE,
      { key: "threads" },
      CONFIG_FILE,
      { name: "json", doc: "print the address as JSON ({ url, datastore }) once listening" },
      VERBOSE,
      HELP,
    ],
    run: serveCommand,
  },
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
      --version   the toolkit's version
`;
}

function commandHelp(c: Command): string {
  const rows = describeOptions(c.options);
  const width = Math.max(...rows.map((r) => r.flags.length)) + 2;
  const lines = rows.map((r) => {
    const notes = [
      r.required ? "required" : undefined,
      r.range,
      r.default === undefined ? undefined : `default ${r.default}`,
    ].filter((x) => x !== undefined);
    const line = `  ${r.flags.padEnd(width)}${r.doc}`;
    const more = notes.length ? `(${notes.join("; ")})` : "";
    // Past 100 columns the range and default go on a line of their own.
    return line.length + more.length < 100
      ? `${line} ${more}`.trimEnd()
      : `${line}\n${" ".repeat(width + 2)}${more}`;
  });
  const dotted = rows.find((r) => r.aliases.length > 0)?.aliases[0];
  const file = c.options.includes(CONFIG_FILE);
  const notes = [
    dotted && `Each setting's flag also has its dotted form (e.g. ${dotted}).`,
    file && "Settings can come from --config FILE too (same keys, nested); flags override it.",
    c.options.some((o) => "key" in o) && '"null" means none where a setting allows it.',
  ].filter((x) => typeof x === "string");
  return `Usage: ${c.usage}

${c.about}

Options:
${lines.join("\n")}
${notes.length ? "\n" + notes.join("\n") + "\n" : ""}`;
}

// ---------------------------------------------------------------------------------------------
// Shared steps

/** A command-line mistake: one line plus an optional hint, exit status 2. */
function usageError(message: string, hint?: string): KnnError {
  return new KnnError("E_USAGE", message, { hint });
}

/** The configuration from the command's flags, its defaults and an optional --config file. */
function loadCommandConfig(args: ParsedCommandLine): LoadedConfig {
  return loadConfig({
    file: args.options.config as string | undefined,
    flags: args.flags,
    flagMap: args.flagMap,
    defaults: args.defaults,
  });
}

/** A bad setting found after loading (e.g. against the datastore), reported like any other. */
function settingError(loaded: LoadedConfig, key: string, message: string): ConfigError {
  const issue: ConfigIssue = { source: loaded.sources[key], key, message };
  return new ConfigError([issue]);
}

/**
 * An abort signal raised by the first SIGINT or SIGTERM (its reason: an `E_INTERRUPTED`
 * {@linkcode KnnError} naming the signal); stages stop at their next safe point. A second
 * signal quits at once with 130 / 143. Disposing it removes the listeners.
 */
function interruptSignal(): { signal: AbortSignal } & Disposable {
  const controller = new AbortController();
  const listeners = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const listener = () => {
      if (controller.signal.aborted) Deno.exit(sig === "SIGTERM" ? 143 : 130);
      controller.abort(new KnnError("E_INTERRUPTED", `interrupted by ${sig}`, { signal: sig }));
      console.error(
        `\ninterrupting (${sig}): stopping at the next safe point (again to quit now)…`,
      );
    };
    Deno.addSignalListener(sig, listener);
    return [sig, listener] as const;
  });
  return {
    signal: controller.signal,
    [Symbol.dispose]() {
      for (const [sig, listener] of listeners) Deno.removeSignalListener(sig, listener);
    },
  };
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
    throw fsError(e, path, "inspect");
  }
}

/** An input file a setting names must exist before any work starts. */
async function requireFile(loaded: LoadedConfig, key: string, path: string) {
  if (/^(https?|file|brown):/.test(path)) return;
  if (!await statOrNull(path)) {
    throw new KnnError("E_NOT_FOUND", `${loaded.sources[key]}: ${key}: ${path}: no such file`, {
      path,
      key,
    });
  }
}

/**
 * Creates the output directory (and missing parents) before any work, and returns the
 * directories it created, outermost first, so a failed run can remove them again.
 */
async function createOutDir(loaded: LoadedConfig): Promise<string[]> {
  const out = resolve(loaded.config.out);
  const created: string[] = [];
  for (let p = out;; p = dirname(p)) {
    const info = await statOrNull(p);
    if (info) {
      if (!info.isDirectory) {
        throw settingError(loaded, "out", `${p} is a file, not a directory`);
      }
      break;
    }
    created.unshift(p);
    if (dirname(p) === p) break;
  }
  try {
    await Deno.mkdir(out, { recursive: true });
  } catch (e) {
    throw fsError(e, loaded.config.out, "create the output directory");
  }
  return created;
}

/** Removes the writer lock file of `dir` when nothing else is there. */
async function removeLockIfAlone(dir: string) {
  try {
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    if (names.length === 1 && names[0] === LOCK_FILE) await Deno.remove(join(dir, LOCK_FILE));
  } catch { /* best effort: the directory then stays */ }
}

/** Removes the directories {@linkcode createOutDir} made, innermost first, while empty. */
async function removeIfEmpty(created: string[]) {
  for (const dir of created.toReversed()) {
    try {
      await Deno.remove(dir); // not recursive: a directory with files in it stays
    } catch {
      return;
    }
  }
}

/** An output file named by a flag must be writable before the long work that fills it. */
async function requireWritable(flag: string, path: string) {
  const parent = dirname(resolve(path));
  const info = await statOrNull(parent);
  if (!info?.isDirectory) {
    throw new KnnError(
      "E_NOT_FOUND",
      `${flag}: ${path}: ${info ? `${parent} is not a directory` : `no directory ${parent}`}`,
      { path, hint: "create the directory first or choose another path" },
    );
  }
  const existed = await statOrNull(path);
  if (existed?.isDirectory) {
    throw new KnnError("E_USAGE", `${flag}: ${path} is a directory; expected a file name`);
  }
  try {
    (await Deno.open(path, { write: true, create: true })).close();
    if (!existed) await Deno.remove(path);
  } catch (e) {
    const err = fsError(e, path, "write");
    throw new KnnError(err.code, `${flag}: ${err.message}`, { path, cause: e });
  }
}

/** The manifest of a finished datastore, or an `E_NOT_FOUND` saying what is missing. */
async function requireDatastore(dir: string, finished = true): Promise<DatastoreManifest> {
  const info = await statOrNull(dir);
  if (!info?.isDirectory) {
    throw new KnnError("E_NOT_FOUND", `${dir}: no such datastore directory`, { path: dir });
  }
  const m = await readManifest(dir);
  if (!m) {
    const partial = await statOrNull(datastorePaths(dir).gatherProgress)
      ? " (an unfinished gather is there: run build-index again to resume)"
      : "";
    throw new KnnError("E_NOT_FOUND", `${dir}: no datastore.json${partial}`, { path: dir });
  }
  if (finished && !m.index) {
    throw new KnnError("E_NOT_FOUND", `${dir}: the datastore has no finished index`, {
      path: dir,
      hint: `knn build-index --out ${dir}`,
    });
  }
  return m;
}

/**
 * The nprobe to query with: a flag's value clamped to the datastore's nlist (with a note on
 * stderr), or undefined for the datastore's own.
 */
function queryNprobe(loaded: LoadedConfig, m: DatastoreManifest, quiet: boolean) {
  const source = loaded.sources["index.nprobe"];
  if (!source.startsWith("--")) return undefined;
  const nprobe = loaded.config.index.nprobe;
  const nlist = m.index?.nlist ?? 0;
  if (nlist > 0 && nprobe > nlist) {
    if (!quiet) console.error(`note: ${source} ${nprobe} > nlist ${nlist}: using nprobe ${nlist}`);
    return nlist;
  }
  return nprobe;
}

/** k must not exceed the datastore's size. */
function checkK(loaded: LoadedConfig, m: DatastoreManifest) {
  const size = m.keys.shape[0];
  const k = loaded.config.eval.k;
  if (k > size) {
    throw settingError(
      loaded,
      "eval.k",
      `expected an integer in 1..${size} (the datastore's size), found ${k}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Commands

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
        console.error(`warning: ${e.message}`);
        break;
      case "start":
        say(`${e.stage}: ${e.detail}`);
        if (e.stage === "train") spinner = new Spinner("training index", { silent });
        if (e.stage === "merge") spinner = new Spinner("merging", { silent });
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
        if (!bar && e.progress.resumedFrom) {
          say(`add: resuming after ${e.progress.resumedFrom} keys added by an interrupted run`);
        }
        bar ??= new ProgressBar("add   ", e.progress.total, {
          unit: "keys",
          silent,
          initial: e.progress.resumedFrom,
        });
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

/**
 * The shard a build command works on: `--shard I/N`, else the scheduler's (a Slurm array task,
 * a Kubernetes Indexed Job pod with `--shards N`), else none (all of them).
 */
function shardOf(args: ParsedCommandLine): ShardSpec | undefined {
  const given = args.options.shard as string | undefined;
  if (given !== undefined) return parseShardSpec(given);
  return shardFromEnvironment(Deno.env.toObject(), args.options.shards as number | undefined);
}

async function pipelineCommand(args: ParsedCommandLine, stages: Stage[], name: string) {
  const loaded = loadCommandConfig(args);
  const { config } = loaded;
  const json = args.options.json as boolean;
  const shard = COMMANDS[name].options.includes(SHARD) ? shardOf(args) : undefined;
  // Inputs first: the model and corpus decide whether what is in --out can be reused.
  await requireFile(loaded, "model", config.model);
  if (stages.includes("gather")) await requireFile(loaded, "corpus", config.corpus);
  if (
    !stages.includes("gather") && !await readManifest(config.out) &&
    !await statOrNull(join(config.out, SHARDS_DIR))
  ) {
    throw new KnnError("E_NOT_FOUND", `${config.out}: no gathered keys yet`, {
      path: config.out,
      hint: `run knn gather (or knn build-index) with the same settings first`,
    });
  }
  const created = await createOutDir(loaded);
  using interrupt = interruptSignal();
  let result;
  try {
    result = await runPipeline(config, {
      stages,
      force: !!args.options.force,
      onEvent: eventPrinter(json),
      signal: interrupt.signal,
      command: `knn ${name}` + (shard ? ` --shard ${shard.index}/${shard.count}` : ""),
      shard,
      shards: args.options.shards as number | undefined,
      workers: args.options.workers as number | undefined,
    });
  } catch (e) {
    // A directory this run created and left holding only the writer lock goes too.
    if (created.length) await removeLockIfAlone(config.out);
    await removeIfEmpty(created);
    throw e;
  }
  const manifest = result.manifest;
  if (json) {
    return void console.log(
      JSON.stringify(manifest ?? { out: config.out, shards: result.shards, shard }, null, 2),
    );
  }
  if (!manifest) {
    const next = stages.includes("add") ? "knn merge" : "knn train-index";
    console.log(
      shard
        ? `shard ${shard.index}/${shard.count} of ${config.out}: ${stages.join(", ")} done ` +
          `(${join(config.out, SHARDS_DIR, String(shard.index))}); once every shard is done: ` +
          `${next} --out ${config.out}`
        : `${result.shards} shards of ${config.out}: ${stages.join(", ")} done ` +
          `(${join(config.out, SHARDS_DIR)}); next: ${next} --out ${config.out}`,
    );
    return;
  }
  const p = datastorePaths(config.out);
  console.log(
    `datastore ${config.out}: ${manifest.keys.shape[0]} keys of width ${manifest.keys.shape[1]}` +
      (manifest.index
        ? `, index ${manifest.index.factory} (nprobe ${manifest.index.nprobe})`
        : manifest.trained
        ? `, trained ${manifest.trained.factory} (no keys added yet)`
        : "") +
      (manifest.shards ? `, ${manifest.shards.count} shards` : "") +
      `\n  ${p.keys}\n  ${p.vals}` + (manifest.index ? `\n  ${p.index}` : "") +
      `\n  ${p.manifest}`,
  );
}

async function infoCommand(args: ParsedCommandLine) {
  const dir = args.positionals[0];
  if (!dir) throw usageError("expected a datastore DIR", "knn info DIR");
  const m = await requireDatastore(dir, false);
  if (args.options.json) return void console.log(JSON.stringify(m, null, 2));
  const lines = [
    `datastore   ${dir} (format ${m.format}, ${m.toolkit.name} ${m.toolkit.version}, ${m.updatedAt})`,
    `model       ${m.model.path}`,
    `            sha256 ${
      m.model.sha256.slice(0, 16)
    }…, key '${m.model.keyTensor}', d=${m.model.dModel}, vocab ${m.model.vocabSize}`,
    `tokenizer   ${m.tokenizer ? describeTokenizer(m.tokenizer) : "UTF-8 bytes (vocab 256)"}${
      m.tokenizer?.path ? `: ${m.tokenizer.path}` : ""
    }`,
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

async function verifyCommand(args: ParsedCommandLine) {
  const dir = args.positionals[0];
  if (!dir) throw usageError("expected a datastore DIR", "knn verify DIR");
  const json = args.options.json as boolean;
  const show = (c: VerifyCheck) => {
    const mark = { ok: "ok  ", failed: "FAIL", skipped: "skip" }[c.status];
    console.log(`${mark} ${c.name.padEnd(12)} ${c.detail}`);
    for (const p of c.problems) console.log(`     ${p.code}: ${p.message}`);
  };
  const report = await verifyDatastore(dir, {
    checksums: !args.options["no-checksums"],
    recallSample: args.options.recall as number,
    recallK: args.options.k as number,
    minRecall: args.options["min-recall"] as number,
    onCheck: json ? undefined : show,
  });
  if (json) console.log(JSON.stringify(report, null, 2));
  const failed = report.checks.filter((c) => c.status === "failed");
  if (failed.length) {
    const first = failed[0].problems[0];
    throw new KnnError(
      first?.code ?? "E_CORRUPT",
      `${dir}: ${failed.length} check${failed.length > 1 ? "s" : ""} failed ` +
        `(${failed.map((c) => c.name).join(", ")})` + (first ? `: ${first.message}` : ""),
      { path: first?.path ?? dir },
    );
  }
}

async function modelCommand(args: ParsedCommandLine) {
  const [sub, file] = args.positionals;
  if (sub !== "inspect") {
    throw usageError(
      sub === undefined ? "expected a subcommand" : `unknown model subcommand '${sub}'`,
      "knn model inspect FILE",
    );
  }
  if (!file) throw usageError("expected a model FILE", "knn model inspect FILE");
  const info = await inspectModel(file);
  console.log(args.options.json ? JSON.stringify(info, null, 2) : formatModelInspection(info));
}

async function evalCommand(args: ParsedCommandLine) {
  const loaded = loadCommandConfig(args);
  const { config } = loaded;
  const json = args.options.json as boolean;
  const dir = args.options.datastore as string;
  const plot = args.options.plot as string | undefined;
  const m = await requireDatastore(dir);
  checkK(loaded, m);
  await requireFile(loaded, "eval.corpus", config.eval.corpus);
  if (plot) await requireWritable("--plot", plot);
  const nprobe = queryNprobe(loaded, m, false);
  // FAISS's OpenMP pool follows --threads too, not only ONNX Runtime.
  setNumThreads(config.threads > 0 ? config.threads : navigator.hardwareConcurrency || 1);
  using ds = await Datastore.open(dir, { nprobe });
  const tokenizer = await openDatastoreTokenizer(ds, { path: tokenizerOverride(loaded) });
  // FAISS searches one batch while the model runs the next: ONNX Runtime's threads must not
  // spin-wait on the cores FAISS is using.
  using model = await openDatastoreModel(ds, {
    threads: config.threads || undefined,
    spinning: false,
  });
  using interrupt = interruptSignal();
  const corpus = await loadCorpus(config.eval.corpus, {
    tokenizer,
    encode: { signal: interrupt.signal },
  });
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
    modes: distanceModes(config.eval.distance),
    rerank: config.eval.rerank,
    batchSize: config.batchSize,
    onProgress: (p) => {
      bar ??= new ProgressBar("eval", p.total, { unit: "tok", silent: json });
      bar.update(p.done);
    },
    signal: interrupt.signal,
  });
  bar?.finish();
  if (plot) {
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
    try {
      await Deno.writeTextFile(plot, svg);
    } catch (e) {
      throw fsError(e, plot, "write the plot");
    }
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
      (plot ? `; plot: ${plot}` : ""),
  );
}

async function neighborsCommand(args: ParsedCommandLine) {
  const loaded = loadCommandConfig(args);
  const { k, lambda, distance } = loaded.config.eval;
  if (distance === "both") {
    throw settingError(loaded, "eval.distance", 'expected "exact" or "faiss" here, found "both"');
  }
  const dir = args.options.datastore as string;
  const text = args.options.text as string;
  const width = args.options.context as number;
  const m = await requireDatastore(dir);
  checkK(loaded, m);
  using knn = await KnnLm.open({
    datastore: dir,
    k,
    lambda,
    temperature: loaded.config.eval.temperature,
    distance,
    nprobe: queryNprobe(loaded, m, !!args.options.json),
    tokenizer: tokenizerOverride(loaded) ?? undefined,
  });
  const tok = knn.tokenizer;
  const next = await knn.next(text);
  // The last `width` tokens before the neighbour, cut to the last `width` characters.
  const neighbours = next.neighbours.map((n) => ({
    row: n.row,
    distance: n.distance,
    next: tok.tokenLabel(n.token),
    context: tok.decode(knn.corpusTokens(n.row - width + 1, n.row + 1)).slice(-width),
  }));
  const top = (p: Float64Array) =>
    Array.from(p.keys()).filter((t) => p[t] > 0).sort((a, b) => p[b] - p[a]).slice(0, 5)
      .map((t) => ({ token: tok.tokenLabel(t), p: p[t] }));
  const result = {
    text,
    k,
    lambda,
    distance,
    neighbours,
    top: { lm: top(next.lm), knn: top(next.knn), interpolated: top(next.mixed) },
  };
  if (args.options.json) return void console.log(JSON.stringify(result, null, 2));
  console.log(`context: …${JSON.stringify(text.slice(-width))}\n`);
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

async function serveCommand(args: ParsedCommandLine) {
  const loaded = loadCommandConfig(args);
  const { config } = loaded;
  const { distance } = config.eval;
  if (distance === "both") {
    throw settingError(loaded, "eval.distance", 'expected "exact" or "faiss" here, found "both"');
  }
  const dir = args.options.datastore as string;
  const m = await requireDatastore(dir);
  const kGiven = loaded.sources["eval.k"] !== "default";
  if (kGiven) checkK(loaded, m);
  setNumThreads(config.threads > 0 ? config.threads : navigator.hardwareConcurrency || 1);
  using interrupt = interruptSignal();
  const server = await serve({
    datastore: dir,
    hostname: args.options.host as string,
    port: args.options.port as number,
    nprobe: queryNprobe(loaded, m, false),
    threads: config.threads || undefined,
    distance,
    defaults: {
      k: kGiven ? config.eval.k : undefined,
      lambda: config.eval.lambda,
      temperature: config.eval.temperature,
    },
    signal: interrupt.signal,
    onError: (e, req) =>
      console.error(`error: ${req.method} ${new URL(req.url).pathname}: ${(e as Error).message}`),
  });
  if (args.options.json) console.log(JSON.stringify({ url: server.url, datastore: dir }));
  else console.log(`knn serve: ${dir} on ${server.url} (Ctrl-C to stop)`);
  await server.finished;
  console.error("knn serve: stopped");
}

// ---------------------------------------------------------------------------------------------
// Entry point

/** True when `argv` asks for help (before a `--`). */
function wantsHelp(argv: string[]): boolean {
  const end = argv.indexOf("--");
  return (end < 0 ? argv : argv.slice(0, end)).some((a) => a === "--help" || a === "-h");
}

/**
 * Runs the CLI on `argv` and returns the exit status: 0, or `exitStatus` of the error (2 for
 * usage and settings, 1 for a missing file, 130 / 143 when interrupted, 75 when locked, …).
 */
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
  try {
    const command = Object.hasOwn(COMMANDS, cmd) ? COMMANDS[cmd] : undefined;
    if (!command) throw usageError(`unknown command '${cmd}'`, "see knn --help");
    if (wantsHelp(rest)) {
      console.log(commandHelp(command));
      return 0;
    }
    await command.run(parseCommandLine(rest, command.options, command.positionals ?? 0));
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
