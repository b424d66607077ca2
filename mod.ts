/**
 * knnlm: build and query kNN-LM datastores (Khandelwal et al., ICLR 2020) from Deno.
 *
 * For every position of a corpus the datastore keeps a *key* — the hidden state that feeds
 * the last transformer block's feed-forward layer — in `keys.npy` ([n, d], memory-mapped)
 * and the next token in `vals.npy` ([n] int32), plus a FAISS IVFPQ index over the keys
 * (`faiss.index`, ids = rows) and `datastore.json`, which records how it was made. At
 * inference the k nearest keys vote: p = λ·p_kNN + (1 − λ)·p_LM.
 *
 * The layers, each usable alone: {@link loadConfig} (defaults < JSONC file < flags),
 * {@link loadCorpus} (Brown splits or your text / token ids), {@link OnnxLm} (any ONNX causal
 * LM; any intermediate tensor can be the key), {@link MappedArray} (`.npy` through libc
 * `mmap`), {@link FaissIndex} (FAISS through Deno FFI), and the stages {@link gather},
 * {@link trainIndex}, {@link addToIndex}, wired together by {@link buildIndex}; then
 * {@link evaluate}, {@link Datastore} and {@link KnnLm} to query.
 *
 * @example Build a small datastore from the bundled model, evaluate it, and generate
 * ```ts ignore
 * import { buildIndex, Datastore, encodeBytes, evaluate, KnnLm, loadConfig, loadCorpus,
 *   openDatastoreModel } from "./mod.ts";
 *
 * // 200k tokens of Brown train with the bundled byte-level model → data/small/
 * const { config } = loadConfig({ flags: { "max-tokens": "200000", out: "data/small" } });
 * const manifest = await buildIndex(config, { onEvent: (e) => console.error(e.type) });
 * console.log(manifest.keys.shape, manifest.index?.factory); // [199999, 192] "IVF2048,…"
 *
 * // Perplexity of the LM and of the kNN-LM on 5k tokens of Brown test.
 * using ds = await Datastore.open("data/small");
 * using model = await openDatastoreModel(ds);
 * const tokens = (await loadCorpus("brown:test")).tokens.subarray(0, 5000);
 * const r = await evaluate({ datastore: ds, model, tokens, k: 256 });
 * console.log(r.lmPerplexity, r.modes.exact?.best); // e.g. 5.0 { lambda: 0.4, perplexity: 4.6 }
 *
 * // Greedy generation from the interpolated distribution.
 * using lm = await KnnLm.open({ datastore: "data/small", k: 64, lambda: 0.3 });
 * const text = Array.from(encodeBytes("The jury said"));
 * for (let i = 0; i < 20; i++) {
 *   const { mixed } = await lm.next(Int32Array.from(text));
 *   text.push(mixed.indexOf(Math.max(...mixed)));
 * }
 * console.log(new TextDecoder().decode(Uint8Array.from(text)));
 * ```
 *
 * @example FAISS alone: build, search and save an IVFPQ index
 * ```ts
 * import { FaissIndex } from "./mod.ts";
 *
 * const d = 16;
 * const keys = new Float32Array(4_000 * d).map(() => Math.random()); // [n, d]
 * using index = FaissIndex.ivfpq({ d, nlist: 16, m: 4, nbits: 8 });
 * await index.trainAsync(keys);
 * await index.addWithIdsAsync(keys, BigInt64Array.from({ length: 4_000 }, (_, i) => BigInt(i)));
 * index.nprobe = 8;
 * const { labels, distances } = await index.searchAsync(keys.subarray(0, d), 4);
 * console.log(labels, distances); // labels[0] === 0n: a stored key finds itself
 * index.write("/tmp/keys.index"); // plain faiss.write_index format
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
export {
  planWindows,
  type Window,
  type WindowBatch,
  windowBatch,
  type WindowPlan,
} from "./lib/windows.ts";
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

// FAISS through Deno FFI: FaissIndex, thread control, shim build helpers.
export * from "./lib/faiss/mod.ts";
