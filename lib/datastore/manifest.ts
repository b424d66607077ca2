/**
 * The datastore directory and its manifest, `datastore.json`.
 *
 * A datastore directory holds `keys.npy` ([n, d] float32 or float16: row i is the model's key
 * for the context ending at corpus token i), `vals.npy` ([n] int32: row i is token i + 1),
 * `faiss.index` (a plain `faiss.write_index` file whose ids are row numbers) and
 * `datastore.json`, which records how all of it was made and is written after the files it
 * describes. Work in progress lives under `*.tmp` names plus a `*.progress.json` file, so a
 * crash never leaves a file that looks complete. `checksums.json` holds sha256 sums of blocks
 * of keys and values recorded while gathering (`knn verify` recomputes them), and `.lock` is
 * the writer lock (see `lock.ts`).
 *
 * @module
 */

import { join } from "node:path";
import { readJsonIfExists, writeJsonAtomic } from "../core/_atomic.ts";
import { KnnError } from "../core/errors.ts";
import type { IndexConfig, KnnlmConfig } from "../config/mod.ts";
import type { TokenizerIdentity } from "../model/tokenizer.ts";

/** Version of the datastore layout this toolkit writes and reads. */
export const DATASTORE_FORMAT = 1;

/** File names inside a datastore directory. */
export const DATASTORE_FILES = {
  keys: "keys.npy",
  vals: "vals.npy",
  index: "faiss.index",
  ivfdata: "faiss.ivfdata",
  trainedIndex: "faiss.trained.index",
  manifest: "datastore.json",
  gatherProgress: "gather.progress.json",
  checksums: "checksums.json",
  addProgress: "add.progress.json",
  partialIndex: "faiss.partial.index",
  lock: ".lock",
} as const;

/**
 * Names the on-disk inverted lists take in turn: a rebuild writes its lists under the name the
 * live index does not use, so readers of the complete datastore never see them change.
 */
export const IVFDATA_NAMES = ["faiss.ivfdata", "faiss.1.ivfdata"] as const;

/** Paths of a datastore's files. */
export function datastorePaths(dir: string): Record<keyof typeof DATASTORE_FILES, string> {
  return Object.fromEntries(
    Object.entries(DATASTORE_FILES).map(([k, v]) => [k, join(dir, v)]),
  ) as Record<keyof typeof DATASTORE_FILES, string>;
}

/** What decides the bytes of `keys.npy`/`vals.npy`; two gathers with equal fingerprints match. */
export interface GatherFingerprint {
  /** sha256 of the ONNX model file. */
  modelSha256: string;
  /** Tensor whose values are the keys. */
  keyTensor: string;
  /** Identity (sha256) of the corpus tokens before truncation. */
  corpusIdentity: string;
  /** Number of corpus tokens used (after `maxTokens`). */
  nTokens: number;
  /** Window length. */
  seqLen: number;
  /** Window stride. */
  stride: number;
  /** Windows per model call (changes the arithmetic's blocking, hence bits). */
  batchSize: number;
  /** Storage dtype of keys. */
  keyDtype: KnnlmConfig["keyDtype"];
  /** Positions per KV-cached segment, when the keys were gathered with the cache (absent: windowed). */
  kvCache?: number;
}

/**
 * Index settings as built: the configuration's `index` section after {@link planIndex} fitted
 * it to the datastore, with `factory` the FAISS factory string actually built (`nlist` is 0
 * when the index is not IVF, `m` and `nbits` are 0 when it is not PQ). Manifests written
 * before `addChunk` was recorded lack it.
 */
export type IndexParams = IndexConfig & { factory: string };

