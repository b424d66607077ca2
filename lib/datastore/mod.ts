/**
 * The datastore layer: `datastore.json` (the manifest, written last), the stages that make a
 * datastore — {@linkcode gather} (keys.npy / vals.npy), {@linkcode trainIndex},
 * {@linkcode addToIndex} — the {@linkcode buildIndex} pipeline that runs them resumably, and
 * {@linkcode Datastore}, an open datastore ready for searches.
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
  readManifest,
} from "./manifest.ts";
export {
  gather,
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
  addToIndex,
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
