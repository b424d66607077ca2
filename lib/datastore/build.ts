/**
 * The `build-index` pipeline: load the corpus, gather keys with the model, train the index,
 * add the keys, merge, and record it all in `datastore.json`. Each stage can run on its own
 * (`gather`, `train-index`, `add`, `merge`) and the pipeline skips the stages already complete
 * and valid for the same settings; a directory holding a datastore made with another model or
 * other settings is refused rather than mixed.
 *
 * Shards (see `shards.ts`): a large datastore is built in N contiguous shards. Gather and add
 * run per shard — in worker processes of this run (`workers` at a time), or as separate
 * processes (`shard`: a Slurm array task, a Kubernetes pod, `knn gather --shard I/N`) on any
 * machine sharing the directory. Training runs once, on a seeded sample of all the shards'
 * rows; merge then makes `keys.npy`, `vals.npy` and one `faiss.index` with exactly sized
 * on-disk lists. A datastore of one shard (the default up to `AUTO_SHARD_KEYS` keys) is
 * built in this process, directly in `DIR`, by the same functions.
 *
 * Reliability: the run holds the datastore's writer lock (a second writer gets `E_LOCKED`; a
 * shard's process holds it shared, and its shard's lock exclusively); a skipped stage re-checks
 * its outputs (a truncated `keys.npy` is gathered again, not trusted); each stage checks the
 * free disk space first; the abort signal stops every stage, and every worker, at its next
 * safe point with `E_INTERRUPTED`; `nprobe` is a query-time setting recorded without
 * rebuilding anything.
 *
 * @module
 */

import { join } from "node:path";
import { sha256File } from "../core/_hash.ts";
import { readJsonIfExists, removeIfExists, renameFile, writeJsonAtomic } from "../core/_atomic.ts";
import { fsError, KnnError } from "../core/errors.ts";
import type { KnnlmConfig } from "../config/mod.ts";
import { loadCorpus } from "../corpus/mod.ts";
import { concatNpy } from "../storage/concat.ts";
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
import {
  gather,
  type GatherChecksums,
  type GatherProgress,
  type GatherResult,
  type KeyModel,
  keyModelOf,
} from "./gather.ts";
import {
  type AddProgress,
  addShard,
  estimateAddBytes,
  finishedShardAdd,
  interrupted,
  type KeyRange,
  mergeIndex,
  planIndex,
  removeStaleIvfdata,
  sameIndexParams,
  sameTraining,
  SHARD_ADD_FILES,
  trainIndex,
} from "./train_add.ts";
import { gatheredProblems, indexCountProblems, indexFileProblems } from "./_checks.ts";
import { DatastoreLock } from "./lock.ts";
import {
  autoShardCount,
  gatheredShards,
  listShardDirs,
  readShardRecord,
  type ShardAddRecord,
  shardDir,
  shardRange,
  type ShardRecord,
  SHARDS_DIR,
  type ShardSpec,
  type TrainedRecord,
  trainedRecordPath,
  writeShardRecord,
} from "./shards.ts";
import { canStartWorkers, runWorkers } from "./_workers.ts";
import { OnnxLm } from "../model/runner.ts";
import { ensureModelFile } from "../model/default_model.ts";
import { openTokenizer } from "../model/hf_tokenizer.ts";
import { idsOnlyTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { TOOLKIT_NAME, TOOLKIT_VERSION, versions } from "../core/version.ts";

/** A pipeline stage. `add` without a `shard` also merges (its result is `faiss.index`). */
export type Stage = "gather" | "train" | "add" | "merge";

/** Every stage, in order. */
export const STAGES: readonly Stage[] = ["gather", "train", "add", "merge"];

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

/** Options of {@link runPipeline} and {@link buildIndex}. */
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
   * next block boundary (both resume), training before or after the FAISS call. Worker
   * processes get the signal too and stop at theirs.
   */
  signal?: AbortSignal;
  /**
   * What the writer lock records as the holder's command (shown to a second writer).
   * Default `"buildIndex"`.
   */
  command?: string;
  /**
   * Work on this shard only (gather and/or add; training and merging run once for all):
   * what a Slurm array task or a Kubernetes pod does. Holds the datastore's lock shared, so
   * the other shards' processes run at the same time.
   */
  shard?: ShardSpec;
  /**
   * Number of shards. Default: the datastore's own (its gathered shards, or how it was
   * merged), else one per `AUTO_SHARD_KEYS` keys.
   */
  shards?: number;
  /**
   * Worker processes for the shards' gather and add when this run does them all; the
   * configuration's threads are split among them. Default: the threads (all cores unless
   * `threads` says otherwise). With 1 (or one shard) the shards run in this process, one by one.
   */
  workers?: number;
  /**
   * Set by the worker processes a run starts: the pid of the parent, which holds the
   * datastore's lock for them (checked).
   */
  workerOf?: number;
}

