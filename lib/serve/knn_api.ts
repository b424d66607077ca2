/**
 * {@linkcode KnnApi}: the three endpoints of `knn serve` as methods over one open
 * {@linkcode KnnLm} (its datastore and model), usable without HTTP. Requests are checked
 * strictly (see `_validate.ts`); `next` is {@linkcode KnnLm.next}, `score` is
 * {@linkcode evaluate} with its per-position log-probabilities, so the numbers are those of
 * `knn neighbors` and `knn eval`.
 *
 * Concurrency: calls may overlap. FAISS searches on the shared index run side by side (the
 * index allows concurrent readers; nothing here changes it after opening). Model runs cannot
 * overlap: onnxruntime-node runs a session synchronously on the JavaScript thread, so they are
 * serialised by construction.
 *
 * @module
 */

import { KnnError } from "../core/mod.ts";
import { DEFAULT_CONFIG } from "../config/mod.ts";
import {
  type DistanceMode,
  evaluate,
  interpolate,
  interpolatedPerplexity,
  KnnLm,
} from "../query/mod.ts";
import type {
  InfoResponse,
  NeighbourContext,
  NextRequest,
  NextResponse,
  ScoreRequest,
  ScoreResponse,
  ServeDefaults,
  ServeLimits,
  TokenProb,
} from "./api.ts";
import { DEFAULT_LIMITS } from "./api.ts";
import {
  optInteger,
  optNumber,
  optNumberArray,
  requestObject,
  requestTokens,
} from "./_validate.ts";
import * as tok from "./_tokens.ts";
import type { Tokenizer } from "../model/mod.ts";

/** Options of {@linkcode KnnApi.open}. */
export interface KnnApiOptions {
  /** Datastore directory. */
  datastore: string;
  /** Model path, if it moved since the datastore was built (same sha256 required). */
  model?: string;
  /** Lists probed per search. Default: the datastore's. */
  nprobe?: number;
  /** Threads for the model. Default: ONNX Runtime's. */
  threads?: number;
  /** Distances of the vote. Default `"exact"` (recomputed from keys.npy, as in the paper). */
  distance?: DistanceMode;
  /**
   * Values for fields a request leaves out. Defaults: k = `eval.k` (at most the datastore's
   * size and `maxK`), λ = `eval.lambda`, T = `eval.temperature`, lambdas = 0, 0.05, …, 1,
   * top 10, neighbours 16, context 40.
   */
  defaults?: Partial<ServeDefaults>;
  /** Bounds on requests. Default {@linkcode DEFAULT_LIMITS}. */
  limits?: Partial<ServeLimits>;
}

const NEXT_FIELDS = [
  "text",
  "ids",
  "k",
  "lambda",
  "temperature",
  "top",
  "neighbours",
  "context",
  "target",
] as const;
const SCORE_FIELDS = ["text", "ids", "k", "lambda", "lambdas", "temperature"] as const;
/** Largest temperature accepted: distances are squared L2, so even 1e6 flattens every vote. */
const MAX_TEMPERATURE = 1e6;
const LAMBDA = { min: 0, max: 1 };
const TEMPERATURE = { min: 0, max: MAX_TEMPERATURE, openMin: true };

/** JSON has no −∞: log-probabilities that are not finite travel as null. */
function finiteOrNull(x: number): number | null {
  return Number.isFinite(x) ? x : null;
}

/** The `n` most likely tokens of `p` with p > 0, most likely first (ties: lower id first). */
function topTokens(t: Tokenizer, p: Float64Array, n: number): TokenProb[] {
  const ids: number[] = [];
  for (let v = 0; v < p.length; v++) if (p[v] > 0) ids.push(v);
  ids.sort((a, b) => p[b] - p[a] || a - b);
  return ids.slice(0, n).map((id) => ({ id, label: tok.label(t, id), p: p[id] }));
}

/** The JSON API of `knn serve` over one open datastore and its model. */
export class KnnApi implements Disposable {
  /** The kNN-LM: datastore, model and the default settings. */
  readonly lm: KnnLm;
  /** Bounds on requests. */
  readonly limits: Readonly<ServeLimits>;
  /** Values for fields a request leaves out. */
  readonly defaults: Readonly<ServeDefaults>;
  /** Largest k a request may ask for: `maxK`, at most the datastore's size. */
  readonly maxK: number;

