/**
 * kNN-LM evaluation: per-token LM log-probabilities on held-out text, the k nearest keys of
 * every position from the datastore, p_kNN from FAISS's distances and from exact L2
 * recomputed against `keys.npy`, and perplexity for the base LM and for each λ of a sweep.
 *
 * @module
 */

import { exactL2Async, FaissIndex } from "./faiss/mod.ts";
import { MappedArray } from "./mmap.ts";
import { type DatastoreManifest, datastorePaths, readManifest } from "./datastore.ts";
import { interpolatedPerplexity, knnLogProb, perplexity } from "./knn_math.ts";
import { planWindows, windowBatch } from "./windows.ts";

/** What evaluation needs from a model: logits and keys for a batch of windows. */
export interface ScoringModel {
  /** Width of a key row. */
  readonly dModel: number;
  /** Vocabulary size (width of a logits row). */
  readonly vocabSize: number;
  /** `[batch, seq]` tokens → logits `[batch, seq, vocab]` and keys `[batch, seq, dModel]`. */
  run(
    tokens: Int32Array,
    batch: number,
    seq: number,
  ): Promise<{ logits: Float32Array; keys: Float32Array }>;
}

/** How neighbour distances are measured. */
export type DistanceMode = "faiss" | "exact";

/** An open datastore, ready for queries. Close it when done. */
export class Datastore implements Disposable {
  /** Directory it was opened from. */
  readonly dir: string;
  /** Its `datastore.json`. */
  readonly manifest: DatastoreManifest;
  /** The FAISS index (ids = rows). */
  readonly index: FaissIndex;
  /** `keys.npy`, mapped read-only (for exact distances and inspection). */
  readonly keys: MappedArray;
  /** `vals.npy`, mapped read-only. */
  readonly vals: MappedArray;
  #valsView: Int32Array;

  private constructor(
    dir: string,
    manifest: DatastoreManifest,
    index: FaissIndex,
    keys: MappedArray,
    vals: MappedArray,
  ) {
    this.dir = dir;
    this.manifest = manifest;
    this.index = index;
    this.keys = keys;
    this.vals = vals;
    this.#valsView = vals.view() as Int32Array;
  }

  /**
   * Opens `dir`, checking that every file is there and agrees with `datastore.json`.
   * `nprobe` overrides the one recorded at build time.
   */
  static async open(
    dir: string,
    opts: { nprobe?: number; mmapIndex?: boolean } = {},
  ): Promise<Datastore> {
    const paths = datastorePaths(dir);
    const manifest = await readManifest(dir);
    if (!manifest) {
      throw new Error(
        `${dir}: no datastore.json — not a finished datastore (run \`knn build-index --out ${dir}\`)`,
      );
    }
    if (!manifest.index) {
      throw new Error(
        `${dir}: the datastore has no finished index (run \`knn build-index --out ${dir}\`)`,
      );
    }
    const needed = [paths.keys, paths.vals, paths.index];
    if (manifest.index.invlists === "disk" && manifest.index.nlist > 0) needed.push(paths.ivfdata);
    for (const p of needed) {
      try {
        await Deno.stat(p);
      } catch {
        throw new Error(`${p}: missing; the datastore in ${dir} is incomplete (rebuild it)`);
      }
    }
    const keys = MappedArray.open(paths.keys, { mode: "r" });
    const vals = MappedArray.open(paths.vals, { mode: "r" });
    let index: FaissIndex | undefined;
    try {
      const [n, d] = manifest.keys.shape;
      if (keys.rows !== n || keys.rowLength !== d) {
        throw new Error(
          `${paths.keys}: shape [${keys.shape}] does not match datastore.json [${n}, ${d}]`,
        );
      }
      if (vals.rows !== n) {
        throw new Error(`${paths.vals}: ${vals.rows} rows, datastore.json says ${n}`);
      }
      index = FaissIndex.read(paths.index, { mmap: opts.mmapIndex ?? false });
      if (index.ntotal !== n || index.d !== d) {
        throw new Error(
          `${paths.index}: holds ${index.ntotal} vectors of dimension ${index.d}; ` +
            `datastore.json says ${n} of ${d}`,
        );
      }
      const nprobe = opts.nprobe ?? manifest.index.nprobe;
      if (manifest.index.nlist > 0) index.nprobe = nprobe;
      keys.advise("random");
      return new Datastore(dir, manifest, index, keys, vals);
    } catch (e) {
      index?.close();
      keys.close();
      vals.close();
      throw e;
    }
  }

