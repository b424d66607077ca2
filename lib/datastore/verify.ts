/**
 * `knn verify`: check everything a datastore promises, without trusting any of it. Each check
 * reports `ok`, `failed` (with {@linkcode KnnError}-coded problems naming the file) or
 * `skipped` (with the reason):
 *
 * | check | what |
 * | --- | --- |
 * | `manifest` | `datastore.json` is there and readable |
 * | `keys`, `vals` | headers, dtypes, shapes and sizes against the manifest |
 * | `values` | every value is a token of the model's vocabulary |
 * | `checksums` | per-block sha256 of keys and values against those recorded at gather time |
 * | `index-files` | `faiss.index` and its on-disk lists are there, of the recorded sizes |
 * | `index` | the index reads, holds `index.ntotal` = n vectors of width d |
 * | `ids` | ids 0..n−1 each exactly once (needs the index layer's stored-id iteration) |
 * | `self-recall` | optional: sampled keys find themselves among their k nearest |
 *
 * @module
 */

import type { ErrorCode } from "../core/errors.ts";
import { KnnError } from "../core/errors.ts";
import { FaissIndex } from "../index/mod.ts";
import type { MappedArray } from "../storage/mmap.ts";
import { readJsonIfExists } from "../core/_atomic.ts";
import { type DatastoreManifest, datastorePaths, readManifest } from "./manifest.ts";
import {
  gatheredProblems,
  indexCountProblems,
  indexFileProblems,
  openNpyChecked,
} from "./_checks.ts";
import { type GatherChecksums, rowsSha256 } from "./gather.ts";
import { sampleRows } from "./sample.ts";

/** Names of the checks, in the order they run. */
export type VerifyCheckName =
  | "manifest"
  | "keys"
  | "vals"
  | "values"
  | "checksums"
  | "index-files"
  | "index"
  | "ids"
  | "self-recall";

/** One problem found: a stable code, a message naming the file, and the file. */
export interface VerifyProblem {
  /** What kind of problem (`E_CORRUPT`, `E_NOT_FOUND`, …). */
  code: ErrorCode;
  /** One line naming the file, what was expected and what was found. */
  message: string;
  /** The file concerned. */
  path?: string;
}

/** The outcome of one check. */
export interface VerifyCheck {
  /** Which check. */
  name: VerifyCheckName;
  /** `ok`, `failed`, or `skipped` (not run: see `detail`). */
  status: "ok" | "failed" | "skipped";
  /** What was checked and found, or why it was skipped. */
  detail: string;
  /** The problems (empty unless failed). */
  problems: VerifyProblem[];
}

/** What {@link verifyDatastore} found. */
export interface VerifyReport {
  /** The datastore directory. */
  dir: string;
  /** True when no check failed. */
  ok: boolean;
  /** Every check, in order. */
  checks: VerifyCheck[];
}

/** Options of {@link verifyDatastore}. */
export interface VerifyOptions {
  /** Recompute the per-block checksums (reads every byte of keys and values). Default true. */
  checksums?: boolean;
  /** Keys sampled for the self-recall check; 0 skips it. Default 0. */
  recallSample?: number;
  /** Neighbours searched per sampled key. Default 8. */
  recallK?: number;
  /** Self-recall below this fails the check. Default 0 (report only). */
  minRecall?: number;
  /** Lists probed for self-recall. Default: all of them (nlist). */
  nprobe?: number;
  /** Seed of the self-recall sample. Default 1. */
  seed?: number;
  /** Called as each check finishes. */
  onCheck?: (check: VerifyCheck) => void;
}

function problem(e: unknown): VerifyProblem {
  if (KnnError.is(e)) {
    return { code: e.code, message: e.message, ...(e.path ? { path: e.path } : {}) };
  }
  return { code: "E_IO", message: e instanceof Error ? e.message : String(e) };
}

