/**
 * Shards: a datastore built in N contiguous pieces, by processes that may run at the same time
 * on different machines sharing the file system, in any order.
 *
 * Shard I of N covers a contiguous range of the gather's windows, cut at the gather's batch
 * boundaries: batches [⌊I·B/N⌋, ⌊(I+1)·B/N⌋) of the B batches of `batchSize` windows, so that
 * every model call is exactly the one a one-process gather makes and the keys come out
 * byte-identical, whatever N. Its rows (positions) are then a contiguous range too, and the
 * shards' rows, in shard order, are the datastore's rows.
 *
 * Layout: `DIR/shards/I/` holds shard I's `keys.npy`, `vals.npy`, `checksums.json` (its gather,
 * resumable and lock-protected as a whole datastore's), `shard.json` once gathered, and after
 * the add stage `ivf.index` (its keys encoded by the trained index, ids = global rows) with
 * `ivf.json`. `knn merge` makes the datastore's own files from them and removes `shards/`.
 * A datastore gathered as one shard keeps everything directly in `DIR` (no `shards/`).
 *
 * @module
 */

import { join } from "node:path";
import { readJsonIfExists, writeJsonAtomic } from "../core/_atomic.ts";
import { KnnError } from "../core/errors.ts";
import { planWindows } from "../model/windows.ts";
import type { DatastoreManifest, GatherFingerprint, IndexParams } from "./manifest.ts";

/** The folder of a datastore that holds its shards until they are merged. */
export const SHARDS_DIR = "shards";

/**
 * Keys per shard when the shard count is chosen automatically: bounds the inverted lists one
 * add process holds in memory (2M keys × (64-byte code + 8-byte id) = 144 MB).
 */
export const AUTO_SHARD_KEYS = 2_000_000;

/** Which shard a process works on: `index` of `count` (0 ≤ index < count). */
export interface ShardSpec {
  /** 0-based shard number. */
  index: number;
  /** Number of shards. */
  count: number;
}

/** The windows and rows of one shard. */
export interface ShardRange {
  /** Windows [first, end) of the gather's window plan. */
  windows: [number, number];
  /** Global rows [first, end) (positions) the shard holds. */
  rows: [number, number];
}

/** `shard.json`: a finished shard gather (what `datastore.json` records for a whole one). */
export interface ShardRecord {
  /** Which shard. */
  shard: ShardSpec & ShardRange;
  /** Same as {@link DatastoreManifest.config}. */
  config: DatastoreManifest["config"];
  /** Same as {@link DatastoreManifest.model}. */
  model: DatastoreManifest["model"];
  /** Same as {@link DatastoreManifest.tokenizer}. */
  tokenizer?: DatastoreManifest["tokenizer"];
  /** Same as {@link DatastoreManifest.corpus}. */
  corpus: DatastoreManifest["corpus"];
  /** This shard's `keys.npy` (shape: its rows). */
  keys: DatastoreManifest["keys"];
  /** This shard's `vals.npy`. */
  vals: DatastoreManifest["vals"];
  /** The gather's fingerprint (equal in every shard), this shard's windows and time. */
  gather: DatastoreManifest["gather"];
  /** This shard's `checksums.json`, blocks counted from the shard's first row. */
  checksums?: DatastoreManifest["checksums"];
  /** Versions that made it. */
  versions: Record<string, string>;
}

/** `ivf.json`: a finished add of one shard's keys (beside its `ivf.index`). */
export interface ShardAddRecord {
  /** sha256 of the `faiss.trained.index` the shard was encoded with. */
  trainedSha256: string;
  /** The index parameters. */
  params: IndexParams;
  /** Global rows [first, end) it holds (ids). */
  rows: [number, number];
  /** Vectors in `ivf.index`. */
  ntotal: number;
  /** Size of `ivf.index` in bytes. */
  bytes: number;
  /** Seconds the add took. */
  seconds: number;
}

/** The training record of a sharded datastore before its merge (`shards/trained.json`). */
export type TrainedRecord = NonNullable<DatastoreManifest["trained"]> & {
  /** sha256 of `faiss.trained.index`. */
  sha256: string;
};

/** `DIR/shards/I`. */
export function shardDir(dir: string, index: number): string {
  return join(dir, SHARDS_DIR, String(index));
}

/** Paths of a shard's records. */
export function shardFiles(shard: string): { record: string; add: string; index: string } {
  return {
    record: join(shard, "shard.json"),
    add: join(shard, "ivf.json"),
    index: join(shard, "ivf.index"),
  };
}

