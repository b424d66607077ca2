/**
 * FAISS through Deno FFI: the `FaissIndex` class, thread control, and the shim build helpers.
 *
 * @module
 */

export {
  type BaseRows,
  exactL2Async,
  FaissIndex,
  faissLibraryPath,
  faissVersion,
  getNumThreads,
  IO_FLAG_MMAP,
  IO_FLAG_ONDISK_SAME_DIR,
  type IvfPqOptions,
  type Metric,
  type ReadOptions,
  type SearchResult,
  setNumThreads,
  type VectorDType,
  type Vectors,
} from "./index.ts";
export {
  APT_PACKAGES,
  buildShim,
  type BuildShimOptions,
  type FaissToolchain,
  findToolchain,
  LIB_ENV,
  LIB_NAME,
  type ShimBuild,
  shimCacheRoot,
} from "./build.ts";
