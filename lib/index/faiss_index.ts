/**
 * `FaissIndex`: a FAISS index owned from TypeScript through the shim in `ffi.ts`.
 *
 * @module
 */

import { resolve } from "node:path";
import { fsError, KnnError } from "../core/errors.ts";
import { cPath, ErrnoError } from "../storage/_libc.ts";
import { type FaissLibrary, openFaissLibrary } from "./ffi.ts";

/** Distance metric: squared L2 (`"l2"`) or inner product (`"ip"`). */
export type Metric = "l2" | "ip";

/** Element type of vectors handed to FAISS; float16 is converted to float32 natively. */
export type VectorDType = "float32" | "float16";

/**
 * Rows of `d` values, row-major. Float32 typed arrays are passed to FAISS in place (no copy).
 * Float16 input is raw IEEE half bits in a `Uint16Array`. The pointer form reads `n` rows at a
 * raw address, e.g. rows of a memory-mapped `.npy` file; the caller keeps that memory mapped
 * until the call (or the promise of an async call) has finished.
 */
export type Vectors =
  | Float32Array
  | { dtype: "float32"; data: Float32Array }
  | { dtype: "float16"; data: Uint16Array }
  | { pointer: Deno.PointerObject; n: number; dtype: VectorDType };

/** Search result for `n` queries: row `i` holds the `k` neighbours of query `i`, best first. */
export interface SearchResult {
  /** `[n, k]` distances (squared L2, or inner products for `"ip"`). */
  distances: Float32Array;
  /** `[n, k]` ids of the neighbours; -1 where fewer than `k` were found. */
  labels: BigInt64Array;
}

/** Parameters of `FaissIndex.ivfpq`. */
export interface IvfPqOptions {
  /** Vector dimension. */
  d: number;
  /** Number of inverted lists (coarse centroids), e.g. 2048. */
  nlist: number;
  /** Number of PQ sub-quantizers; code size is `m * nbits / 8` bytes. Must divide `d`. */
  m: number;
  /** Bits per sub-quantizer code; default 8. */
  nbits?: number;
  /** Metric; default `"l2"` (IndexFlatL2 quantizer), `"ip"` uses IndexFlatIP. */
  metric?: Metric;
}

/** Options of `FaissIndex.read`. */
export interface ReadOptions {
  /**
   * Map in-memory inverted lists from the index file instead of loading them (FAISS's
   * `IO_FLAG_MMAP`); the index is then read-only. Default false.
   */
  mmap?: boolean;
  /**
   * Open on-disk inverted lists (`faiss.ivfdata`) read-only, so that a file the caller may read
   * but not write can be searched; adding then throws. Default false (opened for reading and
   * writing, as FAISS does).
   */
  readOnly?: boolean;
}

/** Options of `train` / `trainAsync`. */
export interface TrainOptions {
  /** Train on the first `n` rows only. Default: all rows. */
  n?: number;
  /**
   * `trainAsync` only: aborting stops FAISS's k-means at its next check (each k-means iteration
   * and each block of the assignment search, so within seconds) and rejects with the signal's
   * reason when it is a `KnnError`, else with `E_INTERRUPTED`. The index is then untrained.
   */
  signal?: AbortSignal;
  /**
   * For a plain IndexIVFPQ with FAISS's default PQ training: train its `m` PQ sub-quantizers in
   * parallel across the threads (each k-means on one thread, OpenBLAS single-threaded) instead
   * of one after another. The codebooks are FAISS's own (same k-means, same seed: the index file
   * is byte-identical); FAISS 1.7.3's sequential version spends most of its time waking threads
   * for tiny blocks. Other indexes ignore it. Default true.
   */
  parallelPq?: boolean;
}

/** What `train` reports besides training the index. */
export interface TrainResult {
  /** Whether the parallel PQ training ({@link TrainOptions.parallelPq}) ran. */
  parallelPq: boolean;
  /**
   * FAISS's clustering warnings, one line per clustering (coarse quantizer, PQ codebooks) that
   * had fewer training vectors than FAISS recommends (39 per centroid). FAISS itself would have
   * printed them to stderr, once per PQ sub-quantizer; the binding never lets it.
   */
  warnings: string[];
}

/** Options of `addAsync` / `addWithIdsAsync`. */
export interface AddVectorsOptions {
  /**
   * Aborting stops between slices of 65 536 rows and rejects with the signal's reason when it is
   * a `KnnError`, else with `E_INTERRUPTED`. The slices already added stay (see `ntotal`).
   */
  signal?: AbortSignal;
}

/** Where an IVF index keeps its inverted lists when they are on disk (`faiss.ivfdata`). */
export interface OnDiskLists {
  /** Absolute path of the lists file. */
  path: string;
  /** Bytes the lists occupy: the file must hold at least this many (checked by `read`). */
  bytesUsed: number;
  /** Bytes mapped (FAISS's `totsize`): the lists plus free space kept for later adds. */
  bytesMapped: number;
  /** Whether the lists were opened read-only. */
  readOnly: boolean;
}

