/**
 * `KnnLm`: the interpolated next-token distribution for a context, from the datastore's model
 * and its neighbours — enough to drive generation from a script.
 *
 * @module
 */

import { sha256File } from "../core/_hash.ts";
import { Datastore } from "../datastore/datastore.ts";
import { knnDistribution, logSoftmax } from "./knn_math.ts";
import { OnnxLm } from "../model/runner.ts";
import { DEFAULT_CONFIG } from "../config/mod.ts";
import type { DistanceMode } from "./eval.ts";
import { ensureModelFile } from "../model/default_model.ts";
import { KnnError } from "../core/errors.ts";
import { openTokenizer } from "../model/hf_tokenizer.ts";
import {
  BYTE_TOKENIZER,
  describeTokenizer,
  idsOnlyTokenizer,
  sameTokenizer,
  type Tokenizer,
} from "../model/tokenizer.ts";

/**
 * Opens the tokenizer a datastore was built with (recorded in `datastore.json`; a datastore
 * without a record used UTF-8 bytes). `path` overrides the recorded location of the
 * `tokenizer.json` (or `null`: UTF-8 bytes); either way the tokenizer must be the recorded
 * one. A datastore built from pre-tokenized ids with no tokenizer accepts any `path`.
 *
 * @throws KnnError `E_MISMATCH` when the tokenizer differs from the recorded one (another file,
 *   another config, another vocabulary size); `E_NOT_FOUND` when the recorded file is gone
 */
export async function openDatastoreTokenizer(
  ds: Datastore,
  opts: { path?: string | null } = {},
): Promise<Tokenizer> {
  const recorded = ds.manifest.tokenizer ?? { ...BYTE_TOKENIZER.identity, path: null };
  if (recorded.kind === "none") {
    return opts.path === undefined || opts.path === null
      ? idsOnlyTokenizer(recorded.vocabSize)
      : await openTokenizer(opts.path);
  }
  const path = opts.path === undefined ? recorded.path : opts.path;
  let tok: Tokenizer;
  try {
    tok = await openTokenizer(path);
  } catch (e) {
    if (opts.path !== undefined || !KnnError.is(e, "E_NOT_FOUND")) throw e;
    throw new KnnError(
      "E_NOT_FOUND",
      `${path}: cannot find the tokenizer ${ds.dir} was built with`,
      { path: path ?? undefined, cause: e, hint: "pass --tokenizer PATH if it moved" },
    );
  }
  if (!sameTokenizer(tok.identity, recorded)) {
    throw new KnnError(
      "E_MISMATCH",
      `${path ?? "UTF-8 bytes"}: not the tokenizer ${ds.dir} was built with ` +
        `(${describeTokenizer(tok.identity)}; datastore.json records ` +
        `${describeTokenizer(recorded)})`,
      {
        path: path ?? undefined,
        hint: recorded.path
          ? `use --tokenizer ${recorded.path}`
          : "leave --tokenizer out (the datastore uses UTF-8 bytes)",
      },
    );
  }
  return tok;
}

/**
 * Opens the model a datastore was built with, refusing a file whose sha256 differs from the
 * one recorded in `datastore.json`. `path` overrides the recorded location; `spinning: false`
 * keeps ONNX Runtime's idle threads from spinning (for evaluation, where FAISS runs beside it).
 */
export async function openDatastoreModel(
  ds: Datastore,
  opts: { path?: string; threads?: number; spinning?: boolean } = {},
): Promise<OnnxLm> {
  const m = ds.manifest.model;
  const path = opts.path ?? m.path;
  await ensureModelFile(path); // a cached bundled model that was removed is fetched again
  let sha: string;
  try {
    sha = await sha256File(path);
  } catch (e) {
    throw new Error(
      `${path}: cannot read the model ${ds.dir} was built with (${(e as Error).message})`,
      {
        cause: e,
      },
    );
  }
  if (sha !== m.sha256) {
    throw new Error(
      `${path}: not the model ${ds.dir} was built with ` +
        `(sha256 ${sha.slice(0, 12)}… ≠ ${m.sha256.slice(0, 12)}… in datastore.json)`,
    );
  }
  return await OnnxLm.open(path, {
    keyTensor: m.keyTensor,
    logitsOutput: m.logitsOutput,
    threads: opts.threads,
    spinning: opts.spinning,
  });
}

