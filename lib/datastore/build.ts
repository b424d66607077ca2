/**
 * The `build-index` pipeline: load the corpus, gather keys with the model, train the index,
 * add the keys, and record it all in `datastore.json`. Each stage can run on its own
 * (`gather`, `train-index`, `add`) and `build-index` skips the stages already complete and
 * valid for the same settings; a directory holding a datastore made with another model or
 * other settings is refused rather than mixed.
 *
 * @module
 */

import { sha256File } from "../core/_hash.ts";
import { removeIfExists } from "../core/_atomic.ts";
import { fsError } from "../core/errors.ts";
import type { KnnlmConfig } from "../config/mod.ts";
import { loadCorpus } from "../corpus/mod.ts";
import {
  DATASTORE_FORMAT,
  type DatastoreManifest,
  datastorePaths,
  type GatherFingerprint,
  type IndexParams,
  readManifest,
  refuseMismatch,
  writeManifest,
} from "./manifest.ts";
import { faissVersion, getNumThreads, setNumThreads } from "../index/mod.ts";
import { gather, type GatherProgress, keyModelOf } from "./gather.ts";
import { type AddProgress, addToIndex, planIndex, trainIndex } from "./train_add.ts";
import { OnnxLm } from "../model/runner.ts";
import { ensureModelFile } from "../model/default_model.ts";
import { openTokenizer } from "../model/hf_tokenizer.ts";
import { idsOnlyTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { KnnError } from "../core/errors.ts";
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
  /** Interrupts gather (resumably) and add between chunks. */
  signal?: AbortSignal;
}

function threadsOf(config: KnnlmConfig): number {
  return config.threads > 0 ? config.threads : Math.max(1, navigator.hardwareConcurrency || 1);
}

// addChunk decides how keys are added, not what the index holds (and older manifests lack it).
function sameParams(a: IndexParams | undefined, b: IndexParams): boolean {
  if (!a) return false;
  return (Object.keys(b) as (keyof IndexParams)[]).every((k) => k === "addChunk" || a[k] === b[k]);
}

// Training does not depend on where the lists will live, so switching invlists only re-adds.
function sameTraining(a: IndexParams | undefined, b: IndexParams): boolean {
  return sameParams(a && { ...a, invlists: b.invlists }, b);
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
  await Deno.mkdir(dir, { recursive: true });
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

    // Stage 1: gather.
    const gatherDone = manifest !== undefined && !(opts.force && stages.has("gather"));
    if (!stages.has("gather") && !manifest) {
      throw new Error(`${dir}: no gathered keys yet (run \`knn gather\` or \`knn build-index\`)`);
    }
    if (stages.has("gather") && gatherDone) {
      emit({ type: "skip", stage: "gather", reason: "keys and values already gathered" });
    }
    if (stages.has("gather") && !gatherDone) {
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
        for (const p of [paths.index, paths.trainedIndex, paths.manifest]) await removeIfExists(p);
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
        versions: versions({ faiss: faissVersion() }),
      };
      await writeManifest(dir, manifest);
      await removeIfExists(paths.gatherProgress);
      emit({ type: "done", stage: "gather", seconds: g.seconds });
    }
    if (!manifest) throw new Error(`${dir}: gather did not complete`);

    // Stage 2: train.
    const [n, d] = manifest.keys.shape;
    const { params, warnings } = planIndex(n, d, config.index);
    let trainedFileExists = true;
    try {
      await Deno.stat(paths.trainedIndex);
    } catch {
      trainedFileExists = false;
    }
    const trained = sameTraining(manifest.trained, params) && trainedFileExists &&
      !(opts.force && stages.has("train"));
    if (stages.has("train") && trained) {
      emit({ type: "skip", stage: "train", reason: `already trained (${params.factory})` });
    }
    if (stages.has("train") && !trained) {
      if (manifest.trained && !sameTraining(manifest.trained, params)) {
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
      const t = await trainIndex({ dir, params, signal: opts.signal });
      manifest = { ...manifest, trained: { ...params, warnings, seconds: t.seconds } };
      delete manifest.index;
      await removeIfExists(paths.index);
      await writeManifest(dir, manifest);
      emit({ type: "done", stage: "train", seconds: t.seconds });
    }

    // Stage 3: add.
    const added = manifest.index !== undefined && sameParams(manifest.index, params) &&
      !(opts.force && stages.has("add"));
    if (stages.has("add") && added) {
      emit({
        type: "skip",
        stage: "add",
        reason: `index complete (${manifest.index!.ntotal} keys)`,
      });
    }
    if (stages.has("add") && !added) {
      if (!sameTraining(manifest.trained, params)) {
        throw new Error(
          `${dir}: no trained index for ${params.factory} (run \`knn train-index\` first)`,
        );
      }
      if (manifest.index) {
        // The old index goes first: re-adding rewrites faiss.ivfdata, which it may point into.
        manifest = { ...manifest };
        delete manifest.index;
        await writeManifest(dir, manifest);
        await removeIfExists(paths.index);
      }
      emit({
        type: "start",
        stage: "add",
        detail: `${n} keys in chunks of ${config.index.addChunk}` +
          (params.invlists === "disk" && params.nlist > 0 ? ", lists in faiss.ivfdata" : ""),
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
        index: { ...params, file: "faiss.index", ntotal: a.ntotal, warnings, seconds: a.seconds },
      };
      await writeManifest(dir, manifest);
      emit({ type: "done", stage: "add", seconds: a.seconds });
    }
    return (await readManifest(dir))!;
  } finally {
    setNumThreads(previousThreads);
  }
}
