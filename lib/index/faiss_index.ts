/**
 * `FaissIndex`: a FAISS index owned from TypeScript through the shim in `ffi.ts`.
 *
 * @module
 */

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
   * Map the inverted lists of an IVF index from the file instead of loading them (FAISS's
   * `IO_FLAG_MMAP`); the index is then read-only. Default false.
   */
  mmap?: boolean;
}

/** FAISS's `IO_FLAG_MMAP` from `faiss/index_io.h` (`IO_FLAG_SKIP_IVF_DATA | 0x646f0000`). */
export const IO_FLAG_MMAP = 0x646f0008;
/** FAISS's IO_FLAG_ONDISK_SAME_DIR: find on-disk inverted lists next to the index file. */
export const IO_FLAG_ONDISK_SAME_DIR = 4;

// faiss::MetricType values.
const METRIC_CODE: Record<Metric, number> = { ip: 0, l2: 1 };
const DTYPE_CODE: Record<VectorDType, number> = { float32: 0, float16: 1 };
const ERR_LEN = 4096;
// size_t / int64_t parameters take bigint.
const ERR_CAP = BigInt(ERR_LEN);
const MAX_I32 = 0x7fffffff;

// Vectors resolved to what the native call takes.
type Resolved =
  | { kind: "buffer"; data: Float32Array | Uint16Array; n: number; dtype: number }
  | { kind: "pointer"; pointer: Deno.PointerObject; n: number; dtype: number };

type Handle = { lib: FaissLibrary; ptr: Deno.PointerObject };

// Frees indexes that were dropped without close(). An in-flight async call keeps its index
// reachable, so this never frees under a running call.
const leaked = new FinalizationRegistry<Handle>((h) => h.lib.symbols.knnlm_index_free(h.ptr));

function errBuf(): Uint8Array<ArrayBuffer> {
  return new Uint8Array(ERR_LEN);
}

function errText(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(buf.subarray(0, end < 0 ? buf.length : end));
}

function check(status: number, err: Uint8Array, what: string): void {
  if (status !== 0) {
    throw new Error(`${what}: ${errText(err) || `failed with status ${status}`}`);
  }
}

function cString(s: string, what: string): Uint8Array<ArrayBuffer> {
  if (s.includes("\0")) throw new Error(`${what} must not contain NUL characters`);
  return new TextEncoder().encode(s + "\0");
}

function outPointer(out: BigUint64Array, what: string): Deno.PointerObject {
  const p = Deno.UnsafePointer.create(out[0]);
  if (p === null) throw new Error(`${what}: FAISS returned no index`);
  return p;
}

function positiveInt(v: number, name: string, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isInteger(v) || v <= 0 || v > max) {
    throw new Error(`${name} must be an integer in 1..${max}, got ${v}`);
  }
}

