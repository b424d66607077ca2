/**
 * C++ source of the FAISS shim: a C ABI over the FAISS C++ API for `Deno.dlopen`.
 *
 * This module is the source of truth (there is no committed `.cpp`): `build.ts` writes it next to
 * the compiled library in the cache, so a URL import or a `deno compile`d CLI can still build it.
 *
 * ABI rules, relied on by `ffi.ts` and `faiss_index.ts`:
 * - every fallible function returns an `int` status and fills the caller's `err` buffer (`errlen`
 *   bytes) with `path NUL message NUL` (path empty when no file is concerned). Statuses: 0 ok,
 *   1 FAISS/C++ error, 2 a file's contents are inconsistent (corrupt), 3 interrupted through the
 *   caller's cancel flag, 4 indexes that must share a training do not, 1000 + errno for an OS
 *   error on a file. No thread-local last-error: nonblocking calls run on Deno's worker threads.
 *   C++ exceptions never cross the boundary.
 * - vectors are `n` rows of `d` values, `dtype` 0 = float32 (used in place) or 1 = IEEE float16
 *   (raw bits, converted to float32 in slices of `KNNLM_CHUNK_ROWS` rows, never as a whole copy,
 *   except for `train`, which FAISS needs as one matrix).
 * - `cancel` points at an int32 the caller sets to non-zero to stop a long call (train, add,
 *   merge) at FAISS's next interrupt check; null means "cannot be cancelled".
 * - indexes are `faiss::Index*`, owned by the caller until `knnlm_index_free`.
 * - FAISS prints nothing through the shim: on-disk inverted lists are grown, read and merged by
 *   the shim itself (FAISS's own code for those prints "resizing …" / "updating ondisk filename"),
 *   and the clustering warning for small training sets is returned to the caller instead.
 *
 * @module
 */

/** Bumped whenever a signature in the ABI changes; `ffi.ts` refuses a library with another one. */
export const SHIM_ABI_VERSION = 4;