/** Checks every file of datastore `dir`; never throws for a problem it finds (see the report). */
export async function verifyDatastore(
  dir: string,
  opts: VerifyOptions = {},
): Promise<VerifyReport> {
  const paths = datastorePaths(dir);
  const checks: VerifyCheck[] = [];
  const add = (
    name: VerifyCheckName,
    detail: string,
    problems: VerifyProblem[] = [],
    skipped = false,
  ) => {
    const check: VerifyCheck = {
      name,
      status: skipped ? "skipped" : problems.length ? "failed" : "ok",
      detail,
      problems,
    };
    checks.push(check);
    opts.onCheck?.(check);
  };
  const report = (): VerifyReport => ({
    dir,
    ok: checks.every((c) => c.status !== "failed"),
    checks,
  });

  let m: DatastoreManifest | undefined;
  try {
    m = await readManifest(dir);
  } catch (e) {
    add("manifest", `${paths.manifest}: unreadable`, [problem(e)]);
    return report();
  }
  if (!m) {
    add("manifest", `${paths.manifest}: missing`, [{
      code: "E_NOT_FOUND",
      message: `${paths.manifest}: missing — not a finished datastore`,
      path: paths.manifest,
    }]);
    return report();
  }
  add(
    "manifest",
    `${m.keys.shape[0]} keys of width ${m.keys.shape[1]}, ` +
      (m.index ? `index ${m.index.factory}` : "no finished index"),
  );
  const n = m.keys.shape[0];

  // keys.npy and vals.npy
  let keys: MappedArray | undefined;
  let vals: MappedArray | undefined;
  try {
    try {
      keys = openNpyChecked(paths.keys, m.keys, "keys");
      add("keys", `${paths.keys}: ${m.keys.dtype} [${m.keys.shape}]`);
    } catch (e) {
      add("keys", `${paths.keys}: does not match datastore.json`, [problem(e)]);
    }
    try {
      vals = openNpyChecked(paths.vals, m.vals, "vals");
      add("vals", `${paths.vals}: ${m.vals.dtype} [${m.vals.shape}]`);
    } catch (e) {
      add("vals", `${paths.vals}: does not match datastore.json`, [problem(e)]);
    }

    // Values: tokens of the model's vocabulary.
    const V = m.model.vocabSize;
    if (vals) {
      const v = vals.view() as Int32Array;
      let bad = 0, first = -1;
      for (let i = 0; i < v.length; i++) {
        if (v[i] < 0 || v[i] >= V) {
          if (bad++ === 0) first = i;
        }
      }
      add(
        "values",
        `${v.length} values within [0, ${V}) (datastore.json model.vocabSize)`,
        bad
          ? [{
            code: "E_CORRUPT",
            message: `${paths.vals}: ${bad} values outside the vocabulary [0, ${V}); ` +
              `the first at row ${first} is ${v[first]}`,
            path: paths.vals,
          }]
          : [],
      );
    } else add("values", "vals.npy unusable", [], true);

    // Checksums recorded at gather time.
    await checkSums(m, dir, keys, vals, opts, add);
  } finally {
    keys?.close();
    vals?.close();
  }

  // The index.
  if (!m.index) {
    const p = {
      code: "E_NOT_FOUND" as const,
      message: `${dir}: no finished index`,
      path: paths.index,
    };
    add("index-files", "no finished index in datastore.json", [p]);
    return report();
  }
  const fileProblems = await indexFileProblems(dir, m);
  add(
    "index-files",
    `${m.index.file}` + (m.index.ivfdata ? ` and ${m.index.ivfdata.file}` : "") +
      (m.index.bytes === undefined ? " present (no sizes recorded)" : " of the recorded sizes"),
    fileProblems.map(problem),
  );
  if (fileProblems.length) {
    add("index", "not read: its files do not match datastore.json", [], true);
    return report();
  }
  let index: FaissIndex;
  try {
    index = FaissIndex.read(paths.index, { readOnly: true });
  } catch (e) {
    add("index", `${paths.index}: unreadable`, [{ ...problem(e), code: "E_CORRUPT" }]);
    return report();
  }
  try {
    add(
      "index",
      `${paths.index}: ${index.ntotal} vectors of width ${index.d}`,
      indexCountProblems(dir, m, index).map(problem),
    );
    checkIds(index, n, paths.index, add);
    if ((opts.recallSample ?? 0) > 0 && gatheredProblems(dir, m).length === 0) {
      await checkRecall(index, m, dir, opts, add);
    } else {
      add("self-recall", "not requested (or the keys are unusable)", [], true);
    }
  } finally {
    index.close();
  }
  return report();
}

