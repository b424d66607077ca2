/**
 * Native helpers for speed, over the shim's speed block (`_shim_source.ts`, the block at its
 * end): OpenBLAS thread control and a single-SGEMM probe, IVFPQ training with the PQ
 * sub-quantizers trained in parallel, the kNN-LM vote over a whole batch of queries, and exact
 * re-ranking of a candidate set. Every function checks its arguments before any native call;
 * native failures become `KnnError`s with code `E_NATIVE` carrying FAISS's message.
 *
 * @module
 */

import { KnnError } from "../core/errors.ts";
import { openFaissLibrary } from "./ffi.ts";
import { type BaseRows, FaissIndex, type IvfPqOptions, type SearchResult } from "./faiss_index.ts";

const ERR_LEN = 4096;
const ERR_CAP = BigInt(ERR_LEN);
const DTYPE_CODE = { float32: 0, float16: 1 } as const;

// The shim's error buffer: path NUL message NUL (the path is empty for these calls).
function errText(buf: Uint8Array): string {
  const dec = new TextDecoder();
  const p = buf.indexOf(0);
  if (p < 0) return dec.decode(buf);
  const m = buf.indexOf(0, p + 1);
  const path = dec.decode(buf.subarray(0, p));
  const msg = dec.decode(buf.subarray(p + 1, m < 0 ? buf.length : m));
  return path ? `${path}: ${msg}` : msg;
}

function check(status: number, err: Uint8Array, what: string, path?: string): void {
  if (status !== 0) {
    throw new KnnError("E_NATIVE", `${what}: ${errText(err) || `failed with status ${status}`}`, {
      path,
    });
  }
}

function usage(message: string): KnnError {
  return new KnnError("E_USAGE", message);
}

function positiveInt(v: number, name: string, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isInteger(v) || v <= 0 || v > max) {
    throw usage(`${name} must be an integer in 1..${max}, found ${v}`);
  }
}

// Buffers handed to nonblocking calls stay referenced until the call has returned: the worker
// thread holds only their addresses.
const inFlight = new Set<unknown[]>();

async function pinned<T>(refs: unknown[], call: () => Promise<T>): Promise<T> {
  inFlight.add(refs);
  try {
    return await call();
  } finally {
    inFlight.delete(refs);
  }
}

/** The BLAS behind FAISS, as OpenBLAS describes itself. */
export interface BlasInfo {
  /** Kernel family OpenBLAS chose for this CPU, e.g. `"Haswell"`, `"SkylakeX"`, `"Prescott"`. */
  core: string;
  /** Its thread pool size now. */
  threads: number;
  /** Its build description, e.g. `"OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Prescott MAX_THREADS=64"`. */
  config: string;
}

/** OpenBLAS's core, threads and build, or `null` when FAISS is linked against another BLAS. */
export function blasInfo(): BlasInfo | null {
  const { lib } = openFaissLibrary();
  const buf = new Uint8Array(512);
  const err = new Uint8Array(ERR_LEN);
  check(lib.symbols.knnlm_blas_info(buf, BigInt(buf.length), err, ERR_CAP), err, "blas info");
  const text = errText(buf);
  if (!text) return null;
  const [core, threads, ...config] = text.split(";");
  return { core, threads: Number(threads), config: config.join(";").trim() };
}

/**
 * Sets OpenBLAS's own thread pool size (it is separate from FAISS's OpenMP pool) and returns
 * the previous size, or -1 (nothing done) when the BLAS is not OpenBLAS.
 */
export function setBlasThreads(n: number): number {
  positiveInt(n, "setBlasThreads: n", 4096);
  return openFaissLibrary().lib.symbols.knnlm_blas_set_num_threads(n);
}

/**
 * One SGEMM through the BLAS FAISS uses: `c = a · b`, row-major, `a`: [m, k], `b`: [k, n],
 * `c`: [m, n] (written in place). The benchmark times it for the machine's SGEMM rate.
 */
