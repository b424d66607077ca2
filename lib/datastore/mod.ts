/**
 * The datastore layer: `datastore.json` (the manifest, written last), the stages that make a
 * datastore — {@linkcode gather} (keys.npy / vals.npy), {@linkcode trainIndex},
 * {@linkcode addToIndex} — the {@linkcode buildIndex} pipeline that runs them resumably under
 * the {@linkcode DatastoreLock}, {@linkcode Datastore}, an open datastore ready for searches,
 * and {@linkcode verifyDatastore}, which checks every file against what the manifest promises.
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
  addToIndex,
  estimateAddBytes,
  type IndexRequest,
  planIndex,
  trainIndex,
  type TrainIndexOptions,
} from "./train_add.ts";
// Types of the layers below that this layer's API mentions.
export type * from "../config/mod.ts";
export type * from "../index/mod.ts";
export type * from "../storage/mod.ts";
export { buildIndex, type BuildOptions, type PipelineEvent, type Stage } from "./build.ts";
export { DatastoreLock, LOCK_FILE, type LockHolder } from "./lock.ts";
export {
  type StoredIdBlocks,
  storedIdProblems,
  type VerifyCheck,
  type VerifyCheckName,
  verifyDatastore,
  type VerifyOptions,
  type VerifyProblem,
  type VerifyReport,
} from "./verify.ts";