type Add = (
  name: VerifyCheckName,
  detail: string,
  problems?: VerifyProblem[],
  skipped?: boolean,
) => void;

async function checkSums(
  m: DatastoreManifest,
  dir: string,
  keys: MappedArray | undefined,
  vals: MappedArray | undefined,
  opts: VerifyOptions,
  add: Add,
): Promise<void> {
  const paths = datastorePaths(dir);
  if (opts.checksums === false) return add("checksums", "not requested", [], true);
  if (!m.checksums) return add("checksums", "none recorded at gather time", [], true);
  if (!keys || !vals) return add("checksums", "keys or values unusable", [], true);
  let sums: GatherChecksums | undefined;
  try {
    sums = await readJsonIfExists<GatherChecksums>(paths.checksums);
  } catch (e) {
    return add("checksums", `${paths.checksums}: unreadable`, [problem(e)]);
  }
  const n = keys.rows;
  const B = sums?.blockRows ?? 0;
  const starts = sums?.starts;
  const blocks = starts ? starts.length : B > 0 ? Math.ceil(n / B) : 0;
  const startsOk = !starts ||
    starts.every((s, b) =>
      Number.isSafeInteger(s) && (b === 0 ? s === 0 : s > starts[b - 1] && s < n)
    );
  if (
    !sums || sums.algorithm !== "sha256" || !(B > 0) || sums.rows !== n || !startsOk ||
    sums.keys?.length !== blocks || sums.vals?.length !== blocks
  ) {
    return add("checksums", `${paths.checksums}: missing or not for these ${n} rows`, [{
      code: sums ? "E_CORRUPT" : "E_NOT_FOUND",
      message: `${paths.checksums}: ` +
        (sums ? `records ${sums.rows} rows in blocks of ${B}, expected ${n} rows` : "missing"),
      path: paths.checksums,
    }]);
  }
  const problems: VerifyProblem[] = [];
  for (
    const [arr, list, path] of [[keys, sums.keys, paths.keys], [
      vals,
      sums.vals,
      paths.vals,
    ]] as const
  ) {
    for (let b = 0; b < blocks; b++) {
      const start = starts ? starts[b] : b * B;
      const end = starts ? (starts[b + 1] ?? n) : Math.min(n, start + B);
      if (rowsSha256(arr, start, end) !== list[b]) {
        problems.push({
          code: "E_CORRUPT",
          message: `${path}: rows [${start}, ${end}) differ from their sha256 recorded at ` +
            `gather time (block ${b} of ${paths.checksums})`,
          path,
        });
      }
    }
    arr.advise("dontneed");
  }
  add(
    "checksums",
    `${blocks} blocks of ${starts ? "up to " : ""}${B} rows of keys and values, sha256`,
    problems,
  );
}

function checkIds(index: FaissIndex, n: number, path: string, add: Add): void {
  const { count, problems } = storedIdProblems(index.storedIdBlocks(), n, path);
  add("ids", `${count} stored ids: each of 0..${n - 1} exactly once`, problems);
}

/**
 * Checks that the ids an index stores (`blocks`, e.g. one inverted list at a time) are each of
 * 0..n−1 exactly once: reports ids out of range, ids stored twice and ids missing, with an
 * example of each. Memory: one bit per row.
 */