/** The training record of a sharded datastore, `DIR/shards/trained.json`. */
export function trainedRecordPath(dir: string): string {
  return join(dir, SHARDS_DIR, "trained.json");
}

function checkSpec(index: number, count: number, source: string): ShardSpec {
  if (!Number.isSafeInteger(count) || count < 1) {
    throw new KnnError(
      "E_USAGE",
      `${source}: the shard count must be an integer ≥ 1, found ${count}`,
    );
  }
  if (!Number.isSafeInteger(index) || index < 0 || index >= count) {
    throw new KnnError(
      "E_USAGE",
      `${source}: the shard index must be an integer in 0..${count - 1}, found ${index}`,
    );
  }
  return { index, count };
}

/** Parses `"I/N"` (0-based I) as given to `--shard`; `source` names it in errors. */
export function parseShardSpec(text: string, source = "--shard"): ShardSpec {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(text);
  if (!m) {
    throw new KnnError(
      "E_USAGE",
      `${source}: expected I/N (shard I of N, from 0), found '${text}'`,
    );
  }
  return checkSpec(Number(m[1]), Number(m[2]), source);
}

/**
 * The shard a scheduler assigned to this process, from its environment, or undefined when
 * there is none: a Slurm job array task (`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN` of
 * `SLURM_ARRAY_TASK_COUNT`), or a Kubernetes Indexed Job pod (`JOB_COMPLETION_INDEX` of
 * `shards`, which the pod's command passes as `--shards N`; without it, `E_USAGE`).
 */
export function shardFromEnvironment(
  env: Record<string, string | undefined>,
  shards?: number,
): ShardSpec | undefined {
  const int = (name: string) => {
    const v = env[name];
    if (v === undefined || v === "") return undefined;
    if (!/^\d+$/.test(v.trim())) {
      throw new KnnError("E_USAGE", `${name}=${v}: expected a non-negative integer`);
    }
    return Number(v);
  };
  const task = int("SLURM_ARRAY_TASK_ID");
  const taskCount = int("SLURM_ARRAY_TASK_COUNT");
  if (task !== undefined && taskCount !== undefined) {
    const min = int("SLURM_ARRAY_TASK_MIN") ?? 0;
    const spec = checkSpec(task - min, taskCount, "SLURM_ARRAY_TASK_ID");
    if (shards !== undefined && shards !== spec.count) {
      throw new KnnError(
        "E_USAGE",
        `--shards ${shards} but the Slurm job array has ${spec.count} tasks ` +
          `(SLURM_ARRAY_TASK_COUNT); submit it with --array=0-${shards - 1}`,
      );
    }
    return spec;
  }
  const k8s = int("JOB_COMPLETION_INDEX");
  if (k8s !== undefined) {
    if (shards === undefined) {
      throw new KnnError(
        "E_USAGE",
        `JOB_COMPLETION_INDEX=${k8s} is set (a Kubernetes Indexed Job) but not --shards N; ` +
          `pass the Job's completions as --shards`,
      );
    }
    return checkSpec(k8s, shards, "JOB_COMPLETION_INDEX");
  }
  return undefined;
}

/** Shards chosen for `positions` keys when none are asked for: one per {@link AUTO_SHARD_KEYS}. */
export function autoShardCount(positions: number): number {
  return Math.max(1, Math.ceil(positions / AUTO_SHARD_KEYS));
}

/**
 * The windows and rows of shard `spec` of the gather `fp` describes (see the module docs: whole
 * batches of `fp.batchSize` windows). Throws `E_CONFIG` when there are fewer batches than
 * shards.
 */
export function shardRange(
  fp: Pick<GatherFingerprint, "nTokens" | "seqLen" | "stride" | "batchSize">,
  spec: ShardSpec,
): ShardRange {
  const plan = planWindows(fp.nTokens, fp.seqLen, fp.stride);
  const batches = Math.ceil(plan.count / fp.batchSize);
  if (spec.count > batches) {
    throw new KnnError(
      "E_CONFIG",
      `${spec.count} shards, but the corpus makes only ${batches} batches of ${fp.batchSize} ` +
        `windows (a shard is whole batches): use at most ${batches} shards`,
      { key: "shards" },
    );
  }
  const cut = (i: number) =>
    Math.min(plan.count, Math.floor((i * batches) / spec.count) * fp.batchSize);
  const first = cut(spec.index), end = cut(spec.index + 1);
  return {
    windows: [first, end],
    rows: [plan.at(first).scoreFrom, plan.at(end - 1).end],
  };
}

