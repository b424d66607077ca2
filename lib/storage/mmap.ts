/**
 * Memory-mapped `.npy` arrays: the datastore's storage layer. Keys and values live in files far
 * larger than RAM; the kernel pages rows in and out, so reading or appending a datastore costs
 * file-backed page cache, not process (anonymous) memory.
 *
 * Stale views: every view handed out is a typed array over one ArrayBuffer that covers the
 * mapped data. `close()` and `resize()` detach that buffer before unmapping, so an old view has
 * length 0 and every typed-array method on it (`set`, `subarray`, `fill`, `slice`, iteration,
 * `new Float32Array(view.buffer)`, `Deno.UnsafePointer.of(view)`) throws a `TypeError`;
 * plain element reads give `undefined` and element writes are dropped. No stale view can reach
 * unmapped memory. Raw pointers from `pointer()` cannot be revoked: consumers must finish
 * (including `nonblocking` FFI calls) before `close()`/`resize()`.
 *
 * @module
 */

import { dirname } from "node:path";
import {
  cPath,
  ENOENT,
  errno,
  type ErrnoError,
  errnoError,
  libc,
  MADV,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  MS_SYNC,
  O_CLOEXEC,
  O_CREAT,
  O_EXCL,
  O_RDONLY,
  O_RDWR,
  pageSize,
  PROT_READ,
  PROT_WRITE,
  SEEK_END,
} from "./_libc.ts";
import {
  checkedDataBytes,
  type DType,
  encodeNpyHeader,
  formatShape,
  isDType,
  itemSize,
  npyHeaderLength,
  parseNpyHeader,
  typedView,
  type ViewOf,
} from "./npy.ts";

/** How a file is opened: `"r"` read-only (copy-on-write pages), `"r+"` read-write. */
export type MapMode = "r" | "r+";

/** Access-pattern hints for {@link MappedArray.advise} (`madvise`). */
export type AdviceHint = "normal" | "sequential" | "random" | "willneed" | "dontneed";

/** Options for {@link MappedArray.create}. */
export interface CreateMappedArrayOptions<D extends DType> {
  /** Element type. */
  dtype: D;
  /** C-order shape, e.g. `[nTokens, dModel]` for keys or `[nTokens]` for values. */
  shape: readonly number[];
  /**
   * Reserve the disk blocks up front with `posix_fallocate`, here and when
   * {@link MappedArray.resize} grows the file (default `false`: the file is sparse and blocks
   * are allocated as rows are written; if the disk fills up while writing through the mapping,
   * the kernel kills the process with SIGBUS). With it, a full disk is an `E_NO_SPACE` error
   * naming the file, thrown by `create`/`resize`, and writes through views cannot fault.
   */
  allocate?: boolean;
}

/** Options for {@link MappedArray.open}. */
export interface OpenMappedArrayOptions<D extends DType> {
  /** `"r"` (default) or `"r+"`; `"r+"` needs write permission on the file. */
  mode?: MapMode;
  /**
   * Accepted dtypes (default: any supported dtype). A file of another dtype is refused with
   * e.g. `keys.npy: expected dtype float32 or float16, found '<i8' (header at byte 10)`.
   */
  dtypes?: readonly D[];
  /**
   * Reserve disk blocks with `posix_fallocate` when {@link MappedArray.resize} grows the file
   * (mode `"r+"`; default `false`). See {@link CreateMappedArrayOptions.allocate}.
   */
  allocate?: boolean;
}

const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

/**
 * A C-order `.npy` file mapped into memory. Rows are the first dimension; a row has
 * {@link MappedArray.rowLength} elements. Create one with {@link MappedArray.create} or
 * {@link MappedArray.open}; release it with `close()` or `using`.
 *
 * ```ts
 * import { MappedArray } from "./mmap.ts";
 * using keys = MappedArray.create("/tmp/keys.npy", { dtype: "<f4", shape: [1000, 16] });
 * keys.view(0, 2).set([1, 2, 3]); // rows [0, 2) as a Float32Array, no copy
 * keys.flush();
 * ```
 */