export function storedIdProblems(
  blocks: Iterable<BigInt64Array>,
  n: number,
  path: string,
): { count: number; problems: VerifyProblem[] } {
  const seen = new Uint32Array(Math.ceil(n / 32));
  let outside = 0, twice = 0, count = 0;
  let firstOutside: bigint | undefined, firstTwice: number | undefined;
  const limit = BigInt(n);
  for (const block of blocks) {
    for (const id of block) {
      count++;
      if (id < 0n || id >= limit) {
        if (outside++ === 0) firstOutside = id;
        continue;
      }
      const i = Number(id), w = i >>> 5, bit = 1 << (i & 31);
      if (seen[w] & bit) {
        if (twice++ === 0) firstTwice = i;
      } else seen[w] |= bit;
    }
  }
  const missing = n - (count - outside - twice);
  const problems: VerifyProblem[] = [];
  if (outside) {
    problems.push({
      code: "E_CORRUPT",
      message: `${path}: ${outside} ids outside 0..${n - 1} (e.g. ${firstOutside})`,
      path,
    });
  }
  if (twice) {
    problems.push({
      code: "E_CORRUPT",
      message: `${path}: ${twice} ids stored more than once (e.g. ${firstTwice})`,
      path,
    });
  }
  if (missing) {
    let first = -1;
    for (let i = 0; i < n && first < 0; i++) if (!(seen[i >>> 5] & (1 << (i & 31)))) first = i;
    problems.push({
      code: "E_CORRUPT",
      message: `${path}: ${missing} of the ids 0..${n - 1} are missing (e.g. ${first})`,
      path,
    });
  }
  return { count, problems };
}

async function checkRecall(
  index: FaissIndex,
  m: DatastoreManifest,
  dir: string,
  opts: VerifyOptions,
  add: Add,
): Promise<void> {
  const paths = datastorePaths(dir);
  const k = opts.recallK ?? 8;
  const nlist = m.index?.nlist ?? 0;
  const nprobe = opts.nprobe ?? nlist;
  if (nlist > 0) index.nprobe = Math.min(nprobe, nlist);
  using keys = openNpyChecked(paths.keys, m.keys, "keys");
  const d = keys.rowLength;
  const rows = sampleRows(keys.rows, opts.recallSample ?? 0, opts.seed ?? 1);
  const f16 = keys.dtype === "<f2";
  const q = f16 ? new Uint16Array(rows.length * d) : new Float32Array(rows.length * d);
  for (let i = 0; i < rows.length; i++) {
    q.set(keys.view(rows[i], rows[i] + 1) as Float32Array | Uint16Array, i * d);
  }
  const { labels } = await index.searchAsync(
    q instanceof Uint16Array ? { dtype: "float16", data: q } : q,
    Math.min(k, keys.rows),
  );
  const kk = labels.length / rows.length;
  // Bit-identical keys (repeated contexts) cannot be told apart: finding one counts.
  const keyBytes = (row: number) => {
    const v = keys.view(row, row + 1);
    return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  };
  const same = (a: Uint8Array, b: Uint8Array) => a.every((x, j) => x === b[j]);
  let hits = 0;
  for (let i = 0; i < rows.length; i++) {
    const row = BigInt(rows[i]);
    const found = labels.subarray(i * kk, (i + 1) * kk);
    if (found.includes(row)) hits++;
    else {
      const mine = keyBytes(rows[i]);
      if (found.some((l) => l >= 0n && same(keyBytes(Number(l)), mine))) hits++;
    }
  }
  const recall = rows.length ? hits / rows.length : 1;
  const min = opts.minRecall ?? 0;
  add(
    "self-recall",
    `${recall.toFixed(4)}: ${hits} of ${rows.length} sampled keys among their own ${kk} ` +
      `nearest (nprobe ${nlist > 0 ? index.nprobe : "-"})` + (min > 0 ? `, minimum ${min}` : ""),
    recall < min
      ? [{
        code: "E_CORRUPT",
        message: `${paths.index}: self-recall ${recall.toFixed(4)} below the minimum ${min}: ` +
          `the index does not find the keys it was built from`,
        path: paths.index,
      }]
      : [],
  );
}