/** Options of {@linkcode FaissIndex.mergeOnDisk}. */
export interface MergeOnDiskOptions {
  /** The trained, empty IVF index that every shard was cloned from (read, not changed). */
  trained: FaissIndex;
  /**
   * The filled shards: open indexes, or paths of index files (read with `mmap`, so their lists
   * are not loaded into memory, and closed again). Each must share `trained`'s training (same
   * coarse centroids and PQ codebooks), else the merge fails with `E_MISMATCH`.
   */
  shards: readonly (FaissIndex | string)[];
  /**
   * Path of the inverted-lists file to create (replaced if present). The merged index records
   * its absolute path; `read` looks for a file of that name beside the index file.
   */
  ivfdata: string;
  /** Aborting stops the copy and rejects with `E_INTERRUPTED` (the file is removed). */
  signal?: AbortSignal;
}

// knnlm_index_read flags.
const READ_MMAP = 1;
const READ_READ_ONLY = 2;
// Shim statuses (see _shim_source.ts).
const ST_CORRUPT = 2;
const ST_INTERRUPTED = 3;
const ST_MISMATCH = 4;
const ST_ERRNO = 1000;

// faiss::MetricType values.
const METRIC_CODE: Record<Metric, number> = { ip: 0, l2: 1 };
const DTYPE_CODE: Record<VectorDType, number> = { float32: 0, float16: 1 };
const ERR_LEN = 4096;
// size_t / int64_t parameters take bigint.
const ERR_CAP = BigInt(ERR_LEN);
const MAX_I32 = 0x7fffffff;

// Vectors resolved to what every native call takes: an address, a row count and a dtype code;
// keep holds the typed array (if any) so it outlives a nonblocking call.
interface Resolved {
  ptr: Deno.PointerObject;
  n: number;
  dtype: number;
  keep: unknown;
}

type Handle = { lib: FaissLibrary; ptr: Deno.PointerObject };

// Frees indexes that were dropped without close(). An in-flight async call keeps its index
// reachable, so this never frees under a running call.
const leaked = new FinalizationRegistry<Handle>((h) => h.lib.symbols.knnlm_index_free(h.ptr));

function errBuf(): Uint8Array<ArrayBuffer> {
  return new Uint8Array(ERR_LEN);
}

// A NUL-terminated string at `start` in buf, and where the next one starts.
function cStringAt(buf: Uint8Array, start: number): [string, number] {
  let end = buf.indexOf(0, start);
  if (end < 0) end = buf.length;
  return [new TextDecoder().decode(buf.subarray(start, end)), end + 1];
}

function usage(message: string): KnnError {
  return new KnnError("E_USAGE", message);
}

function badArgument(message: string): KnnError {
  return new KnnError("E_CONFIG", message);
}

// The error for a failed shim call: err holds `path NUL message NUL` (see _shim_source.ts).
function statusError(status: number, err: Uint8Array, what: string, path?: string): KnnError {
  const [errPath, next] = cStringAt(err, 0);
  const [text] = cStringAt(err, next);
  const file = errPath || path;
  const message = text || `failed with status ${status}`;
  if (status >= ST_ERRNO) {
    const e = new ErrnoError("", status - ST_ERRNO, file);
    e.message = `${message} (${e.errnoName})`;
    return e;
  }
  const opts = file === undefined ? {} : { path: file };
  if (status === ST_CORRUPT) return new KnnError("E_CORRUPT", message, opts);
  if (status === ST_MISMATCH) return new KnnError("E_MISMATCH", `${what}: ${message}`, opts);
  if (status === ST_INTERRUPTED) return new KnnError("E_INTERRUPTED", `${what}: interrupted`);
  return new KnnError("E_NATIVE", `${what}: ${message}`, opts);
}

function check(status: number, err: Uint8Array, what: string, path?: string): void {
  if (status !== 0) throw statusError(status, err, what, path);
}

// Why a signalled call stopped: the signal's reason when it is a KnnError (the CLI aborts with
// E_INTERRUPTED naming SIGINT/SIGTERM), else a fresh E_INTERRUPTED.
function interruption(signal: AbortSignal | undefined, what: string): KnnError {
  const reason = signal?.reason;
  if (reason instanceof KnnError) return reason;
  return new KnnError("E_INTERRUPTED", `${what}: interrupted`, { cause: reason });
}

// An int32 the shim polls; set when signal aborts. ptr is null without a signal.
class CancelFlag implements Disposable {
  readonly flag = new Int32Array(1);
  readonly ptr: Deno.PointerValue;
  #signal?: AbortSignal;
  #onAbort = () => Atomics.store(this.flag, 0, 1);

  constructor(signal?: AbortSignal) {
    this.#signal = signal;
    this.ptr = signal ? Deno.UnsafePointer.of(this.flag) : null;
    signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  [Symbol.dispose](): void {
    this.#signal?.removeEventListener("abort", this.#onAbort);
  }
}

function outPointer(out: BigUint64Array, what: string): Deno.PointerObject {
  const p = Deno.UnsafePointer.create(out[0]);
  if (p === null) throw new KnnError("E_NATIVE", `${what}: FAISS returned no index`);
  return p;
}

function positiveInt(v: number, name: string, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isInteger(v) || v <= 0 || v > max) {
    throw badArgument(`${name} must be an integer in 1..${max}, got ${v}`);
  }
}

