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
`;
