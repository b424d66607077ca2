/**
 * FFI symbol table of the FAISS shim (`_shim_source.ts`) and the loader that opens it.
 *
 * Load order: `$KNNLM_FAISS_LIB`, then the build cache, then (when a C++ toolchain and the FAISS
 * headers are there) a compile into the cache. On failure one error lists every path tried and
 * the fixing command, with the original error as `cause`.
 *
 * @module
 */

import { KnnError } from "../core/errors.ts";
import { SHIM_ABI_VERSION } from "./_shim_source.ts";
import { buildShim, findCachedShim, findToolchain, LIB_ENV } from "./build.ts";

// Every fallible call ends in (char* err, size_t errlen) and returns an int status (see
// _shim_source.ts). Vector data and index handles are "pointer" parameters (the binding takes
// Deno.UnsafePointer.of(typed array) or a mapped file's address), so one symbol serves both;
// small fixed buffers (err, outputs, ids, strings) are "buffer". Calls that can run long have a
// nonblocking twin, `<name>_async`, on a Deno worker thread.
const TRAIN = {
  parameters: [
    "pointer",
    "i64",
    "pointer",
    "i32",
    "pointer",
    "i32",
    "buffer",
    "buffer",
    "usize",
    "buffer",
    "usize",
  ],
  result: "i32",
} as const;
const ADD = {
  parameters: ["pointer", "i64", "pointer", "i32", "buffer", "pointer", "buffer", "usize"],
  result: "i32",
} as const;
const SEARCH = {
  parameters: ["pointer", "i64", "pointer", "i32", "i64", "buffer", "buffer", "buffer", "usize"],
  result: "i32",
} as const;
const WRITE = { parameters: ["pointer", "buffer", "buffer", "usize"], result: "i32" } as const;
const MERGE = {
  parameters: ["pointer", "buffer", "i32", "buffer", "pointer", "buffer", "buffer", "usize"],
  result: "i32",
} as const;
const L2_ROWS = {
  parameters: [
    "buffer",
    "i64",
    "i32",
    "pointer",
    "i32",
    "i64",
    "buffer",
    "i64",
    "buffer",
    "buffer",
    "usize",
  ],
  result: "i32",
} as const;