  /** Number of keys. */
  get size(): number {
    return this.keys.rows;
  }

  /** The next token stored for row `i`. */
  val(i: number): number {
    return this.#valsView[i];
  }

  /** Token `j` of the datastore's corpus (token 0 is recorded, token j+1 = vals[j]). */
  token(j: number): number {
    return j === 0 ? this.manifest.corpus.firstToken : this.#valsView[j - 1];
  }

  /**
   * Exact squared L2 distances from each query to its neighbours' stored keys, recomputed
   * natively from the memory-mapped `keys.npy`. queries: [nq, d]; labels: [nq, k] → [nq, k]
   * (Infinity where the label is -1).
   */
  exactDistances(queries: Float32Array, labels: BigInt64Array, k: number): Promise<Float32Array> {
    return exactL2Async(
      queries,
      {
        pointer: this.keys.pointer(0),
        rows: this.keys.rows,
        d: this.keys.rowLength,
        dtype: this.keys.dtype === "<f2" ? "float16" : "float32",
      },
      labels,
      k,
    );
  }

  /**
   * FAISS's distances as the vote uses them (smaller = nearer): squared L2 as they are,
   * inner-product similarities negated.
   */
  voteDistances(distances: Float32Array): Float32Array {
    return this.manifest.index?.metric === "ip" ? distances.map((x) => -x) : distances;
  }

