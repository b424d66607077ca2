/**
 * knnlm: build and query kNN-LM datastores (Khandelwal et al., ICLR 2020) from Deno.
 *
 * Corpus and tokenizer layer: the built-in Brown Corpus splits or user data, resolved to
 * byte-level token ids for the default model (`models/byte_gpt.onnx`, see models/README.md).
 *
 * ```ts
 * import { decodeBytes, loadCorpus } from "./mod.ts";
 *
 * const corpus = await loadCorpus("brown:valid");
 * console.log(corpus.description); // Brown corpus, valid split, …: 595289 tokens (UTF-8 bytes)
 * console.log(corpus.identity); // sha256 of the token stream
 * console.log(decodeBytes(corpus.tokens.subarray(0, 80)));
 * ```
 *
 * @module
 */

// Configuration: defaults < JSONC file < flags, validated with errors naming source and key.
export {
  configArgOptions,
  ConfigError,
  type ConfigIssue,
  type ConfigKeyDescription,
  type ConfigSource,
  type DeepPartial,
  DEFAULT_CONFIG,
  describeConfigKeys,
  type EvalConfig,
  type IndexConfig,
  type KnnlmConfig,
  loadConfig,
  type LoadConfigOptions,
  type LoadedConfig,
  parseJsonc,
} from "./lib/config.ts";

// ONNX causal LMs: inspect inputs/outputs/key candidates, expose any intermediate tensor as
// the key (cached edited copy, user's file untouched), and run the model with onnxruntime.
export {
  formatModelInspection,
  type InputInfo,
  type InputRole,
  inspectModel,
  type InspectOptions,
  type KeyCandidate,
  type ModelInspection,
  type TensorInfo,
} from "./lib/onnx/inspect.ts";
export {
  defaultOnnxCacheDir,
  type ExposedModel,
  type ExposeOptions,
  exposeTensors,
} from "./lib/onnx/expose.ts";
export { type LmOutput, OnnxLm, type OnnxLmOptions, type RunOptions } from "./lib/onnx/runner.ts";

// Storage: memory-mapped .npy keys/values (lib/npy.ts, lib/mmap.ts, lib/half.ts).
export {
  type AdviceHint,
  type CreateMappedArrayOptions,
  type MapMode,
  MappedArray,
  type OpenMappedArrayOptions,
} from "./lib/mmap.ts";
export {
  type DType,
  type DTypeArrays,
  dtypeName,
  DTYPES,
  encodeNpyHeader,
  type EncodeNpyHeaderOptions,
  isDType,
  itemSize,
  type NpyHeader,
  npyHeaderLength,
  parseNpyHeader,
  type ParseNpyHeaderOptions,
  type TypedArray,
  type ViewOf,
} from "./lib/npy.ts";
export { f16ArrayToF32, f16ToF32, f32ArrayToF16, f32ToF16 } from "./lib/half.ts";
export { ErrnoError } from "./lib/_libc.ts";

// The pipeline: windows → gather (keys.npy/vals.npy) → train → add (faiss.index) → datastore.json.
export { planWindows, type Window, type WindowPlan } from "./lib/windows.ts";
export {
  gather,
  GatherInterrupted,
  type GatherOptions,
  type GatherProgress,
  type GatherResult,
  type KeyModel,
} from "./lib/gather.ts";
export {
  type AddOptions,
  type AddProgress,
  addToIndex,
  type IndexRequest,
  MIN_POINTS_PER_CENTROID,
  planIndex,
  trainIndex,
  type TrainIndexOptions,
} from "./lib/build_index.ts";
export { sampleRows } from "./lib/sample.ts";
export {
  DATASTORE_FILES,
  DATASTORE_FORMAT,
  type DatastoreManifest,
  datastorePaths,
  type GatherFingerprint,
  type IndexParams,
  readManifest,
} from "./lib/datastore.ts";
export { buildIndex, type BuildOptions, type PipelineEvent, type Stage } from "./lib/pipeline.ts";

// Querying: evaluation, neighbours and next-token distributions.
export {
  Datastore,
  DEFAULT_LAMBDAS,
  type DistanceMode,
  type EvalOptions,
  type EvalResult,
  evaluate,
  type ModeResult,
  type ScoringModel,
} from "./lib/eval.ts";
export {
  KnnLm,
  type KnnLmOptions,
  type Neighbour,
  type NextToken,
  openDatastoreModel,
} from "./lib/knnlm.ts";
export {
  interpolate,
  interpolatedPerplexity,
  knnDistribution,
  knnLogProb,
  logAddExp,
  logSoftmax,
  perplexity,
} from "./lib/knn_math.ts";
export { type LambdaPlotOptions, lambdaPlotSvg, type PlotSeries } from "./lib/plot_svg.ts";

/**
 * Corpus sources. {@linkcode loadCorpus} takes `brown:train` / `brown:valid` / `brown:test`,
 * a UTF-8 text file, a folder of text files, a `.npy` of integer ids or a raw uint16 `.bin`
 * and returns `{ name, tokens: Int32Array, vocabSize, identity, description }`. The Brown
 * helpers expose the deterministic file split (sorted files; index % 10 == 0 → test,
 * == 1 → valid, rest → train: 400 / 50 / 50 files) and its sizes ({@linkcode brownSplitSizes}).
 */
export {
  BROWN_PACKAGE_VERSION,
  BROWN_SPLITS,
  brownDir,
  brownFiles,
  type BrownOptions,
  type BrownSplit,
  brownSplitFiles,
  brownSplitOf,
  brownSplitSizes,
  cleanBrownText,
  type Corpus,
  detokenize,
  loadBrownText,
  loadCorpus,
  type LoadCorpusOptions,
  readBrownFile,
  type SplitSize,
  tokenIdentity,
} from "./lib/corpus/mod.ts";

/**
 * The default tokenizer: UTF-8 bytes, vocabulary 256. {@linkcode decodeBytes} tolerates
 * windows cut inside a multi-byte character (U+FFFD) so display code never throws.
 */
export {
  BYTE_VOCAB_SIZE,
  byteTokenLabel,
  decodeBytes,
  type DecodeOptions,
  encodeBytes,
} from "./lib/tokenizer.ts";

// FAISS through Deno FFI (a project-owned C++ shim over the FAISS C++ library).
export {
  FaissIndex,
  faissLibraryPath,
  faissVersion,
  getNumThreads,
  IO_FLAG_MMAP,
  type IvfPqOptions,
  type Metric,
  type ReadOptions,
  type SearchResult,
  setNumThreads,
  type VectorDType,
  type Vectors,
} from "./lib/faiss/mod.ts";