/** Reads `shard.json` of shard directory `shard`, or undefined when the shard is not gathered. */
export function readShardRecord(shard: string): Promise<ShardRecord | undefined> {
  return readJsonIfExists<ShardRecord>(shardFiles(shard).record);
}

/** Writes `shard.json` atomically (after the shard's files are complete). */
export function writeShardRecord(shard: string, record: ShardRecord): Promise<void> {
  return writeJsonAtomic(shardFiles(shard).record, record);
}

/** The shard directories present under `DIR/shards/` (numbers, ascending). */
export async function listShardDirs(dir: string): Promise<number[]> {
  const out: number[] = [];
  try {
    for await (const e of Deno.readDir(join(dir, SHARDS_DIR))) {
      if (e.isDirectory && /^\d+$/.test(e.name)) out.push(Number(e.name));
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort((a, b) => a - b);
}

/** What is on disk of a sharded gather: each shard's record, in shard order. */
export interface GatheredShards {
  /** Number of shards. */
  count: number;
  /** Shard i's record. */
  records: ShardRecord[];
}

/**
 * The finished shard gathers of `dir`, checked to form one datastore: shards 0..N−1 all
 * present, all of N shards, with one fingerprint, rows following on. Returns undefined when
 * `dir` has no shards; throws `E_NOT_FOUND` naming the shards not yet gathered (and the
 * command that gathers them) and `E_MISMATCH` for shards of different gathers.
 */
export async function gatheredShards(dir: string): Promise<GatheredShards | undefined> {
  const present = await listShardDirs(dir);
  if (present.length === 0) return undefined;
  const records = await Promise.all(present.map((i) => readShardRecord(shardDir(dir, i))));
  const known = records.find((r) => r !== undefined);
  const count = known?.shard.count ?? Math.max(...present) + 1;
  const missing: number[] = [];
  const byIndex: ShardRecord[] = [];
  for (let i = 0; i < count; i++) {
    const at = present.indexOf(i);
    const r = at >= 0 ? records[at] : undefined;
    if (!r) missing.push(i);
    else byIndex[i] = r;
  }
  for (const [at, i] of present.entries()) {
    const r = records[at];
    if (!r) continue;
    if (r.shard.count !== count || r.shard.index !== i) {
      throw new KnnError(
        "E_MISMATCH",
        `${shardDir(dir, i)}: holds shard ${r.shard.index}/${r.shard.count} but ` +
          `${shardDir(dir, known!.shard.index)} shard ${known!.shard.index}/${count}; ` +
          `the shards of one datastore are gathered with one shard count — delete ` +
          `${join(dir, SHARDS_DIR)} to start over`,
        { path: shardDir(dir, i) },
      );
    }
    const diff = fingerprintFields.filter((k) => r.gather[k] !== known!.gather[k]);
    if (diff.length) {
      throw new KnnError(
        "E_MISMATCH",
        `${shardDir(dir, i)}: gathered with other settings than shard ${known!.shard.index} ` +
          `(${diff.join(", ")}); delete ${join(dir, SHARDS_DIR)} to start over`,
        { path: shardDir(dir, i) },
      );
    }
  }
  if (missing.length) {
    const list = missing.length > 8
      ? `${missing.slice(0, 8).join(", ")}, … (${missing.length} in all)`
      : missing.join(", ");
    throw new KnnError(
      "E_NOT_FOUND",
      `${dir}: shard${missing.length > 1 ? "s" : ""} ${list} of ${count} not gathered yet`,
      {
        path: join(dir, SHARDS_DIR),
        hint: `run knn gather --shard ${missing[0]}/${count} (or knn gather --shards ${count})`,
      },
    );
  }
  for (let i = 1; i < count; i++) {
    if (byIndex[i].shard.rows[0] !== byIndex[i - 1].shard.rows[1]) {
      throw new KnnError(
        "E_CORRUPT",
        `${shardDir(dir, i)}/shard.json: rows start at ${byIndex[i].shard.rows[0]}, but shard ` +
          `${i - 1} ends at ${byIndex[i - 1].shard.rows[1]}`,
        { path: shardFiles(shardDir(dir, i)).record },
      );
    }
  }
  return { count, records: byIndex };
}

const fingerprintFields: (keyof GatherFingerprint)[] = [
  "modelSha256",
  "keyTensor",
  "corpusIdentity",
  "nTokens",
  "seqLen",
  "stride",
  "batchSize",
  "keyDtype",
];