export class MappedArray<D extends DType = DType> {
  /** The file path as given. */
  readonly path: string;
  /** Element type, as numpy's `descr`. */
  readonly dtype: D;
  /** How the file was opened. */
  readonly mode: MapMode;
  /** NPY format major version of the file's header. */
  readonly version: 1 | 2 | 3;
  /** Byte offset of the first element in the file (the header length). */
  readonly dataOffset: number;
  #shape: readonly number[];
  #fd: number;
  #base: Deno.PointerObject | null;
  #mapBytes: number;
  /** Reserve blocks with posix_fallocate when growing. */
  #allocate: boolean;
  /** One buffer over the data region, shared by all views; detached on close/resize. */
  #buffer: ArrayBuffer | null = null;

  private constructor(init: {
    path: string;
    dtype: D;
    mode: MapMode;
    version: 1 | 2 | 3;
    dataOffset: number;
    shape: readonly number[];
    fd: number;
    base: Deno.PointerObject;
    mapBytes: number;
    allocate: boolean;
  }) {
    this.path = init.path;
    this.dtype = init.dtype;
    this.mode = init.mode;
    this.version = init.version;
    this.dataOffset = init.dataOffset;
    this.#shape = Object.freeze([...init.shape]);
    this.#fd = init.fd;
    this.#base = init.base;
    this.#mapBytes = init.mapBytes;
    this.#allocate = init.allocate;
  }

  /**
   * Create `path` as a zero-filled `.npy` of `dtype` and `shape`, mapped read-write. An
   * existing file there is unlinked first (a new inode, so mappings of the old file stay
   * valid). The file is sized with `ftruncate` (sparse: cheap even for hundreds of GB) and its
   * header is written at once. It is written at `path` itself: callers that need atomic
   * publication create `name.tmp`, `flush()`, `close()`, then rename. The header keeps room for
   * `shape[0]` to grow to 21 digits so {@link MappedArray.resize} can rewrite it in place.
   * Throws naming the file on a bad dtype/shape or a failed system call (e.g. a missing
   * directory).
   */
  static create<D extends DType>(path: string, opts: CreateMappedArrayOptions<D>): MappedArray<D> {
    const { dtype, shape } = opts;
    if (!isDType(dtype)) throw new Error(`${path}: unsupported dtype '${String(dtype)}'`);
    validateShape(path, shape);
    const header = withName(path, () => encodeNpyHeader({ dtype, shape }));
    const dataBytes = withName(path, () => checkedDataBytes(dtype, shape, header.length));
    const total = header.length + dataBytes;
    const c = libc();
    const cpath = cPath(path);
    // Replace rather than truncate: a mapping of the old file (in any process) keeps its inode
    // and stays readable, where truncating it would make its readers fault with SIGBUS.
    if (c.unlink(cpath) !== 0) {
      const code = errno();
      if (code !== ENOENT) throw openError(path, "replace the existing file", code);
    }
    const fd = c.open(cpath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644);
    if (fd < 0) throw openError(path, "create", errno());
    let base: Deno.PointerObject | null = null;
    try {
      if (c.ftruncate(fd, BigInt(total)) !== 0) {
        throw errnoError(`${path}: cannot size to ${total} bytes`, undefined, path);
      }
      if (opts.allocate) allocateRange(path, fd, 0, total);
      base = mapFile(path, fd, total, "shared");
      withBytes(base, header.length, (bytes) => bytes.set(header));
    } catch (err) {
      if (base) c.munmap(base, BigInt(total));
      c.close(fd);
      c.unlink(cpath);
      throw err;
    }
    return new MappedArray<D>({
      path,
      dtype,
      mode: "r+",
      version: header[6] as 1 | 2 | 3,
      dataOffset: header.length,
      shape,
      fd,
      base,
      mapBytes: total,
      allocate: opts.allocate ?? false,
    });
  }