  private constructor(lm: KnnLm, limits: ServeLimits, defaults: ServeDefaults, maxK: number) {
    this.lm = lm;
    this.limits = Object.freeze(limits);
    this.defaults = Object.freeze(defaults);
    this.maxK = maxK;
  }

  /**
   * Opens the datastore and its model.
   *
   * @throws {KnnError} `E_CONFIG` when a default is out of the bounds (e.g. k above the
   *   datastore's size); the errors of {@linkcode KnnLm.open} for the datastore and model
   */
  static async open(opts: KnnApiOptions): Promise<KnnApi> {
    const limits: ServeLimits = { ...DEFAULT_LIMITS, ...opts.limits };
    for (const [key, v] of Object.entries(limits)) {
      if (!Number.isSafeInteger(v) || v < 1) {
        throw new KnnError("E_CONFIG", `limits.${key}: expected an integer ≥ 1, found ${v}`, {
          key: `limits.${key}`,
        });
      }
    }
    const d = opts.defaults ?? {};
    const lm = await KnnLm.open({
      datastore: opts.datastore,
      model: opts.model,
      nprobe: opts.nprobe,
      threads: opts.threads,
      distance: opts.distance ?? "exact",
      k: 1,
    });
    try {
      const maxK = Math.min(limits.maxK, lm.datastore.size);
      const V = lm.model.vocabSize;
      const defaults: ServeDefaults = {
        k: d.k ?? Math.min(DEFAULT_CONFIG.eval.k, maxK),
        lambda: d.lambda ?? DEFAULT_CONFIG.eval.lambda,
        temperature: d.temperature ?? DEFAULT_CONFIG.eval.temperature,
        lambdas: d.lambdas ?? Array.from({ length: 21 }, (_, i) => i / 20),
        top: d.top ?? Math.min(10, V),
        neighbours: d.neighbours ?? 16,
        context: d.context ?? 40,
      };
      // The defaults must pass the checks a request's values pass.
      const o = { ...defaults } as Record<string, unknown>;
      const check = (key: string, fn: () => unknown) => {
        try {
          fn();
        } catch (e) {
          throw new KnnError("E_CONFIG", `default ${(e as Error).message}`, { key, cause: e });
        }
      };
      check("eval.k", () => optInteger(o, "k", 1, maxK));
      check("eval.lambda", () => optNumber(o, "lambda", LAMBDA));
      check("eval.temperature", () => optNumber(o, "temperature", TEMPERATURE));
      check("eval.lambdas", () => optNumberArray(o, "lambdas", LAMBDA, limits.maxLambdas));
      check("top", () => optInteger(o, "top", 1, Math.min(limits.maxTop, V)));
      check("neighbours", () => optInteger(o, "neighbours", 0, limits.maxNeighbours));
      check("context", () => optInteger(o, "context", 0, limits.maxContext));
      return new KnnApi(lm, limits, defaults, maxK);
    } catch (e) {
      lm.close();
      throw e;
    }
  }

  /** `GET /v1/info`. */
  info(): InfoResponse {
    const ds = this.lm.datastore;
    return {
      datastore: ds.dir,
      manifest: ds.manifest,
      size: ds.size,
      vocabSize: this.lm.model.vocabSize,
      nprobe: ds.manifest.index?.nlist ? ds.index.nprobe : 0,
      distance: this.lm.distance,
      defaults: { ...this.defaults, lambdas: [...this.defaults.lambdas] },
      limits: { ...this.limits },
    };
  }