export function sgemm(
  m: number,
  n: number,
  k: number,
  a: Float32Array,
  b: Float32Array,
  c: Float32Array,
): void {
  for (const [v, name] of [[m, "m"], [n, "n"], [k, "k"]] as const) {
    positiveInt(v, `sgemm: ${name}`, 0x7fffffff);
  }
  if (a.length !== m * k || b.length !== k * n || c.length !== m * n) {
    throw usage(
      `sgemm: expected a of ${m * k}, b of ${k * n} and c of ${m * n} values, found ` +
        `${a.length}, ${b.length}, ${c.length}`,
    );
  }
  const err = new Uint8Array(ERR_LEN);
  check(openFaissLibrary().lib.symbols.knnlm_sgemm(m, n, k, a, b, c, err, ERR_CAP), err, "sgemm");
}

/** Options of {@link trainIvfPqToFile}. */
export interface TrainIvfPqOptions extends IvfPqOptions {
  /** Training vectors, `[n, d]`: float32, or raw float16 bits (widened natively). */
  x: Float32Array | { dtype: "float16"; data: Uint16Array };
  /** Where the trained, empty index goes (`faiss.write_index` format, via `path.tmp`). */
  path: string;
  /** Stops the training at FAISS's next interrupt check (see `FaissIndex.trainAsync`). */
  signal?: AbortSignal;
}

/**
 * Creates an IndexIVFPQ over an IndexFlatL2 (or IndexFlatIP) quantizer, trains it and writes it
 * to `path`. Training is FAISS's (coarse k-means, residuals, PQ codebooks, precomputed table)
 * with the `m` PQ sub-quantizers trained in parallel across the OpenMP pool
 * (`TrainOptions.parallelPq`, the default of `FaissIndex.trainAsync`): the codebooks are FAISS's
 * own. Returns whether the parallel path ran (it does for this index type) and FAISS's
 * clustering warnings.
 */
export async function trainIvfPqToFile(
  opts: TrainIvfPqOptions,
): Promise<{ parallel: boolean; warnings: string[] }> {
  const { x, path, signal, ...params } = opts;
  using index = FaissIndex.ivfpq(params);
  const r = await index.trainAsync(x, { signal, parallelPq: true });
  await index.writeAsync(path);
  return { parallel: r.parallelPq, warnings: r.warnings };
}

/** The datastore's next tokens: an `Int32Array`, or `length` int32 values at a raw address. */
export type TokenValues = Int32Array | { pointer: Deno.PointerObject; length: number };

/** A batch of neighbour lists for the kNN-LM vote. */
export interface VoteBatch {
  /** `[nq, k]` neighbour rows, -1 where FAISS found none. */
  labels: BigInt64Array;
  /** `[nq, k]` distances (smaller = nearer), or similarities with `sign: -1`. */
  distances: Float32Array;
  /** Neighbours per query. */
  k: number;
  /** Next token of each datastore row (`vals.npy`). */
  vals: TokenValues;
  /** Softmax temperature on distances. Default 1. */
  temperature?: number;
  /** -1 negates the distances first (inner-product indexes); default 1. */
  sign?: 1 | -1;
}

function voteArgs(b: VoteBatch, what: string) {
  positiveInt(b.k, `${what}: k`);
  if (!(b.labels instanceof BigInt64Array) || !(b.distances instanceof Float32Array)) {
    throw usage(`${what}: labels must be a BigInt64Array and distances a Float32Array`);
  }
  if (b.labels.length !== b.distances.length || b.labels.length % b.k !== 0) {
    throw usage(
      `${what}: expected labels and distances of nq × k = nq × ${b.k} values, found ` +
        `${b.labels.length} and ${b.distances.length}`,
    );
  }
  const temperature = b.temperature ?? 1;
  if (!(temperature > 0) || !Number.isFinite(temperature)) {
    throw usage(`${what}: temperature must be a finite number > 0, found ${temperature}`);
  }
  const vals = b.vals;
  let pointer: Deno.PointerObject | null;
  let nvals: number;
  if (vals instanceof Int32Array) {
    pointer = vals.length ? Deno.UnsafePointer.of(vals) : null;
    nvals = vals.length;
  } else {
    pointer = vals.pointer;
    nvals = vals.length;
  }
  if (pointer === null || !(nvals > 0)) throw usage(`${what}: no datastore values`);
  return {
    nq: b.labels.length / b.k,
    temperature,
    sign: b.sign === -1 ? -1 : 1,
    pointer,
    nvals,
  };
}

