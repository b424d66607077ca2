/**
 * The index layer: FAISS through our own C++ shim over Deno FFI. {@linkcode FaissIndex} builds,
 * trains, fills, searches, reads and writes plain `faiss.write_index` files; vectors are passed
 * without copies (typed arrays, raw float16 bits, or rows inside a memory-mapped file). The
 * shim's C++ source is `_shim_source.ts`; `build.ts` compiles it into the cache (used by
 * `deno task setup`); `ffi.ts` is the symbol table and loader.
 *
 * @example
 * ```ts ignore
 * import { FaissIndex } from "./mod.ts";
 *
 * const d = 16;
 * const keys = new Float32Array(4_000 * d).map(() => Math.random()); // [n, d]
 * using index = FaissIndex.ivfpq({ d, nlist: 16, m: 4, nbits: 8 });
 * await index.trainAsync(keys);
 * await index.addWithIdsAsync(keys, BigInt64Array.from({ length: 4_000 }, (_, i) => BigInt(i)));
 * index.nprobe = 8;
 * const { labels } = await index.searchAsync(keys.subarray(0, d), 4); // labels[0] === 0n
 * ```
 *
 * @module
 */

export {
  type AddVectorsOptions,
  type BaseRows,
  exactL2Async,
  FaissIndex,
  faissLibraryPath,
  faissVersion,
  getNumThreads,
  type IvfPqOptions,
  type MergeOnDiskOptions,
  type Metric,
  type OnDiskLists,
  type ReadOptions,
  type SearchResult,
  setNumThreads,
  type TrainOptions,
  type TrainResult,
  type VectorDType,
  type Vectors,
} from "./faiss_index.ts";
export {
  type BlasInfo,
  blasInfo,
  knnDistributions,
  knnLogProbs,
  knnLogProbsAsync,
  rerankExactAsync,
  searchIvfPqAsync,
  setBlasThreads,
  sgemm,
  type TokenValues,
  type TrainIvfPqOptions,
  trainIvfPqToFile,
  type VoteBatch,
} from "./knn_native.ts";