/** Options of {@link KnnLm.open}. */
export interface KnnLmOptions {
  /** Datastore directory. */
  datastore: string;
  /** Model path, if it moved since the datastore was built (must have the same sha256). */
  model?: string;
  /**
   * Tokenizer path (`tokenizer.json` or its folder), if it moved since the datastore was
   * built; it must be the recorded one. Default: the path in `datastore.json`.
   */
  tokenizer?: string;
  /** Neighbours per query. Default: `DEFAULT_CONFIG.eval.k`. */
  k?: number;
  /** Weight of p_kNN. Default: `DEFAULT_CONFIG.eval.lambda`. */
  lambda?: number;
  /** Softmax temperature on distances. Default: `DEFAULT_CONFIG.eval.temperature`. */
  temperature?: number;
  /** Lists probed. Default: the datastore's. */
  nprobe?: number;
  /** Distances: recomputed exactly from keys.npy (default, as in the paper) or FAISS's. */
  distance?: DistanceMode;
  /** Threads for the model. Default: ONNX Runtime's. */
  threads?: number;
}

/** One retrieved neighbour. */
export interface Neighbour {
  /** Row in the datastore (= corpus position of the context's last token). */
  row: number;
  /** Squared L2 distance used for the vote. */
  distance: number;
  /** The token that followed it in the corpus. */
  token: number;
}

/** Per-call settings of {@link KnnLm.next}; each defaults to the instance's. */
export interface NextOptions {
  /** Neighbours to retrieve (1..datastore size). */
  k?: number;
  /** Weight of p_kNN, in [0, 1]. */
  lambda?: number;
  /** Softmax temperature on distances (> 0). */
  temperature?: number;
}

/** The next-token distributions for one context. */
export interface NextToken {
  /** p_LM over the vocabulary. */
  lm: Float64Array;
  /** p_kNN over the vocabulary. */
  knn: Float64Array;
  /** (1 − λ)·p_LM + λ·p_kNN. */
  mixed: Float64Array;
  /** The k neighbours, nearest first. */
  neighbours: Neighbour[];
}

/**
 * A kNN-LM: the datastore's model plus its neighbours.
 *
 * @example
 * ```ts ignore
 * import { KnnLm } from "../mod.ts";
 * using lm = await KnnLm.open({ datastore: "data/default", k: 64, lambda: 0.25 });
 * const tokens = Array.from(lm.tokenizer.encode("The jury said"));
 * for (let i = 0; i < 20; i++) {
 *   const { mixed } = await lm.next(Int32Array.from(tokens));
 *   tokens.push(mixed.indexOf(Math.max(...mixed))); // greedy
 * }
 * console.log(lm.tokenizer.decode(tokens));
 * ```
 */
export class KnnLm implements Disposable {
  /** The open datastore. */
  readonly datastore: Datastore;
  /** The model. */
  readonly model: OnnxLm;
  /** The datastore's tokenizer: encodes contexts, decodes neighbours and top-k tokens. */
  readonly tokenizer: Tokenizer;
  /** Neighbours per query. */
  readonly k: number;
  /** Weight of p_kNN. */
  readonly lambda: number;
  /** Softmax temperature. */
  readonly temperature: number;
  /** Distance mode. */
  readonly distance: DistanceMode;

  private constructor(
    ds: Datastore,
    model: OnnxLm,
    tokenizer: Tokenizer,
    o: Required<Omit<KnnLmOptions, "datastore" | "model" | "tokenizer" | "nprobe" | "threads">>,
  ) {
    this.datastore = ds;
    this.model = model;
    this.tokenizer = tokenizer;
    this.k = o.k;
    this.lambda = o.lambda;
    this.temperature = o.temperature;
    this.distance = o.distance;
  }