/**
 * log p_kNN(y) for every query of a batch, in native code across the OpenMP pool; the same
 * formula as `knnLogProb` in `lib/query/knn_math.ts` (double precision, neighbours summed in
 * order): `log Σ_{j: vals[labels_j] = y} softmax(−d_j / T)_j`, -Infinity when no neighbour
 * votes for `y`. `targets`: `[nq]` next tokens. The caller keeps a raw `vals` mapped until the
 * promise settles.
 */
export async function knnLogProbsAsync(
  batch: VoteBatch,
  targets: Int32Array,
): Promise<Float64Array> {
  const a = voteArgs(batch, "knnLogProbs");
  if (!(targets instanceof Int32Array) || targets.length !== a.nq) {
    throw usage(`knnLogProbs: expected ${a.nq} targets (one per query), found ${targets.length}`);
  }
  const out = new Float64Array(a.nq);
  if (a.nq === 0) return out;
  const err = new Uint8Array(ERR_LEN);
  const { lib } = openFaissLibrary();
  const status = await pinned(
    [batch, targets, out, err],
    () =>
      lib.symbols.knnlm_knn_log_prob_async(
        batch.labels,
        batch.distances,
        BigInt(a.nq),
        BigInt(batch.k),
        a.pointer,
        BigInt(a.nvals),
        targets,
        a.temperature,
        a.sign,
        out,
        err,
        ERR_CAP,
      ),
  );
  check(status, err, "knnLogProbs");
  return out;
}

/** {@link knnLogProbsAsync} on the calling thread (for small batches). */
export function knnLogProbs(batch: VoteBatch, targets: Int32Array): Float64Array {
  const a = voteArgs(batch, "knnLogProbs");
  if (!(targets instanceof Int32Array) || targets.length !== a.nq) {
    throw usage(`knnLogProbs: expected ${a.nq} targets (one per query), found ${targets.length}`);
  }
  const out = new Float64Array(a.nq);
  if (a.nq === 0) return out;
  const err = new Uint8Array(ERR_LEN);
  const status = openFaissLibrary().lib.symbols.knnlm_knn_log_prob(
    batch.labels,
    batch.distances,
    BigInt(a.nq),
    BigInt(batch.k),
    a.pointer,
    BigInt(a.nvals),
    targets,
    a.temperature,
    a.sign,
    out,
    err,
    ERR_CAP,
  );
  check(status, err, "knnLogProbs");
  return out;
}

/**
 * The whole p_kNN distribution of every query, `[nq, vocab]` probabilities, as
 * `knnDistribution` in `knn_math.ts` computes it for one (a row of zeros for a query without
 * neighbours).
 */
export function knnDistributions(batch: VoteBatch, vocab: number): Float64Array {
  const a = voteArgs(batch, "knnDistributions");
  positiveInt(vocab, "knnDistributions: vocab");
  const out = new Float64Array(a.nq * vocab);
  if (a.nq === 0) return out;
  const err = new Uint8Array(ERR_LEN);
  const status = openFaissLibrary().lib.symbols.knnlm_knn_distribution(
    batch.labels,
    batch.distances,
    BigInt(a.nq),
    BigInt(batch.k),
    a.pointer,
    BigInt(a.nvals),
    BigInt(vocab),
    a.temperature,
    a.sign,
    out,
    err,
    ERR_CAP,
  );
  check(status, err, "knnDistributions");
  return out;
}

