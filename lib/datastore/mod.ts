/**
 * The datastore layer: `datastore.json` (the manifest, written last), the stages that make a
 * datastore — {@linkcode gather} (keys.npy / vals.npy), {@linkcode trainIndex},
 * {@linkcode addShard} and {@linkcode mergeIndex} (or {@linkcode addToIndex} for both) — the
 * {@linkcode buildIndex} / {@linkcode runPipeline} pipeline that runs them resumably under the
 * {@linkcode DatastoreLock}, in shards when asked (see {@linkcode ShardSpec}),
 * {@linkcode Datastore}, an open datastore ready for searches, and {@linkcode verifyDatastore},
 * which checks every file against what the manifest promises.
 *
 * @module
 */

export { Datastore } from "./datastore.ts";
export {
  DATASTORE_FILES,
  DATASTORE_FORMAT,
  type DatastoreManifest,
  datastorePaths,
  type GatherFingerprint,
  type IndexParams,
  IVFDATA_NAMES,
  readManifest,
} from "./manifest.ts";
export {
  CHECKSUM_BLOCK_ROWS,
  gather,
  type GatherChecksums,
  type GatherOptions,
  type GatherProgress,
  type GatherResult,
  type KeyModel,
  keyModelOf,
  type KeysOnlyRunner,
} from "./gather.ts";
export {
  type AddOptions,
  type AddProgress,
  type AddResult,
  addShard,
  type AddShardOptions,
  addToIndex,
  estimateAddBytes,
  finishedShardAdd,
  type IndexRequest,
  type KeyRange,
  mergeIndex,
  type MergeIndexOptions,
  planIndex,
  SHARD_ADD_FILES,
  trainIndex,
  type TrainIndexOptions,
  wholeKeys,
} from "./train_add.ts";
export {
  AUTO_SHARD_KEYS,
  autoShardCount,
  type GatheredShards,
  gatheredShards,
  parseShardSpec,
  type ShardAddRecord,
  shardDir,
  shardFromEnvironment,
  type ShardRange,
  shardRange,
  type ShardRecord,
  SHARDS_DIR,
  type ShardSpec,
  type TrainedRecord,
  trainedRecordPath,
  writeShardRecord,
} from "./shards.ts";
// Types of the layers below that this layer's API mentions.
export type * from "../config/mod.ts";
export type * from "../index/mod.ts";
export type * from "../storage/mod.ts";
export {
  buildIndex,
  type BuildOptions,
  type PipelineEvent,
  type PipelineResult,
  runPipeline,
  type Stage,
  STAGES,
} from "./build.ts";
export { type AcquireLockOptions, DatastoreLock, LOCK_FILE, type LockHolder } from "./lock.ts";
export {
  storedIdProblems,
  type VerifyCheck,
  type VerifyCheckName,
  verifyDatastore,
  type VerifyOptions,
  type VerifyProblem,
  type VerifyReport,
} from "./verify.ts";