const symbols = {
  // int32_t knnlm_shim_abi(void)
  knnlm_shim_abi: { parameters: [], result: "i32" },
  // const char* knnlm_faiss_version(void)
  knnlm_faiss_version: { parameters: [], result: "pointer" },
  // void knnlm_set_num_threads(int32_t n)
  knnlm_set_num_threads: { parameters: ["i32"], result: "void" },
  // int32_t knnlm_get_num_threads(void)
  knnlm_get_num_threads: { parameters: [], result: "i32" },
  // int knnlm_index_factory(int32_t d, const char* description, int32_t metric, void** out, char* err, size_t errlen)
  knnlm_index_factory: {
    parameters: ["i32", "buffer", "i32", "buffer", "buffer", "usize"],
    result: "i32",
  },
  // int knnlm_index_ivfpq(int32_t d, int64_t nlist, int32_t m, int32_t nbits, int32_t metric, void** out, char* err, size_t errlen)
  knnlm_index_ivfpq: {
    parameters: ["i32", "i64", "i32", "i32", "i32", "buffer", "buffer", "usize"],
    result: "i32",
  },
  // int knnlm_index_read(const char* path, int32_t flags, void** out, char* err, size_t errlen)
  knnlm_index_read: { parameters: ["buffer", "i32", "buffer", "buffer", "usize"], result: "i32" },
  // int knnlm_index_write(const void* index, const char* path, char* err, size_t errlen)
  knnlm_index_write: WRITE,
  knnlm_index_write_async: { ...WRITE, name: "knnlm_index_write", nonblocking: true },
  // void knnlm_index_free(void* index)
  knnlm_index_free: { parameters: ["pointer"], result: "void" },
  // int knnlm_index_stats(const void* index, int64_t out[4], char* err, size_t errlen)
  knnlm_index_stats: { parameters: ["pointer", "buffer", "buffer", "usize"], result: "i32" },
  // int knnlm_index_type(const void* index, char* buf, size_t buflen, char* err, size_t errlen)
  knnlm_index_type: {
    parameters: ["pointer", "buffer", "usize", "buffer", "usize"],
    result: "i32",
  },
  // int knnlm_index_train(void* index, int64_t n, const void* x, int32_t dtype, const int32_t* cancel, int32_t parallel_pq, int32_t* parallel_ran, char* warnings, size_t warnlen, char* err, size_t errlen)
  knnlm_index_train: TRAIN,
  knnlm_index_train_async: { ...TRAIN, name: "knnlm_index_train", nonblocking: true },
  // int knnlm_index_add(void* index, int64_t n, const void* x, int32_t dtype, const int64_t* ids, const int32_t* cancel, char* err, size_t errlen)
  knnlm_index_add: ADD,
  knnlm_index_add_async: { ...ADD, name: "knnlm_index_add", nonblocking: true },
  // int knnlm_index_search(const void* index, int64_t n, const void* x, int32_t dtype, int64_t k, float* distances, int64_t* labels, char* err, size_t errlen)
  knnlm_index_search: SEARCH,
  knnlm_index_search_async: { ...SEARCH, name: "knnlm_index_search", nonblocking: true },
  // int knnlm_index_use_ondisk(void* index, const char* path, char* err, size_t errlen)
  knnlm_index_use_ondisk: { parameters: ["pointer", "buffer", "buffer", "usize"], result: "i32" },
  // int knnlm_index_ondisk_info(const void* index, int64_t out[4], char* path, size_t pathlen, char* err, size_t errlen)
  knnlm_index_ondisk_info: {
    parameters: ["pointer", "buffer", "buffer", "usize", "buffer", "usize"],
    result: "i32",
  },
  // int knnlm_index_merge_ondisk(const void* trained, const void* const* shards, int32_t n_shards, const char* path, const int32_t* cancel, void** out, char* err, size_t errlen)
  knnlm_index_merge_ondisk_async: {
    ...MERGE,
    name: "knnlm_index_merge_ondisk",
    nonblocking: true,
  },
  // int knnlm_l2_rows(const float* queries, int64_t nq, int32_t d, const void* base, int32_t dtype, int64_t nbase, const int64_t* labels, int64_t k, float* out, char* err, size_t errlen)
  knnlm_l2_rows_async: { ...L2_ROWS, name: "knnlm_l2_rows", nonblocking: true },
  // int knnlm_index_stored_ids(const void* index, int64_t block_no, int64_t* out, int64_t cap, int64_t* size, int64_t* nblocks, char* err, size_t errlen)
  knnlm_index_stored_ids: {
    parameters: ["pointer", "i64", "buffer", "i64", "buffer", "buffer", "buffer", "usize"],
    result: "i32",
  },
  // int knnlm_index_get_nprobe(const void* index, int64_t* out, char* err, size_t errlen)
  knnlm_index_get_nprobe: { parameters: ["pointer", "buffer", "buffer", "usize"], result: "i32" },
  // int knnlm_index_set_nprobe(void* index, int64_t nprobe, char* err, size_t errlen)
  knnlm_index_set_nprobe: { parameters: ["pointer", "i64", "buffer", "usize"], result: "i32" },
  // int knnlm_index_reset(void* index, char* err, size_t errlen)
  knnlm_index_reset: { parameters: ["pointer", "buffer", "usize"], result: "i32" },

  // ---- Speed block (issue 11), wrapped by knn_native.ts --------------------------------------
  // int32_t knnlm_blas_set_num_threads(int32_t n)
  knnlm_blas_set_num_threads: { parameters: ["i32"], result: "i32" },
  // int knnlm_blas_info(char* buf, size_t buflen, char* err, size_t errlen)
  knnlm_blas_info: { parameters: ["buffer", "usize", "buffer", "usize"], result: "i32" },
  // int knnlm_sgemm(int32_t m, int32_t n, int32_t k, const float* a, const float* b, float* c, char* err, size_t errlen)
  knnlm_sgemm: {
    parameters: ["i32", "i32", "i32", "buffer", "buffer", "buffer", "buffer", "usize"],
    result: "i32",
  },
  // int knnlm_knn_log_prob(const int64_t* labels, const float* distances, int64_t nq, int64_t k, const int32_t* vals, int64_t nvals, const int32_t* targets, double temperature, int32_t sign, double* out, char* err, size_t errlen)
  knnlm_knn_log_prob: {
    parameters: [
      "buffer",
      "buffer",
      "i64",
      "i64",
      "pointer",
      "i64",
      "buffer",
      "f64",
      "i32",
      "buffer",
      "buffer",
      "usize",
    ],
    result: "i32",
  },
  knnlm_knn_log_prob_async: {
    name: "knnlm_knn_log_prob",
    parameters: [
      "buffer",
      "buffer",
      "i64",
      "i64",
      "pointer",
      "i64",
      "buffer",
      "f64",
      "i32",
      "buffer",
      "buffer",
      "usize",
    ],
    result: "i32",
    nonblocking: true,
  },
  // int knnlm_knn_distribution(const int64_t* labels, const float* distances, int64_t nq, int64_t k, const int32_t* vals, int64_t nvals, int64_t vocab, double temperature, int32_t sign, double* out, char* err, size_t errlen)
  knnlm_knn_distribution: {
    parameters: [
      "buffer",
      "buffer",
      "i64",
      "i64",
      "pointer",
      "i64",
      "i64",
      "f64",
      "i32",
      "buffer",
      "buffer",
      "usize",
    ],
    result: "i32",
  },
  // int knnlm_rerank_exact(const float* queries, int64_t nq, int32_t d, const void* base, int32_t dtype, int64_t nbase, const int64_t* labels, int64_t kc, int64_t k, int64_t* out_labels, float* out_distances, char* err, size_t errlen)
  knnlm_rerank_exact_async: {
    name: "knnlm_rerank_exact",
    parameters: [
      "buffer",
      "i64",
      "i32",
      "pointer",
      "i32",
      "i64",
      "buffer",
      "i64",
      "i64",
      "buffer",
      "buffer",
      "buffer",
      "usize",
    ],
    result: "i32",
    nonblocking: true,
  },
  // int knnlm_ivfpq_search(const void* index, int64_t n, const float* x, int64_t k, float* distances, int64_t* labels, int32_t* fast, char* err, size_t errlen)
  knnlm_ivfpq_search_async: {
    name: "knnlm_ivfpq_search",
    parameters: [
      "pointer",
      "i64",
      "buffer",
      "i64",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "usize",
    ],
    result: "i32",
    nonblocking: true,
  },
  // ---- end of the speed block -----------------------------------------------------------------
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened shim library. */
export type FaissLibrary = Deno.DynamicLibrary<typeof symbols>;

let opened: { lib: FaissLibrary; path: string } | undefined;

/** The command that installs FAISS and builds the shim; named in every loader error. */
export const FIX_COMMAND = "deno task setup";

function openAt(path: string): FaissLibrary {
  // libgomp reads this once, when dlopen loads it. Its default spins waiting threads, which
  // made IVFPQ training 7-15x slower on a 2-core machine shared with other processes; passive
  // waiting costs little on an idle one. An explicit setting is kept.
  if (Deno.env.get("OMP_WAIT_POLICY") === undefined) Deno.env.set("OMP_WAIT_POLICY", "PASSIVE");
  const lib = Deno.dlopen(path, symbols);
  const abi = lib.symbols.knnlm_shim_abi();
  if (abi !== SHIM_ABI_VERSION) {
    lib.close();
    throw new KnnError(
      "E_SETUP",
      `${path}: shim ABI ${abi}, this binding needs ${SHIM_ABI_VERSION} (a stale build)`,
      { path, hint: FIX_COMMAND },
    );
  }
  return lib;
}

/**
 * Opens the shim once per process and returns it with the path it came from: `$KNNLM_FAISS_LIB`
 * when set (and nothing else), else the build cache, else a fresh compile into the cache.
 * Failures are {@linkcode KnnError} `E_SETUP` listing every path tried.
 */
export function openFaissLibrary(): { lib: FaissLibrary; path: string } {
  if (opened) return opened;
  const tried: string[] = [];
  let lastError: unknown;
  const explicit = Deno.env.get(LIB_ENV);
  if (explicit) {
    try {
      opened = { lib: openAt(explicit), path: explicit };
      return opened;
    } catch (e) {
      throw new KnnError(
        "E_SETUP",
        `cannot load the FAISS shim from ${LIB_ENV}=${explicit}: ${message(e)}\n` +
          `  unset ${LIB_ENV} to use the build cache, or run: ${FIX_COMMAND}`,
        { cause: e, path: explicit, hint: FIX_COMMAND },
      );
    }
  }
  const toolchain = findToolchain();
  const cached = findCachedShim(toolchain);
  tried.push(...cached.tried);
  if (cached.path) {
    try {
      opened = { lib: openAt(cached.path), path: cached.path };
      return opened;
    } catch (e) {
      lastError = e;
      tried[tried.length - 1] += ` (${message(e)})`;
    }
  }
  if (toolchain.missing.length === 0) {
    try {
      const built = buildShim({ toolchain, force: lastError !== undefined });
      tried.push(`${built.path} (compiled now)`);
      opened = { lib: openAt(built.path), path: built.path };
      return opened;
    } catch (e) {
      lastError = e;
      tried.push(`compile failed: ${message(e)}`);
    }
  } else {
    tried.push(`no compile: missing ${toolchain.missing.join(", ")}`);
    lastError ??= new Error(
      `FAISS toolchain incomplete: missing ${toolchain.missing.join(", ")}; searched ${
        toolchain.searched.join(", ")
      }`,
    );
  }
  throw new KnnError(
    "E_SETUP",
    `cannot load the FAISS shim (libknnlm_faiss.so). Tried:\n` +
      tried.map((t) => `  - ${t}`).join("\n") +
      `\nFix: run \`${FIX_COMMAND}\` (installs libfaiss-dev libopenblas-dev g++ and compiles ` +
      `the shim), or set ${LIB_ENV} to a built library.`,
    { cause: lastError, hint: FIX_COMMAND },
  );
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