function metricCode(metric: Metric): number {
  const code = METRIC_CODE[metric];
  if (code === undefined) throw new Error(`metric must be "l2" or "ip", got ${String(metric)}`);
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
    throw new Error(`exactL2: queries length ${queries.length} is not a multiple of d = ${base.d}`);
  }
  const nq = queries.length / base.d;
  if (labels.length !== nq * k) {
    throw new Error(`exactL2: expected ${nq}×${k} = ${nq * k} labels, got ${labels.length}`);
  }
  const dtype = DTYPE_CODE[base.dtype];
  if (dtype === undefined) throw new Error(`exactL2: dtype must be float32 or float16`);
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
 * A FAISS index. Create it with `factory`, `ivfpq` or `read`; release it with `close()` or
 * `using`. After `close()` every method throws. An async call keeps the index busy until its
 * promise settles: closing, or starting a call that modifies the index, throws meanwhile
 * (concurrent searches are allowed).
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
   * `"IDMap,Flat"`. Metric defaults to `"l2"`. Throws FAISS's message for a bad string.
   */
  static factory(d: number, description: string, metric: Metric = "l2"): FaissIndex {
    positiveInt(d, "FaissIndex.factory: d", MAX_I32);
    const code = metricCode(metric);
    const { lib } = openFaissLibrary();
    const out = new BigUint64Array(1);
    const err = errBuf();
    const what = `faiss index_factory(${d}, ${JSON.stringify(description)})`;
    check(
      lib.symbols.knnlm_index_factory(d, cString(description, what), code, out, err, ERR_CAP),
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
    if (d % m !== 0) throw new Error(`FaissIndex.ivfpq: m (${m}) must divide d (${d})`);
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

  /** Reads an index written by `write` or by `faiss.write_index` (Python or C++). */
  static read(path: string, opts: ReadOptions = {}): FaissIndex {
    const { lib } = openFaissLibrary();
    // On-disk inverted lists are looked up beside the index file, so a datastore can move.
    const flags = opts.mmap ? IO_FLAG_MMAP : IO_FLAG_ONDISK_SAME_DIR;
    const out = new BigUint64Array(1);
    const err = errBuf();
    const what = `${path}: faiss read_index`;
    check(lib.symbols.knnlm_index_read(cString(path, what), flags, out, err, ERR_CAP), err, what);
    return new FaissIndex(lib, outPointer(out, what));
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
      return errText(buf);
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

  /** Trains on the first `n` rows of `x` (default: all of them). */
  train(x: Vectors, n?: number): void {
    const v = this.#resolve(x, "train", n);
    this.#sync("train", "write", () => {
      const err = errBuf();
      const s = this.#lib.symbols;
      const status = v.kind === "buffer"
        ? s.knnlm_index_train(this.#ptr, BigInt(v.n), v.data, v.dtype, err, ERR_CAP)
        : s.knnlm_index_train_ptr(this.#ptr, BigInt(v.n), v.pointer, v.dtype, err, ERR_CAP);
      check(status, err, "faiss train");
    });
  }

  /** `train` on a worker thread; `x` must stay unchanged until the promise settles. */
  trainAsync(x: Vectors, n?: number): Promise<void> {
    return this.#async("trainAsync", "write", async () => {
      const v = this.#resolve(x, "trainAsync", n);
      const err = errBuf();
      const s = this.#lib.symbols;
      const status = await pinned(
        [v, err],
        () =>
          v.kind === "buffer"
            ? s.knnlm_index_train_async(this.#ptr, BigInt(v.n), v.data, v.dtype, err, ERR_CAP)
            : s.knnlm_index_train_ptr_async(
              this.#ptr,
              BigInt(v.n),
              v.pointer,
              v.dtype,
              err,
              ERR_CAP,
            ),
      );
      check(status, err, "faiss train");
    });
  }

  /** Adds rows with sequential ids `ntotal, ntotal + 1, ...`. The index must be trained. */
  add(x: Vectors): void {
    const v = this.#resolve(x, "add");
    this.#sync("add", "write", () => {
      this.#checkTrained("add");
      this.#addSync(v, null);
    });
  }

  /** `add` on a worker thread; `x` must stay unchanged until the promise settles. */
  addAsync(x: Vectors): Promise<void> {
    return this.#async("addAsync", "write", async () => {
      const v = this.#resolve(x, "addAsync");
      this.#checkTrained("addAsync");
      await this.#addAsync(v, null);
    });
  }

  /** Adds rows with the given ids (`ids.length` = number of rows). The index must be trained. */
  addWithIds(x: Vectors, ids: BigInt64Array): void {
    const v = this.#resolve(x, "addWithIds");
    checkIds(ids, v.n, "addWithIds");
    this.#sync("addWithIds", "write", () => {
      this.#checkTrained("addWithIds");
      this.#addSync(v, ids);
    });
  }

  /** `addWithIds` on a worker thread; `x` and `ids` must stay unchanged until it settles. */
  addWithIdsAsync(x: Vectors, ids: BigInt64Array): Promise<void> {
    return this.#async("addWithIdsAsync", "write", async () => {
      const v = this.#resolve(x, "addWithIdsAsync");
      checkIds(ids, v.n, "addWithIdsAsync");
      this.#checkTrained("addWithIdsAsync");
      await this.#addAsync(v, ids);
    });
  }

  /**
   * Keeps this (empty, IVF) index's inverted lists in a memory-mapped file at `path` instead of
   * anonymous memory, so adding millions of keys does not grow the process's own memory.
   * `write` records the file's name; `read` finds it in the index file's directory.
   */
  useOnDiskLists(path: string): void {
    const cpath = cString(path, `${path}: useOnDiskLists`);
    this.#sync("useOnDiskLists", "write", () => {
      const err = errBuf();
      check(
        this.#lib.symbols.knnlm_index_use_ondisk(this.#ptr, cpath, err, ERR_CAP),
        err,
        `${path}: on-disk inverted lists`,
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
      const s = this.#lib.symbols;
      const status = v.kind === "buffer"
        ? s.knnlm_index_search(
          this.#ptr,
          BigInt(v.n),
          v.data,
          v.dtype,
          BigInt(k),
          r.distances,
          r.labels,
          err,
          ERR_CAP,
        )
        : s.knnlm_index_search_ptr(
          this.#ptr,
          BigInt(v.n),
          v.pointer,
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
      const s = this.#lib.symbols;
      const status = await pinned(
        [v, r, err],
        () =>
          v.kind === "buffer"
            ? s.knnlm_index_search_async(
              this.#ptr,
              BigInt(v.n),
              v.data,
              v.dtype,
              BigInt(k),
              r.distances,
              r.labels,
              err,
              ERR_CAP,
            )
            : s.knnlm_index_search_ptr_async(
              this.#ptr,
              BigInt(v.n),
              v.pointer,
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
   * Writes the index as a plain `faiss.write_index` file: to `path.tmp`, then renamed to
   * `path`, so a crash never leaves a partial file under the final name.
   */
  write(path: string): void {
    const tmp = `${path}.tmp`;
    const cpath = cString(tmp, `${path}: write`);
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
      const cpath = cString(tmp, `${path}: write`);
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
      throw new Error(`FaissIndex: cannot close while ${busy} is in progress; await it first`);
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
    if (this.#ptr === null) throw new Error(`FaissIndex.${op}: index is closed`);
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
      throw new Error(`FaissIndex.${op}: ${busy} is in progress on this index; await it first`);
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
      throw new Error(`FaissIndex.${op}: index is not trained; call train() first`);
    }
  }

  #addSync(v: Resolved, ids: BigInt64Array | null): void {
    const err = errBuf();
    const s = this.#lib.symbols;
    const status = v.kind === "buffer"
      ? s.knnlm_index_add(this.#ptr, BigInt(v.n), v.data, v.dtype, ids, err, ERR_CAP)
      : s.knnlm_index_add_ptr(this.#ptr, BigInt(v.n), v.pointer, v.dtype, ids, err, ERR_CAP);
    check(status, err, ids ? "faiss add_with_ids" : "faiss add");
  }

  async #addAsync(v: Resolved, ids: BigInt64Array | null): Promise<void> {
    const err = errBuf();
    const s = this.#lib.symbols;
    const status = await pinned(
      [v, ids, err],
      () =>
        v.kind === "buffer"
          ? s.knnlm_index_add_async(this.#ptr, BigInt(v.n), v.data, v.dtype, ids, err, ERR_CAP)
          : s.knnlm_index_add_ptr_async(
            this.#ptr,
            BigInt(v.n),
            v.pointer,
            v.dtype,
            ids,
            err,
            ERR_CAP,
          ),
    );
    check(status, err, ids ? "faiss add_with_ids" : "faiss add");
  }

  // Checks shape and type before any native call; n limits the rows used (train only).
  #resolve(x: Vectors, op: string, limit?: number): Resolved {
    this.#live(op);
    const d = this.#d;
    let r: Resolved;
    if (x instanceof Float32Array) {
      r = { kind: "buffer", data: x, n: rowsOf(x.length, d, op), dtype: DTYPE_CODE.float32 };
    } else if (x !== null && typeof x === "object" && "pointer" in x) {
      const dtype = DTYPE_CODE[x.dtype];
      if (dtype === undefined) {
        throw new Error(`${op}: dtype must be "float32" or "float16", got ${String(x.dtype)}`);
      }
      if (x.pointer === null || typeof x.pointer !== "object") {
        throw new Error(`${op}: pointer must be a non-null Deno.PointerObject`);
      }
      positiveInt(x.n, `${op}: n`);
      if (x.n * d * (dtype === 0 ? 4 : 2) > Number.MAX_SAFE_INTEGER) {
        throw new Error(`${op}: ${x.n} rows of ${d} values exceed the addressable size`);
      }
      r = { kind: "pointer", pointer: x.pointer, n: x.n, dtype };
    } else if (x !== null && typeof x === "object" && "data" in x) {
      if (x.dtype === "float16" && x.data instanceof Uint16Array) {
        r = { kind: "buffer", data: x.data, n: rowsOf(x.data.length, d, op), dtype: 1 };
      } else if (x.dtype === "float32" && x.data instanceof Float32Array) {
        r = { kind: "buffer", data: x.data, n: rowsOf(x.data.length, d, op), dtype: 0 };
      } else {
        throw new Error(
          `${op}: expected { dtype: "float16", data: Uint16Array } or ` +
            `{ dtype: "float32", data: Float32Array }`,
        );
      }
    } else {
      throw new Error(
        `${op}: vectors must be a Float32Array, { dtype: "float16", data: Uint16Array } or ` +
          `{ pointer, n, dtype }`,
      );
    }
    if (limit !== undefined) {
      positiveInt(limit, `${op}: n`);
      if (limit > r.n) throw new Error(`${op}: n = ${limit} but only ${r.n} rows were given`);
      r.n = limit;
    }
    return r;
  }
}

function rowsOf(length: number, d: number, op: string): number {
  if (length === 0) throw new Error(`${op}: no vectors (empty array)`);
  if (length % d !== 0) {
    throw new Error(`${op}: array length ${length} is not a multiple of d = ${d}`);
  }
  return length / d;
}

function checkIds(ids: BigInt64Array, n: number, op: string): void {
  if (!(ids instanceof BigInt64Array)) throw new Error(`${op}: ids must be a BigInt64Array`);
  if (ids.length !== n) {
    throw new Error(`${op}: ${ids.length} ids for ${n} vectors (need one id per row)`);
  }
}

function allocResult(n: number, k: number): SearchResult {
  const size = n * k;
  if (size > 2 ** 32) throw new Error(`search: ${n} queries × k = ${k} results is too many`);
  return { distances: new Float32Array(size), labels: new BigInt64Array(size) };
}

function finishWrite(status: number, err: Uint8Array, tmp: string, path: string): void {
  if (status !== 0) {
    try {
      Deno.removeSync(tmp);
    } catch { /* FAISS may not have created it */ }
    check(status, err, `${path}: faiss write_index`);
  }
  Deno.renameSync(tmp, path);
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