function metricCode(metric: Metric): number {
  const code = METRIC_CODE[metric];
  if (code === undefined) throw badArgument(`metric must be "l2" or "ip", got ${String(metric)}`);
  return code;
}

/** Opens the shim (compiling it if needed) and returns the FAISS version it was built with. */
export function faissVersion(): string {
  const { lib } = openFaissLibrary();
  const p = lib.symbols.knnlm_faiss_version();
  return p === null ? "unknown" : Deno.UnsafePointerView.getCString(p);
}

/** Path of the loaded shim library (`$KNNLM_FAISS_LIB` or the build cache). */
export function faissLibraryPath(): string {
  return openFaissLibrary().path;
}

/**
 * Sets how many OpenMP threads FAISS uses from now on, for sync and async calls alike
 * (OpenMP's setting is per thread, so the shim re-applies it on each call's thread).
 */
export function setNumThreads(n: number): void {
  positiveInt(n, "setNumThreads: n", 4096);
  openFaissLibrary().lib.symbols.knnlm_set_num_threads(n);
}

/** The thread count set by `setNumThreads`, else OpenMP's default (`OMP_NUM_THREADS` or cores). */
export function getNumThreads(): number {
  return openFaissLibrary().lib.symbols.knnlm_get_num_threads();
}

/** Rows that {@link exactL2Async} measures against: raw memory, e.g. a mapped `keys.npy`. */
export interface BaseRows {
  /** Address of row 0. */
  pointer: Deno.PointerObject;
  /** Number of rows (labels must be below it). */
  rows: number;
  /** Row width. */
  d: number;
  /** Element type of the rows. */
  dtype: VectorDType;
}

/**
 * Exact squared L2 distances from each query to the base rows its labels name, computed in
 * native code on FAISS's SIMD kernels across the OpenMP pool: `out[q, j] = ‖queries[q] −
 * base[labels[q, j]]‖²`, or `+Infinity` where a label is -1. queries: [nq, d]; labels and the
 * result: [nq, k]. The caller keeps `base` mapped until the promise settles.
 */
export async function exactL2Async(
  queries: Float32Array,
  base: BaseRows,
  labels: BigInt64Array,
  k: number,
): Promise<Float32Array> {
  positiveInt(base.d, "exactL2: d", MAX_I32);
  positiveInt(k, "exactL2: k");
  if (queries.length % base.d !== 0) {
    throw badArgument(
      `exactL2: queries length ${queries.length} is not a multiple of d = ${base.d}`,
    );
  }
  const nq = queries.length / base.d;
  if (labels.length !== nq * k) {
    throw badArgument(`exactL2: expected ${nq}×${k} = ${nq * k} labels, got ${labels.length}`);
  }
  const dtype = DTYPE_CODE[base.dtype];
  if (dtype === undefined) throw badArgument(`exactL2: dtype must be float32 or float16`);
  const out = new Float32Array(nq * k);
  if (nq === 0) return out;
  const err = errBuf();
  const { lib } = openFaissLibrary();
  const status = await pinned(
    [queries, labels, out, err, base],
    () =>
      lib.symbols.knnlm_l2_rows_async(
        queries,
        BigInt(nq),
        base.d,
        base.pointer,
        dtype,
        BigInt(base.rows),
        labels,
        BigInt(k),
        out,
        err,
        ERR_CAP,
      ),
  );
  check(status, err, "exactL2");
  return out;
}

/**
 * A FAISS index. Create it with `factory`, `ivfpq`, `read` or `mergeOnDisk`; release it with
 * `close()` or `using`. After `close()` every method throws. An async call keeps the index busy
 * until its promise settles: closing, or starting a call that modifies the index, throws
 * meanwhile (concurrent searches are allowed).
 *
 * Errors are {@linkcode KnnError}s: `E_NATIVE` with FAISS's own message; `E_NOT_FOUND`,
 * `E_PERMISSION`, `E_NO_SPACE` (or `E_IO`) naming the file for an OS error on a file;
 * `E_CORRUPT` for a damaged or truncated index or `faiss.ivfdata`; `E_INTERRUPTED` for an
 * aborted call; `E_CONFIG` for bad arguments and `E_USAGE` for a closed or busy index.
 */
export class FaissIndex {
  #lib: FaissLibrary;
  #ptr: Deno.PointerObject | null;
  #handle: Handle;
  #d: number;
  #writer: string | null = null;
  #readerOps = new Map<string, number>();

