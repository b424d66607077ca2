/**
 * The JSON API of `knn serve`, as types: what each endpoint takes and returns, the bounds it
 * enforces, and the error body. Every field of a request is optional except the text (or ids);
 * a field the server does not know, or a value of the wrong type or out of range, is answered
 * with a 400 {@linkcode ErrorResponse} that names the field.
 *
 * Log-probabilities are natural logs. JSON has no infinities, so a log-probability of −∞ (no
 * neighbour voted for the token) is sent as `null`.
 *
 * @module
 */

import type { DatastoreManifest, DistanceMode } from "../query/mod.ts";

/** Bounds on what one request may ask for; requests beyond them get a 4xx. */
export interface ServeLimits {
  /** Largest request body in bytes (413 beyond it). */
  maxBodyBytes: number;
  /** Most tokens in `text` or `ids`. */
  maxTokens: number;
  /** Largest `k` (also never more than the datastore's keys). */
  maxK: number;
  /** Most entries per top-n list (`top`; also never more than the vocabulary). */
  maxTop: number;
  /** Most neighbours returned with their contexts (`neighbours`). */
  maxNeighbours: number;
  /** Most corpus tokens shown on each side of a neighbour (`context`). */
  maxContext: number;
  /** Most λ values in one `lambdas` sweep. */
  maxLambdas: number;
  /** How long a client may take to send its body, in milliseconds (408 beyond it). */
  bodyTimeoutMs: number;
}

/** The bounds `knn serve` uses unless told otherwise. */
export const DEFAULT_LIMITS: Readonly<ServeLimits> = Object.freeze({
  maxBodyBytes: 64 * 1024,
  maxTokens: 4096,
  maxK: 2048,
  maxTop: 256,
  maxNeighbours: 256,
  maxContext: 256,
  maxLambdas: 101,
  bodyTimeoutMs: 10_000,
});

/** What a request gets for each field it leaves out. */
export interface ServeDefaults {
  /** Neighbours per query. */
  k: number;
  /** Weight of p_kNN. */
  lambda: number;
  /** Softmax temperature on distances. */
  temperature: number;
  /** λ sweep of `/v1/score`. */
  lambdas: number[];
  /** Entries per top-n list of `/v1/next`. */
  top: number;
  /** Neighbours returned by `/v1/next`. */
  neighbours: number;
  /** Corpus tokens shown on each side of a neighbour. */
  context: number;
}

/** `GET /v1/info`: the datastore as `knn info --json` describes it, and how it is served. */
export interface InfoResponse {
  /** The datastore directory. */
  datastore: string;
  /** Its `datastore.json`. */
  manifest: DatastoreManifest;
  /** Keys in the datastore. */
  size: number;
  /** Vocabulary size of its model. */
  vocabSize: number;
  /** Lists probed per search (0 for a flat index). */
  nprobe: number;
  /** Distances the vote uses: exact (from keys.npy) or FAISS's. */
  distance: DistanceMode;
  /** Values used for fields a request leaves out. */
  defaults: ServeDefaults;
  /** Bounds on requests. */
  limits: ServeLimits;
}

/** `POST /v1/next`: the next-token distributions after a context. Give `text` or `ids`. */
export interface NextRequest {
  /** The context as text (tokenized with the datastore's tokenizer). */
  text?: string;
  /** The context as token ids. */
  ids?: number[];
  /** Neighbours to retrieve (1..min(maxK, datastore size)). */
  k?: number;
  /** Weight of p_kNN in the mix, [0, 1]. */
  lambda?: number;
  /** Softmax temperature on distances, > 0 and at most 1e6. */
  temperature?: number;
  /** Entries in each top-n list. */
  top?: number;
  /** Neighbours to return with their contexts, nearest first (0..maxNeighbours). */
  neighbours?: number;
  /** Corpus tokens shown before and after each neighbour (0..maxContext). */
  context?: number;
  /** A token id whose probability under each distribution is reported too. */
  target?: number;
}

/** One token of a top-n list. */
export interface TokenProb {
  /** Token id. */
  id: number;
  /** Printable label (`e`, `\n`, `\xc3`). */
  label: string;
  /** Its probability. */
  p: number;
}