  /**
   * Map an existing `.npy` file. Mode `"r"` (default) maps pages copy-on-write: writes through
   * a view stay private to this process and never reach the file (under strict overcommit,
   * `vm.overcommit_memory=2`, the pages are read-only instead and a write faults).
   * Mode `"r+"` maps the file shared; writes go to the file. The header must describe a
   * supported dtype in C order and match the file size exactly. Throws naming the file and the
   * problem (bad magic, version, dtype, order, shape, size, or the `strerror` of a failed call).
   */
  static open<D extends DType = DType>(
    path: string,
    opts: OpenMappedArrayOptions<D> = {},
  ): MappedArray<D> {
    const mode = opts.mode ?? "r";
    if (mode !== "r" && mode !== "r+") {
      throw new Error(`${path}: mode must be "r" or "r+", got ${JSON.stringify(mode)}`);
    }
    const c = libc();
    const fd = c.open(cPath(path), (mode === "r" ? O_RDONLY : O_RDWR) | O_CLOEXEC, 0);
    if (fd < 0) {
      throw openError(path, mode === "r" ? "open for reading" : "open for reading and writing");
    }
    let base: Deno.PointerObject | null = null;
    let mapBytes = 0;
    try {
      // Read the header with pread before mapping anything: a directory fails here with EISDIR,
      // and a file that is not NPY is reported without being mapped.
      const prefix = readAt(path, fd, 12);
      const size = Number(c.lseek(fd, 0n, SEEK_END));
      if (size < 0) throw errnoError(`${path}: cannot determine the file size`, undefined, path);
      if (!Number.isSafeInteger(size)) throw new Error(`${path}: not a regular file`);
      // Capped: a non-NPY file's "header length" field is garbage and may be gigabytes.
      const headerBytes = Math.min(size, npyHeaderLength(prefix) ?? 12, 1 << 21);
      const head = headerBytes > prefix.length ? readAt(path, fd, headerBytes) : prefix;
      const h = parseNpyHeader(head, { name: path, fileSize: size, dtypes: opts.dtypes });
      mapBytes = size;
      base = mapFile(path, fd, size, mode === "r" ? "private" : "shared");
      return new MappedArray<D>({
        path,
        dtype: h.dtype as D,
        mode,
        version: h.version,
        dataOffset: h.dataOffset,
        shape: h.shape,
        fd,
        base,
        mapBytes,
        allocate: opts.allocate ?? false,
      });
    } catch (err) {
      if (base) c.munmap(base, BigInt(mapBytes));
      c.close(fd);
      throw err;
    }
  }

  /** Array shape (a frozen copy; changes only through {@link MappedArray.resize}). */
  get shape(): readonly number[] {
    return this.#shape;
  }

  /** Number of rows, `shape[0]`. */
  get rows(): number {
    return this.#shape[0];
  }