/** What {@link runPipeline} leaves. */
export interface PipelineResult {
  /** `datastore.json`, once the datastore has one (one shard gathered, or merged). */
  manifest?: DatastoreManifest;
  /** Number of shards, when the datastore is (or was built) in shards. */
  shards?: number;
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

async function mkdirp(dir: string, what: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw fsError(e, dir, what);
  }
}

/** One shard's part of the add stage: its keys and where its index goes. */
interface AddPart {
  index: number;
  dir: string;
  keys: KeyRange;
}

/**
 * Runs the pipeline's `stages` for `config` into `config.out`: the whole datastore, or with
 * `shard` one shard's gather or add. Returns `datastore.json` once there is one (a sharded
 * datastore has none until it is merged).
 */
export async function runPipeline(
  config: KnnlmConfig,
  opts: BuildOptions = {},
): Promise<PipelineResult> {
  const emit = opts.onEvent ?? (() => {});
  const stages = new Set<Stage>(opts.stages ?? STAGES);
  const dir = config.out;
  const paths = datastorePaths(dir);
  const command = opts.command ?? "buildIndex";
  const only = opts.shard && opts.shard.count > 1 ? opts.shard : undefined;
  if (opts.shard && (stages.has("train") || stages.has("merge"))) {
    throw new KnnError(
      "E_USAGE",
      `training and merging run once for all shards, not for shard ${opts.shard.index}/` +
        `${opts.shard.count}: run knn train-index / knn merge without --shard`,
    );
  }
  if (opts.shards !== undefined && only && opts.shards !== only.count) {
    throw new KnnError(
      "E_USAGE",
      `--shards ${opts.shards} but --shard ${only.index}/${only.count}`,
    );
  }
  // Adding every shard leaves their lists to merge: `add` is add + merge unless one shard's.
  if (stages.has("add") && !only) stages.add("merge");
  await mkdirp(dir, "create the datastore directory");

  const locks: Disposable[] = [];
  const threads = threadsOf(config);
  const previousThreads = getNumThreads();
  try {
    if (opts.workerOf !== undefined) await DatastoreLock.heldBy(dir, opts.workerOf);
    else {
      locks.push(
        await DatastoreLock.acquire(dir, command, { mode: only ? "shared" : "exclusive" }),
      );
    }
    if (only) {
      const sd = shardDir(dir, only.index);
      await mkdirp(sd, "create the shard directory");
      locks.push(await DatastoreLock.acquire(sd, command));
    }
    setNumThreads(threads);

    let manifest = await readManifest(dir);

    // Gathering needs the corpus; the later stages work from the gathered keys and check them
    // against the settings that need no corpus (model, key tensor, windows, dtype).
    const gathering = stages.has("gather");
    await ensureModelFile(config.model, { signal: opts.signal }); // fetched once if by URL
    const modelSha256 = await sha256File(config.model).catch((e) => {
      throw fsError(e, config.model, "read the model");
    });
    const settings = {
      modelSha256,
      keyTensor: config.keyTensor,
      seqLen: config.seqLen,
      stride: config.stride,
      batchSize: config.batchSize,
      keyDtype: config.keyDtype,
      ...(config.kvCache === null ? {} : { kvCache: config.kvCache }),
    };
    const input = gathering ? await loadInput(config, opts.signal) : undefined;
    if (input) {
      emit({
        type: "corpus",
        spec: config.corpus,
        name: input.corpus.name,
        nTokens: input.nTokens,
        totalTokens: input.corpus.tokens.length,
      });
    }
    const wanted: GatherFingerprint | undefined = input && {
      ...settings,
      corpusIdentity: input.corpus.identity,
      nTokens: input.nTokens,
    };
    // Compares what is given: all of the fingerprint when gathering, else the settings.
    const refuse = (at: string, found: GatherFingerprint, what: string) =>
      refuseMismatch(at, found, (wanted ?? settings) as GatherFingerprint, what);
    if (manifest) refuse(dir, manifest.gather, "a datastore");

    // Gather shards: asked for, or the datastore's own (gathered shards, or how it was
    // merged); else one, in DIR. Adding cuts a large one-shard datastore into parts of
    // AUTO_SHARD_KEYS keys (see below).
    const onDisk = manifest ? undefined : await shardCountOnDisk(dir);
    const count = only?.count ?? opts.shards ?? manifest?.shards?.count ?? onDisk ?? 1;
    const workersFor = (shards: number) => Math.max(1, Math.min(opts.workers ?? threads, shards));
    if (gathering && count > 1 && config.kvCache !== null) {
      throw new KnnError(
        "E_CONFIG",
        `kvCache gathers in one process, but ${count} shards were asked for`,
        { key: "kvCache", hint: "gather in one shard, or set kvCache to null" },
      );
    }
    if (!manifest && onDisk !== undefined && onDisk !== count) {
      if (opts.force && gathering) {
        await Deno.remove(join(dir, SHARDS_DIR), { recursive: true });
      } else {
        throw new KnnError(
          "E_MISMATCH",
          `${dir}: holds ${onDisk} shards, not ${count}; the shards of one datastore are made ` +
            `with one shard count`,
          {
            path: join(dir, SHARDS_DIR),
            hint: `pass --shards ${onDisk}, or --force to gather ${count} shards anew`,
          },
        );
      }
    }
    // The keys live in DIR (one shard, or merged) or in DIR/shards/I (not merged yet).
    const sharded = !manifest && count > 1;
    const workerConfig = (workers: number): KnnlmConfig => ({
      ...config,
      threads: Math.max(1, Math.floor(threads / workers)),
    });
    const inProcess = (workers: number) => workers === 1 || !!only || !canStartWorkers();
    const workerEvents = (stage: "gather" | "add", total: number, skipped: number) => {
      const done = new Map<number, number>();
      const resumed = new Map<number, number>();
      const sum = (m: Map<number, number>) => [...m.values()].reduce((a, b) => a + b, skipped);
      return (shard: number, e: PipelineEvent) => {
        if (e.type === "warning") {
          emit({ type: "warning", message: `shard ${shard}: ${e.message}` });
        }
        const p = e.type === "gather-progress" || e.type === "add-progress"
          ? e.progress
          : undefined;
        if (!p || e.type !== `${stage}-progress`) return;
        done.set(shard, p.done);
        if (!resumed.has(shard)) resumed.set(shard, p.resumedFrom ?? 0);
        const progress = { done: sum(done), total, resumedFrom: sum(resumed) };
        emit(
          stage === "gather"
            ? { type: "gather-progress", progress }
            : { type: "add-progress", progress },
        );
      };
    };

    // Everything made from the keys goes when the keys are made again; the manifest first, so
    // that no reader trusts the files while they change.
    const dropAll = async () => {
      await removeIfExists(paths.manifest);
      for (const p of [paths.index, paths.trainedIndex, paths.addProgress, paths.partialIndex]) {
        await removeIfExists(p);
      }
      await removeIfExists(join(dir, SHARD_ADD_FILES.index));
      await removeIfExists(join(dir, SHARD_ADD_FILES.record));
      await removeStaleIvfdata(dir);
    };

    let model: OnnxLm | undefined;
    const openModel = async (): Promise<KeyModel & { vocabSize: number }> => {
      if (!model) {
        checkSignal(opts.signal, "gathering");
        model = await OnnxLm.open(config.model, {
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
        if (input!.recorded.vocabSize > model.vocabSize) {
          throw new KnnError(
            "E_MISMATCH",
            `${config.tokenizer ?? config.corpus}: ids go up to ` +
              `${input!.recorded.vocabSize - 1} but the model ${config.model} has a vocabulary ` +
              `of ${model.vocabSize}`,
            { hint: "pass the tokenizer that belongs to the model (--tokenizer)" },
          );
        }
      }
      return { ...keyModelOf(model), vocabSize: model.vocabSize };
    };
    // What datastore.json (or a shard's shard.json) says about how the keys were made.
    const madeBy = (dModel: number, vocabSize: number) => {
      const { corpus, recorded, nTokens, tokens } = input!;
      return {
        config,
        model: {
          path: config.model,
          sha256: modelSha256,
          keyTensor: config.keyTensor,
          logitsOutput: config.logitsOutput,
          dModel,
          vocabSize,
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
        versions: versions({ faiss: faissVersion() }),
      };
    };
    const header = () => ({
      format: DATASTORE_FORMAT,
      toolkit: { name: TOOLKIT_NAME, version: TOOLKIT_VERSION },
      updatedAt: "",
    } as const);

    try {
      // Stage 1: gather.
      if (!sharded) {
        // Into DIR. Skipped only when datastore.json records it and the files still match.
        if (manifest && !(opts.force && gathering)) {
          const problems = gatheredProblems(dir, manifest);
          if (problems.length && !gathering) {
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
            emit({
              type: "warning",
              message: `gathering ${dir} again: its keys cannot be trusted`,
            });
            await dropAll();
            manifest = undefined;
          }
        }
        const gatherDone = manifest !== undefined && !(opts.force && gathering);
        if (!gathering && !manifest && !(await listShardDirs(dir)).length) {
          throw new KnnError(
            "E_NOT_FOUND",
            `${dir}: no gathered keys yet (run \`knn gather\` or \`knn build-index\`)`,
            { path: paths.manifest },
          );
        }
        if (gathering && gatherDone) {
          emit({ type: "skip", stage: "gather", reason: "keys and values already gathered" });
        }
        if (gathering && !gatherDone) {
          const m = await openModel();
          if (opts.force) {
            await removeIfExists(paths.gatherProgress);
            await dropAll();
          }
          emit({ type: "start", stage: "gather", detail: `${input!.nTokens} tokens` });
          const g = await gather({
            model: m,
            tokens: input!.tokens,
            dir,
            identity: {
              modelSha256,
              keyTensor: config.keyTensor,
              corpusIdentity: wanted!.corpusIdentity,
            },
            seqLen: config.seqLen,
            stride: config.stride,
            batchSize: config.batchSize,
            keyDtype: config.keyDtype,
            kvCache: config.kvCache,
            onProgress: (progress) => emit({ type: "gather-progress", progress }),
            signal: opts.signal,
          });
          manifest = {
            ...header(),
            ...madeBy(g.dModel, m.vocabSize),
            ...(await gatheredFiles(dir, g, config)),
          };
          await writeManifest(dir, manifest);
          await removeIfExists(paths.gatherProgress);
          emit({ type: "done", stage: "gather", seconds: g.seconds });
        }
      } else if (gathering) {
        // Into DIR/shards/I, each shard resumable on its own.
        const t0 = performance.now();
        const fp = wanted!;
        const mine = only ? [only.index] : Array.from({ length: count }, (_, i) => i);
        const pending: number[] = [];
        let skippedRows = 0;
        for (const i of mine) {
          const sd = shardDir(dir, i);
          const rec = await readShardRecord(sd);
          if (opts.force) {
            await removeShardGather(sd);
            pending.push(i);
            continue;
          }
          if (rec) {
            if (rec.shard.count !== count || rec.shard.index !== i) {
              throw new KnnError(
                "E_MISMATCH",
                `${sd}: holds shard ${rec.shard.index}/${rec.shard.count}, not ${i}/${count}`,
                { path: sd, hint: `pass --shards ${rec.shard.count}, or --force` },
              );
            }
            refuse(sd, rec.gather, "a shard");
            const problems = gatheredProblems(sd, rec);
            if (problems.length === 0) {
              skippedRows += rec.keys.shape[0];
              continue;
            }
            for (const p of problems) emit({ type: "warning", message: p.message });
            emit({ type: "warning", message: `gathering ${sd} again: its keys cannot be trusted` });
            await removeShardGather(sd);
          }
          pending.push(i);
        }
        const workers = workersFor(pending.length);
        if (pending.length === 0) {
          emit({
            type: "skip",
            stage: "gather",
            reason: only
              ? `shard ${only.index}/${count} already gathered`
              : `all ${count} shards gathered`,
          });
        } else {
          const range = (i: number) => shardRange(fp, { index: i, count });
          const total = only
            ? range(only.index).rows[1] - range(only.index).rows[0]
            : fp.nTokens - 1;
          emit({
            type: "start",
            stage: "gather",
            detail: only
              ? `shard ${only.index}/${count}: ${total} of ${fp.nTokens - 1} positions`
              : `${fp.nTokens} tokens in ${count} shards` +
                (inProcess(workers) ? "" : `, ${workers} worker processes`),
          });
          if (inProcess(workers)) {
            let before = skippedRows;
            for (const i of pending) {
              const m = await openModel();
              const sd = shardDir(dir, i);
              await mkdirp(sd, "create the shard directory");
              const r = range(i);
              const g = await gather({
                model: m,
                tokens: input!.tokens,
                dir: sd,
                identity: {
                  modelSha256,
                  keyTensor: config.keyTensor,
                  corpusIdentity: fp.corpusIdentity,
                },
                seqLen: config.seqLen,
                stride: config.stride,
                batchSize: config.batchSize,
                keyDtype: config.keyDtype,
                windows: r.windows,
                onProgress: (p) =>
                  emit({
                    type: "gather-progress",
                    progress: only
                      ? p
                      : { done: before + p.done, total, resumedFrom: before + p.resumedFrom },
                  }),
                signal: opts.signal,
              });
              await writeShardRecord(sd, {
                ...madeBy(g.dModel, m.vocabSize),
                shard: { index: i, count, ...r },
                ...(await gatheredFiles(sd, g, config)),
              });
              await removeIfExists(join(sd, "gather.progress.json"));
              before += g.rows;
            }
          } else {
            await runWorkers({
              stage: "gather",
              shards: pending,
              count,
              workers,
              config: workerConfig(workers),
              command,
              signal: opts.signal,
              onEvent: workerEvents("gather", total, skippedRows),
            });
          }
          emit({ type: "done", stage: "gather", seconds: (performance.now() - t0) / 1000 });
        }
      }
    } finally {
      model?.close();
    }
    if (!stages.has("train") && !stages.has("add") && !stages.has("merge")) {
      return { manifest, ...(count > 1 ? { shards: count } : {}) };
    }

    // The keys the later stages read, as shards ("parts"): each shard's own keys.npy (not
    // merged yet), or ranges of DIR/keys.npy. A one-file datastore is added in parts of
    // AUTO_SHARD_KEYS keys unless told otherwise, so no add process holds more lists than that.
    const layout = async () => {
      if (manifest) {
        const [n, d] = manifest.keys.shape;
        const parts = only?.count ?? opts.shards ?? manifest.shards?.count ??
          (await shardCountOfAdds(dir)) ?? autoShardCount(n);
        const bounds = parts === 1
          ? [0, n]
          : manifest.shards?.count === parts
          ? manifest.shards.rows
          : [
            ...Array.from(
              { length: parts },
              (_, i) => shardRange(manifest!.gather, { index: i, count: parts }).rows[0],
            ),
            n,
          ];
        return {
          n,
          d,
          parts: bounds.slice(0, -1).map((r0, i): AddPart => ({
            index: i,
            dir: parts === 1 ? dir : shardDir(dir, i),
            keys: { file: paths.keys, fileRow: r0, globalRow: r0, rows: bounds[i + 1] - r0 },
          })),
          records: undefined,
        };
      }
      const g = await gatheredShards(dir);
      if (!g) {
        throw new KnnError(
          "E_NOT_FOUND",
          `${dir}: no gathered keys yet (run \`knn gather\` or \`knn build-index\`)`,
          { path: paths.manifest },
        );
      }
      refuse(dir, g.records[0].gather, "shards");
      return {
        n: g.records.at(-1)!.shard.rows[1],
        d: g.records[0].keys.shape[1],
        parts: g.records.map((r, i): AddPart => ({
          index: i,
          dir: shardDir(dir, i),
          keys: {
            file: join(shardDir(dir, i), "keys.npy"),
            fileRow: 0,
            globalRow: r.shard.rows[0],
            rows: r.keys.shape[0],
          },
        })),
        records: g.records,
      };
    };
    const keys = await layout();
    const { n, d } = keys;
    const parts = keys.parts.length;
    const { params, warnings } = planIndex(n, d, config.index);

    // nprobe is a query-time setting: a finished index only has it recorded anew.
    if (
      manifest?.index && sameIndexParams(manifest.index, params) &&
      manifest.index.nprobe !== params.nprobe && opts.workerOf === undefined && !only
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
    const readTrained = async (): Promise<TrainedRecord | DatastoreManifest["trained"]> =>
      manifest ? manifest.trained : await readJsonIfExists<TrainedRecord>(trainedRecordPath(dir));
    let trainedRec = await readTrained();
    const trainedMatches = async () => {
      if (!sameTraining(trainedRec, params) || !trainedUsable(paths.trainedIndex, d)) return false;
      const sha = (trainedRec as TrainedRecord).sha256;
      return sha === undefined || sha === await sha256File(paths.trainedIndex);
    };
    if (stages.has("train")) {
      const same = sameTraining(trainedRec, params) && !opts.force;
      if (same && await trainedMatches()) {
        emit({ type: "skip", stage: "train", reason: `already trained (${params.factory})` });
      } else {
        checkSignal(opts.signal, "training");
        if (same) {
          emit({
            type: "warning",
            message: `${paths.trainedIndex}: missing or unreadable: training again`,
          });
        } else if (trainedRec) {
          emit({
            type: "warning",
            message: `index settings changed (${trainedRec.factory} → ${params.factory}): ` +
              `retraining from the same keys`,
          });
        }
        // Planning warnings concern the index: said once, by the stage that trains it.
        for (const message of warnings) emit({ type: "warning", message });
        emit({
          type: "start",
          stage: "train",
          detail: `${params.factory} on ${params.trainSize} keys` +
            (parts > 1 && sharded ? ` drawn across ${parts} shards` : "") + `, ${threads} threads`,
        });
        // An add under way grew from the old training: it cannot be resumed.
        await removeIfExists(paths.addProgress);
        await removeIfExists(paths.partialIndex);
        const t = await trainIndex({
          dir,
          params,
          keys: keys.parts.map((p) => p.keys),
          signal: opts.signal,
        });
        const rec = { ...params, warnings, seconds: t.seconds };
        if (manifest) {
          manifest = { ...manifest, trained: rec };
          await writeManifest(dir, manifest);
        } else {
          await writeJsonAtomic(
            trainedRecordPath(dir),
            {
              ...rec,
              sha256: await sha256File(paths.trainedIndex),
            } satisfies TrainedRecord,
          );
        }
        trainedRec = await readTrained();
        emit({ type: "done", stage: "train", seconds: t.seconds });
      }
    }
    if (!stages.has("add") && !stages.has("merge")) {
      return { manifest, ...(count > 1 ? { shards: count } : {}) };
    }

    // Stage 3: add, and 4: merge. Skipped only when the finished index's files still match.
    let added = manifest?.index !== undefined && sameIndexParams(manifest.index, params) &&
      !(opts.force && stages.has("add"));
    if (added && manifest && !only) {
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
    if (added) {
      const reason = `index complete (${manifest!.index!.ntotal} keys)`;
      if (stages.has("add")) emit({ type: "skip", stage: "add", reason });
      if (stages.has("merge") && !stages.has("add")) emit({ type: "skip", stage: "merge", reason });
      await Deno.remove(join(dir, SHARDS_DIR), { recursive: true }).catch(() => {});
      return { manifest, ...(parts > 1 ? { shards: parts } : {}) };
    }
    if (!(await trainedMatches())) {
      throw new KnnError(
        "E_NOT_FOUND",
        `${dir}: no trained index for ${params.factory} (run \`knn train-index\` first)`,
        { path: paths.trainedIndex },
      );
    }
    const trainedSha256 = await sha256File(paths.trainedIndex);
    const ondisk = params.invlists === "disk" && params.nlist > 0;
    if (parts > 1 && !ondisk) {
      throw new KnnError(
        "E_CONFIG",
        `${dir}: ${parts} shards are merged into on-disk inverted lists, which ` +
          `${params.factory} with invlists "${params.invlists}" does not have; build it as one ` +
          `shard (--shards 1) or use an IVF index with invlists "disk"`,
        { key: "index.invlists" },
      );
    }
    const t0 = performance.now();
    if (stages.has("add")) {
      checkSignal(opts.signal, "adding");
      const mine = only ? [keys.parts[only.index]] : keys.parts;
      if (opts.force) {
        for (const p of mine) await removeIfExists(join(p.dir, SHARD_ADD_FILES.record));
      }
      const pending: AddPart[] = [];
      let skippedRows = 0;
      for (const p of mine) {
        const rows: [number, number] = [p.keys.globalRow, p.keys.globalRow + p.keys.rows];
        if (await finishedShardAdd(p.dir, trainedSha256, params, rows)) skippedRows += p.keys.rows;
        else pending.push(p);
      }
      const total = mine.reduce((a, p) => a + p.keys.rows, 0);
      const workers = workersFor(pending.length);
      if (pending.length === 0) {
        emit({
          type: "skip",
          stage: "add",
          reason: only ? `shard ${only.index}/${parts} already added` : `all ${parts} shards added`,
        });
      } else {
        emit({
          type: "start",
          stage: "add",
          detail: (only ? `shard ${only.index}/${parts}: ` : "") +
            `${total} keys in chunks of ${config.index.addChunk}` +
            (parts > 1 && !only ? ` in ${parts} shards` : "") +
            (ondisk ? ", lists on disk" : "") +
            (inProcess(workers) ? "" : `, ${workers} worker processes`),
        });
        if (inProcess(workers)) {
          let before = skippedRows;
          for (const p of pending) {
            await mkdirp(p.dir, "create the shard directory");
            const a = await addShard({
              dir: p.dir,
              keys: p.keys,
              trainedIndex: paths.trainedIndex,
              params,
              chunk: config.index.addChunk,
              onProgress: (progress) =>
                emit({
                  type: "add-progress",
                  progress: {
                    done: before + progress.done,
                    total,
                    resumedFrom: before + (progress.resumedFrom ?? 0),
                  },
                }),
              signal: opts.signal,
              ...(parts === 1
                ? {
                  spaceFor: {
                    bytes: estimateAddBytes(params, n, d),
                    what: `adding ${n} keys to ${params.factory} ` +
                      `(${ondisk ? "faiss.ivfdata, " : ""}${paths.index})`,
                  },
                }
                : {}),
            });
            before += a.ntotal;
          }
        } else {
          await runWorkers({
            stage: "add",
            shards: pending.map((p) => p.index),
            count: parts,
            workers,
            config: workerConfig(workers),
            command,
            signal: opts.signal,
            onEvent: workerEvents("add", total, skippedRows),
          });
        }
        if (only || parts > 1) {
          emit({ type: "done", stage: "add", seconds: (performance.now() - t0) / 1000 });
        }
      }
    }
    if (!stages.has("merge")) return { manifest, ...(parts > 1 ? { shards: parts } : {}) };

    // Merge: every shard's lists into faiss.index (+ lists file), the keys into DIR.
    checkSignal(opts.signal, "merging");
    const missing: number[] = [];
    const adds: ShardAddRecord[] = [];
    for (const p of keys.parts) {
      const rows: [number, number] = [p.keys.globalRow, p.keys.globalRow + p.keys.rows];
      const rec = await finishedShardAdd(p.dir, trainedSha256, params, rows);
      if (rec) adds.push(rec);
      else missing.push(p.index);
    }
    if (missing.length) {
      throw new KnnError(
        "E_NOT_FOUND",
        `${dir}: shard${missing.length > 1 ? "s" : ""} ${missing.join(", ")} of ${parts} not ` +
          `added yet`,
        {
          path: dir,
          hint: parts > 1
            ? `run knn add --shard ${missing[0]}/${parts} (or knn add)`
            : "run knn add",
        },
      );
    }
    // A one-shard add ends with its merge, reported as part of the add stage.
    const mergeStage = parts > 1 || !stages.has("add");
    const tm = performance.now();
    if (mergeStage) {
      emit({
        type: "start",
        stage: "merge",
        detail: `${parts} shard${parts > 1 ? "s" : ""}: ` + (sharded ? "keys, values and " : "") +
          `inverted lists` + (ondisk ? ", each sized exactly, on disk" : ""),
      });
    }
    if (sharded) {
      const records = keys.records!;
      const sums = await mergeKeys(dir, records, opts.signal);
      manifest = {
        ...header(),
        config,
        model: records[0].model,
        ...(records[0].tokenizer ? { tokenizer: records[0].tokenizer } : {}),
        corpus: records[0].corpus,
        keys: { file: "keys.npy", dtype: records[0].keys.dtype, shape: [n, d] },
        vals: { file: "vals.npy", dtype: "<i4", shape: [n] },
        gather: mergedGather(records),
        ...(sums
          ? {
            checksums: { file: "checksums.json", algorithm: "sha256", blockRows: sums.blockRows },
          }
          : {}),
        trained: stripSha(trainedRec as TrainedRecord),
        versions: versions({ faiss: faissVersion() }),
      };
    }
    const merged = await mergeIndex({
      dir,
      shards: keys.parts.map((p) => join(p.dir, SHARD_ADD_FILES.index)),
      trainedIndex: paths.trainedIndex,
      params,
      signal: opts.signal,
    });
    const mergeSeconds = (performance.now() - tm) / 1000;
    manifest = {
      ...manifest!,
      index: {
        ...params,
        file: "faiss.index",
        ntotal: merged.ntotal,
        warnings,
        // add (summed over shards) + merge
        seconds: adds.reduce((a, r) => a + r.seconds, 0) + mergeSeconds,
        bytes: merged.bytes,
        ...(merged.ivfdata ? { ivfdata: merged.ivfdata } : {}),
      },
      ...(parts > 1 ? { shards: { count: parts, rows: [...adds.map((r) => r.rows[0]), n] } } : {}),
    };
    await writeManifest(dir, manifest);
    // The shards' files, and the previous build's lists (readers holding them open keep them).
    for (const f of [SHARD_ADD_FILES.index, SHARD_ADD_FILES.record]) {
      await removeIfExists(join(dir, f));
    }
    await Deno.remove(join(dir, SHARDS_DIR), { recursive: true }).catch(() => {});
    await removeStaleIvfdata(dir);
    emit({
      type: "done",
      stage: mergeStage ? "merge" : "add",
      seconds: (performance.now() - (mergeStage ? tm : t0)) / 1000,
    });
    return { manifest: (await readManifest(dir))!, ...(parts > 1 ? { shards: parts } : {}) };
  } finally {
    setNumThreads(previousThreads);
    for (const l of locks.reverse()) l[Symbol.dispose]();
  }
}

/**
 * Runs the pipeline for `config` into `config.out` and returns the final manifest
 * (`datastore.json`). For one shard's work (`shard`), or stages that leave a sharded datastore
 * unmerged, use {@link runPipeline}: there is no manifest yet (`E_USAGE` here).
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
  const r = await runPipeline(config, opts);
  if (r.manifest) return r.manifest;
  throw new KnnError(
    "E_USAGE",
    `${config.out}: the stages ran, but the ${r.shards} shards are not merged yet, so there is ` +
      `no datastore.json to return (use runPipeline, then merge)`,
  );
}

/** The shard count recorded by a gathered (or gathering) shard on disk, if any. */
async function shardCountOnDisk(dir: string): Promise<number | undefined> {
  for (const i of await listShardDirs(dir)) {
    const rec = await readShardRecord(shardDir(dir, i)).catch(() => undefined);
    if (rec) return rec.shard.count;
  }
  return undefined;
}

/**
 * The number of shards whose adds are on disk for a merged (or one-file) datastore: the
 * highest `shards/I` with an `ivf.json`, plus one; undefined when there are none.
 */
async function shardCountOfAdds(dir: string): Promise<number | undefined> {
  let max = -1;
  for (const i of await listShardDirs(dir)) {
    try {
      await Deno.stat(join(shardDir(dir, i), SHARD_ADD_FILES.record));
      max = Math.max(max, i);
    } catch { /* not added */ }
  }
  return max >= 0 ? max + 1 : undefined;
}

/** The corpus a gather reads: its tokens (capped at `maxTokens`) and tokenizer. */
async function loadInput(config: KnnlmConfig, signal?: AbortSignal) {
  const tokenizer = await openTokenizer(config.tokenizer);
  const corpus = await loadCorpus(config.corpus, { tokenizer, encode: { signal } });
  // Pre-tokenized ids (.npy/.bin) with no tokenizer named: record that none is known.
  const recorded: Tokenizer = config.tokenizer === null && /\.(npy|bin)$/.test(config.corpus)
    ? idsOnlyTokenizer(corpus.vocabSize)
    : tokenizer;
  const nTokens = Math.min(corpus.tokens.length, config.maxTokens ?? Infinity);
  if (nTokens - 1 < config.seqLen) {
    throw new Error(
      `${config.corpus}: corpus '${corpus.name}' has ${nTokens} tokens; one window needs ` +
        `${config.seqLen + 1} (seqLen ${config.seqLen} + the next token): ` +
        `lower --seq-len or use a longer corpus`,
    );
  }
  return { corpus, recorded, nTokens, tokens: corpus.tokens.subarray(0, nTokens) };
}

/** What datastore.json (or shard.json) records of gathered keys in `dir`. */
async function gatheredFiles(
  dir: string,
  g: GatherResult,
  config: KnnlmConfig,
): Promise<Pick<DatastoreManifest, "keys" | "vals" | "gather" | "checksums">> {
  let checksums: DatastoreManifest["checksums"];
  try {
    const sums = JSON.parse(await Deno.readTextFile(datastorePaths(dir).checksums));
    checksums = { file: "checksums.json", algorithm: "sha256", blockRows: sums.blockRows };
  } catch { /* a gather resumed from an older checkpoint records none */ }
  return {
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
  };
}

async function removeShardGather(sd: string): Promise<void> {
  for (
    const f of ["shard.json", "gather.progress.json", "checksums.json", "keys.npy", "vals.npy"]
  ) {
    await removeIfExists(join(sd, f));
  }
  for (const f of [SHARD_ADD_FILES.index, SHARD_ADD_FILES.record]) {
    await removeIfExists(join(sd, f));
  }
}

function stripSha(rec: TrainedRecord): NonNullable<DatastoreManifest["trained"]> {
  const { sha256: _, ...rest } = rec;
  return rest;
}

/** The merged datastore's gather record: the shards' fingerprint, windows and time summed. */
function mergedGather(records: ShardRecord[]): DatastoreManifest["gather"] {
  const seconds = records.reduce((a, r) => a + r.gather.seconds, 0);
  const rows = records.reduce((a, r) => a + r.keys.shape[0], 0);
  return {
    ...records[0].gather,
    windows: records.reduce((a, r) => a + r.gather.windows, 0),
    seconds,
    tokensPerSecond: rows / seconds,
  };
}

/**
 * The datastore's `keys.npy` and `vals.npy` as the shards' files one after another (a plain
 * file copy after one header, `.tmp` then renamed), and `checksums.json` as the shards' block
 * sums, each block keeping its rows (`starts`). Returns the sums, or undefined when a shard
 * recorded none.
 */
async function mergeKeys(
  dir: string,
  records: ShardRecord[],
  signal?: AbortSignal,
): Promise<GatherChecksums | undefined> {
  const paths = datastorePaths(dir);
  const dirs = records.map((_, i) => shardDir(dir, i));
  for (const [name, final] of [["keys.npy", paths.keys], ["vals.npy", paths.vals]] as const) {
    const tmp = `${final}.tmp`;
    await concatNpy({ inputs: dirs.map((d) => join(d, name)), output: tmp, signal });
    await renameFile(tmp, final);
  }
  const all: GatherChecksums = {
    algorithm: "sha256",
    blockRows: 0,
    rows: 0,
    keys: [],
    vals: [],
    starts: [],
  };
  for (const [i, r] of records.entries()) {
    const sums = r.checksums
      ? await readJsonIfExists<GatherChecksums>(join(dirs[i], "checksums.json"))
      : undefined;
    if (!sums || sums.rows !== r.keys.shape[0]) {
      await removeIfExists(paths.checksums);
      return undefined;
    }
    const B = sums.blockRows;
    sums.keys.forEach((_, b) => all.starts!.push(all.rows + (sums.starts?.[b] ?? b * B)));
    all.keys.push(...sums.keys);
    all.vals.push(...sums.vals);
    all.blockRows = Math.max(all.blockRows, B);
    all.rows += sums.rows;
  }
  await writeJsonAtomic(paths.checksums, all);
  return all;
}