  /** Opens a datastore and its model. */
  static async open(opts: KnnLmOptions): Promise<KnnLm> {
    const k = opts.k ?? DEFAULT_CONFIG.eval.k;
    const lambda = opts.lambda ?? DEFAULT_CONFIG.eval.lambda;
    if (!(lambda >= 0 && lambda <= 1)) {
      throw new RangeError(`lambda must be in [0, 1], found ${lambda}`);
    }
    const ds = await Datastore.open(opts.datastore, { nprobe: opts.nprobe });
    try {
      if (!Number.isInteger(k) || k < 1 || k > ds.size) {
        throw new RangeError(`k must be an integer in 1..${ds.size} (datastore size), found ${k}`);
      }
      const tokenizer = await openDatastoreTokenizer(ds, { path: opts.tokenizer });
      const model = await openDatastoreModel(ds, { path: opts.model, threads: opts.threads });
      return new KnnLm(ds, model, tokenizer, {
        k,
        lambda,
        temperature: opts.temperature ?? DEFAULT_CONFIG.eval.temperature,
        distance: opts.distance ?? "exact",
      });
    } catch (e) {
      ds.close();
      throw e;
    }
  }

  /** Corpus tokens [start, end) of the datastore (clamped to the stream). */
  corpusTokens(start: number, end: number): Int32Array {
    const s = Math.max(0, start);
    const e = Math.min(this.datastore.manifest.corpus.nTokens, end);
    const out = new Int32Array(Math.max(0, e - s));
    for (let j = s; j < e; j++) out[j - s] = this.datastore.token(j);
    return out;
  }

  /**
   * Next-token distributions after `context` — ids, or text that the datastore's tokenizer
   * encodes (its last `seqLen` tokens are used). `opts` overrides k, λ and T for this call only.
   */
  async next(context: Int32Array | string, opts: NextOptions = {}): Promise<NextToken> {
    if (typeof context === "string") context = this.tokenizer.encode(context);
    if (context.length < 1) throw new RangeError("the context needs at least one token");
    const k = opts.k ?? this.k;
    const lambda = opts.lambda ?? this.lambda;
    const temperature = opts.temperature ?? this.temperature;
    if (!Number.isInteger(k) || k < 1 || k > this.datastore.size) {
      throw new RangeError(
        `k must be an integer in 1..${this.datastore.size} (datastore size), found ${k}`,
      );
    }
    if (!(lambda >= 0 && lambda <= 1)) {
      throw new RangeError(`lambda must be in [0, 1], found ${lambda}`);
    }
    if (!(temperature > 0)) throw new RangeError(`temperature must be > 0, found ${temperature}`);
    const seqLen = this.datastore.manifest.gather.seqLen;
    const window = context.subarray(Math.max(0, context.length - seqLen));
    const L = window.length;
    const { logits, keys } = await this.model.run(window, 1, L);
    const V = this.model.vocabSize;
    const d = this.model.dModel;
    const lo = logits.subarray((L - 1) * V, L * V);
    const query = keys.slice((L - 1) * d, L * d);
    const lm = logSoftmax(lo).map(Math.exp);
    const { distances, labels } = await this.datastore.index.searchAsync(query, k);
    const dist = this.distance === "exact"
      ? await this.datastore.exactDistances(query, labels, k)
      : this.datastore.voteDistances(distances);
    const vals = new Int32Array(k);
    const neighbours: Neighbour[] = [];
    for (let j = 0; j < k; j++) {
      const row = Number(labels[j]);
      vals[j] = row < 0 ? -1 : this.datastore.val(row);
      if (row >= 0) neighbours.push({ row, distance: dist[j], token: vals[j] });
    }
    neighbours.sort((a, b) => a.distance - b.distance);
    const knn = knnDistribution(dist, vals, V, temperature);
    const mixed = new Float64Array(V);
    for (let v = 0; v < V; v++) mixed[v] = (1 - lambda) * lm[v] + lambda * knn[v];
    return { lm, knn, mixed, neighbours };
  }

  /** Releases the model and the datastore. */
  close(): void {
    this.model.close();
    this.datastore.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