  /**
   * `POST /v1/next`: p_LM, p_kNN and their mix after a context, and the neighbours.
   *
   * @throws {KnnError} `E_USAGE` with `key` = the field at fault for a bad request
   */
  async next(req: NextRequest): Promise<NextResponse> {
    const o = requestObject(req, NEXT_FIELDS);
    const V = this.lm.model.vocabSize;
    const L = this.limits;
    const ids = requestTokens(o, {
      minTokens: 1,
      maxTokens: L.maxTokens,
      vocabSize: V,
      encode: (text: string) => tok.encode(this.lm.tokenizer, text),
    });
    const k = optInteger(o, "k", 1, this.maxK) ?? this.defaults.k;
    const lambda = optNumber(o, "lambda", LAMBDA) ?? this.defaults.lambda;
    const temperature = optNumber(o, "temperature", TEMPERATURE) ?? this.defaults.temperature;
    const top = optInteger(o, "top", 1, Math.min(L.maxTop, V)) ?? this.defaults.top;
    const count = optInteger(o, "neighbours", 0, L.maxNeighbours) ?? this.defaults.neighbours;
    const context = optInteger(o, "context", 0, L.maxContext) ?? this.defaults.context;
    const target = optInteger(o, "target", 0, V - 1);

    const next = await this.lm.next(ids, { k, lambda, temperature });
    const neighbours: NeighbourContext[] = next.neighbours.slice(0, count).map((n, i) => ({
      rank: i + 1,
      row: n.row,
      distance: n.distance,
      id: n.token,
      label: tok.label(this.lm.tokenizer, n.token),
      before: tok.decode(this.lm.tokenizer, this.lm.corpusTokens(n.row - context + 1, n.row + 1)),
      after: tok.decode(this.lm.tokenizer, this.lm.corpusTokens(n.row + 2, n.row + 2 + context)),
    }));
    return {
      tokens: ids.length,
      window: Math.min(ids.length, this.lm.datastore.manifest.gather.seqLen),
      k,
      lambda,
      temperature,
      distance: this.lm.distance,
      top: {
        lm: topTokens(this.lm.tokenizer, next.lm, top),
        knn: topTokens(this.lm.tokenizer, next.knn, top),
        mix: topTokens(this.lm.tokenizer, next.mixed, top),
      },
      ...(target === undefined ? {} : {
        target: {
          id: target,
          label: tok.label(this.lm.tokenizer, target),
          lm: next.lm[target],
          knn: next.knn[target],
          mix: next.mixed[target],
        },
      }),
      neighbours,
    };
  }

  /**
   * `POST /v1/score`: per-token log-probabilities and perplexities from {@linkcode evaluate}.
   *
   * @throws {KnnError} `E_USAGE` with `key` = the field at fault for a bad request
   */
  async score(req: ScoreRequest): Promise<ScoreResponse> {
    const o = requestObject(req, SCORE_FIELDS);
    const L = this.limits;
    const ids = requestTokens(o, {
      minTokens: 2,
      maxTokens: L.maxTokens,
      vocabSize: this.lm.model.vocabSize,
      encode: (text: string) => tok.encode(this.lm.tokenizer, text),
    });
    const k = optInteger(o, "k", 1, this.maxK) ?? this.defaults.k;
    const lambda = optNumber(o, "lambda", LAMBDA) ?? this.defaults.lambda;
    const lambdas = optNumberArray(o, "lambdas", LAMBDA, L.maxLambdas) ??
      [...this.defaults.lambdas];
    const temperature = optNumber(o, "temperature", TEMPERATURE) ?? this.defaults.temperature;
    const mode = this.lm.distance;

    const r = await evaluate({
      datastore: this.lm.datastore,
      model: this.lm.model,
      tokens: ids,
      k,
      temperature,
      lambdas,
      modes: [mode],
      perToken: true,
    });
    const lm = r.perToken!.lm;
    const knn = r.perToken!.knn[mode]!;
    const m = r.modes[mode]!;
    const mix: (number | null)[] = [];
    for (let i = 0; i < lm.length; i++) mix.push(finiteOrNull(interpolate(lm[i], knn[i], lambda)));
    const all = Array.from(ids);
    return {
      ids: all,
      pieces: tok.pieces(this.lm.tokenizer, ids),
      labels: all.map((id) => tok.label(this.lm.tokenizer, id)),
      lm: Array.from(lm),
      knn: Array.from(knn, finiteOrNull),
      mix,
      k,
      lambda,
      temperature,
      distance: mode,
      nprobe: r.nprobe,
      perplexity: {
        lm: r.lmPerplexity,
        mix: finiteOrNull(interpolatedPerplexity(lm, knn, lambda)),
        lambdas: r.lambdas,
        sweep: m.perplexities,
        best: m.best,
        missRate: m.missRate,
      },
    };
  }

  /** Releases the model and the datastore. Wait for calls in flight first. */
  close(): void {
    this.lm.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