/** One retrieved neighbour and the corpus around it. */
export interface NeighbourContext {
  /** 1 for the nearest. */
  rank: number;
  /** Datastore row (= corpus position of the context's last token). */
  row: number;
  /** Distance used in the vote (squared L2). */
  distance: number;
  /** The token that followed this context in the corpus: its vote. */
  id: number;
  /** Its printable label. */
  label: string;
  /** Corpus text ending with the row's token (`context` tokens). */
  before: string;
  /** Corpus text after the voted token (`context` tokens). */
  after: string;
}

/** What `/v1/next` returns. */
export interface NextResponse {
  /** Context tokens given. */
  tokens: number;
  /** Context tokens the model saw (the last `seqLen` of them). */
  window: number;
  /** Settings used. */
  k: number;
  /** Weight of p_kNN used. */
  lambda: number;
  /** Temperature used. */
  temperature: number;
  /** Distance mode used. */
  distance: DistanceMode;
  /** The top-n tokens of p_LM, p_kNN and the mix (1 − λ)·p_LM + λ·p_kNN, most likely first. */
  top: { lm: TokenProb[]; knn: TokenProb[]; mix: TokenProb[] };
  /** The requested `target` token's probability under each distribution. */
  target?: { id: number; label: string; lm: number; knn: number; mix: number };
  /** The nearest neighbours, nearest first (at most `neighbours`). */
  neighbours: NeighbourContext[];
}

/**
 * `POST /v1/score`: per-token log-probabilities and perplexities of a text, exactly as
 * `knn eval` computes them. Give `text` or `ids` (at least 2 tokens).
 */
export interface ScoreRequest {
  /** The text to score. */
  text?: string;
  /** The tokens to score. */
  ids?: number[];
  /** Neighbours per position. */
  k?: number;
  /** λ of the per-token mix and of `perplexity.mix`. */
  lambda?: number;
  /** λ values of the perplexity sweep. */
  lambdas?: number[];
  /** Softmax temperature on distances, > 0 and at most 1e6. */
  temperature?: number;
}

/** What `/v1/score` returns. Position i is the prediction of token i + 1 from tokens 0..i. */
export interface ScoreResponse {
  /** Token ids, [n + 1]. */
  ids: number[];
  /** The text each token adds, [n + 1] (joined: the decoded text). */
  pieces: string[];
  /** Printable label of each token, [n + 1]. */
  labels: string[];
  /** log p_LM of the next token, [n]. */
  lm: number[];
  /** log p_kNN of the next token, [n]; `null` = −∞ (no neighbour voted for it). */
  knn: (number | null)[];
  /** log((1 − λ)·p_LM + λ·p_kNN), [n]; `null` only when λ = 1 and p_kNN = 0. */
  mix: (number | null)[];
  /** Neighbours per position. */
  k: number;
  /** λ of `mix`. */
  lambda: number;
  /** Temperature used. */
  temperature: number;
  /** Distance mode used. */
  distance: DistanceMode;
  /** Lists probed per search. */
  nprobe: number;
  /** Perplexities over the n positions, as `knn eval` reports them. */
  perplexity: {
    /** The LM alone (λ = 0). */
    lm: number;
    /** The mix at `lambda`; `null` = ∞ (λ = 1 and a position with p_kNN = 0). */
    mix: number | null;
    /** The sweep's λ values. */
    lambdas: number[];
    /** Perplexity at each of them. */
    sweep: number[];
    /** The best λ of the sweep and a 0.01-step grid. */
    best: { lambda: number; perplexity: number };
    /** Fraction of positions where no neighbour has the right next token. */
    missRate: number;
  };
}

/** The body of every 4xx/5xx answer. */
export interface ErrorResponse {
  /** What went wrong. */
  error: {
    /** The HTTP status, repeated. */
    status: number;
    /** The request field at fault, when one is (`"k"`, `"text"`, `"body"`). */
    field?: string;
    /** What was expected and what was found. */
    message: string;
  };
}