  /** Releases the index and the mappings. */
  close(): void {
    this.index.close();
    this.keys.close();
    this.vals.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Options of {@link evaluate}. */
export interface EvalOptions {
  /** The open datastore. */
  datastore: Datastore;
  /** The model (must be the one the datastore was built with). */
  model: ScoringModel;
  /** Held-out tokens. */
  tokens: Int32Array;
  /** Neighbours per query. Default 1024. */
  k?: number;
  /** Softmax temperature on distances. Default 1. */
  temperature?: number;
  /** λ values to sweep. Default 0.05…0.5 step 0.05. */
  lambdas?: number[];
  /** Distance modes to compute. Default both. */
  modes?: DistanceMode[];
  /** Window length. Default: the datastore's. */
  seqLen?: number;
  /** Window stride. Default: the datastore's. */
  stride?: number;
  /** Windows per model call. Default 8. */
  batchSize?: number;
  /** Called after every batch with positions done / total. */
  onProgress?: (p: { done: number; total: number }) => void;
  /** Stops between batches. */
  signal?: AbortSignal;
}

/** Perplexities for one distance mode. */
export interface ModeResult {
  /** Perplexity at each λ of the sweep (same order as `lambdas`). */
  perplexities: number[];
  /** Best λ (of the sweep and a 0.01-step grid) and its perplexity; λ = 0 if none helps. */
  best: { lambda: number; perplexity: number };
  /** Fraction of positions where no neighbour has the right next token. */
  missRate: number;
}

/** Result of {@link evaluate}. */
export interface EvalResult {
  /** Positions scored. */
  tokens: number;
  /** Base LM perplexity (λ = 0). */
  lmPerplexity: number;
  /** λ values swept. */
  lambdas: number[];
  /** Results per distance mode. */
  modes: Partial<Record<DistanceMode, ModeResult>>;
  /** Neighbours per query. */
  k: number;
  /** nprobe used. */
  nprobe: number;
  /** Seconds spent and throughput. */
  seconds: number;
  /** Positions per second. */
  tokensPerSecond: number;
}

/** The default λ sweep: 0.05, 0.10, …, 0.50. */
export const DEFAULT_LAMBDAS: readonly number[] = Array.from(
  { length: 10 },
  (_, i) => Math.round((i + 1) * 5) / 100,
);

/** Evaluates the LM and the kNN-LM on `tokens`. */
export async function evaluate(opts: EvalOptions): Promise<EvalResult> {
  const t0 = performance.now();
  const ds = opts.datastore;
  const { model, tokens } = opts;
  const k = opts.k ?? 1024;
  const T = opts.temperature ?? 1;
  const lambdas = opts.lambdas ?? [...DEFAULT_LAMBDAS];
  const modes = opts.modes ?? ["faiss", "exact"];
  const seqLen = opts.seqLen ?? ds.manifest.gather.seqLen;
  const stride = opts.stride ?? ds.manifest.gather.stride;
  const batchSize = opts.batchSize ?? 8;
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`k must be an integer ≥ 1, found ${k}`);
  if (k > ds.size) {
    throw new RangeError(`k = ${k} is larger than the datastore (${ds.size} keys in ${ds.dir})`);
  }
  if (model.dModel !== ds.keys.rowLength) {
    throw new Error(
      `the model's keys have width ${model.dModel}, the datastore's ${ds.keys.rowLength}`,
    );
  }
  const plan = planWindows(tokens.length, seqLen, stride);
  const n = plan.positions;
  const d = model.dModel;
  const V = model.vocabSize;
  const L = plan.length;
  const lm = new Float64Array(n);
  const knn: Partial<Record<DistanceMode, Float64Array>> = {};
  for (const m of modes) knn[m] = new Float64Array(n);
  const nBatches = Math.ceil(plan.count / batchSize);
  const launch = (b: number) => {
    const { first, count, tokens: input } = windowBatch(plan, tokens, batchSize, b);
    return { first, nw: count, out: model.run(input, count, L) };
  };
  const neighbourVals = new Int32Array(k);
  let pending: ReturnType<typeof launch> | undefined = launch(0);
  try {
    for (let b = 0; b < nBatches; b++) {
      opts.signal?.throwIfAborted();
      const { first, nw, out } = pending!;
      const { logits, keys } = await out;
      pending = b + 1 < nBatches ? launch(b + 1) : undefined;
      // Collect this batch's new positions: LM log-prob of the true next token and the query.
      let nq = 0;
      for (let j = 0; j < nw; j++) {
        const w = plan.at(first + j);
        nq += w.end - w.scoreFrom;
      }
      const queries = new Float32Array(nq * d);
      const positions = new Int32Array(nq);
      let q = 0;
      for (let j = 0; j < nw; j++) {
        const w = plan.at(first + j);
        for (let p = w.scoreFrom; p < w.end; p++, q++) {
          const row = j * L + (p - w.start);
          queries.set(keys.subarray(row * d, row * d + d), q * d);
          positions[q] = p;
          const lo = logits.subarray(row * V, row * V + V);
          let max = -Infinity;
          for (let v = 0; v < V; v++) if (lo[v] > max) max = lo[v];
          let sum = 0;
          for (let v = 0; v < V; v++) sum += Math.exp(lo[v] - max);
          lm[p] = lo[tokens[p + 1]] - max - Math.log(sum);
        }
      }
      const { distances, labels } = await ds.index.searchAsync(queries, k);
      const exact = knn.exact ? await ds.exactDistances(queries, labels, k) : undefined;
      for (let i = 0; i < nq; i++) {
        const y = tokens[positions[i] + 1];
        for (let j = 0; j < k; j++) {
          const label = Number(labels[i * k + j]);
          neighbourVals[j] = label < 0 ? -1 : ds.val(label);
        }
        if (knn.faiss) {
          const dist = distances.subarray(i * k, i * k + k);
          knn.faiss[positions[i]] = knnLogProb(
            ds.voteDistances(dist),
            neighbourVals,
            y,
            T,
          );
        }
        if (knn.exact && exact) {
          knn.exact[positions[i]] = knnLogProb(
            exact.subarray(i * k, i * k + k),
            neighbourVals,
            y,
            T,
          );
        }
      }
      opts.onProgress?.({ done: positions[nq - 1] + 1, total: n });
    }
  } finally {
    // A model call still in flight must not reject unobserved after an error.
    pending?.out.catch(() => {});
  }
  const result: EvalResult = {
    tokens: n,
    lmPerplexity: perplexity(lm),
    lambdas,
    modes: {},
    k,
    nprobe: ds.manifest.index?.nlist ? ds.index.nprobe : 0,
    seconds: 0,
    tokensPerSecond: 0,
  };
  for (const m of modes) {
    const kv = knn[m]!;
    const perplexities = lambdas.map((l) => interpolatedPerplexity(lm, kv, l));
    // The best λ: the sweep's values plus a 0.01-step grid over [0.01, 0.99].
    let best = { lambda: 0, perplexity: result.lmPerplexity };
    const grid = [...lambdas, ...Array.from({ length: 99 }, (_, i) => (i + 1) / 100)];
    for (const l of grid) {
      const p = l === 0 ? result.lmPerplexity : interpolatedPerplexity(lm, kv, l);
      if (p < best.perplexity) best = { lambda: l, perplexity: p };
    }
    let misses = 0;
    for (let i = 0; i < n; i++) if (kv[i] === -Infinity) misses++;
    result.modes[m] = {
      perplexities,
      best,
      missRate: misses / n,
    };
  }
  result.seconds = (performance.now() - t0) / 1000;
  result.tokensPerSecond = n / result.seconds;
  return result;
}