/** `datastore.json`: how a datastore was made. */
export interface DatastoreManifest {
  /** Layout version ({@link DATASTORE_FORMAT}). */
  format: 1;
  /** The toolkit that wrote it. */
  toolkit: { name: string; version: string };
  /** When this file was last written (ISO 8601). */
  updatedAt: string;
  /** The resolved configuration the datastore was built with. */
  config: unknown;
  /** The model: where it was, its sha256 (checked before querying), key and logits names. */
  model: {
    path: string;
    sha256: string;
    keyTensor: string;
    logitsOutput: string;
    dModel: number;
    vocabSize: number;
  };
  /**
   * The tokenizer that made the corpus ids (kind, sha256 of its `tokenizer.json` and
   * `tokenizer_config.json`, vocabulary size) and where it was; absent in datastores made
   * before tokenizers were recorded, which used UTF-8 bytes.
   */
  tokenizer?: TokenizerIdentity & { path: string | null };
  /** The corpus: the spec given, its identity (sha256 of the tokens) and how much was used. */
  corpus: {
    spec: string;
    name: string;
    identity: string;
    /** Tokens used (after `maxTokens`). */
    nTokens: number;
    /** Tokens in the whole corpus. */
    totalTokens: number;
    /** Token 0; with `vals.npy` it rebuilds the whole token stream (token i+1 = vals[i]). */
    firstToken: number;
  };
  /** `keys.npy`: [n, d] float32 (`<f4`) or float16 (`<f2`); row i = context ending at token i. */
  keys: { file: string; dtype: "<f4" | "<f2"; shape: [number, number] };
  /** `vals.npy`: [n] int32; row i = token i + 1. */
  vals: { file: string; dtype: "<i4"; shape: [number] };
  /** How keys were gathered (the fingerprint that decides reuse) and how long it took. */
  gather: GatherFingerprint & { windows: number; seconds: number; tokensPerSecond: number };
  /**
   * The trained, still empty index (`faiss.trained.index`), once training finished: the
   * configuration's `index` settings as built, `factory` being the string actually built.
   */
  trained?: IndexConfig & { factory: string; warnings: string[]; seconds: number };
  /** The finished index (`faiss.index`), once every key was added: settings as in `trained`. */
  index?: IndexConfig & {
    factory: string;
    file: string;
    ntotal: number;
    warnings: string[];
    seconds: number;
    /** Size of `file` in bytes when it was written (checked before reading it). */
    bytes?: number;
    /** The on-disk inverted lists (`invlists: "disk"`): file name and size in bytes. */
    ivfdata?: { file: string; bytes: number };
  };
  /** Per-block checksums of `keys.npy` and `vals.npy` recorded while gathering. */
  checksums?: { file: string; algorithm: "sha256"; blockRows: number };
  /**
   * How the datastore was built in shards (absent: as one): their number, and the first row of
   * each followed by n (shard i holds rows [rows[i], rows[i+1])). Adding again after a retrain
   * uses the same shards.
   */
  shards?: { count: number; rows: number[] };
  /** Versions of the toolkit, Deno, ONNX Runtime and FAISS that made it. */
  versions: Record<string, string>;
}

/** Reads `datastore.json` from `dir`, or `undefined` when there is none. */
export async function readManifest(dir: string): Promise<DatastoreManifest | undefined> {
  const path = datastorePaths(dir).manifest;
  const m = await readJsonIfExists<DatastoreManifest>(path);
  if (m && m.format !== DATASTORE_FORMAT) {
    throw new KnnError(
      "E_CORRUPT",
      `${path}: datastore format ${m.format} is not supported (this toolkit reads ${DATASTORE_FORMAT})`,
      { path, key: "format" },
    );
  }
  return m;
}

/** Writes `datastore.json` atomically (call it after the files it describes are complete). */
export function writeManifest(dir: string, manifest: DatastoreManifest): Promise<void> {
  return writeJsonAtomic(datastorePaths(dir).manifest, {
    ...manifest,
    updatedAt: new Date().toISOString(),
  });
}

/** Lists the fields where two fingerprints differ, as `field: old → new`. */
export function fingerprintDiff(
  found: Partial<GatherFingerprint>,
  wanted: GatherFingerprint,
): string[] {
  const out: string[] = [];
  // kvCache is absent from windowed fingerprints: compared even when only `found` has it.
  const keys = new Set([...Object.keys(wanted), "kvCache"]) as Set<keyof GatherFingerprint>;
  for (const key of keys) {
    if (found[key] !== wanted[key]) {
      const show = (v: unknown) =>
        typeof v === "string" && v.length === 64 ? `${v.slice(0, 12)}…` : JSON.stringify(v);
      out.push(`${key}: ${show(found[key])} → ${show(wanted[key])}`);
    }
  }
  return out;
}

/** Throws a refusal naming each differing setting when a directory holds another datastore. */
export function refuseMismatch(
  dir: string,
  found: Partial<GatherFingerprint>,
  wanted: GatherFingerprint,
  what: string,
): void {
  const diff = fingerprintDiff(found, wanted);
  if (diff.length) {
    throw new KnnError(
      "E_MISMATCH",
      `${dir}: holds ${what} made with a different model or settings (${diff.join("; ")}); ` +
        `refusing to mix them — choose another --out directory or delete ${dir}`,
      { path: dir },
    );
  }
}
