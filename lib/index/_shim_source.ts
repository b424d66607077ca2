/**
 * C++ source of the FAISS shim: a C ABI over the FAISS C++ API for `Deno.dlopen`.
 *
 * This module is the source of truth (there is no committed `.cpp`): `build.ts` writes it next to
 * the compiled library in the cache, so a URL import or a `deno compile`d CLI can still build it.
 *
 * ABI rules, relied on by `ffi.ts`:
 * - every fallible function returns an `int` status (0 = ok) and writes FAISS's message into the
 *   caller's `err` buffer (`errlen` bytes, NUL-terminated). No thread-local last-error: nonblocking
 *   calls run on Deno's worker threads. C++ exceptions never cross the boundary.
 * - vectors are `n` rows of `d` values, `dtype` 0 = float32 (used in place) or 1 = IEEE float16
 *   (raw bits, converted to float32 in slices of `KNNLM_CHUNK_ROWS` rows, never as a whole copy,
 *   except for `train`, which FAISS needs as one matrix).
 * - indexes are `faiss::Index*`, owned by the caller until `knnlm_index_free`.
 *
 * @module
 */

/** Bumped whenever a signature in the ABI changes; `ffi.ts` refuses a library with another one. */
export const SHIM_ABI_VERSION = 3;

/** The C++ source text, compiled by `build.ts` with `g++ -std=c++17 -fopenmp`. */
export const SHIM_SOURCE: string = String
  .raw`// Generated from lib/index/_shim_source.ts (the source of truth); do not edit.
// knnlm FAISS shim: C ABI over the FAISS C++ API, for Deno FFI.
#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/impl/FaissException.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/invlists/OnDiskInvertedLists.h>
#include <faiss/utils/distances.h>

#include <cxxabi.h>
#include <unistd.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

#define KNNLM_API extern "C" __attribute__((visibility("default")))
#define KNNLM_SHIM_ABI ${SHIM_ABI_VERSION}
#define KNNLM_CHUNK_ROWS 65536

namespace {

enum DType : int32_t { DTYPE_F32 = 0, DTYPE_F16 = 1 };

// 0 = leave OpenMP's default (OMP_NUM_THREADS or all cores). OpenMP's thread count is a
// per-thread setting, and nonblocking calls run on other threads than the caller's, so every
// entry point re-applies the process-wide choice on the thread it runs on.
std::atomic<int32_t> g_num_threads{0};

void apply_num_threads() {
  int32_t n = g_num_threads.load(std::memory_order_relaxed);
  if (n > 0) omp_set_num_threads(n);
}

void write_err(char* err, size_t errlen, const char* msg) {
  if (err == nullptr || errlen == 0) return;
  std::snprintf(err, errlen, "%s", msg);
}

// FAISS's on-disk inverted lists report file resizes with printf on stdout, which would land
// in the middle of a program's own output (e.g. JSON on stdout). While one of those calls runs,
// fd 1 points at stderr. Calls run one at a time per index; output that another thread writes
// to stdout meanwhile goes to stderr too.
struct StdoutToStderr {
  int saved;
  StdoutToStderr() {
    std::fflush(stdout);
    saved = dup(1);
    if (saved >= 0) dup2(2, 1);
  }
  ~StdoutToStderr() {
    std::fflush(stdout);
    if (saved >= 0) {
      dup2(saved, 1);
      close(saved);
    }
  }
};

// Runs fn and turns every exception into status 1 plus a message in err.
template <class Fn>
int guarded(char* err, size_t errlen, Fn&& fn) {
  if (err != nullptr && errlen > 0) err[0] = '\0';
  try {
    apply_num_threads();
    fn();
    return 0;
  } catch (const faiss::FaissException& e) {
    write_err(err, errlen, e.what());
  } catch (const std::bad_alloc&) {
    write_err(err, errlen, "out of memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    write_err(err, errlen, e.what());
  } catch (...) {
    write_err(err, errlen, "unknown C++ exception");
  }
  return 1;
}

// Metric codes are faiss::MetricType values: 0 = inner product, 1 = L2.
faiss::MetricType to_metric(int32_t metric) {
  if (metric == faiss::METRIC_INNER_PRODUCT) return faiss::METRIC_INNER_PRODUCT;
  if (metric == faiss::METRIC_L2) return faiss::METRIC_L2;
  throw std::invalid_argument("metric code must be 0 (inner product) or 1 (L2), got " +
                              std::to_string(metric));
}

faiss::Index* as_index(void* p) {
  if (p == nullptr) throw std::invalid_argument("null index handle");
  return static_cast<faiss::Index*>(p);
}

const faiss::Index* as_index(const void* p) {
  if (p == nullptr) throw std::invalid_argument("null index handle");
  return static_cast<const faiss::Index*>(p);
}

// IEEE binary16 -> binary32 for every bit pattern (zeros, subnormals, inf, NaN).
float half_bits_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      int32_t e = 113;  // 127 - 15 + 1, lowered while normalising the subnormal mantissa
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        e--;
      }
      bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// 64k-entry lookup table (256 KiB), built once; C++11 makes the static init thread-safe.
const float* half_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; i++) t[i] = half_bits_to_float(static_cast<uint16_t>(i));
    return t;
  }();
  return table.data();
}

void half_to_float(const uint16_t* src, size_t count, float* dst) {
  const float* table = half_table();
  const int64_t n = static_cast<int64_t>(count);
#pragma omp parallel for if (n > 1 << 20)
  for (int64_t i = 0; i < n; i++) dst[i] = table[src[i]];
}

void check_rows(int64_t n, const void* x) {
  if (n <= 0) throw std::invalid_argument("number of vectors must be > 0, got " + std::to_string(n));
  if (x == nullptr) throw std::invalid_argument("null vector pointer");
}

// Calls fn(rows, float32 rows, first row) over x: once, in place, for float32; in slices of at
// most KNNLM_CHUNK_ROWS converted rows for float16, so the copy stays small.
template <class Fn>
void for_each_slice(const void* x, int32_t dtype, int64_t n, int64_t d, Fn&& fn) {
  if (dtype == DTYPE_F32) {
    fn(n, static_cast<const float*>(x), int64_t{0});
    return;
  }
  if (dtype != DTYPE_F16) {
    throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float16), got " +
                                std::to_string(dtype));
  }
  const uint16_t* half = static_cast<const uint16_t*>(x);
  const int64_t rows = std::min<int64_t>(n, KNNLM_CHUNK_ROWS);
  std::vector<float> buf(static_cast<size_t>(rows * d));
  for (int64_t i0 = 0; i0 < n; i0 += KNNLM_CHUNK_ROWS) {
    const int64_t m = std::min<int64_t>(KNNLM_CHUNK_ROWS, n - i0);
    half_to_float(half + i0 * d, static_cast<size_t>(m * d), buf.data());
    fn(m, buf.data(), i0);
  }
}

// The IVF index inside wrappers, in any nesting order (faiss::ivflib::try_extract_index_ivf
// only unwraps IndexPreTransform before IndexIDMap, so it misses "IDMap,PCA..,IVF..").
faiss::IndexIVF* find_ivf(faiss::Index* ix) {
  for (int depth = 0; ix != nullptr && depth < 16; depth++) {
    if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(ix)) return ivf;
    if (auto* pt = dynamic_cast<faiss::IndexPreTransform*>(ix)) {
      ix = pt->index;
    } else if (auto* idmap = dynamic_cast<faiss::IndexIDMap*>(ix)) {  // also IndexIDMap2
      ix = idmap->index;
    } else if (auto* refine = dynamic_cast<faiss::IndexRefine*>(ix)) {
      ix = refine->base_index;
    } else {
      return nullptr;
    }
  }
  return nullptr;
}

std::string demangle(const char* name) {
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = (status == 0 && out != nullptr) ? out : name;
  std::free(out);
  return s;
}

}  // namespace

// ABI version this library was built with; must equal SHIM_ABI_VERSION in the binding.
KNNLM_API int32_t knnlm_shim_abi(void) { return KNNLM_SHIM_ABI; }

// FAISS version of the headers this library was built against, e.g. "1.7.3".
KNNLM_API const char* knnlm_faiss_version(void) {
  static const std::string v = std::to_string(FAISS_VERSION_MAJOR) + "." +
                               std::to_string(FAISS_VERSION_MINOR) + "." +
                               std::to_string(FAISS_VERSION_PATCH);
  return v.c_str();
}

// Sets the OpenMP thread count for all later calls, on every thread (n >= 1).
KNNLM_API void knnlm_set_num_threads(int32_t n) {
  g_num_threads.store(n > 0 ? n : 0, std::memory_order_relaxed);
  if (n > 0) omp_set_num_threads(n);
}

// The thread count set above, or OpenMP's default when none was set.
KNNLM_API int32_t knnlm_get_num_threads(void) {
  int32_t n = g_num_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

KNNLM_API int knnlm_index_factory(int32_t d, const char* description, int32_t metric, void** out,
                                  char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (description == nullptr) throw std::invalid_argument("null factory string");
    *out = faiss::index_factory(d, description, to_metric(metric));
  });
}

// IndexIVFPQ over an IndexFlatL2 (metric 1) or IndexFlatIP (metric 0) coarse quantizer, which
// the IVF index owns. Codes are m sub-quantizers of nbits each.
KNNLM_API int knnlm_index_ivfpq(int32_t d, int64_t nlist, int32_t m, int32_t nbits,
                                int32_t metric, void** out, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::MetricType mt = to_metric(metric);
    faiss::IndexFlat* quantizer = mt == faiss::METRIC_L2
                                      ? static_cast<faiss::IndexFlat*>(new faiss::IndexFlatL2(d))
                                      : static_cast<faiss::IndexFlat*>(new faiss::IndexFlatIP(d));
    try {
      auto* index = new faiss::IndexIVFPQ(quantizer, d, static_cast<size_t>(nlist),
                                          static_cast<size_t>(m), static_cast<size_t>(nbits), mt);
      index->own_fields = true;
      *out = index;
    } catch (...) {
      delete quantizer;
      throw;
    }
  });
}

// io_flags as in faiss/index_io.h (e.g. IO_FLAG_MMAP = 0x646f0008).
KNNLM_API int knnlm_index_read(const char* path, int32_t io_flags, void** out, char* err,
                               size_t errlen) {
  return guarded(err, errlen, [&] {
    if (path == nullptr) throw std::invalid_argument("null path");
    StdoutToStderr quiet;
    *out = faiss::read_index(path, io_flags);
  });
}

KNNLM_API int knnlm_index_write(const void* index, const char* path, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (path == nullptr) throw std::invalid_argument("null path");
    faiss::write_index(as_index(index), path);
  });
}

KNNLM_API void knnlm_index_free(void* index) { delete static_cast<faiss::Index*>(index); }

// out[0..3] = d, ntotal, is_trained (0/1), metric_type (faiss::MetricType value).
KNNLM_API int knnlm_index_stats(const void* index, int64_t* out, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    const faiss::Index* ix = as_index(index);
    out[0] = ix->d;
    out[1] = ix->ntotal;
    out[2] = ix->is_trained ? 1 : 0;
    out[3] = static_cast<int64_t>(ix->metric_type);
  });
}

// Demangled C++ class name of the index, e.g. "faiss::IndexIVFPQ".
KNNLM_API int knnlm_index_type(const void* index, char* buf, size_t buflen, char* err,
                               size_t errlen) {
  return guarded(err, errlen, [&] {
    const faiss::Index* ix = as_index(index);
    write_err(buf, buflen, demangle(typeid(*ix).name()).c_str());
  });
}

// x: [n, d] in dtype. FAISS trains on one matrix, so float16 input is converted whole here.
KNNLM_API int knnlm_index_train(void* index, int64_t n, const void* x, int32_t dtype, char* err,
                                size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::Index* ix = as_index(index);
    check_rows(n, x);
    if (dtype == DTYPE_F32) {
      ix->train(n, static_cast<const float*>(x));
    } else if (dtype == DTYPE_F16) {
      std::vector<float> buf(static_cast<size_t>(n * ix->d));
      half_to_float(static_cast<const uint16_t*>(x), buf.size(), buf.data());
      ix->train(n, buf.data());
    } else {
      throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float16), got " +
                                  std::to_string(dtype));
    }
  });
}

// x: [n, d] in dtype; ids: [n] int64 or null for sequential ids (ntotal, ntotal + 1, ...).
KNNLM_API int knnlm_index_add(void* index, int64_t n, const void* x, int32_t dtype,
                              const int64_t* ids, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::Index* ix = as_index(index);
    check_rows(n, x);
    StdoutToStderr quiet;
    for_each_slice(x, dtype, n, ix->d, [&](int64_t m, const float* rows, int64_t i0) {
      if (ids == nullptr) {
        ix->add(m, rows);
      } else {
        ix->add_with_ids(m, rows, ids + i0);
      }
    });
  });
}

// x: [n, d] queries in dtype; distances: [n, k] float32 and labels: [n, k] int64, caller-owned.
KNNLM_API int knnlm_index_search(const void* index, int64_t n, const void* x, int32_t dtype,
                                 int64_t k, float* distances, int64_t* labels, char* err,
                                 size_t errlen) {
  return guarded(err, errlen, [&] {
    const faiss::Index* ix = as_index(index);
    check_rows(n, x);
    if (k <= 0) throw std::invalid_argument("k must be > 0, got " + std::to_string(k));
    if (distances == nullptr || labels == nullptr) throw std::invalid_argument("null output");
    for_each_slice(x, dtype, n, ix->d, [&](int64_t m, const float* rows, int64_t i0) {
      ix->search(m, rows, k, distances + i0 * k, labels + i0 * k);
    });
  });
}

// Moves an empty IVF index's inverted lists into a memory-mapped file at path, so the codes
// added later live in the page cache, not in anonymous memory. write_index then records the
// file's name; read it back from the same directory with IO_FLAG_ONDISK_SAME_DIR.
KNNLM_API int knnlm_index_use_ondisk(void* index, const char* path, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (path == nullptr) throw std::invalid_argument("null path");
    faiss::IndexIVF* ivf = find_ivf(as_index(index));
    if (ivf == nullptr) {
      throw std::invalid_argument("on-disk inverted lists apply only to IVF indexes; this is " +
                                  demangle(typeid(*as_index(index)).name()));
    }
    if (ivf->ntotal != 0) {
      throw std::invalid_argument("on-disk inverted lists need an empty index, this one holds " +
                                  std::to_string(ivf->ntotal));
    }
    StdoutToStderr quiet;
    auto* od = new faiss::OnDiskInvertedLists(ivf->nlist, ivf->code_size, path);
    ivf->replace_invlists(od, true);
  });
}

// Exact squared L2 from each query to the base rows its labels name (kNN-LM's "exact"
// distances, recomputed from the stored keys). queries: [nq, d] float32; base: [nbase, d] in
// dtype (e.g. a memory-mapped keys.npy); labels: [nq, k] int64 (-1 = none); out: [nq, k]
// float32, +inf where the label is -1.
KNNLM_API int knnlm_l2_rows(const float* queries, int64_t nq, int32_t d, const void* base,
                            int32_t dtype, int64_t nbase, const int64_t* labels, int64_t k,
                            float* out, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (queries == nullptr || base == nullptr || labels == nullptr || out == nullptr) {
      throw std::invalid_argument("null pointer argument");
    }
    if (d <= 0 || k <= 0 || nq < 0) throw std::invalid_argument("d and k must be > 0");
    if (dtype != DTYPE_F32 && dtype != DTYPE_F16) {
      throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float16), got " +
                                  std::to_string(dtype));
    }
    for (int64_t i = 0; i < nq * k; i++) {
      if (labels[i] >= nbase) {
        throw std::out_of_range("label " + std::to_string(labels[i]) + " >= " +
                                std::to_string(nbase) + " base rows");
      }
    }
    apply_num_threads();
#pragma omp parallel
    {
      std::vector<float> row(static_cast<size_t>(d));
#pragma omp for schedule(static)
      for (int64_t q = 0; q < nq; q++) {
        const float* x = queries + q * d;
        for (int64_t j = 0; j < k; j++) {
          int64_t label = labels[q * k + j];
          float r = std::numeric_limits<float>::infinity();
          if (label >= 0) {
            const float* y;
            if (dtype == DTYPE_F32) {
              y = static_cast<const float*>(base) + label * d;
            } else {
              half_to_float(static_cast<const uint16_t*>(base) + label * d, d, row.data());
              y = row.data();
            }
            r = faiss::fvec_L2sqr(x, y, d);
          }
          out[q * k + j] = r;
        }
      }
    }
  });
}

// nprobe of the IVF index inside index (directly, or under IndexIDMap / IndexPreTransform /
// IndexRefine wrappers).
KNNLM_API int knnlm_index_get_nprobe(const void* index, int64_t* out, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    const faiss::IndexIVF* ivf = find_ivf(const_cast<faiss::Index*>(as_index(index)));
    if (ivf == nullptr) {
      throw std::invalid_argument("nprobe applies only to IVF indexes; this index is " +
                                  demangle(typeid(*as_index(index)).name()));
    }
    *out = static_cast<int64_t>(ivf->nprobe);
  });
}

KNNLM_API int knnlm_index_set_nprobe(void* index, int64_t nprobe, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::IndexIVF* ivf = find_ivf(as_index(index));
    if (ivf == nullptr) {
      throw std::invalid_argument("nprobe applies only to IVF indexes; this index is " +
                                  demangle(typeid(*as_index(index)).name()));
    }
    if (nprobe <= 0) throw std::invalid_argument("nprobe must be > 0");
    ivf->nprobe = static_cast<size_t>(nprobe);
  });
}

// Removes all vectors; training is kept.
KNNLM_API int knnlm_index_reset(void* index, char* err, size_t errlen) {
  return guarded(err, errlen, [&] { as_index(index)->reset(); });
}

// =============================================================================================
// Speed block (issue 11): OpenBLAS thread control and a single-SGEMM probe, IVFPQ training
// with the PQ sub-quantizers trained in parallel, the kNN-LM vote (log p_kNN and the whole
// p_kNN distribution) and exact re-ranking of a candidate set. One self-contained block: nothing
// above depends on it, and it only uses the helpers above (guarded, StdoutToStderr, ...).
// Wrapped in TypeScript by lib/index/knn_native.ts.
// =============================================================================================
#include <faiss/Clustering.h>
#include <faiss/impl/ProductQuantizer.h>
#include <faiss/utils/utils.h>

#include <cmath>
#include <memory>
#include <mutex>

// OpenBLAS's own controls, weak: with another BLAS they are null and the calls below are no-ops.
extern "C" {
void openblas_set_num_threads(int) __attribute__((weak));
int openblas_get_num_threads(void) __attribute__((weak));
char* openblas_get_corename(void) __attribute__((weak));
char* openblas_get_config(void) __attribute__((weak));
// The Fortran BLAS entry FAISS itself calls (32-bit integers, as FAISS 1.7 is built).
int sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
           const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
           const float* beta, float* c, const int* ldc);
}

namespace {

// Sets OpenBLAS's pool size for one scope and restores it afterwards. OpenBLAS's pool is
// process-wide: calls that overlap (two indexes trained at once) see each other's setting.
struct BlasThreadsScope {
  int saved = -1;
  explicit BlasThreadsScope(int n) {
    if (n > 0 && openblas_set_num_threads != nullptr && openblas_get_num_threads != nullptr) {
      int now = openblas_get_num_threads();
      if (now != n) {
        saved = now;
        openblas_set_num_threads(n);
      }
    }
  }
  ~BlasThreadsScope() {
    if (saved > 0) openblas_set_num_threads(saved);
  }
};

// ProductQuantizer::train (FAISS 1.7.3, Train_default) with the M sub-quantizers spread over
// the OpenMP pool instead of trained one after another. Each k-means is FAISS's own Clustering
// with the same parameters and seed, on one thread (its inner parallel loops get a team of one,
// OpenBLAS runs single-threaded), so the codebooks are the ones FAISS computes, without the
// two fork/joins and one BLAS call per 4096-point block that make the sequential version
// spend its time waking threads (dsub is 3 for d 192, m 64: each block is tiny).
void train_pq_parallel(faiss::ProductQuantizer& pq, size_t n, const float* x) {
  const int M = static_cast<int>(pq.M);
  const size_t dsub = pq.dsub;
  const size_t d = pq.d;
  BlasThreadsScope one_blas_thread(1);
  std::mutex mu;
  std::string first_error;
#pragma omp parallel for schedule(dynamic, 1)
  for (int m = 0; m < M; m++) {
    try {
      omp_set_num_threads(1);
      // xslice: [n, dsub], the m-th sub-vector of every training vector
      std::vector<float> xslice(n * dsub);
      for (size_t j = 0; j < n; j++) {
        std::memcpy(xslice.data() + j * dsub, x + j * d + m * dsub, dsub * sizeof(float));
      }
      faiss::Clustering clus(static_cast<int>(dsub), static_cast<int>(pq.ksub), pq.cp);
      faiss::IndexFlatL2 assign(static_cast<faiss::Index::idx_t>(dsub));
      clus.train(static_cast<faiss::Index::idx_t>(n), xslice.data(), assign);
      pq.set_params(clus.centroids.data(), m);  // disjoint slice of pq.centroids per m
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_error.empty()) first_error = e.what();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_error.empty()) first_error = "unknown C++ exception in PQ training";
    }
  }
  if (!first_error.empty()) throw std::runtime_error(first_error);
}

// IndexIVF::train + IndexIVFPQ::train_residual_o of FAISS 1.7.3, step for step, with the PQ
// step replaced by train_pq_parallel. Only for a plain IndexIVFPQ with default PQ training;
// returns false (nothing done) for anything else.
bool train_ivfpq_parallel(faiss::Index* ix, faiss::Index::idx_t n, const float* x) {
  auto* ivf = dynamic_cast<faiss::IndexIVFPQ*>(ix);
  if (ivf == nullptr || typeid(*ix) != typeid(faiss::IndexIVFPQ)) return false;
  if (ivf->pq.train_type != faiss::ProductQuantizer::Train_default ||
      ivf->do_polysemous_training || ivf->pq.assign_index != nullptr || ivf->pq.M < 2 ||
      ivf->verbose) {
    return false;
  }
  const size_t d = static_cast<size_t>(ivf->d);
  ivf->train_q1(n, x, ivf->verbose, ivf->metric_type);
  size_t nt = static_cast<size_t>(n);
  const float* xs = faiss::fvecs_maybe_subsample(
      d, &nt, ivf->pq.cp.max_points_per_centroid * ivf->pq.ksub, x, false, ivf->pq.cp.seed);
  std::unique_ptr<const float[]> owned_xs(xs == x ? nullptr : xs);
  const float* trainset = xs;
  std::vector<float> residuals;
  if (ivf->by_residual) {
    std::vector<faiss::Index::idx_t> assign(nt);
    ivf->quantizer->assign(static_cast<faiss::Index::idx_t>(nt), xs, assign.data());
    residuals.resize(nt * d);
    for (size_t i = 0; i < nt; i++) {
      ivf->quantizer->compute_residual(xs + i * d, residuals.data() + i * d, assign[i]);
    }
    trainset = residuals.data();
  }
  train_pq_parallel(ivf->pq, nt, trainset);
  if (ivf->by_residual) ivf->precompute_table();
  ivf->is_trained = true;
  return true;
}

// Checks shared by the kNN-LM vote functions.
void check_vote_args(const int64_t* labels, const float* distances, int64_t nq, int64_t k,
                     const int32_t* vals, double temperature) {
  if (labels == nullptr || distances == nullptr || vals == nullptr) {
    throw std::invalid_argument("null pointer argument");
  }
  if (nq < 0 || k <= 0) throw std::invalid_argument("need nq >= 0 and k > 0");
  if (!(temperature > 0) || !std::isfinite(temperature)) {
    throw std::invalid_argument("temperature must be a finite number > 0");
  }
}

// Neighbour j's next token, or -1 for FAISS's "no result"; a label past vals is an error.
inline int32_t neighbour_val(int64_t label, const int32_t* vals, int64_t nvals) {
  if (label < 0) return -1;
  if (label >= nvals) {
    throw std::out_of_range("label " + std::to_string(label) + " >= " +
                            std::to_string(nvals) + " values");
  }
  return vals[label];
}

// Runs body(q) for q in [0, nq) across the OpenMP pool; the first exception is rethrown.
template <class Fn>
void parallel_rows(int64_t nq, Fn&& body) {
  std::mutex mu;
  std::string first_error;
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < nq; q++) {
    try {
      body(q);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_error.empty()) first_error = e.what();
    }
  }
  if (!first_error.empty()) throw std::runtime_error(first_error);
}

}  // namespace

// Sets OpenBLAS's thread count (n >= 1) and returns the previous one; -1 (and nothing done)
// when the BLAS FAISS is linked against is not OpenBLAS.
KNNLM_API int32_t knnlm_blas_set_num_threads(int32_t n) {
  if (openblas_set_num_threads == nullptr || openblas_get_num_threads == nullptr) return -1;
  int32_t prev = openblas_get_num_threads();
  if (n > 0) openblas_set_num_threads(n);
  return prev;
}

// "<core>;<threads>;<config>" of the loaded OpenBLAS (e.g. "Prescott;2;OpenBLAS 0.3.21 ..."),
// or "" when the BLAS is another one.
KNNLM_API int knnlm_blas_info(char* buf, size_t buflen, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    std::string s;
    if (openblas_get_corename != nullptr && openblas_get_num_threads != nullptr) {
      s = std::string(openblas_get_corename()) + ";" +
          std::to_string(openblas_get_num_threads()) + ";" +
          (openblas_get_config != nullptr ? openblas_get_config() : "");
    }
    write_err(buf, buflen, s.c_str());
  });
}

// One single-precision GEMM through the BLAS FAISS uses: c = a · b, row-major, a: [m, k],
// b: [k, n], c: [m, n] (the probe behind the benchmark's SGEMM rate).
KNNLM_API int knnlm_sgemm(int32_t m, int32_t n, int32_t k, const float* a, const float* b,
                          float* c, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (m <= 0 || n <= 0 || k <= 0) throw std::invalid_argument("m, n, k must be > 0");
    if (a == nullptr || b == nullptr || c == nullptr) throw std::invalid_argument("null matrix");
    const float one = 1, zero = 0;
    // Row-major c = a·b is column-major cᵀ = bᵀ·aᵀ.
    sgemm_("N", "N", &n, &m, &k, &one, b, &n, a, &k, &zero, c, &n);
  });
}

// Trains index on x: [n, d] in dtype. A plain IndexIVFPQ is trained as FAISS does it, except
// that the PQ sub-quantizers are trained in parallel (same codebooks); any other index, or an
// IndexIVFPQ with non-default PQ training, goes through index->train. *parallel is set to 1
// when the parallel path ran.
KNNLM_API int knnlm_index_train_parallel(void* index, int64_t n, const void* x, int32_t dtype,
                                         int32_t* parallel, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::Index* ix = as_index(index);
    check_rows(n, x);
    std::vector<float> converted;
    const float* xf;
    if (dtype == DTYPE_F32) {
      xf = static_cast<const float*>(x);
    } else if (dtype == DTYPE_F16) {
      converted.resize(static_cast<size_t>(n * ix->d));
      half_to_float(static_cast<const uint16_t*>(x), converted.size(), converted.data());
      xf = converted.data();
    } else {
      throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float16), got " +
                                  std::to_string(dtype));
    }
    StdoutToStderr quiet;  // FAISS prints its clustering warnings on stdout
    bool done = train_ivfpq_parallel(ix, n, xf);
    if (!done) ix->train(n, xf);
    if (parallel != nullptr) *parallel = done ? 1 : 0;
  });
}

// log p_kNN(y) per query, as knnLogProb in lib/query/knn_math.ts: log Σ_{j: v_j = y}
// softmax(−sign·d_j / T)_j over the neighbours with a label ≥ 0, −inf when none votes for y.
// labels: [nq, k] int64 (−1 = none); distances: [nq, k] float32 (sign −1 turns inner products
// into distances); vals: [nvals] int32, the datastore's next tokens; targets: [nq] int32;
// out: [nq] float64. Sums run in neighbour order in double precision, like the JS.
KNNLM_API int knnlm_knn_log_prob(const int64_t* labels, const float* distances, int64_t nq,
                                 int64_t k, const int32_t* vals, int64_t nvals,
                                 const int32_t* targets, double temperature, int32_t sign,
                                 double* out, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    check_vote_args(labels, distances, nq, k, vals, temperature);
    if (targets == nullptr || out == nullptr) throw std::invalid_argument("null output");
    const double s = sign < 0 ? -1.0 : 1.0;
    parallel_rows(nq, [&](int64_t q) {
      const int64_t* lab = labels + q * k;
      const float* dist = distances + q * k;
      double max = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < k; j++) {
        if (neighbour_val(lab[j], vals, nvals) < 0) continue;
        double v = -(s * static_cast<double>(dist[j])) / temperature;
        if (v > max) max = v;
      }
      if (max == -std::numeric_limits<double>::infinity()) {
        out[q] = max;
        return;
      }
      double all = 0, hit = 0;
      const int32_t y = targets[q];
      for (int64_t j = 0; j < k; j++) {
        int32_t v = neighbour_val(lab[j], vals, nvals);
        if (v < 0) continue;
        double e = std::exp(-(s * static_cast<double>(dist[j])) / temperature - max);
        all += e;
        if (v == y) hit += e;
      }
      out[q] = hit > 0 ? std::log(hit / all) : -std::numeric_limits<double>::infinity();
    });
  });
}

// The whole p_kNN distribution per query, as knnDistribution in knn_math.ts: out: [nq, vocab]
// float64 probabilities (a row of zeros when a query has no neighbour); tokens ≥ vocab count in
// the normaliser but get no entry.
KNNLM_API int knnlm_knn_distribution(const int64_t* labels, const float* distances, int64_t nq,
                                     int64_t k, const int32_t* vals, int64_t nvals,
                                     int64_t vocab, double temperature, int32_t sign, double* out,
                                     char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    check_vote_args(labels, distances, nq, k, vals, temperature);
    if (out == nullptr || vocab <= 0) throw std::invalid_argument("null output or vocab <= 0");
    const double s = sign < 0 ? -1.0 : 1.0;
    parallel_rows(nq, [&](int64_t q) {
      const int64_t* lab = labels + q * k;
      const float* dist = distances + q * k;
      double* p = out + q * vocab;
      std::fill(p, p + vocab, 0.0);
      double max = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < k; j++) {
        if (neighbour_val(lab[j], vals, nvals) >= 0) {
          max = std::max(max, -(s * static_cast<double>(dist[j])) / temperature);
        }
      }
      if (max == -std::numeric_limits<double>::infinity()) return;
      double all = 0;
      for (int64_t j = 0; j < k; j++) {
        int32_t v = neighbour_val(lab[j], vals, nvals);
        if (v < 0) continue;
        double e = std::exp(-(s * static_cast<double>(dist[j])) / temperature - max);
        all += e;
        if (v < vocab) p[v] += e;
      }
      for (int64_t v = 0; v < vocab; v++) p[v] /= all;
    });
  });
}

#if defined(__x86_64__)
#include <immintrin.h>
#define KNNLM_X86 1
#endif

namespace {

// c[i] = a[i] + bf * b[i] rounded exactly as FAISS's fvec_madd in this build (scalar: a
// product, then a sum). The vector versions keep the two roundings: the empty asm stops the
// compiler from fusing them into one FMA.
#ifdef KNNLM_X86
__attribute__((target("avx512f"))) void madd_avx512(size_t n, const float* a, float bf,
                                                    const float* b, float* c) {
  const __m512 vb = _mm512_set1_ps(bf);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 prod = _mm512_mul_ps(vb, _mm512_loadu_ps(b + i));
    asm("" : "+v"(prod));
    _mm512_storeu_ps(c + i, _mm512_add_ps(_mm512_loadu_ps(a + i), prod));
  }
  for (; i < n; i++) {
    float prod = bf * b[i];
    asm("" : "+x"(prod));
    c[i] = a[i] + prod;
  }
}

__attribute__((target("avx2"))) void madd_avx2(size_t n, const float* a, float bf,
                                               const float* b, float* c) {
  const __m256 vb = _mm256_set1_ps(bf);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 prod = _mm256_mul_ps(vb, _mm256_loadu_ps(b + i));
    asm("" : "+x"(prod));
    _mm256_storeu_ps(c + i, _mm256_add_ps(_mm256_loadu_ps(a + i), prod));
  }
  for (; i < n; i++) {
    float prod = bf * b[i];
    asm("" : "+x"(prod));
    c[i] = a[i] + prod;
  }
}

#endif

void madd_faiss(size_t n, const float* a, float bf, const float* b, float* c) {
  faiss::fvec_madd(n, a, bf, b, c);
}

using MaddFn = void (*)(size_t, const float*, float, const float*, float*);

MaddFn pick_madd() {
  static const MaddFn fn = [] {
#ifdef KNNLM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return &madd_avx512;
    if (__builtin_cpu_supports("avx2")) return &madd_avx2;
#endif
    return &madd_faiss;
  }();
  return fn;
}

// One table term as FAISS's fvec_madd rounds it in a build without FMA: a product, then a sum.
inline float madd_term(float a, float bf, float b) {
  float prod = bf * b;
#ifdef KNNLM_X86
  asm("" : "+x"(prod));
#endif
  return a + prod;
}

// Squared L2 of two float32 rows: AVX-512, AVX2 + FMA, or FAISS's fvec_L2sqr. Used where
// exact distances are wanted (re-ranking), not FAISS's own rounding.
#ifdef KNNLM_X86
__attribute__((target("avx512f"))) float l2sqr_avx512(const float* x, const float* y,
                                                      size_t d) {
  __m512 acc = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= d; i += 16) {
    const __m512 t = _mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i));
    acc = _mm512_fmadd_ps(t, t, acc);
  }
  if (i < d) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (d - i)) - 1);
    const __m512 t =
        _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), _mm512_maskz_loadu_ps(mask, y + i));
    acc = _mm512_fmadd_ps(t, t, acc);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc);
  float r = 0;
  for (float v : lanes) r += v;
  return r;
}

__attribute__((target("avx2,fma"))) float l2sqr_avx2(const float* x, const float* y, size_t d) {
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= d; i += 8) {
    const __m256 t = _mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i));
    acc = _mm256_fmadd_ps(t, t, acc);
  }
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  float r = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
  for (; i < d; i++) {
    const float t = x[i] - y[i];
    r += t * t;
  }
  return r;
}

#endif

float l2sqr_faiss(const float* x, const float* y, size_t d) { return faiss::fvec_L2sqr(x, y, d); }

using L2Fn = float (*)(const float*, const float*, size_t);

L2Fn pick_l2() {
  static const L2Fn fn = [] {
#ifdef KNNLM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return &l2sqr_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &l2sqr_avx2;
#endif
    return &l2sqr_faiss;
  }();
  return fn;
}

// <x_m, centroid_m[c]> for every m and c, as FAISS's compute_inner_prod_table computes it in a
// build without SIMD (fvec_inner_product_ref: a float sum from 0, in dimension order), without a
// function call per centroid. out: [M, ksub].
void inner_prod_table(const faiss::ProductQuantizer& pq, const float* x, float* out) {
  const size_t dsub = pq.dsub;
  const size_t ksub = pq.ksub;
  for (size_t m = 0; m < pq.M; m++) {
    const float* xm = x + m * dsub;
    const float* y = pq.centroids.data() + m * ksub * dsub;
    float* o = out + m * ksub;
    for (size_t c = 0; c < ksub; c++, y += dsub) {
      float res = 0;
      for (size_t i = 0; i < dsub; i++) res += xm[i] * y[i];
      o[c] = res;
    }
  }
}

// Whether the tables above come out bit for bit as this FAISS build's own (its SIMD level
// decides how it sums and whether it fuses): 0 = not checked yet, 1 = same, 2 = different, in
// which case FAISS's own compute_inner_prod_table and fvec_madd build every table.
std::atomic<int> g_own_tables{0};

bool own_tables_match(const faiss::IndexIVFPQ& ivf, const float* x, faiss::Index::idx_t key) {
  const size_t n = ivf.pq.M * ivf.pq.ksub;
  std::vector<float> theirs(n), ours(n), t_theirs(n), t_ours(n);
  ivf.pq.compute_inner_prod_table(x, theirs.data());
  inner_prod_table(ivf.pq, x, ours.data());
  const float* pre = ivf.precomputed_table.data() + key * n;
  faiss::fvec_madd(n, pre, -2.0f, theirs.data(), t_theirs.data());
  pick_madd()(n, pre, -2.0f, ours.data(), t_ours.data());
  if (std::memcmp(theirs.data(), ours.data(), n * sizeof(float)) != 0) return false;
  if (std::memcmp(t_theirs.data(), t_ours.data(), n * sizeof(float)) != 0) return false;
  for (size_t i = 0; i < n; i++) {
    const float t = madd_term(pre[i], -2.0f, ours[i]);
    if (std::memcmp(&t, &t_theirs[i], sizeof t) != 0) return false;
  }
  return true;
}

}  // namespace

// Exact re-ranking: squared L2 from each query to the kc candidate rows its labels name
// (queries: [nq, d] float32; base: [nbase, d] in dtype, e.g. a mapped keys.npy; labels:
// [nq, kc], −1 = none), then the k ≤ kc nearest of them, nearest first (equal distances: the
// smaller row first). out_labels: [nq, k] int64 and out_distances: [nq, k] float32, padded with
// −1 / +inf when a query has fewer than k candidates.
KNNLM_API int knnlm_rerank_exact(const float* queries, int64_t nq, int32_t d, const void* base,
                                 int32_t dtype, int64_t nbase, const int64_t* labels, int64_t kc,
                                 int64_t k, int64_t* out_labels, float* out_distances, char* err,
                                 size_t errlen) {
  return guarded(err, errlen, [&] {
    if (queries == nullptr || base == nullptr || labels == nullptr || out_labels == nullptr ||
        out_distances == nullptr) {
      throw std::invalid_argument("null pointer argument");
    }
    if (d <= 0 || k <= 0 || kc < k || nq < 0) {
      throw std::invalid_argument("need d > 0 and 0 < k <= kc (candidates)");
    }
    if (dtype != DTYPE_F32 && dtype != DTYPE_F16) {
      throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float16), got " +
                                  std::to_string(dtype));
    }
    for (int64_t i = 0; i < nq * kc; i++) {
      if (labels[i] >= nbase) {
        throw std::out_of_range("label " + std::to_string(labels[i]) + " >= " +
                                std::to_string(nbase) + " base rows");
      }
    }
    const L2Fn l2 = pick_l2();
    const size_t row_bytes = static_cast<size_t>(d) * (dtype == DTYPE_F32 ? 4 : 2);
#pragma omp parallel
    {
      std::vector<float> row(static_cast<size_t>(d));
      std::vector<std::pair<float, int64_t>> cand(static_cast<size_t>(kc));
#pragma omp for schedule(static)
      for (int64_t q = 0; q < nq; q++) {
        const float* x = queries + q * d;
        const int64_t* lab = labels + q * kc;
        size_t nc = 0;
        for (int64_t j = 0; j < kc; j++) {
          // Rows are scattered over the mapped keys: ask for one a few candidates ahead.
          if (j + 8 < kc && lab[j + 8] >= 0) {
            const char* ahead = static_cast<const char*>(base) + lab[j + 8] * row_bytes;
            for (size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(ahead + b);
          }
          int64_t label = lab[j];
          if (label < 0) continue;
          const float* y;
          if (dtype == DTYPE_F32) {
            y = static_cast<const float*>(base) + label * d;
          } else {
            half_to_float(static_cast<const uint16_t*>(base) + label * d, d, row.data());
            y = row.data();
          }
          cand[nc++] = {l2(x, y, d), label};
        }
        const size_t keep = std::min<size_t>(nc, static_cast<size_t>(k));
        std::partial_sort(cand.begin(), cand.begin() + keep, cand.begin() + nc);
        for (int64_t j = 0; j < k; j++) {
          bool has = static_cast<size_t>(j) < keep;
          out_labels[q * k + j] = has ? cand[j].second : -1;
          out_distances[q * k + j] = has ? cand[j].first : std::numeric_limits<float>::infinity();
        }
      }
    }
  });
}


// Search of a plain IndexIVFPQ (L2, residual codes of 8 bits, precomputed tables: what the
// toolkit builds) that returns what IndexIVF::search returns, computed more cheaply for large k:
// each code's distance is FAISS's own sum, term for term and in the same float order
// (dis0 + Σ_m (precomputed[list][m][c_m] + -2 · <x_m, centroid_m[c_m]>)), but the table terms
// are formed only for the codes a list holds instead of for all 256 entries of every
// sub-quantizer (FAISS's fvec_madd over M · 256 floats per list probed, more than the ~100-200
// codes a list holds), and the k nearest are selected from all candidates at once instead of
// through a k-sized heap. Output as FAISS's: ascending (distance, then id), padded with id -1
// and distance FLT_MAX. Among candidates at exactly the k-th distance the one with the smaller
// id is kept (FAISS keeps the first scanned). Any other index goes through index->search;
// *fast says which path ran.
KNNLM_API int knnlm_ivfpq_search(const void* index, int64_t n, const float* x, int64_t k,
                                 float* distances, int64_t* labels, int32_t* fast, char* err,
                                 size_t errlen) {
  return guarded(err, errlen, [&] {
    const faiss::Index* ix = as_index(index);
    check_rows(n, x);
    if (k <= 0) throw std::invalid_argument("k must be > 0, got " + std::to_string(k));
    if (distances == nullptr || labels == nullptr) throw std::invalid_argument("null output");
    const auto* ivf = dynamic_cast<const faiss::IndexIVFPQ*>(ix);
    const bool eligible = ivf != nullptr && typeid(*ix) == typeid(faiss::IndexIVFPQ) &&
                          ivf->metric_type == faiss::METRIC_L2 && ivf->by_residual &&
                          ivf->pq.nbits == 8 && ivf->use_precomputed_table == 1 &&
                          ivf->polysemous_ht == 0 &&
                          ivf->precomputed_table.size() == ivf->nlist * ivf->pq.M * ivf->pq.ksub;
    if (fast != nullptr) *fast = eligible ? 1 : 0;
    if (!eligible) {
      ix->search(n, x, k, distances, labels);
      return;
    }
    const size_t d = static_cast<size_t>(ivf->d);
    const size_t M = ivf->pq.M;
    const size_t ksub = ivf->pq.ksub;
    const size_t nprobe = std::min(ivf->nlist, ivf->nprobe);
    std::vector<faiss::Index::idx_t> coarse_ids(static_cast<size_t>(n) * nprobe);
    std::vector<float> coarse_dis(static_cast<size_t>(n) * nprobe);
    ivf->quantizer->search(n, x, static_cast<faiss::Index::idx_t>(nprobe), coarse_dis.data(),
                           coarse_ids.data());
    const faiss::InvertedLists* lists = ivf->invlists;
    if (g_own_tables.load() == 0) {
      for (size_t p = 0; p < nprobe; p++) {
        if (coarse_ids[p] >= 0) {
          g_own_tables.store(own_tables_match(*ivf, x, coarse_ids[p]) ? 1 : 2);
          break;
        }
      }
    }
    const bool own = g_own_tables.load() == 1;
    std::mutex mu;
    std::string first_error;
#pragma omp parallel
    {
      std::vector<float> sim2(M * ksub);  // <x_m, centroid_m[c]>, FAISS's init_query_L2
      std::vector<float> table(M * ksub);  // FAISS's sim_table of one list
      std::vector<std::pair<float, faiss::Index::idx_t>> cand;
      const float bf = -2.0f;
      const MaddFn madd = own ? pick_madd() : &madd_faiss;
#pragma omp for schedule(dynamic, 8)
      for (int64_t q = 0; q < n; q++) {
        try {
          if (own) {
            inner_prod_table(ivf->pq, x + q * d, sim2.data());
          } else {
            ivf->pq.compute_inner_prod_table(x + q * d, sim2.data());
          }
          cand.clear();
          for (size_t p = 0; p < nprobe; p++) {
            const faiss::Index::idx_t key = coarse_ids[q * nprobe + p];
            if (key < 0) continue;
            const size_t ls = lists->list_size(key);
            if (ls == 0) continue;
            faiss::InvertedLists::ScopedCodes codes(lists, key);
            faiss::InvertedLists::ScopedIds ids(lists, key);
            const float* pre = ivf->precomputed_table.data() + key * M * ksub;
            const float dis0 = coarse_dis[q * nprobe + p];
            const uint8_t* c = codes.get();
            if (ls >= 32 || !own) {
              // Enough codes to pay for the whole table (vectorised): one lookup per term.
              madd(M * ksub, pre, bf, sim2.data(), table.data());
              for (size_t j = 0; j < ls; j++, c += M) {
                const float* tab = table.data();
                float r = 0;
                for (size_t m = 0; m < M; m++, tab += ksub) r += tab[c[m]];
                cand.emplace_back(dis0 + r, ids.get()[j]);
              }
            } else {
              // A short list: only the table entries its codes use, each rounded as above.
              for (size_t j = 0; j < ls; j++, c += M) {
                float r = 0;
                for (size_t m = 0; m < M; m++) {
                  const size_t i = m * ksub + c[m];
                  r += madd_term(pre[i], bf, sim2[i]);
                }
                cand.emplace_back(dis0 + r, ids.get()[j]);
              }
            }
          }
          const size_t keep = std::min(cand.size(), static_cast<size_t>(k));
          if (keep < cand.size()) {
            std::nth_element(cand.begin(), cand.begin() + (keep - 1), cand.end());
          }
          std::sort(cand.begin(), cand.begin() + keep);
          float* od = distances + q * k;
          int64_t* ol = labels + q * k;
          for (size_t j = 0; j < static_cast<size_t>(k); j++) {
            const bool has = j < keep;
            od[j] = has ? cand[j].first : std::numeric_limits<float>::max();
            ol[j] = has ? cand[j].second : -1;
          }
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.empty()) first_error = e.what();
        }
      }
    }
    if (!first_error.empty()) throw std::runtime_error(first_error);
  });
}
`;