/**
 * Exact re-ranking: squared L2 from each query to the `kc` candidate rows its `labels` name
 * (recomputed from `base`, e.g. the mapped `keys.npy`), then the `k ≤ kc` nearest, nearest
 * first (equal distances: smaller row first). queries: `[nq, d]`; labels: `[nq, kc]`. Returns
 * `[nq, k]` labels and distances, padded with -1 / +Infinity where a query has fewer than `k`
 * candidates. The caller keeps `base` mapped until the promise settles.
 */
export async function rerankExactAsync(
  queries: Float32Array,
  base: BaseRows,
  labels: BigInt64Array,
  kc: number,
  k: number,
): Promise<{ labels: BigInt64Array; distances: Float32Array }> {
  positiveInt(base.d, "rerankExact: d", 0x7fffffff);
  positiveInt(kc, "rerankExact: candidates");
  positiveInt(k, "rerankExact: k");
  if (k > kc) throw usage(`rerankExact: k = ${k} exceeds the ${kc} candidates`);
  if (queries.length % base.d !== 0) {
    throw usage(`rerankExact: queries length ${queries.length} is not a multiple of d = ${base.d}`);
  }
  const nq = queries.length / base.d;
  if (labels.length !== nq * kc) {
    throw usage(`rerankExact: expected ${nq}×${kc} = ${nq * kc} labels, found ${labels.length}`);
  }
  const dtype = DTYPE_CODE[base.dtype];
  if (dtype === undefined) throw usage("rerankExact: dtype must be float32 or float16");
  const out = { labels: new BigInt64Array(nq * k), distances: new Float32Array(nq * k) };
  if (nq === 0) return out;
  const err = new Uint8Array(ERR_LEN);
  const { lib } = openFaissLibrary();
  const status = await pinned(
    [queries, base, labels, out, err],
    () =>
      lib.symbols.knnlm_rerank_exact_async(
        queries,
        BigInt(nq),
        base.d,
        base.pointer,
        dtype,
        BigInt(base.rows),
        labels,
        BigInt(kc),
        BigInt(k),
        out.labels,
        out.distances,
        err,
        ERR_CAP,
      ),
  );
  check(status, err, "rerankExact");
  return out;
}

/**
 * `index.searchAsync(queries, k)` with the same results, faster for large `k` on the index the
 * toolkit builds (IndexIVFPQ, L2, 8-bit residual codes, precomputed tables): each code's
 * distance is FAISS's own sum in FAISS's float order, formed only for the codes a probed list
 * holds (FAISS first builds a table of M × 256 entries per list), and the k nearest are
 * selected from all candidates at once instead of through a k-sized heap. Results are FAISS's
 * (ascending distance, then id; -1 and FLT_MAX padding); among candidates tied at exactly the
 * k-th distance the smaller id is kept. Other indexes are searched by FAISS itself; `fast` says
 * which path ran. queries: `[nq, d]`.
 */
export function searchIvfPqAsync(
  index: FaissIndex,
  queries: Float32Array,
  k: number,
): Promise<SearchResult & { fast: boolean }> {
  positiveInt(k, "searchIvfPq: k");
  const d = index.d;
  if (!(queries instanceof Float32Array) || queries.length === 0 || queries.length % d !== 0) {
    return Promise.reject(
      usage(`searchIvfPq: queries must be a non-empty Float32Array of rows of ${d}`),
    );
  }
  const nq = queries.length / d;
  if (nq * k > 2 ** 32) return Promise.reject(usage(`searchIvfPq: ${nq} × k = ${k} is too many`));
  return index.withNative("searchIvfPqAsync", "read", async (ptr) => {
    const distances = new Float32Array(nq * k);
    const labels = new BigInt64Array(nq * k);
    const fast = new Int32Array(1);
    const err = new Uint8Array(ERR_LEN);
    const { lib } = openFaissLibrary();
    const status = await pinned(
      [queries, distances, labels, fast, err],
      () =>
        lib.symbols.knnlm_ivfpq_search_async(
          ptr,
          BigInt(nq),
          queries,
          BigInt(k),
          distances,
          labels,
          fast,
          err,
          ERR_CAP,
        ),
    );
    check(status, err, "faiss search");
    return { distances, labels, fast: fast[0] === 1 };
  });
}