  /** Elements per row: the product of `shape[1..]` (1 for a 1-D array). */
  get rowLength(): number {
    let n = 1;
    for (let i = 1; i < this.#shape.length; i++) n *= this.#shape[i];
    return n;
  }

  /** Bytes per element. */
  get itemSize(): number {
    return itemSize(this.dtype);
  }

  /** Bytes per row. */
  get rowBytes(): number {
    return this.rowLength * this.itemSize;
  }

  /** Bytes of array data (file size minus header). */
  get byteLength(): number {
    return this.rows * this.rowBytes;
  }

  /** True once {@link MappedArray.close} ran (or a failed resize closed the array). */
  get closed(): boolean {
    return this.#base === null;
  }

  /**
   * A zero-copy typed view of rows `[start, end)` (defaults: all rows), flat in C order:
   * `Float32Array` for `<f4`, `Uint16Array` of raw half bits for `<f2`, `Int32Array`,
   * `BigInt64Array`, `Uint8Array`, `Uint16Array`. The view dies with the mapping: after
   * `close()` or `resize()` it is detached (see the module docs). Throws on a bad range or when
   * closed.
   */
  view(start = 0, end: number = this.rows): ViewOf<D> {
    this.#open("view");
    this.#checkRange("view", start, end);
    const rowLength = this.rowLength;
    return typedView(
      this.dtype,
      this.#dataBuffer(),
      start * rowLength * this.itemSize,
      (end - start) * rowLength,
    );
  }

  /**
   * Raw pointer to row `startRow` (default 0; `rows` gives the end pointer) for FFI consumers
   * such as the FAISS binding. Unlike views it cannot be revoked: do not use it after
   * `close()`/`resize()`, and do not close while a `nonblocking` call still reads it.
   */
  pointer(startRow = 0): Deno.PointerObject {
    this.#open("pointer");
    this.#checkRange("pointer", startRow, this.rows);
    const p = Deno.UnsafePointer.offset(this.#base!, this.dataOffset + startRow * this.rowBytes);
    if (!p) throw new Error(`${this.path}: null pointer for row ${startRow}`);
    return p;
  }

  /**
   * Write dirty pages to disk and wait (`msync(MS_SYNC)`): the whole file including the header
   * by default, or the pages holding rows `[start, end)`. Needs mode `"r+"`. `close()` does not
   * flush; call this before renaming a finished `name.tmp` into place.
   */
  flush(start?: number, end?: number): void {
    this.#open("flush");
    if (this.mode !== "r+") {
      throw new Error(`${this.path}: cannot flush: opened read-only (mode "r"), nothing to write`);
    }
    const [from, to] = this.#byteRange("flush", start, end);
    if (to === from) return;
    const [p, len] = this.#pages(from, to);
    if (libc().msync(p, BigInt(len), MS_SYNC) !== 0) {
      throw errnoError(
        `${this.path}: msync of bytes [${from}, ${to}) failed`,
        undefined,
        this.path,
      );
    }
  }

  /**
   * Tell the kernel how rows will be accessed (`madvise`), for the whole file or rows
   * `[start, end)`: `"sequential"` for a read scan (not for writing a fresh file: on Linux it
   * makes write faults far slower), `"random"` for kNN lookups, `"willneed"` to
   * prefetch, `"dontneed"` to drop pages already written back or flushed (keeps resident memory
   * bounded while appending; in mode `"r"` it also discards private copy-on-write changes).
   */
  advise(hint: AdviceHint, start?: number, end?: number): void {
    this.#open("advise");
    if (!Object.hasOwn(MADV, hint)) {
      throw new Error(
        `${this.path}: unknown advice ${JSON.stringify(hint)} ` +
          `(expected ${Object.keys(MADV).join(", ")})`,
      );
    }
    const [from, to] = this.#byteRange("advise", start, end);
    if (to === from) return;
    const [p, len] = this.#pages(from, to);
    if (libc().madvise(p, BigInt(len), MADV[hint]) !== 0) {
      throw errnoError(`${this.path}: madvise(${hint}) failed`, undefined, this.path);
    }
  }

  /**
   * Change `shape[0]` to `rows` in place, e.g. to append to a datastore when resuming: existing
   * rows are kept, new rows read as zero (sparse), rows past the new end are cut off. Rewrites
   * the header within its existing length (a file whose header has no room for the longer shape
   * is refused), resizes the file with `ftruncate` and remaps it. Every earlier view is detached
   * and earlier pointers become invalid. Needs mode `"r+"`. Do not shrink a file that another
   * process has mapped: its reads past the new end would fault (SIGBUS).
   */
  resize(rows: number): void {
    this.#open("resize");
    if (this.mode !== "r+") throw new Error(`${this.path}: cannot resize: opened read-only`);
    if (!Number.isSafeInteger(rows) || rows < 0) {
      throw new Error(`${this.path}: cannot resize to ${rows} rows: not a non-negative integer`);
    }
    const shape = [rows, ...this.#shape.slice(1)];
    const dataBytes = withName(
      this.path,
      () => checkedDataBytes(this.dtype, shape, this.dataOffset),
    );
    const header = withName(this.path, () => {
      try {
        return encodeNpyHeader({
          dtype: this.dtype,
          shape,
          version: this.version,
          headerLength: this.dataOffset,
        });
      } catch (err) {
        throw new Error(`cannot resize in place: ${(err as Error).message}`);
      }
    });
    if (rows === this.rows) return;
    const c = libc();
    const oldBytes = this.#mapBytes;
    const newBytes = this.dataOffset + dataBytes;
    // Grow the file before the header claims the rows; shrink it only after.
    if (newBytes > oldBytes) {
      // Reserve first: a full disk fails here, before the file or its header changed.
      if (this.#allocate) allocateRange(this.path, this.#fd, oldBytes, newBytes - oldBytes);
      if (c.ftruncate(this.#fd, BigInt(newBytes)) !== 0) {
        throw errnoError(`${this.path}: cannot grow to ${newBytes} bytes`, undefined, this.path);
      }
    }
    this.#invalidate();
    const base = this.#base!;
    withBytes(base, header.length, (b) => b.set(header));
    const [hp, hlen] = this.#pages(0, header.length);
    const synced = c.msync(hp, BigInt(hlen), MS_SYNC) === 0 ? 0 : errno();
    c.munmap(base, BigInt(oldBytes));
    this.#base = null;
    const fail = (err: Error): never => {
      c.close(this.#fd);
      this.#fd = -1;
      throw err;
    };
    if (synced) fail(errnoError(`${this.path}: msync of the new header failed`, synced, this.path));
    if (newBytes < oldBytes && c.ftruncate(this.#fd, BigInt(newBytes)) !== 0) {
      fail(errnoError(`${this.path}: cannot shrink to ${newBytes} bytes`, undefined, this.path));
    }
    try {
      this.#base = mapFile(this.path, this.#fd, newBytes, "shared");
    } catch (err) {
      fail(err as Error);
    }
    this.#mapBytes = newBytes;
    this.#shape = Object.freeze(shape);
  }

  /**
   * Unmap the file and close it; earlier views are detached first. Does not flush (the kernel
   * still writes dirty pages back; call `flush()` for durability). Calling it twice is a no-op;
   * every other method throws afterwards.
   */
  close(): void {
    if (this.#base === null && this.#fd < 0) return;
    this.#invalidate();
    const c = libc();
    let err: Error | undefined;
    if (this.#base !== null && c.munmap(this.#base, BigInt(this.#mapBytes)) !== 0) {
      err = errnoError(`${this.path}: munmap failed`, undefined, this.path);
    }
    this.#base = null;
    if (this.#fd >= 0 && c.close(this.#fd) !== 0) {
      err ??= errnoError(`${this.path}: close failed`, undefined, this.path);
    }
    this.#fd = -1;
    if (err) throw err;
  }

  /** Same as {@link MappedArray.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #open(op: string): void {
    if (this.#base === null) throw new Error(`${this.path}: cannot ${op}: the array is closed`);
  }

  #checkRange(op: string, start: number, end: number): void {
    const rows = this.rows;
    if (
      !Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start ||
      end > rows
    ) {
      throw new RangeError(
        `${this.path}: ${op}: rows [${start}, ${end}) out of range for ${rows} rows`,
      );
    }
  }

  /** File byte range of rows [start, end), or the whole file when both are omitted. */
  #byteRange(op: string, start?: number, end?: number): [number, number] {
    if (start === undefined && end === undefined) return [0, this.#mapBytes];
    const s = start ?? 0, e = end ?? this.rows;
    this.#checkRange(op, s, e);
    return [this.dataOffset + s * this.rowBytes, this.dataOffset + e * this.rowBytes];
  }

  /** Page-aligned [pointer, length] covering file bytes [from, to). */
  #pages(from: number, to: number): [Deno.PointerObject, number] {
    const page = pageSize();
    const aligned = Math.floor(from / page) * page;
    const p = Deno.UnsafePointer.offset(this.#base!, aligned);
    if (!p) throw new Error(`${this.path}: null pointer at byte ${aligned}`);
    return [p, Math.min(to, this.#mapBytes) - aligned];
  }

  #dataBuffer(): ArrayBuffer {
    // A buffer detached by someone else (a transfer) is replaced; see the module docs.
    if (this.#buffer === null || this.#buffer.detached) {
      this.#buffer = Deno.UnsafePointerView.getArrayBuffer(
        this.#base!,
        this.byteLength,
        this.dataOffset,
      );
    }
    return this.#buffer;
  }

  /** Detach the shared buffer so every view handed out so far loses access to the mapping. */
  #invalidate(): void {
    if (this.#buffer !== null && !this.#buffer.detached) this.#buffer.transfer(0);
    this.#buffer = null;
  }
}

/** mmap the first `bytes` of `fd`: shared read-write, or private copy-on-write for mode "r". */
function mapFile(
  path: string,
  fd: number,
  bytes: number,
  kind: "shared" | "private",
): Deno.PointerObject {
  const c = libc();
  // NORESERVE: a private writable mapping is otherwise charged against the commit limit in
  // full, which refuses files larger than RAM + swap.
  const [prot, flags] = kind === "shared"
    ? [PROT_READ | PROT_WRITE, MAP_SHARED]
    : [PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE];
  let p = c.mmap(null, BigInt(bytes), prot, flags, fd, 0n);
  if (kind === "private" && isMapFailed(p)) {
    // Strict overcommit (vm.overcommit_memory=2) ignores NORESERVE; fall back to read-only
    // pages. Writing through a view of such a mapping then faults (documented in the README).
    p = c.mmap(null, BigInt(bytes), PROT_READ, MAP_SHARED, fd, 0n);
  }
  if (isMapFailed(p)) throw errnoError(`${path}: cannot map ${bytes} bytes`, undefined, path);
  return p!;
}

/**
 * Reserves file bytes [offset, offset + length) with `posix_fallocate` (which extends the file
 * if needed); a full disk or file size limit is `E_NO_SPACE` naming the file.
 */
function allocateRange(path: string, fd: number, offset: number, length: number): void {
  const rc = libc().posix_fallocate(fd, BigInt(offset), BigInt(length));
  if (rc !== 0) {
    throw errnoError(
      `${path}: cannot reserve ${length} bytes on disk at byte ${offset}`,
      rc,
      path,
    );
  }
}

/** The first `length` bytes of `fd` (fewer if the file is shorter). */
function readAt(path: string, fd: number, length: number): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const n = Number(libc().pread(fd, buf.subarray(got), BigInt(length - got), BigInt(got)));
    if (n < 0) {
      const code = errno();
      if (code === 4) continue; // EINTR
      throw errnoError(`${path}: cannot read the header`, code, path);
    }
    if (n === 0) break;
    got += n;
  }
  return buf.subarray(0, got);
}

function isMapFailed(p: Deno.PointerValue): boolean {
  return p === null || BigInt(Deno.UnsafePointer.value(p)) === MAP_FAILED;
}

/** Run `fn` on a temporary byte view of `[base, base + length)`, detached right after. */
function withBytes<T>(base: Deno.PointerObject, length: number, fn: (b: Uint8Array) => T): T {
  const buf = Deno.UnsafePointerView.getArrayBuffer(base, length);
  try {
    return fn(new Uint8Array(buf));
  } finally {
    buf.transfer(0);
  }
}

function validateShape(path: string, shape: readonly number[]): void {
  if (!Array.isArray(shape) || shape.length === 0) {
    throw new Error(`${path}: shape must list at least one dimension, got ${String(shape)}`);
  }
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      throw new Error(
        `${path}: invalid shape ${formatShape(shape)}: ${dim} is not a non-negative integer`,
      );
    }
  }
}

/** Prefix an error thrown by `fn` with the file name. */
function withName<T>(path: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** An open/create failure; for ENOENT, say whether the directory or the file is missing. */
function openError(path: string, what: string, code = errno()): ErrnoError {
  if (code === ENOENT) {
    const dir = dirname(path);
    if (libc().access(cPath(dir), 0) !== 0) {
      const err = errnoError(`${path}: cannot ${what}`, code, path);
      err.message = `${path}: cannot ${what}: directory '${dir}' does not exist (${err.errnoName})`;
      return err;
    }
  }
  return errnoError(`${path}: cannot ${what}`, code, path);
}
