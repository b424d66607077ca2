/**
 * The `build-index` pipeline: load the corpus, gather keys with the model, train the index,
 * add the keys, and record it all in `datastore.json`. Each stage can run on its own
 * (`gather`, `train-index`, `add`) and `build-index` skips the stages already complete and
 * valid for the same settings; a directory holding a datastore made with another model or
 * other settings is refused rather than mixed.
 *
 * Reliability: the run holds the datastore's writer lock (a second writer gets `E_LOCKED`);
 * a skipped stage re-checks its outputs against `datastore.json` (a truncated `keys.npy` is
 * gathered again, not trusted); each stage checks the free disk space first; the abort signal
 * stops every stage at its next safe point with `E_INTERRUPTED`; `nprobe` is a query-time
 * setting recorded without rebuilding anything.
 *
 * @module
 */

import { sha256File } from "../core/_hash.ts";
import { removeIfExists } from "../core/_atomic.ts";
import { fsError, KnnError } from "../core/errors.ts";
import type { KnnlmConfig } from "../config/mod.ts";
import { loadCorpus } from "../corpus/mod.ts";
import {
  DATASTORE_FORMAT,
  type DatastoreManifest,
  datastorePaths,
  type GatherFingerprint,
  readManifest,
  refuseMismatch,
  writeManifest,
} from "./manifest.ts";
import { FaissIndex, faissVersion, getNumThreads, setNumThreads } from "../index/mod.ts";
import { gather, type GatherProgress, keyModelOf } from "./gather.ts";
import {
  type AddProgress,
  addToIndex,
  interrupted,
  planIndex,
  removeStaleIvfdata,
  sameIndexParams,
  sameTraining,
  trainIndex,
} from "./train_add.ts";
import { gatheredProblems, indexCountProblems, indexFileProblems } from "./_checks.ts";
import { DatastoreLock } from "./lock.ts";
import { OnnxLm } from "../model/runner.ts";
import { ensureModelFile } from "../model/default_model.ts";
import { openTokenizer } from "../model/hf_tokenizer.ts";
import { idsOnlyTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { TOOLKIT_NAME, TOOLKIT_VERSION, versions } from "../core/version.ts";

/** A pipeline stage. */
export type Stage = "gather" | "train" | "add";

/** What the pipeline reports while it works (the CLI turns these into progress bars). */
export type PipelineEvent =
  | { type: "corpus"; spec: string; name: string; nTokens: number; totalTokens: number }
  | { type: "model"; path: string; keyTensor: string; dModel: number; vocabSize: number }
  | { type: "skip"; stage: Stage; reason: string }
  | { type: "start"; stage: Stage; detail: string }
  | { type: "gather-progress"; progress: GatherProgress }
  | { type: "add-progress"; progress: AddProgress }
  | { type: "warning"; message: string }
  | { type: "done"; stage: Stage; seconds: number };

/** Options of {@link buildIndex}. */
export interface BuildOptions {
  /** Stages to run; default all, skipping those already complete. */
  stages?: Stage[];
  /** Re-run the listed stages even when complete. Default false. */
  force?: boolean;
  /** Receives progress events. */
  onEvent?: (e: PipelineEvent) => void;
  /**
   * Stops the run at the next safe point of any stage with `E_INTERRUPTED` (its reason, when
   * that is a `KnnError`, supplies the signal): gather after the batch in flight, add at the
   * next block boundary (both resume), training before or after the FAISS call.
   */
  signal?: AbortSignal;
  /**
   * What the writer lock records as the holder's command (shown to a second writer).
   * Default `"buildIndex"`.
   */
  command?: string;
}

function threadsOf(config: KnnlmConfig): number {
  return config.threads > 0 ? config.threads : Math.max(1, navigator.hardwareConcurrency || 1);
}

/** Throws `E_INTERRUPTED` when the signal has been raised (between stages). */
function checkSignal(signal: AbortSignal | undefined, before: string): void {
  if (signal?.aborted) throw interrupted(signal, `interrupted before ${before}`);
}

/** Whether `faiss.trained.index` is there, readable and an empty index of width `d`. */
function trainedUsable(path: string, d: number): boolean {
  try {
    using index = FaissIndex.read(path);
    return index.d === d && index.ntotal === 0;
  } catch {
    return false;
  }
}

/**
 * Problems with a finished index: its files' sizes, then (when those match) its counts. The
 * lists are mapped, not loaded, so this stays cheap for a large index.
 */
async function indexProblems(dir: string, m: DatastoreManifest): Promise<KnnError[]> {
  const problems = await indexFileProblems(dir, m);
  if (problems.length) return problems;
  const memory = m.index?.invlists === "memory" || m.index?.nlist === 0;
  try {
    using index = FaissIndex.read(datastorePaths(dir).index, { mmap: memory, readOnly: true });
    return indexCountProblems(dir, m, index);
  } catch (e) {
    const path = datastorePaths(dir).index;
    return [
      new KnnError("E_CORRUPT", `${path}: unreadable: ${(e as Error).message}`, {
        path,
        cause: e,
      }),
    ];
  }
}

/**
 * Runs the pipeline for `config` into `config.out` and returns the final manifest.
 *
 * @example
 * ```ts ignore
 * import { buildIndex, loadConfig } from "../mod.ts";
 * const { config } = loadConfig({ flags: { "max-tokens": "50000", out: "data/small" } });
 * const manifest = await buildIndex(config);
 * console.log(manifest.index?.ntotal);
 * ```
 */
export async function buildIndex(
  config: KnnlmConfig,
  opts: BuildOptions = {},
): Promise<DatastoreManifest> {
  const emit = opts.onEvent ?? (() => {});
  const stages = new Set<Stage>(opts.stages ?? ["gather", "train", "add"]);
  const dir = config.out;
  const paths = datastorePaths(dir);
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw fsError(e, dir, "create the datastore directory");
  }
  using _lock = await DatastoreLock.acquire(dir, opts.command ?? "buildIndex");
  const threads = threadsOf(config);
  const previousThreads = getNumThreads();
  setNumThreads(threads);

  try {
    let manifest = await readManifest(dir);

    // Corpus and model identity decide whether what is on disk can be reused.
    const tokenizer = await openTokenizer(config.tokenizer);
    const corpus = await loadCorpus(config.corpus, {
      tokenizer,
      encode: { signal: opts.signal },
    });
    // Pre-tokenized ids (.npy/.bin) with no tokenizer named: record that none is known.
    const recorded: Tokenizer = config.tokenizer === null && /\.(npy|bin)$/.test(config.corpus)
      ? idsOnlyTokenizer(corpus.vocabSize)
      : tokenizer;
    const nTokens = Math.min(corpus.tokens.length, config.maxTokens ?? Infinity);
    const tokens = corpus.tokens.subarray(0, nTokens);
    if (nTokens - 1 < config.seqLen) {
      throw new Error(
        `${config.corpus}: corpus '${corpus.name}' has ${nTokens} tokens; one window needs ` +
          `${config.seqLen + 1} (seqLen ${config.seqLen} + the next token): ` +
          `lower --seq-len or use a longer corpus`,
      );
    }
    emit({
      type: "corpus",
      spec: config.corpus,
      name: corpus.name,
      nTokens,
      totalTokens: corpus.tokens.length,
    });
    await ensureModelFile(config.model, { signal: opts.signal }); // fetched once if by URL
    const modelSha256 = await sha256File(config.model).catch((e) => {
      throw fsError(e, config.model, "read the model");
    });
    const wanted: GatherFingerprint = {
      modelSha256,
      keyTensor: config.keyTensor,
      corpusIdentity: corpus.identity,
      nTokens,
      seqLen: config.seqLen,
      stride: config.stride,
      batchSize: config.batchSize,
      keyDtype: config.keyDtype,
    };
    if (manifest) refuseMismatch(dir, manifest.gather, wanted, "a datastore");

    // Everything made from the keys goes when the keys are made again; the manifest first, so
    // that no reader trusts the files while they change.
    const dropAll = async () => {
      await removeIfExists(paths.manifest);
      for (const p of [paths.index, paths.trainedIndex, paths.addProgress, paths.partialIndex]) {
        await removeIfExists(p);
      }
      await removeStaleIvfdata(dir);
    };

    // Stage 1: gather. Skipped only when datastore.json records it and the files still match.
    if (manifest && !(opts.force && stages.has("gather"))) {
      const problems = gatheredProblems(dir, manifest);
      if (problems.length && !stages.has("gather")) {
        throw new KnnError(
          "E_CORRUPT",
          `${problems[0].message}; the gathered keys cannot be used`,
          {
            path: problems[0].path,
            cause: problems[0],
            hint: `gather again: knn build-index (or knn gather) --out ${dir}`,
          },
        );
      }
      if (problems.length) {
        for (const p of problems) emit({ type: "warning", message: p.message });
        emit({ type: "warning", message: `gathering ${dir} again: its keys cannot be trusted` });
        await dropAll();
        manifest = undefined;
      }
    }
    const gatherDone = manifest !== undefined && !(opts.force && stages.has("gather"));
    if (!stages.has("gather") && !manifest) {
      throw new KnnError(
        "E_NOT_FOUND",
        `${dir}: no gathered keys yet (run \`knn gather\` or \`knn build-index\`)`,
        { path: paths.manifest },
      );
    }
    if (stages.has("gather") && gatherDone) {
      emit({ type: "skip", stage: "gather", reason: "keys and values already gathered" });
    }
    if (stages.has("gather") && !gatherDone) {
      checkSignal(opts.signal, "gathering");
      using model = await OnnxLm.open(config.model, {
        keyTensor: config.keyTensor,
        logitsOutput: config.logitsOutput,
        threads,
      });
      emit({
        type: "model",
        path: config.model,
        keyTensor: config.keyTensor,
        dModel: model.dModel,
        vocabSize: model.vocabSize,
      });
      if (recorded.vocabSize > model.vocabSize) {
        throw new KnnError(
          "E_MISMATCH",
          `${config.tokenizer ?? config.corpus}: ids go up to ${recorded.vocabSize - 1} but the ` +
            `model ${config.model} has a vocabulary of ${model.vocabSize}`,
          { hint: "pass the tokenizer that belongs to the model (--tokenizer)" },
        );
      }
      if (opts.force) {
        await removeIfExists(paths.gatherProgress);
        await dropAll();
      }
      emit({ type: "start", stage: "gather", detail: `${nTokens} tokens` });
      const g = await gather({
        model: keyModelOf(model),
        tokens,
        dir,
        identity: { modelSha256, keyTensor: config.keyTensor, corpusIdentity: corpus.identity },
        seqLen: config.seqLen,
        stride: config.stride,
        batchSize: config.batchSize,
        keyDtype: config.keyDtype,
        onProgress: (progress) => emit({ type: "gather-progress", progress }),
        signal: opts.signal,
      });
      let checksums: DatastoreManifest["checksums"];
      try {
        const sums = JSON.parse(await Deno.readTextFile(paths.checksums));
        checksums = { file: "checksums.json", algorithm: "sha256", blockRows: sums.blockRows };
      } catch { /* a gather resumed from an older checkpoint records none */ }
      manifest = {
        format: DATASTORE_FORMAT,
        toolkit: { name: TOOLKIT_NAME, version: TOOLKIT_VERSION },
        updatedAt: "",
        config,
        model: {
          path: config.model,
          sha256: modelSha256,
          keyTensor: config.keyTensor,
          logitsOutput: config.logitsOutput,
          dModel: model.dModel,
          vocabSize: model.vocabSize,
        },
        tokenizer: { ...recorded.identity, path: recorded.path },
        corpus: {
          spec: config.corpus,
          name: corpus.name,
          identity: corpus.identity,
          nTokens,
          totalTokens: corpus.tokens.length,
          firstToken: tokens[0],
        },
        keys: {
          file: "keys.npy",
          dtype: config.keyDtype === "float16" ? "<f2" : "<f4",
          shape: [g.rows, g.dModel],
        },
        vals: { file: "vals.npy", dtype: "<i4", shape: [g.rows] },
        gather: {
          ...g.fingerprint,
          windows: g.windows,
          seconds: g.seconds,
          tokensPerSecond: (g.rows - g.resumedFrom) / g.seconds,
        },
        ...(checksums ? { checksums } : {}),
        versions: versions({ faiss: faissVersion() }),
      };
      await writeManifest(dir, manifest);
      await removeIfExists(paths.gatherProgress);
      emit({ type: "done", stage: "gather", seconds: g.seconds });
    }
    if (!manifest) throw new Error(`${dir}: gather did not complete`);

    const [n, d] = manifest.keys.shape;
    const { params, warnings } = planIndex(n, d, config.index);
    // nprobe is a query-time setting: a finished index only has it recorded anew.
    if (
      manifest.index && sameIndexParams(manifest.index, params) &&
      manifest.index.nprobe !== params.nprobe
    ) {
      emit({
        type: "warning",
        message: `nprobe ${manifest.index.nprobe} → ${params.nprobe}: recorded in ` +
          `datastore.json (a query-time setting: nothing is rebuilt)`,
      });
      manifest = {
        ...manifest,
        index: { ...manifest.index, nprobe: params.nprobe },
        ...(manifest.trained ? { trained: { ...manifest.trained, nprobe: params.nprobe } } : {}),
      };
      await writeManifest(dir, manifest);
    }

    // Stage 2: train. The finished index (if any) stays readable until a new one replaces it.
    const trained = sameTraining(manifest.trained, params) && !(opts.force && stages.has("train"));
    const trainedOk = trained && trainedUsable(paths.trainedIndex, d);
    if (stages.has("train") && trainedOk) {
      emit({ type: "skip", stage: "train", reason: `already trained (${params.factory})` });
    }
    if (stages.has("train") && !trainedOk) {
      checkSignal(opts.signal, "training");
      if (trained) {
        emit({
          type: "warning",
          message: `${paths.trainedIndex}: missing or unreadable: training again`,
        });
      } else if (manifest.trained) {
        emit({
          type: "warning",
          message: `index settings changed (${manifest.trained.factory} → ${params.factory}): ` +
            `retraining from the same keys`,
        });
      }
      // Planning warnings concern the index: said once, by the stage that trains it.
      for (const message of warnings) emit({ type: "warning", message });
      emit({
        type: "start",
        stage: "train",
        detail: `${params.factory} on ${params.trainSize} keys, ${threads} threads`,
      });
      // An add under way grew from the old training: it cannot be resumed.
      await removeIfExists(paths.addProgress);
      await removeIfExists(paths.partialIndex);
      const t = await trainIndex({ dir, params, signal: opts.signal });
      manifest = { ...manifest, trained: { ...params, warnings, seconds: t.seconds } };
      await writeManifest(dir, manifest);
      emit({ type: "done", stage: "train", seconds: t.seconds });
    }

    // Stage 3: add. Skipped only when the finished index's files still match the manifest.
    let added = manifest.index !== undefined && sameIndexParams(manifest.index, params) &&
      !(opts.force && stages.has("add"));
    if (added && stages.has("add")) {
      const problems = await indexProblems(dir, manifest);
      if (problems.length) {
        for (const p of problems) emit({ type: "warning", message: p.message });
        emit({ type: "warning", message: `adding the keys again: the index cannot be trusted` });
        manifest = { ...manifest };
        delete manifest.index;
        await writeManifest(dir, manifest);
        added = false;
      }
    }
    if (stages.has("add") && added) {
      emit({
        type: "skip",
        stage: "add",
        reason: `index complete (${manifest.index!.ntotal} keys)`,
      });
    }
    if (stages.has("add") && !added) {
      checkSignal(opts.signal, "adding");
      if (!sameTraining(manifest.trained, params) || !trainedUsable(paths.trainedIndex, d)) {
        throw new KnnError(
          "E_NOT_FOUND",
          `${dir}: no trained index for ${params.factory} (run \`knn train-index\` first)`,
          { path: paths.trainedIndex },
        );
      }
      emit({
        type: "start",
        stage: "add",
        detail: `${n} keys in chunks of ${config.index.addChunk}` +
          (params.invlists === "disk" && params.nlist > 0 ? ", lists on disk" : ""),
      });
      const a = await addToIndex({
        dir,
        params,
        chunk: config.index.addChunk,
        onProgress: (progress) => emit({ type: "add-progress", progress }),
        signal: opts.signal,
      });
      manifest = {
        ...manifest,
        index: {
          ...params,
          file: "faiss.index",
          ntotal: a.ntotal,
          warnings,
          seconds: a.seconds,
          bytes: a.bytes,
          ...(a.ivfdata ? { ivfdata: a.ivfdata } : {}),
        },
      };
      await writeManifest(dir, manifest);
      // The previous build's lists, if any: readers holding them open keep them until closed.
      await removeStaleIvfdata(dir);
      emit({ type: "done", stage: "add", seconds: a.seconds });
    }
    return (await readManifest(dir))!;
  } finally {
    setNumThreads(previousThreads);
  }
}