  private constructor(lib: FaissLibrary, ptr: Deno.PointerObject) {
    this.#lib = lib;
    this.#ptr = ptr;
    this.#handle = { lib, ptr };
    leaked.register(this, this.#handle, this.#handle);
    this.#d = Number(this.#stats()[0]);
  }

  /**
   * Creates an index from a FAISS factory string, e.g. `"Flat"`, `"IVF256,PQ32"`,
   * `"IDMap,Flat"`. Metric defaults to `"l2"`. A bad string is `E_NATIVE` with FAISS's message.
   */
  static factory(d: number, description: string, metric: Metric = "l2"): FaissIndex {
    positiveInt(d, "FaissIndex.factory: d", MAX_I32);
    const code = metricCode(metric);
    if (description.includes("\0")) {
      throw badArgument(`FaissIndex.factory: the factory string contains a NUL character`);
    }
    const { lib } = openFaissLibrary();
    const out = new BigUint64Array(1);
    const err = errBuf();
    const what = `faiss index_factory(${d}, ${JSON.stringify(description)})`;
    check(
      lib.symbols.knnlm_index_factory(d, cPath(description), code, out, err, ERR_CAP),
      err,
      what,
    );
    return new FaissIndex(lib, outPointer(out, what));
  }

  /**
   * Creates an IndexIVFPQ with an IndexFlatL2 (or IndexFlatIP) coarse quantizer, as in the
   * kNN-LM reference setup (`nlist` 2048, `m` 64, `nbits` 8). Train it before adding.
   */
  static ivfpq(opts: IvfPqOptions): FaissIndex {
    const { d, nlist, m, nbits = 8, metric = "l2" } = opts;
    positiveInt(d, "FaissIndex.ivfpq: d", MAX_I32);
    positiveInt(nlist, "FaissIndex.ivfpq: nlist");
    positiveInt(m, "FaissIndex.ivfpq: m", MAX_I32);
    positiveInt(nbits, "FaissIndex.ivfpq: nbits", 24);
    if (d % m !== 0) throw badArgument(`FaissIndex.ivfpq: m (${m}) must divide d (${d})`);
    const code = metricCode(metric);
    const { lib } = openFaissLibrary();
    const out = new BigUint64Array(1);
    const err = errBuf();
    const what = `faiss IndexIVFPQ(d=${d}, nlist=${nlist}, m=${m}, nbits=${nbits})`;
    check(
      lib.symbols.knnlm_index_ivfpq(d, BigInt(nlist), m, nbits, code, out, err, ERR_CAP),
      err,
      what,
    );
    return new FaissIndex(lib, outPointer(out, what));
  }

  /**
   * Reads an index written by `write` or by `faiss.write_index` (Python or C++). On-disk
   * inverted lists are looked up beside the index file under the file name the index records
   * (so a datastore can move), and checked before they are mapped: a `faiss.ivfdata` shorter
   * than its lists is `E_CORRUPT` naming the file, the bytes needed and the bytes found.
   */
  static read(path: string, opts: ReadOptions = {}): FaissIndex {
    const { lib } = openFaissLibrary();
    const flags = (opts.mmap ? READ_MMAP : 0) | (opts.readOnly ? READ_READ_ONLY : 0);
    const out = new BigUint64Array(1);
    const err = errBuf();
    const what = `${path}: faiss read_index`;
    check(lib.symbols.knnlm_index_read(cPath(path), flags, out, err, ERR_CAP), err, what, path);
    return new FaissIndex(lib, outPointer(out, what));
  }

  /**
   * Builds one index from the inverted lists of several IVF indexes that were filled from clones
   * of `trained` (FAISS's `contrib/ondisk.merge_ondisk` recipe): a copy of `trained` whose lists
   * live in a new `ivfdata` file, each list sized exactly (no free space), holding every shard's
   * entries in shard order. `ntotal` is the sum of the shards'. The file's blocks are reserved
   * before writing, so a full disk is `E_NO_SPACE`, not a crash. Close the result when done.
   */
  static async mergeOnDisk(opts: MergeOnDiskOptions): Promise<FaissIndex> {
    const { trained } = opts;
    if (!(trained instanceof FaissIndex)) {
      throw badArgument("mergeOnDisk: trained must be a FaissIndex");
    }
    if (opts.shards.length === 0) throw badArgument("mergeOnDisk: no shards to merge");
    if (opts.signal?.aborted) throw interruption(opts.signal, "mergeOnDisk");
    const ivfdata = resolve(opts.ivfdata);
    const cpath = cPath(ivfdata);
    const opened: FaissIndex[] = [];
    const entered: FaissIndex[] = [];
    try {
      const shards = opts.shards.map((s) => {
        if (s instanceof FaissIndex) return s;
        const ix = FaissIndex.read(s, { mmap: true });
        opened.push(ix);
        return ix;
      });
      for (const ix of [trained, ...shards]) {
        if (entered.includes(ix)) continue;
        ix.#enter("mergeOnDisk", "read");
        entered.push(ix);
      }
      const handles = new BigUint64Array(
        shards.map((s) => BigInt(Deno.UnsafePointer.value(s.#ptr))),
      );
      const out = new BigUint64Array(1);
      const err = errBuf();
      using cancel = new CancelFlag(opts.signal);
      const lib = trained.#lib;
      const status = await pinned(
        [handles, cpath, out, err, cancel],
        () =>
          lib.symbols.knnlm_index_merge_ondisk_async(
            trained.#ptr,
            handles,
            shards.length,
            cpath,
            cancel.ptr,
            out,
            err,
            ERR_CAP,
          ),
      );
      if (status === ST_INTERRUPTED) throw interruption(opts.signal, "mergeOnDisk");
      check(status, err, `${ivfdata}: merge of ${shards.length} shards`, ivfdata);
      return new FaissIndex(lib, outPointer(out, "mergeOnDisk"));
    } finally {
      for (const ix of entered) ix.#leave("mergeOnDisk", "read");
      for (const ix of opened) ix.close();
    }
  }

  /** Vector dimension. */
  get d(): number {
    this.#live("d");
    return this.#d;
  }

  /** Number of stored vectors. */
  get ntotal(): number {
    return this.#sync("ntotal", "read", () => Number(this.#stats()[1]));
  }

  /** Whether the index is trained (always true for flat indexes). */
  get isTrained(): boolean {
    return this.#sync("isTrained", "read", () => this.#stats()[2] === 1n);
  }

  /** The metric; `"other"` for metrics this binding does not create (L1, Linf, ...). */
  get metric(): Metric | "other" {
    return this.#sync("metric", "read", () => {
      const code = Number(this.#stats()[3]);
      return code === 0 ? "ip" : code === 1 ? "l2" : "other";
    });
  }

  /** C++ class of the index, e.g. `"faiss::IndexIVFPQ"`. */
  get type(): string {
    return this.#sync("type", "read", () => {
      const buf = new Uint8Array(256);
      const err = errBuf();
      check(
        this.#lib.symbols.knnlm_index_type(this.#ptr, buf, BigInt(buf.length), err, ERR_CAP),
        err,
        "faiss index type",
      );
      return cStringAt(buf, 0)[0];
    });
  }

  /**
   * The ids of every stored vector, one block at a time: one inverted list of an IVF index (also
   * under IndexPreTransform / IndexRefine), the id map of an IndexIDMap, or the sequential ids
   * of any other index. For checking a datastore: ids 0..n−1 each stored once (`knn verify`).
   * Reads the lists (on-disk lists: through the mapping) without loading them all at once.
   */
  *storedIdBlocks(): Generator<BigInt64Array> {
    const size = new BigInt64Array(1);
    const nblocks = new BigInt64Array(1);
    let buf = new BigInt64Array(1024);
    for (let b = 0; b < Number(nblocks[0] || 1n); b++) {
      const ids = this.#sync("storedIdBlocks", "read", () => {
        for (;;) {
          const err = errBuf();
          check(
            this.#lib.symbols.knnlm_index_stored_ids(
              this.#ptr,
              BigInt(b),
              buf,
              BigInt(buf.length),
              size,
              nblocks,
              err,
              ERR_CAP,
            ),
            err,
            "faiss stored ids",
          );
          const n = Number(size[0]);
          if (n <= buf.length) return buf.slice(0, n);
          buf = new BigInt64Array(n); // the list is longer: again with room for it
        }
      });
      yield ids;
    }
  }

  /**
   * The on-disk inverted lists of an IVF index (`useOnDiskLists`, or read from a file that has
   * them), or null when its lists are in memory or it has none.
   */
  get onDiskLists(): OnDiskLists | null {
    return this.#sync("onDiskLists", "read", () => {
      const out = new BigInt64Array(4);
      const path = new Uint8Array(4096);
      const err = errBuf();
      check(
        this.#lib.symbols.knnlm_index_ondisk_info(
          this.#ptr,
          out,
          path,
          BigInt(path.length),
          err,
          ERR_CAP,
        ),
        err,
        "faiss on-disk lists",
      );
      if (out[0] === 0n) return null;
      return {
        path: cStringAt(path, 0)[0],
        bytesUsed: Number(out[1]),
        bytesMapped: Number(out[2]),
        readOnly: out[3] === 1n,
      };
    });
  }

  /**
   * Inverted lists visited per query, for an IVF index (also when wrapped in IndexIDMap or
   * IndexPreTransform). Throws for indexes without an IVF layer.
   */
  get nprobe(): number {
    return this.#sync("nprobe", "read", () => {
      const out = new BigInt64Array(1);
      const err = errBuf();
      check(
        this.#lib.symbols.knnlm_index_get_nprobe(this.#ptr, out, err, ERR_CAP),
        err,
        "faiss nprobe",
      );
      return Number(out[0]);
    });
  }

  set nprobe(value: number) {
    positiveInt(value, "nprobe");
    this.#sync("set nprobe", "write", () => {
      const err = errBuf();
      check(
        this.#lib.symbols.knnlm_index_set_nprobe(this.#ptr, BigInt(value), err, ERR_CAP),
        err,
        "faiss set nprobe",
      );
    });
  }

  /** Trains on the rows of `x` (or the first `opts.n`). */
  train(x: Vectors, opts: Omit<TrainOptions, "signal"> = {}): TrainResult {
    const v = this.#resolve(x, "train", opts.n);
    return this.#sync("train", "write", () => {
      const warnings = new Uint8Array(4096);
      const parallel = new Int32Array(1);
      const err = errBuf();
      const s = this.#lib.symbols;
      const status = s.knnlm_index_train(
        this.#ptr,
        BigInt(v.n),
        v.ptr,
        v.dtype,
        null,
        opts.parallelPq === false ? 0 : 1,
        parallel,
        warnings,
        BigInt(warnings.length),
        err,
        ERR_CAP,
      );
      check(status, err, "faiss train");
      return trainResult(warnings, parallel);
    });
  }

  /** `train` on a worker thread; `x` must stay unchanged until the promise settles. */
  trainAsync(x: Vectors, opts: TrainOptions = {}): Promise<TrainResult> {
    return this.#async("trainAsync", "write", async () => {
      const v = this.#resolve(x, "trainAsync", opts.n);
      if (opts.signal?.aborted) throw interruption(opts.signal, "faiss train");
      const warnings = new Uint8Array(4096);
      const parallel = new Int32Array(1);
      const err = errBuf();
      using cancel = new CancelFlag(opts.signal);
      const status = await pinned(
        [v.keep, warnings, parallel, err, cancel],
        () =>
          this.#lib.symbols.knnlm_index_train_async(
            this.#ptr,
            BigInt(v.n),
            v.ptr,
            v.dtype,
            cancel.ptr,
            opts.parallelPq === false ? 0 : 1,
            parallel,
            warnings,
            BigInt(warnings.length),
            err,
            ERR_CAP,
          ),
      );
      if (status === ST_INTERRUPTED) throw interruption(opts.signal, "faiss train");
      check(status, err, "faiss train");
      return trainResult(warnings, parallel);
    });
  }

  /** Adds rows with sequential ids `ntotal, ntotal + 1, ...`. The index must be trained. */
  add(x: Vectors): void {
    const v = this.#resolve(x, "add");
    this.#sync("add", "write", () => this.#addSync(v, null, "add"));
  }

  /** `add` on a worker thread; `x` must stay unchanged until the promise settles. */
  addAsync(x: Vectors, opts: AddVectorsOptions = {}): Promise<void> {
    return this.#async("addAsync", "write", () => {
      const v = this.#resolve(x, "addAsync");
      return this.#addAsync(v, null, "addAsync", opts.signal);
    });
  }

  /** Adds rows with the given ids (`ids.length` = number of rows). The index must be trained. */
  addWithIds(x: Vectors, ids: BigInt64Array): void {
    const v = this.#resolve(x, "addWithIds");
    checkIds(ids, v.n, "addWithIds");
    this.#sync("addWithIds", "write", () => this.#addSync(v, ids, "addWithIds"));
  }

  /** `addWithIds` on a worker thread; `x` and `ids` must stay unchanged until it settles. */
  addWithIdsAsync(x: Vectors, ids: BigInt64Array, opts: AddVectorsOptions = {}): Promise<void> {
    return this.#async("addWithIdsAsync", "write", () => {
      const v = this.#resolve(x, "addWithIdsAsync");
      checkIds(ids, v.n, "addWithIdsAsync");
      return this.#addAsync(v, ids, "addWithIdsAsync", opts.signal);
    });
  }

  /**
   * Keeps this (empty, IVF) index's inverted lists in a memory-mapped file at `path` (made
   * absolute) instead of anonymous memory, so adding millions of keys does not grow the
   * process's own memory. The file is created by the first add and grown with reserved blocks
   * (a full disk is `E_NO_SPACE` naming it). `write` records the file's name; `read` finds it in
   * the index file's directory.
   */
  useOnDiskLists(path: string): void {
    const file = resolve(path);
    const cpath = cPath(file);
    this.#sync("useOnDiskLists", "write", () => {
      const err = errBuf();
      check(
        this.#lib.symbols.knnlm_index_use_ondisk(this.#ptr, cpath, err, ERR_CAP),
        err,
        `${file}: on-disk inverted lists`,
        file,
      );
    });
  }

  /** Finds the `k` nearest stored vectors of each query row. */
  search(q: Vectors, k: number): SearchResult {
    const v = this.#resolve(q, "search");
    positiveInt(k, "search: k");
    return this.#sync("search", "read", () => {
      const r = allocResult(v.n, k);
      const err = errBuf();
      const status = this.#lib.symbols.knnlm_index_search(
        this.#ptr,
        BigInt(v.n),
        v.ptr,
        v.dtype,
        BigInt(k),
        r.distances,
        r.labels,
        err,
        ERR_CAP,
      );
      check(status, err, "faiss search");
      return r;
    });
  }

  /** `search` on a worker thread; several searches may run at once. */
  searchAsync(q: Vectors, k: number): Promise<SearchResult> {
    return this.#async("searchAsync", "read", async () => {
      const v = this.#resolve(q, "searchAsync");
      positiveInt(k, "searchAsync: k");
      const r = allocResult(v.n, k);
      const err = errBuf();
      const status = await pinned(
        [v.keep, r, err],
        () =>
          this.#lib.symbols.knnlm_index_search_async(
            this.#ptr,
            BigInt(v.n),
            v.ptr,
            v.dtype,
            BigInt(k),
            r.distances,
            r.labels,
            err,
            ERR_CAP,
          ),
      );
      check(status, err, "faiss search");
      return r;
    });
  }

  /**
   * Writes the index as a plain `faiss.write_index` file: to `path.tmp` (synced to disk), then
   * renamed to `path`, so a crash never leaves a partial file under the final name. Mapped
   * on-disk lists are flushed to disk first.
   */
  write(path: string): void {
    const tmp = `${path}.tmp`;
    const cpath = cPath(tmp);
    this.#sync("write", "read", () => {
      const err = errBuf();
      const status = this.#lib.symbols.knnlm_index_write(this.#ptr, cpath, err, ERR_CAP);
      finishWrite(status, err, tmp, path);
    });
  }

  /** `write` on a worker thread (same `path.tmp` then rename). */
  writeAsync(path: string): Promise<void> {
    return this.#async("writeAsync", "read", async () => {
      const tmp = `${path}.tmp`;
      const cpath = cPath(tmp);
      const err = errBuf();
      const status = await pinned(
        [cpath, err],
        () => this.#lib.symbols.knnlm_index_write_async(this.#ptr, cpath, err, ERR_CAP),
      );
      finishWrite(status, err, tmp, path);
    });
  }

  /** Removes all stored vectors; the training (centroids, codebooks) is kept. */
  reset(): void {
    this.#sync("reset", "write", () => {
      const err = errBuf();
      check(this.#lib.symbols.knnlm_index_reset(this.#ptr, err, ERR_CAP), err, "faiss reset");
    });
  }

  /**
   * Runs `fn` with the native `faiss::Index*` under this index's busy guard (`"read"` calls may
   * overlap each other, a `"write"` call has the index to itself), for the shim's entry points
   * outside this class (`knn_native.ts`). The pointer is valid only until `fn` settles.
   */
  withNative<T>(
    op: string,
    mode: "read" | "write",
    fn: (ptr: Deno.PointerObject) => Promise<T>,
  ): Promise<T> {
    return this.#async(op, mode, () => fn(this.#ptr!));
  }

  /** Whether `close()` has run. */
  get closed(): boolean {
    return this.#ptr === null;
  }

  /** Frees the native index. Throws while an async call is running; closing twice is a no-op. */
  close(): void {
    if (this.#ptr === null) return;
    const busy = this.#busyWith();
    if (busy) {
      throw usage(`FaissIndex: cannot close while ${busy} is in progress; await it first`);
    }
    leaked.unregister(this.#handle);
    this.#lib.symbols.knnlm_index_free(this.#ptr);
    this.#ptr = null;
  }

  /** Same as `close()`, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #stats(): BigInt64Array {
    const out = new BigInt64Array(4);
    const err = errBuf();
    check(this.#lib.symbols.knnlm_index_stats(this.#ptr, out, err, ERR_CAP), err, "faiss stats");
    return out;
  }

  #live(op: string): void {
    if (this.#ptr === null) throw usage(`FaissIndex.${op}: index is closed`);
  }

  #busyWith(): string | null {
    if (this.#writer) return this.#writer;
    for (const [op, count] of this.#readerOps) if (count > 0) return op;
    return null;
  }

  // Reader/writer guard: "write" calls change the index and need it to themselves; "read"
  // calls may overlap each other but not a writer.
  #enter(op: string, mode: "read" | "write"): void {
    this.#live(op);
    const busy = this.#busyWith();
    if (busy && (mode === "write" || this.#writer)) {
      throw usage(`FaissIndex.${op}: ${busy} is in progress on this index; await it first`);
    }
    if (mode === "write") {
      this.#writer = op;
    } else {
      this.#readerOps.set(op, (this.#readerOps.get(op) ?? 0) + 1);
    }
  }

  #leave(op: string, mode: "read" | "write"): void {
    if (mode === "write") {
      this.#writer = null;
    } else {
      this.#readerOps.set(op, (this.#readerOps.get(op) ?? 1) - 1);
    }
  }

  #sync<T>(op: string, mode: "read" | "write", fn: () => T): T {
    this.#enter(op, mode);
    try {
      return fn();
    } finally {
      this.#leave(op, mode);
    }
  }

  // Enters the guard synchronously (so close() right after the call already sees it busy),
  // then runs fn; validation errors reject the promise.
  #async<T>(op: string, mode: "read" | "write", fn: () => Promise<T>): Promise<T> {
    try {
      this.#enter(op, mode);
    } catch (e) {
      return Promise.reject(e);
    }
    let p: Promise<T>;
    try {
      p = fn();
    } catch (e) {
      p = Promise.reject(e);
    }
    return p.finally(() => this.#leave(op, mode));
  }

  #checkTrained(op: string): void {
    if (this.#stats()[2] !== 1n) {
      throw usage(`FaissIndex.${op}: index is not trained; call train() first`);
    }
  }

  #addSync(v: Resolved, ids: BigInt64Array | null, op: string): void {
    this.#checkTrained(op);
    const err = errBuf();
    const status = this.#lib.symbols.knnlm_index_add(
      this.#ptr,
      BigInt(v.n),
      v.ptr,
      v.dtype,
      ids,
      null,
      err,
      ERR_CAP,
    );
    check(status, err, ids ? "faiss add_with_ids" : "faiss add", this.#listsPath());
  }

  async #addAsync(
    v: Resolved,
    ids: BigInt64Array | null,
    op: string,
    signal?: AbortSignal,
  ): Promise<void> {
    this.#checkTrained(op);
    const what = ids ? "faiss add_with_ids" : "faiss add";
    if (signal?.aborted) throw interruption(signal, what);
    const err = errBuf();
    using cancel = new CancelFlag(signal);
    const status = await pinned(
      [v.keep, ids, err, cancel],
      () =>
        this.#lib.symbols.knnlm_index_add_async(
          this.#ptr,
          BigInt(v.n),
          v.ptr,
          v.dtype,
          ids,
          cancel.ptr,
          err,
          ERR_CAP,
        ),
    );
    if (status === ST_INTERRUPTED) throw interruption(signal, what);
    check(status, err, what, this.#listsPath());
  }

  // The lists file an add may fail on, for errors that do not name one.
  #listsPath(): string | undefined {
    const out = new BigInt64Array(4);
    const path = new Uint8Array(4096);
    const err = errBuf();
    const s = this.#lib.symbols;
    if (s.knnlm_index_ondisk_info(this.#ptr, out, path, BigInt(path.length), err, ERR_CAP) !== 0) {
      return undefined;
    }
    return out[0] === 1n ? cStringAt(path, 0)[0] : undefined;
  }

  // The one place where every vector argument becomes (address, rows, dtype): shapes and types
  // are checked before any native call; limit caps the rows used (train's n).
  #resolve(x: Vectors, op: string, limit?: number): Resolved {
    this.#live(op);
    const d = this.#d;
    let data: Float32Array | Uint16Array;
    let dtype: number;
    if (x instanceof Float32Array) {
      data = x;
      dtype = DTYPE_CODE.float32;
    } else if (x !== null && typeof x === "object" && "pointer" in x) {
      const code = DTYPE_CODE[x.dtype];
      if (code === undefined) {
        throw badArgument(`${op}: dtype must be "float32" or "float16", got ${String(x.dtype)}`);
      }
      if (x.pointer === null || typeof x.pointer !== "object") {
        throw badArgument(`${op}: pointer must be a non-null Deno.PointerObject`);
      }
      positiveInt(x.n, `${op}: n`);
      if (x.n * d * (code === 0 ? 4 : 2) > Number.MAX_SAFE_INTEGER) {
        throw badArgument(`${op}: ${x.n} rows of ${d} values exceed the addressable size`);
      }
      return { ptr: x.pointer, n: limited(x.n, limit, op), dtype: code, keep: x };
    } else if (x !== null && typeof x === "object" && "data" in x) {
      if (x.dtype === "float16" && x.data instanceof Uint16Array) {
        data = x.data;
        dtype = DTYPE_CODE.float16;
      } else if (x.dtype === "float32" && x.data instanceof Float32Array) {
        data = x.data;
        dtype = DTYPE_CODE.float32;
      } else {
        throw badArgument(
          `${op}: expected { dtype: "float16", data: Uint16Array } or ` +
            `{ dtype: "float32", data: Float32Array }`,
        );
      }
    } else {
      throw badArgument(
        `${op}: vectors must be a Float32Array, { dtype: "float16", data: Uint16Array } or ` +
          `{ pointer, n, dtype }`,
      );
    }
    const n = rowsOf(data.length, d, op);
    const ptr = Deno.UnsafePointer.of(data);
    if (ptr === null) throw badArgument(`${op}: no vectors (empty array)`);
    return { ptr, n: limited(n, limit, op), dtype, keep: data };
  }
}

function limited(n: number, limit: number | undefined, op: string): number {
  if (limit === undefined) return n;
  positiveInt(limit, `${op}: n`);
  if (limit > n) throw badArgument(`${op}: n = ${limit} but only ${n} rows were given`);
  return limit;
}

function trainResult(warnings: Uint8Array, parallel: Int32Array): TrainResult {
  const text = cStringAt(warnings, 0)[0];
  return { warnings: text === "" ? [] : text.split("\n"), parallelPq: parallel[0] === 1 };
}

function rowsOf(length: number, d: number, op: string): number {
  if (length === 0) throw badArgument(`${op}: no vectors (empty array)`);
  if (length % d !== 0) {
    throw badArgument(`${op}: array length ${length} is not a multiple of d = ${d}`);
  }
  return length / d;
}

function checkIds(ids: BigInt64Array, n: number, op: string): void {
  if (!(ids instanceof BigInt64Array)) throw badArgument(`${op}: ids must be a BigInt64Array`);
  if (ids.length !== n) {
    throw badArgument(`${op}: ${ids.length} ids for ${n} vectors (need one id per row)`);
  }
}

function allocResult(n: number, k: number): SearchResult {
  const size = n * k;
  if (size > 2 ** 32) throw badArgument(`search: ${n} queries × k = ${k} results is too many`);
  return { distances: new Float32Array(size), labels: new BigInt64Array(size) };
}

function finishWrite(status: number, err: Uint8Array, tmp: string, path: string): void {
  if (status !== 0) {
    try {
      Deno.removeSync(tmp);
    } catch { /* FAISS may not have created it */ }
    throw statusError(status, err, `${path}: faiss write_index`, tmp);
  }
  try {
    Deno.renameSync(tmp, path);
  } catch (e) {
    throw fsError(e, path, `rename ${tmp} into place`);
  }
}

// Buffers handed to nonblocking calls: the worker thread has only their raw addresses, so they
// stay referenced here until the call has returned.
const inFlight = new Set<unknown[]>();

async function pinned<T>(refs: unknown[], call: () => Promise<T>): Promise<T> {
  inFlight.add(refs);
  try {
    return await call();
  } finally {
    inFlight.delete(refs);
  }
}