/** The C++ source text, compiled by `build.ts` with `g++ -std=c++17 -fopenmp`. */
export const SHIM_SOURCE: string = String
  .raw`// Generated from lib/index/_shim_source.ts (the source of truth); do not edit.
// knnlm FAISS shim: C ABI over the FAISS C++ API, for Deno FFI.
#include <faiss/Clustering.h>
#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/clone_index.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/invlists/InvertedLists.h>
#include <faiss/invlists/InvertedListsIOHook.h>
#include <faiss/invlists/OnDiskInvertedLists.h>
#include <faiss/utils/distances.h>

#include <cxxabi.h>
#include <fcntl.h>
#include <omp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
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

enum Status : int {
  ST_OK = 0,
  ST_NATIVE = 1,
  ST_CORRUPT = 2,
  ST_INTERRUPTED = 3,
  ST_MISMATCH = 4,
  ST_ERRNO = 1000,  // + errno
};

// knnlm_index_read flags (ours, not FAISS's io_flags).
constexpr int32_t READ_MMAP = 1;       // in-memory lists mapped from the index file (read-only)
constexpr int32_t READ_READ_ONLY = 2;  // on-disk lists opened O_RDONLY and mapped PROT_READ

// An error with a status and the file it concerns; everything else thrown is status 1.
struct ShimError : std::runtime_error {
  int status;
  std::string path;
  ShimError(int status, std::string path, const std::string& msg)
      : std::runtime_error(msg), status(status), path(std::move(path)) {}
};

ShimError errno_error(int e, const std::string& path, const std::string& doing) {
  return ShimError(ST_ERRNO + e, path, path + ": " + doing + ": " + std::strerror(e));
}

// 0 = leave OpenMP's default (OMP_NUM_THREADS or all cores). OpenMP's thread count is a
// per-thread setting, and nonblocking calls run on other threads than the caller's, so every
// entry point re-applies the process-wide choice on the thread it runs on.
std::atomic<int32_t> g_num_threads{0};

void apply_num_threads() {
  int32_t n = g_num_threads.load(std::memory_order_relaxed);
  if (n > 0) omp_set_num_threads(n);
}

// The cancel flag of the call running on this thread. FAISS polls InterruptCallback from the
// thread that runs k-means (and add_core_o), which is the thread that entered the shim; OpenMP
// workers see null and never interrupt.
thread_local const int32_t* tl_cancel = nullptr;
// Whether the flag was set when the last CancelScope on this thread ended: the scope is gone by
// the time guarded() catches FAISS's "computation interrupted".
thread_local bool tl_interrupted = false;

bool cancel_requested() {
  return tl_cancel != nullptr && __atomic_load_n(tl_cancel, __ATOMIC_RELAXED) != 0;
}

struct CancelFlagCallback : faiss::InterruptCallback {
  bool want_interrupt() override { return cancel_requested(); }
};

// Installs the callback once per process (FAISS has one global instance); it answers for
// whichever thread asks, so concurrent calls on other indexes are not affected.
struct CancelScope {
  explicit CancelScope(const int32_t* flag) {
    static std::once_flag once;
    if (flag != nullptr) {
      std::call_once(once, [] { faiss::InterruptCallback::instance.reset(new CancelFlagCallback()); });
    }
    tl_cancel = flag;
  }
  ~CancelScope() {
    if (cancel_requested()) tl_interrupted = true;
    tl_cancel = nullptr;
  }
  void check() const {
    if (cancel_requested()) throw ShimError(ST_INTERRUPTED, "", "interrupted");
  }
};

// err = path NUL message NUL, truncated to errlen.
void write_err(char* err, size_t errlen, const std::string& path, const std::string& msg) {
  if (err == nullptr || errlen < 2) return;
  size_t p = std::min(path.size(), errlen - 2);
  std::memcpy(err, path.data(), p);
  err[p] = '\0';
  size_t m = std::min(msg.size(), errlen - p - 2);
  std::memcpy(err + p + 1, msg.data(), m);
  err[p + 1 + m] = '\0';
}

// Runs fn and turns every exception into a status plus a message in err.
template <class Fn>
int guarded(char* err, size_t errlen, Fn&& fn) {
  if (err != nullptr && errlen > 1) err[0] = err[1] = '\0';
  tl_interrupted = false;
  try {
    apply_num_threads();
    fn();
    return ST_OK;
  } catch (const ShimError& e) {
    write_err(err, errlen, e.path, e.what());
    return e.status;
  } catch (const faiss::FaissException& e) {
    // FAISS's InterruptCallback::check throws "computation interrupted".
    if (tl_interrupted || cancel_requested()) {
      write_err(err, errlen, "", "interrupted");
      return ST_INTERRUPTED;
    }
    write_err(err, errlen, "", e.what());
  } catch (const std::bad_alloc&) {
    write_err(err, errlen, "", "out of memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    write_err(err, errlen, "", e.what());
  } catch (...) {
    write_err(err, errlen, "", "unknown C++ exception");
  }
  return ST_NATIVE;
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

void check_dtype(int32_t dtype) {
  if (dtype != DTYPE_F32 && dtype != DTYPE_F16) {
    throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float16), got " +
                                std::to_string(dtype));
  }
}

void check_rows(int64_t n, const void* x) {
  if (n <= 0) throw std::invalid_argument("number of vectors must be > 0, got " + std::to_string(n));
  if (x == nullptr) throw std::invalid_argument("null vector pointer");
}

// Calls fn(rows, float32 rows, first row) over x in slices of at most KNNLM_CHUNK_ROWS rows:
// float16 is converted per slice, so the copy stays small; float32 is used in place, in one
// slice unless slice_f32 (add slices it, so that a cancel request is seen between slices).
template <class Fn>
void for_each_slice(const void* x, int32_t dtype, int64_t n, int64_t d, bool slice_f32, Fn&& fn) {
  check_dtype(dtype);
  if (dtype == DTYPE_F32) {
    const float* f = static_cast<const float*>(x);
    const int64_t step = slice_f32 ? KNNLM_CHUNK_ROWS : n;
    for (int64_t i0 = 0; i0 < n; i0 += step) fn(std::min(step, n - i0), f + i0 * d, i0);
    return;
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

std::string demangle(const char* name) {
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = (status == 0 && out != nullptr) ? out : name;
  std::free(out);
  return s;
}

std::string type_name(const faiss::Index* ix) { return demangle(typeid(*ix).name()); }

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

// An IVF index reached through IndexPreTransform wrappers only (outermost first in chain): the
// shapes whose vectors the shim can add to on-disk lists and merge, since their ids and ntotal
// live in the IVF index itself.
struct PlainIvf {
  faiss::IndexIVF* ivf = nullptr;
  std::vector<faiss::IndexPreTransform*> chain;
};

PlainIvf plain_ivf(faiss::Index* ix) {
  PlainIvf p;
  for (int depth = 0; ix != nullptr && depth < 16; depth++) {
    if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(ix)) {
      p.ivf = ivf;
      return p;
    }
    auto* pt = dynamic_cast<faiss::IndexPreTransform*>(ix);
    if (pt == nullptr) break;
    p.chain.push_back(pt);
    ix = pt->index;
  }
  p.chain.clear();
  return p;
}

void propagate_ntotal(const PlainIvf& p) {
  for (auto* pt : p.chain) pt->ntotal = p.ivf->ntotal;
}

faiss::OnDiskInvertedLists* ondisk_of(faiss::Index* ix) {
  faiss::IndexIVF* ivf = find_ivf(ix);
  return ivf == nullptr ? nullptr : dynamic_cast<faiss::OnDiskInvertedLists*>(ivf->invlists);
}

// ---- On-disk inverted lists ------------------------------------------------------------------
// faiss.ivfdata holds, for each list, codes[capacity * code_size] then ids[capacity], at the
// list's offset. FAISS grows it with truncate() (a sparse file: a full disk then kills the
// process with SIGBUS on the first write through the mapping) and prints each resize; the shim
// reserves real blocks with posix_fallocate before FAISS writes and maps the file itself.

constexpr size_t INVALID_OFFSET = static_cast<size_t>(-1);

size_t entry_bytes(const faiss::OnDiskInvertedLists* od) {
  return od->code_size + sizeof(faiss::Index::idx_t);
}

// Bytes of faiss.ivfdata that the lists occupy (the end of the furthest list).
size_t lists_end(const faiss::OnDiskInvertedLists* od) {
  size_t end = 0;
  for (const auto& l : od->lists) {
    if (l.offset == INVALID_OFFSET || l.capacity == 0) continue;
    end = std::max(end, l.offset + l.capacity * entry_bytes(od));
  }
  return end;
}

void map_file(faiss::OnDiskInvertedLists* od, int fd, size_t length, bool read_only) {
  void* p = mmap(nullptr, length, read_only ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                 0);
  if (p == MAP_FAILED) throw errno_error(errno, od->filename, "cannot map " + std::to_string(length) + " bytes");
  if (od->ptr != nullptr) munmap(od->ptr, od->totsize);
  od->ptr = static_cast<uint8_t*>(p);
  od->totsize = length;
}

// Grows faiss.ivfdata to new_size bytes of reserved blocks (the new bytes become one free slot
// at the end, as in FAISS's update_totsize) and remaps it. On failure the file and the lists
// are as before.
void grow_ondisk(faiss::OnDiskInvertedLists* od, size_t new_size) {
  if (od->read_only) throw std::invalid_argument(od->filename + ": inverted lists are read-only");
  const size_t old_size = od->totsize;
  if (new_size <= old_size) return;
  int flags = O_RDWR | O_CREAT | O_CLOEXEC | (old_size == 0 ? O_TRUNC : 0);
  int fd = open(od->filename.c_str(), flags, 0644);
  if (fd < 0) throw errno_error(errno, od->filename, "cannot open for writing");
  int r = posix_fallocate(fd, static_cast<off_t>(old_size), static_cast<off_t>(new_size - old_size));
  if (r != 0) {
    if (ftruncate(fd, static_cast<off_t>(old_size)) != 0) { /* keep the first error */ }
    close(fd);
    throw errno_error(r, od->filename,
                      "cannot reserve " + std::to_string(new_size - old_size) +
                          " more bytes (to " + std::to_string(new_size) + ")");
  }
  try {
    map_file(od, fd, new_size, false);
  } catch (...) {
    close(fd);
    throw;
  }
  close(fd);
  auto& slots = od->slots;
  if (!slots.empty() && slots.back().offset + slots.back().capacity == old_size) {
    slots.back().capacity += new_size - old_size;
  } else {
    slots.push_back(faiss::OnDiskInvertedLists::Slot(old_size, new_size - old_size));
  }
}

// Appends n encoded vectors to on-disk lists without letting FAISS grow the file: first the
// space every list will take (FAISS's own resize rule: a power-of-two capacity, reallocated
// unless size <= capacity and size > capacity / 2) is reserved at the end of the file, so the
// slot allocator always finds room and never calls its own (printing, sparse) resize.
void ondisk_add(const PlainIvf& p, int64_t n, const float* x, const int64_t* xids) {
  faiss::IndexIVF* ivf = p.ivf;
  auto* od = dynamic_cast<faiss::OnDiskInvertedLists*>(ivf->invlists);
  if (od->read_only) throw std::invalid_argument(od->filename + ": inverted lists are read-only");
  if (!ivf->is_trained) throw std::invalid_argument("the index is not trained");
  if (ivf->direct_map.type != faiss::DirectMap::NoMap) {
    throw std::invalid_argument("adding to on-disk lists with a direct map is not supported");
  }
  std::unique_ptr<const float[]> del;
  const float* xt = x;
  for (auto* pt : p.chain) {
    const float* y = pt->apply_chain(n, xt);
    if (y != xt) {
      del.reset(y);
      xt = y;
    }
  }
  const size_t cs = ivf->code_size;
  std::vector<faiss::Index::idx_t> assign(static_cast<size_t>(n));
  ivf->quantizer->assign(n, xt, assign.data());
  std::vector<uint8_t> codes(static_cast<size_t>(n) * cs);
  ivf->encode_vectors(n, xt, assign.data(), codes.data(), false);
  del.reset();

  // Counting sort by list, stable, so each list receives its rows in input order (as FAISS's
  // add does).
  const size_t nlist = ivf->nlist;
  std::vector<size_t> start(nlist + 1, 0);
  for (int64_t i = 0; i < n; i++) {
    if (assign[i] >= 0) start[assign[i] + 1]++;
  }
  for (size_t j = 0; j < nlist; j++) start[j + 1] += start[j];
  const size_t placed = start[nlist];
  std::vector<faiss::Index::idx_t> ids(placed);
  std::vector<uint8_t> sorted(placed * cs);
  {
    std::vector<size_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; i++) {
      if (assign[i] < 0) continue;  // FAISS skips vectors it cannot assign (e.g. NaN)
      size_t at = fill[assign[i]]++;
      ids[at] = xids ? xids[i] : ivf->ntotal + i;
      std::memcpy(&sorted[at * cs], &codes[static_cast<size_t>(i) * cs], cs);
    }
  }

  size_t need = 0;
  for (size_t j = 0; j < nlist; j++) {
    size_t add = start[j + 1] - start[j];
    if (add == 0) continue;
    const auto& l = od->lists[j];
    size_t ns = l.size + add;
    if (ns <= l.capacity && ns > l.capacity / 2) continue;
    size_t cap = 1;
    while (cap < ns) cap *= 2;
    need += cap * entry_bytes(od);
  }
  size_t tail = 0;
  if (!od->slots.empty() && od->slots.back().offset + od->slots.back().capacity == od->totsize) {
    tail = od->slots.back().capacity;
  }
  if (need > tail) {
    const size_t page = 4096;
    grow_ondisk(od, od->totsize + (need - tail + page - 1) / page * page);
  }
  for (size_t j = 0; j < nlist; j++) {
    size_t add = start[j + 1] - start[j];
    if (add > 0) od->add_entries(j, add, &ids[start[j]], &sorted[start[j] * cs]);
  }
  ivf->ntotal += n;
  propagate_ntotal(p);
}

// Points the on-disk lists of a freshly read index (read with IO_FLAG_SKIP_IVF_DATA, so FAISS
// mapped nothing) at faiss.ivfdata beside the index file, checks that the file holds every
// list, and maps it: read-only (O_RDONLY, PROT_READ) when asked, so a datastore that the user
// can read but not write can be searched.
void attach_ondisk(faiss::Index* ix, const std::string& index_path, bool read_only) {
  faiss::OnDiskInvertedLists* od = ondisk_of(ix);
  if (od == nullptr || od->ptr != nullptr) return;
  std::string dir = ".";
  size_t slash = index_path.find_last_of('/');
  if (slash != std::string::npos) dir = slash == 0 ? "/" : index_path.substr(0, slash);
  if (char* real = realpath(dir.c_str(), nullptr)) {
    dir = real;
    std::free(real);
  }
  std::string base = od->filename;
  slash = base.find_last_of('/');
  if (slash != std::string::npos) base = base.substr(slash + 1);
  od->filename = (dir == "/" ? "" : dir) + "/" + base;
  od->read_only = read_only;

  const size_t eb = entry_bytes(od);
  for (size_t j = 0; j < od->lists.size(); j++) {
    const auto& l = od->lists[j];
    if (l.size > l.capacity || (l.capacity > 0 && l.offset == INVALID_OFFSET) ||
        (l.capacity > 0 && (l.offset > SIZE_MAX / 2 || l.capacity > SIZE_MAX / 2 / eb))) {
      throw ShimError(ST_CORRUPT, index_path,
                      index_path + ": inverted list " + std::to_string(j) + " has size " +
                          std::to_string(l.size) + ", capacity " + std::to_string(l.capacity) +
                          ", offset " + std::to_string(l.offset) + " (damaged index file)");
    }
  }
  const size_t end = lists_end(od);
  if (end > od->totsize) {
    throw ShimError(ST_CORRUPT, index_path,
                    index_path + ": inverted lists end at byte " + std::to_string(end) +
                        ", past the recorded size of " + od->filename + " (" +
                        std::to_string(od->totsize) + " bytes; damaged index file)");
  }
  if (od->totsize == 0) return;  // nothing stored: no file needed until the first add
  int fd = open(od->filename.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) {
    throw errno_error(errno, od->filename,
                      read_only ? "cannot open for reading" : "cannot open for reading and writing");
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    throw errno_error(e, od->filename, "cannot stat");
  }
  // A writer may touch any byte up to totsize (free slots); a reader only the lists.
  const size_t needed = read_only ? end : od->totsize;
  const size_t found = static_cast<size_t>(st.st_size);
  if (found < needed) {
    close(fd);
    throw ShimError(ST_CORRUPT, od->filename,
                    od->filename + ": " + std::to_string(found) + " bytes, but " + index_path +
                        " needs " + std::to_string(needed) +
                        " (truncated, or not the file this index was written with)");
  }
  od->ptr = nullptr;
  const size_t length = od->totsize;
  od->totsize = 0;  // map_file sets it once the mapping exists
  try {
    map_file(od, fd, length, read_only);
  } catch (...) {
    od->totsize = length;
    close(fd);
    throw;
  }
  close(fd);
}

// Reads in-memory ("ilar") inverted lists in full. Registered as the hook for the io_flags tag
// "ilkn", so that one read_index call with IO_FLAG_SKIP_IVF_DATA leaves on-disk lists unmapped
// (attach_ondisk maps them) while in-memory lists are still read as FAISS reads them.
struct ArrayListsReader : faiss::InvertedListsIOHook {
  ArrayListsReader() : faiss::InvertedListsIOHook("ilkn", "knnlm::ArrayListsReader") {}
  void write(const faiss::InvertedLists*, faiss::IOWriter*) const override {
    throw std::logic_error("knnlm::ArrayListsReader only reads");
  }
  faiss::InvertedLists* read(faiss::IOReader*, int) const override {
    throw std::logic_error("knnlm::ArrayListsReader only reads in-memory lists");
  }
  faiss::InvertedLists* read_ArrayInvertedLists(faiss::IOReader* f, int, size_t nlist,
                                                size_t code_size,
                                                const std::vector<size_t>& sizes) const override {
    std::unique_ptr<faiss::ArrayInvertedLists> ails(
        new faiss::ArrayInvertedLists(nlist, code_size));
    for (size_t i = 0; i < nlist; i++) {
      size_t n = sizes[i];
      if (n == 0) continue;
      ails->codes[i].resize(n * code_size);
      ails->ids[i].resize(n);
      if ((*f)(ails->codes[i].data(), 1, n * code_size) != n * code_size ||
          (*f)(ails->ids[i].data(), sizeof(faiss::Index::idx_t), n) != n) {
        throw std::runtime_error("unexpected end of file in inverted list " + std::to_string(i));
      }
    }
    return ails.release();
  }
};

// FAISS io_flags: skip IVF data, and route "ilar" lists through ArrayListsReader ("ilkn").
int ondisk_aware_flags() {
  static std::once_flag once;
  std::call_once(once, [] { faiss::InvertedListsIOHook::add_callback(new ArrayListsReader()); });
  const uint32_t tag = static_cast<uint32_t>('k') << 16 | static_cast<uint32_t>('n') << 24;
  return static_cast<int>(tag) | faiss::IO_FLAG_SKIP_IVF_DATA;
}

// ---- Training ----------------------------------------------------------------------------------
// FAISS's k-means prints "WARNING clustering N points to K centroids" to stderr (once per PQ
// sub-quantizer: 64 lines for PQ64). The shim decides the same condition, returns one line per
// clustering to the caller and turns FAISS's check off for the call.
struct QuietClustering {
  struct Saved {
    faiss::ClusteringParameters* cp;
    int min_points;
  };
  std::vector<Saved> saved;
  std::string warnings;

  void watch(faiss::ClusteringParameters& cp, int64_t n, size_t k, const std::string& what) {
    const int64_t want = static_cast<int64_t>(k) * cp.min_points_per_centroid;
    if (cp.min_points_per_centroid > 0 && n < want && n >= static_cast<int64_t>(k)) {
      if (!warnings.empty()) warnings += '\n';
      warnings += what + ": " + std::to_string(n) + " training vectors for " + std::to_string(k) +
                  " centroids; FAISS recommends at least " + std::to_string(want) +
                  " (" + std::to_string(cp.min_points_per_centroid) + " per centroid)";
    }
    saved.push_back({&cp, cp.min_points_per_centroid});
    cp.min_points_per_centroid = 0;
  }

  QuietClustering(faiss::Index* ix, int64_t n) {
    for (int depth = 0; ix != nullptr && depth < 16; depth++) {
      if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(ix)) {
        bool q_trained = ivf->quantizer->is_trained && ivf->quantizer->ntotal == (faiss::Index::idx_t)ivf->nlist;
        if (!q_trained && ivf->quantizer_trains_alone != 1) {
          watch(ivf->cp, n, ivf->nlist, "coarse quantizer (nlist " + std::to_string(ivf->nlist) + ")");
        }
        if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(ivf)) {
          watch(ivfpq->pq.cp, n, ivfpq->pq.ksub,
                "PQ codebooks (" + std::to_string(ivfpq->pq.M) + " × " +
                    std::to_string(ivfpq->pq.ksub) + " centroids)");
        }
        return;
      }
      if (auto* pq = dynamic_cast<faiss::IndexPQ*>(ix)) {
        watch(pq->pq.cp, n, pq->pq.ksub,
              "PQ codebooks (" + std::to_string(pq->pq.M) + " × " + std::to_string(pq->pq.ksub) +
                  " centroids)");
        return;
      }
      if (auto* pt = dynamic_cast<faiss::IndexPreTransform*>(ix)) {
        ix = pt->index;
      } else if (auto* idmap = dynamic_cast<faiss::IndexIDMap*>(ix)) {
        ix = idmap->index;
      } else if (auto* refine = dynamic_cast<faiss::IndexRefine*>(ix)) {
        ix = refine->base_index;
      } else {
        return;
      }
    }
  }

  ~QuietClustering() {
    for (auto& s : saved) s.cp->min_points_per_centroid = s.min_points;
  }
};

// After a failed or interrupted train, FAISS may have left k-means centroids in the coarse
// quantizer; a later train would then skip quantizer training ("does not need training").
void forget_partial_training(faiss::Index* ix) {
  faiss::IndexIVF* ivf = find_ivf(ix);
  if (ivf != nullptr && !ivf->is_trained && ivf->quantizer_trains_alone != 1) {
    ivf->quantizer->reset();
  }
}

// ---- Sharing one training ----------------------------------------------------------------------
// Shards merged into one index must have been filled from clones of one trained index.
void check_same_training(const faiss::IndexIVF* a, const faiss::IndexIVF* b, int shard) {
  std::string why;
  if (a->d != b->d) {
    why = "dimension " + std::to_string(b->d) + " vs " + std::to_string(a->d);
  } else if (a->nlist != b->nlist) {
    why = "nlist " + std::to_string(b->nlist) + " vs " + std::to_string(a->nlist);
  } else if (a->code_size != b->code_size) {
    why = "code size " + std::to_string(b->code_size) + " vs " + std::to_string(a->code_size);
  } else if (a->metric_type != b->metric_type) {
    why = "another metric";
  } else if (!b->is_trained) {
    why = "the shard is not trained";
  } else {
    auto* qa = dynamic_cast<const faiss::IndexFlatCodes*>(a->quantizer);
    auto* qb = dynamic_cast<const faiss::IndexFlatCodes*>(b->quantizer);
    auto* pa = dynamic_cast<const faiss::IndexIVFPQ*>(a);
    auto* pb = dynamic_cast<const faiss::IndexIVFPQ*>(b);
    if (qa != nullptr && qb != nullptr && qa->codes != qb->codes) {
      why = "other coarse centroids";
    } else if (pa != nullptr && pb != nullptr && pa->pq.centroids != pb->pq.centroids) {
      why = "other PQ codebooks";
    } else if ((pa == nullptr) != (pb == nullptr)) {
      why = "another index type";
    }
  }
  if (!why.empty()) {
    throw ShimError(ST_MISMATCH, "",
                    "shard " + std::to_string(shard) + " does not share the trained index's " +
                        "training (" + why + ")");
  }
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

// flags: 1 = map in-memory lists from the index file (FAISS's IO_FLAG_MMAP; read-only),
// 2 = open on-disk lists read-only. On-disk lists are always looked up beside the index file
// (FAISS's IO_FLAG_ONDISK_SAME_DIR, without its print) and checked against the file's size.
KNNLM_API int knnlm_index_read(const char* path, int32_t flags, void** out, char* err,
                               size_t errlen) {
  return guarded(err, errlen, [&] {
    if (path == nullptr) throw std::invalid_argument("null path");
    const bool read_only = (flags & (READ_MMAP | READ_READ_ONLY)) != 0;
    int io_flags = (flags & READ_MMAP) ? faiss::IO_FLAG_MMAP : ondisk_aware_flags();
    if (read_only) io_flags |= faiss::IO_FLAG_READ_ONLY;
    FILE* f = std::fopen(path, "rbe");
    if (f == nullptr) throw errno_error(errno, path, "cannot open for reading");
    std::unique_ptr<faiss::Index> ix;
    try {
      ix.reset(faiss::read_index(f, io_flags));
    } catch (const std::exception& e) {
      bool io_error = std::ferror(f) != 0;
      int saved = errno;
      std::fclose(f);
      if (io_error && saved != 0) throw errno_error(saved, path, "cannot read");
      throw ShimError(ST_CORRUPT, path,
                      std::string(path) + ": not a complete FAISS index file (" + e.what() + ")");
    }
    std::fclose(f);
    attach_ondisk(ix.get(), path, read_only);
    *out = ix.release();
  });
}

// Writes with FAISS's writer into a file the shim opens, so that errno reaches the caller (a
// full disk is ENOSPC naming the file, also when it only shows at fflush/fsync/fclose). Mapped
// on-disk lists are flushed first: the index file must never describe lists not yet on disk.
KNNLM_API int knnlm_index_write(const void* index, const char* path, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (path == nullptr) throw std::invalid_argument("null path");
    const faiss::Index* ix = as_index(index);
    faiss::OnDiskInvertedLists* od = ondisk_of(const_cast<faiss::Index*>(ix));
    if (od != nullptr && od->ptr != nullptr && !od->read_only &&
        msync(od->ptr, od->totsize, MS_SYNC) != 0) {
      throw errno_error(errno, od->filename, "cannot flush to disk");
    }
    FILE* f = std::fopen(path, "wbe");
    if (f == nullptr) throw errno_error(errno, path, "cannot create");
    try {
      faiss::write_index(ix, f);
    } catch (const std::exception&) {
      bool io_error = std::ferror(f) != 0;
      int saved = errno;
      std::fclose(f);
      if (io_error && saved != 0) throw errno_error(saved, path, "cannot write");
      throw;
    }
    if (std::fflush(f) != 0 || fsync(fileno(f)) != 0) {
      int saved = errno;
      std::fclose(f);
      throw errno_error(saved, path, "cannot write");
    }
    if (std::fclose(f) != 0) throw errno_error(errno, path, "cannot write");
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

// Demangled C++ class name of the index, e.g. "faiss::IndexIVFPQ", into buf (NUL-terminated).
KNNLM_API int knnlm_index_type(const void* index, char* buf, size_t buflen, char* err,
                               size_t errlen) {
  return guarded(err, errlen, [&] {
    std::string name = type_name(as_index(index));
    if (buf == nullptr || buflen == 0) return;
    std::snprintf(buf, buflen, "%s", name.c_str());
  });
}

// x: [n, d] in dtype. FAISS trains on one matrix, so float16 input is converted whole here.
// warnings (NUL-terminated, lines separated by '\n') receives FAISS's clustering warnings.
// Defined in the speed block below: FAISS's IndexIVFPQ training with the PQ sub-quantizers
// trained in parallel; false (nothing done) for any other index.
bool knnlm_train_ivfpq_parallel(faiss::Index* ix, int64_t n, const float* x,
                                const int32_t* cancel);

// parallel_pq != 0 lets a plain IndexIVFPQ train its PQ sub-quantizers in parallel (the same
// codebooks); *parallel_ran (if not null) says whether that path ran.
KNNLM_API int knnlm_index_train(void* index, int64_t n, const void* x, int32_t dtype,
                                const int32_t* cancel, int32_t parallel_pq,
                                int32_t* parallel_ran, char* warnings, size_t warnlen, char* err,
                                size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::Index* ix = as_index(index);
    check_rows(n, x);
    check_dtype(dtype);
    if (warnings != nullptr && warnlen > 0) warnings[0] = '\0';
    CancelScope scope(cancel);
    scope.check();
    std::vector<float> buf;
    const float* xf = static_cast<const float*>(x);
    if (dtype == DTYPE_F16) {
      buf.resize(static_cast<size_t>(n * ix->d));
      half_to_float(static_cast<const uint16_t*>(x), buf.size(), buf.data());
      xf = buf.data();
    }
    QuietClustering quiet(ix, n);
    if (parallel_ran != nullptr) *parallel_ran = 0;
    try {
      bool done = parallel_pq != 0 && knnlm_train_ivfpq_parallel(ix, n, xf, cancel);
      if (!done) ix->train(n, xf);
      if (parallel_ran != nullptr) *parallel_ran = done ? 1 : 0;
    } catch (...) {
      forget_partial_training(ix);
      throw;
    }
    if (warnings != nullptr && warnlen > 0) {
      std::snprintf(warnings, warnlen, "%s", quiet.warnings.c_str());
    }
  });
}

// x: [n, d] in dtype; ids: [n] int64 or null for sequential ids (ntotal, ntotal + 1, ...).
// Rows go in slices of KNNLM_CHUNK_ROWS; when cancel is set between slices, the call stops
// with status 3 and the slices already added stay (ntotal says how many rows).
KNNLM_API int knnlm_index_add(void* index, int64_t n, const void* x, int32_t dtype,
                              const int64_t* ids, const int32_t* cancel, char* err,
                              size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::Index* ix = as_index(index);
    check_rows(n, x);
    CancelScope scope(cancel);
    PlainIvf plain;
    if (ondisk_of(ix) != nullptr) {
      plain = plain_ivf(ix);
      if (plain.ivf == nullptr) {
        throw std::invalid_argument("adding to on-disk inverted lists inside " + type_name(ix) +
                                    " is not supported (only IVF, optionally under PreTransform)");
      }
    }
    for_each_slice(x, dtype, n, ix->d, true, [&](int64_t m, const float* rows, int64_t i0) {
      scope.check();
      const int64_t* slice_ids = ids == nullptr ? nullptr : ids + i0;
      if (plain.ivf != nullptr) {
        ondisk_add(plain, m, rows, slice_ids);
      } else if (slice_ids == nullptr) {
        ix->add(m, rows);
      } else {
        ix->add_with_ids(m, rows, slice_ids);
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
    for_each_slice(x, dtype, n, ix->d, false, [&](int64_t m, const float* rows, int64_t i0) {
      ix->search(m, rows, k, distances + i0 * k, labels + i0 * k);
    });
  });
}

// Moves an empty IVF index's inverted lists into a memory-mapped file at path, so the codes
// added later live in the page cache, not in anonymous memory. write_index then records the
// file's name; knnlm_index_read finds it in the index file's directory. The file is created by
// the first add.
KNNLM_API int knnlm_index_use_ondisk(void* index, const char* path, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (path == nullptr) throw std::invalid_argument("null path");
    faiss::Index* ix = as_index(index);
    PlainIvf p = plain_ivf(ix);
    if (p.ivf == nullptr) {
      throw std::invalid_argument(
          "on-disk inverted lists apply only to IVF indexes (optionally under PreTransform); "
          "this is " + type_name(ix));
    }
    if (p.ivf->ntotal != 0) {
      throw std::invalid_argument("on-disk inverted lists need an empty index, this one holds " +
                                  std::to_string(p.ivf->ntotal));
    }
    auto* od = new faiss::OnDiskInvertedLists(p.ivf->nlist, p.ivf->code_size, path);
    p.ivf->replace_invlists(od, true);
  });
}

// out[0..3] = has on-disk lists (0/1), bytes the lists occupy (what faiss.ivfdata must hold at
// least), bytes mapped (FAISS's totsize), read-only (0/1); path receives the file's name.
KNNLM_API int knnlm_index_ondisk_info(const void* index, int64_t* out, char* path, size_t pathlen,
                                      char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    const faiss::OnDiskInvertedLists* od = ondisk_of(const_cast<faiss::Index*>(as_index(index)));
    out[0] = od != nullptr ? 1 : 0;
    out[1] = od != nullptr ? static_cast<int64_t>(lists_end(od)) : 0;
    out[2] = od != nullptr ? static_cast<int64_t>(od->totsize) : 0;
    out[3] = od != nullptr && od->read_only ? 1 : 0;
    if (path != nullptr && pathlen > 0) {
      std::snprintf(path, pathlen, "%s", od != nullptr ? od->filename.c_str() : "");
    }
  });
}

// Builds one index from the inverted lists of n_shards IVF indexes filled from clones of
// trained (FAISS's contrib/ondisk.py merge_ondisk): a clone of trained whose lists live in a new
// file at path, each list sized exactly (codes then ids of every shard, in shard order). This is
// OnDiskInvertedLists::merge_from, done here so the file's blocks are reserved up front
// (posix_fallocate) and nothing is printed. On failure the file at path is removed.
KNNLM_API int knnlm_index_merge_ondisk(const void* trained, const void* const* shards,
                                       int32_t n_shards, const char* path, const int32_t* cancel,
                                       void** out, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (path == nullptr || shards == nullptr) throw std::invalid_argument("null argument");
    if (n_shards <= 0) throw std::invalid_argument("no shards to merge");
    CancelScope scope(cancel);
    const faiss::Index* t = as_index(trained);
    PlainIvf tp = plain_ivf(const_cast<faiss::Index*>(t));
    if (tp.ivf == nullptr) {
      throw std::invalid_argument("the trained index must be IVF (optionally under PreTransform); "
                                  "it is " + type_name(t));
    }
    if (!tp.ivf->is_trained) throw std::invalid_argument("the trained index is not trained");
    if (tp.ivf->ntotal != 0) {
      throw std::invalid_argument("the trained index must be empty; it holds " +
                                  std::to_string(tp.ivf->ntotal) + " vectors");
    }
    std::vector<const faiss::InvertedLists*> ils;
    for (int32_t i = 0; i < n_shards; i++) {
      faiss::Index* s = const_cast<faiss::Index*>(as_index(shards[i]));
      PlainIvf sp = plain_ivf(s);
      if (sp.ivf == nullptr) {
        throw std::invalid_argument("shard " + std::to_string(i) + " is " + type_name(s) +
                                    ", not an IVF index");
      }
      check_same_training(tp.ivf, sp.ivf, i);
      ils.push_back(sp.ivf->invlists);
    }
    const size_t nlist = tp.ivf->nlist;
    const size_t cs = tp.ivf->code_size;
    std::vector<size_t> sizes(nlist, 0);
    size_t ntotal = 0;
    for (auto* il : ils) {
      for (size_t j = 0; j < nlist; j++) sizes[j] += il->list_size(j);
    }
    for (size_t j = 0; j < nlist; j++) ntotal += sizes[j];

    std::unique_ptr<faiss::Index> res(faiss::clone_index(t));
    PlainIvf rp = plain_ivf(res.get());
    auto* od = new faiss::OnDiskInvertedLists(nlist, cs, path);
    rp.ivf->replace_invlists(od, true);
    size_t offset = 0;
    for (size_t j = 0; j < nlist; j++) {
      od->lists[j].size = 0;
      od->lists[j].capacity = sizes[j];
      od->lists[j].offset = offset;  // as merge_from: empty lists point at the next list
      offset += sizes[j] * entry_bytes(od);
    }
    const std::string file = path;
    try {
      int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) throw errno_error(errno, file, "cannot create");
      if (offset > 0) {
        int r = posix_fallocate(fd, 0, static_cast<off_t>(offset));
        if (r != 0) {
          close(fd);
          throw errno_error(r, file, "cannot reserve " + std::to_string(offset) + " bytes");
        }
        try {
          map_file(od, fd, offset, false);
        } catch (...) {
          close(fd);
          throw;
        }
      }
      close(fd);
      std::atomic<bool> stop{false};
      const int32_t* flag = cancel;
#pragma omp parallel for schedule(dynamic, 16)
      for (int64_t j = 0; j < static_cast<int64_t>(nlist); j++) {
        if (stop.load(std::memory_order_relaxed)) continue;
        if (flag != nullptr && __atomic_load_n(flag, __ATOMIC_RELAXED) != 0) {
          stop.store(true);
          continue;
        }
        auto& l = od->lists[j];
        for (auto* il : ils) {
          size_t n = il->list_size(j);
          if (n == 0) continue;
          faiss::InvertedLists::ScopedCodes codes(il, j);
          faiss::InvertedLists::ScopedIds ids(il, j);
          l.size += n;
          od->update_entries(j, l.size - n, n, ids.get(), codes.get());
        }
      }
      if (stop.load()) throw ShimError(ST_INTERRUPTED, "", "interrupted");
    } catch (...) {
      unlink(path);
      throw;
    }
    rp.ivf->ntotal = static_cast<faiss::Index::idx_t>(ntotal);
    propagate_ntotal(rp);
    *out = res.release();
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
    check_dtype(dtype);
    for (int64_t i = 0; i < nq * k; i++) {
      if (labels[i] >= nbase) {
        throw std::out_of_range("label " + std::to_string(labels[i]) + " >= " +
                                std::to_string(nbase) + " base rows");
      }
    }
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

// The ids stored in block block_no of index, for checking them: an IVF index (also under
// IndexPreTransform / IndexRefine) has one block per inverted list; an IndexIDMap one block (its
// id map); any other index one block of the sequential ids 0..ntotal-1. *nblocks and *size are
// always set; the ids are copied into out only when cap >= *size (call again with room).
KNNLM_API int knnlm_index_stored_ids(const void* index, int64_t block_no, int64_t* out,
                                     int64_t cap, int64_t* size, int64_t* nblocks, char* err,
                                     size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::Index* ix = const_cast<faiss::Index*>(as_index(index));
    auto in_range = [&](int64_t n) {
      *nblocks = n;
      if (block_no < 0 || block_no >= n) {
        throw std::invalid_argument("block " + std::to_string(block_no) + " of " +
                                    std::to_string(n));
      }
    };
    if (auto* idmap = dynamic_cast<faiss::IndexIDMap*>(ix)) {
      in_range(1);
      *size = static_cast<int64_t>(idmap->id_map.size());
      if (out != nullptr && cap >= *size && *size > 0) {
        std::memcpy(out, idmap->id_map.data(), static_cast<size_t>(*size) * sizeof(int64_t));
      }
      return;
    }
    faiss::IndexIVF* ivf = find_ivf(ix);
    if (ivf == nullptr) {
      in_range(1);
      *size = ix->ntotal;
      if (out != nullptr && cap >= *size) {
        for (int64_t i = 0; i < *size; i++) out[i] = i;
      }
      return;
    }
    in_range(static_cast<int64_t>(ivf->nlist));
    const size_t n = ivf->invlists->list_size(static_cast<size_t>(block_no));
    *size = static_cast<int64_t>(n);
    if (out != nullptr && cap >= *size && n > 0) {
      faiss::InvertedLists::ScopedIds ids(ivf->invlists, static_cast<size_t>(block_no));
      std::memcpy(out, ids.get(), n * sizeof(int64_t));
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
                                  type_name(as_index(index)));
    }
    *out = static_cast<int64_t>(ivf->nprobe);
  });
}

KNNLM_API int knnlm_index_set_nprobe(void* index, int64_t nprobe, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    faiss::IndexIVF* ivf = find_ivf(as_index(index));
    if (ivf == nullptr) {
      throw std::invalid_argument("nprobe applies only to IVF indexes; this index is " +
                                  type_name(as_index(index)));
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
// above depends on it, and it only uses the helpers above (guarded, ShimError, ...).
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
void train_pq_parallel(faiss::ProductQuantizer& pq, size_t n, const float* x,
                       const int32_t* cancel) {
  auto cancelled = [cancel] {
    return cancel != nullptr && __atomic_load_n(cancel, __ATOMIC_RELAXED) != 0;
  };
  const int M = static_cast<int>(pq.M);
  const size_t dsub = pq.dsub;
  const size_t d = pq.d;
  BlasThreadsScope one_blas_thread(1);
  std::mutex mu;
  std::string first_error;
#pragma omp parallel for schedule(dynamic, 1)
  for (int m = 0; m < M; m++) {
    if (cancelled()) continue;  // an interrupt skips the sub-quantizers not yet started
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
  // The calling thread's k-means may also have stopped on FAISS's own interrupt check.
  if (cancelled()) throw ShimError(ST_INTERRUPTED, "", "interrupted");
  if (!first_error.empty()) throw std::runtime_error(first_error);
}

// IndexIVF::train + IndexIVFPQ::train_residual_o of FAISS 1.7.3, step for step, with the PQ
// step replaced by train_pq_parallel. Only for a plain IndexIVFPQ with default PQ training;
// returns false (nothing done) for anything else.
bool train_ivfpq_parallel(faiss::Index* ix, faiss::Index::idx_t n, const float* x,
                          const int32_t* cancel) {
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
  train_pq_parallel(ivf->pq, nt, trainset, cancel);
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
    if (buf != nullptr && buflen > 0) std::snprintf(buf, buflen, "%s", s.c_str());
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

bool knnlm_train_ivfpq_parallel(faiss::Index* ix, int64_t n, const float* x,
                                const int32_t* cancel) {
  return train_ivfpq_parallel(ix, static_cast<faiss::Index::idx_t>(n), x, cancel);
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
