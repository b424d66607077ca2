/**
 * The query layer: kNN-LM evaluation (perplexity of the LM and of the interpolation for a λ
 * sweep, with FAISS or exact distances), {@linkcode KnnLm} for next-token distributions and
 * neighbours, and the kNN-LM arithmetic (p_kNN from distances, interpolation in log space).
 *
 * @module
 */

export {
  type DistanceMode,
  distanceModes,
  type EvalOptions,
  type EvalResult,
  evaluate,
  type ModeResult,
  type ScoringModel,
} from "./eval.ts";
export {
  KnnLm,
  type KnnLmOptions,
  type Neighbour,
  type NextOptions,
  type NextToken,
  openDatastoreModel,
  openDatastoreTokenizer,
} from "./knnlm.ts";
export {
  interpolate,
  interpolatedPerplexity,
  knnDistribution,
  knnLogProb,
  logAddExp,
  logSoftmax,
  perplexity,
} from "./knn_math.ts";
// Types of the layers below that this layer's API mentions.
export type * from "../datastore/mod.ts";
export type * from "../model/mod.ts";
