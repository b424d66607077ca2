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

// Errors: one class, stable codes (lib/core/).
export { type ErrorCode, KnnError, type KnnErrorOptions } from "./lib/core/mod.ts";

// Configuration: defaults < JSONC file < flags (lib/config/).
export {
  type DeepPartial,
  type EvalConfig,
  type IndexConfig,
  type KnnlmConfig,
  loadConfig,
  type LoadConfigOptions,
  type LoadedConfig,
} from "./lib/config/mod.ts";

// Corpus: Brown splits or your text / token ids (lib/corpus/).
export { type Corpus, loadCorpus, type LoadCorpusOptions } from "./lib/corpus/mod.ts";

// Model: the ONNX Runtime session and the byte tokenizer (lib/model/).
export {
  decodeBytes,
  type DecodeOptions,
  encodeBytes,
  type InputInfo,
  type LmOutput,
  OnnxLm,
  type OnnxLmOptions,
  type RunOptions,
  type TensorInfo,
} from "./lib/model/mod.ts";

// Storage: memory-mapped .npy (lib/storage/).
export {
  type AdviceHint,
  type CreateMappedArrayOptions,
  type DType,
  type DTypeArrays,
  type MapMode,
  MappedArray,
  type OpenMappedArrayOptions,
  type ViewOf,
} from "./lib/storage/mod.ts";

// Index: FAISS through Deno FFI (lib/index/).
export {
  FaissIndex,
  type IvfPqOptions,
  type Metric,
  type ReadOptions,
  type SearchResult,
  setNumThreads,
  type VectorDType,
  type Vectors,
} from "./lib/index/mod.ts";

// Datastore: the build pipeline, its manifest and an open datastore (lib/datastore/; the
// single stages gather, trainIndex and addToIndex are in the "./datastore" entry point).
export {
  type AddProgress,
  buildIndex,
  type BuildOptions,
  Datastore,
  type DatastoreManifest,
  type GatherFingerprint,
  type GatherProgress,
  type PipelineEvent,
  type Stage,
} from "./lib/datastore/mod.ts";

// Query: evaluation, next-token distributions, the kNN-LM arithmetic (lib/query/).
export {
  type DistanceMode,
  type EvalOptions,
  type EvalResult,
  evaluate,
  interpolate,
  KnnLm,
  type KnnLmOptions,
  knnLogProb,
  type ModeResult,
  type Neighbour,
  type NextToken,
  openDatastoreModel,
  type ScoringModel,
} from "./lib/query/mod.ts";
