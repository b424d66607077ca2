/**
 * The libc symbols behind the memory-mapped storage layer (Linux, glibc, 64-bit), loaded lazily
 * so that importing the toolkit needs no `--allow-ffi` until a file is actually mapped.
 *
 * @module
 */

import { type ErrorCode, KnnError } from "../core/errors.ts";

/** Symbol table for `libc.so.6`; `off_t` is 64-bit on every 64-bit Linux ABI. */
export const LIBC_SYMBOLS = {
  // int open(const char *path, int flags, mode_t mode)
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  // int close(int fd)
  close: { parameters: ["i32"], result: "i32" },
  // int unlink(const char *path)
  unlink: { parameters: ["buffer"], result: "i32" },
  // int access(const char *path, int mode)
  access: { parameters: ["buffer", "i32"], result: "i32" },
  // ssize_t pread(int fd, void *buf, size_t count, off_t offset)
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  // ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  // off_t lseek(int fd, off_t offset, int whence)
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  // int ftruncate(int fd, off_t length)
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  // int posix_fallocate(int fd, off_t offset, off_t len)
  posix_fallocate: { parameters: ["i32", "i64", "i64"], result: "i32" },
  // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  // int munmap(void *addr, size_t length)
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  // int msync(void *addr, size_t length, int flags)
  msync: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  // int madvise(void *addr, size_t length, int advice)
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  // ssize_t copy_file_range(int fd_in, off64_t *off_in, int fd_out, off64_t *off_out,
  //                         size_t len, unsigned int flags)
  copy_file_range: {
    parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"],
    result: "isize",
  },
  // int fsync(int fd)
  fsync: { parameters: ["i32"], result: "i32" },
  // int statvfs(const char *path, struct statvfs *buf)
  statvfs: { parameters: ["buffer", "buffer"], result: "i32" },
  // long sysconf(int name)
  sysconf: { parameters: ["i32"], result: "i64" },
  // int *__errno_location(void)
  __errno_location: { parameters: [], result: "pointer" },
  // char *strerror(int errnum)
  strerror: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** Flag values from the Linux UAPI headers (identical on x86_64 and aarch64). */
export const O_RDONLY = 0;
export const O_RDWR = 0o2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_CLOEXEC = 0o2000000;
export const SEEK_END = 2;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_NORESERVE = 0x4000;
export const MS_SYNC = 4;
export const MADV = { normal: 0, random: 1, sequential: 2, willneed: 3, dontneed: 4 } as const;
const SC_PAGESIZE = 30;

/** errno for a missing file or directory. */
export const ENOENT = 2;

/** Symbolic names for the errno values the storage layer can meet. */
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  9: "EBADF",
  12: "ENOMEM",
  13: "EACCES",
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  26: "ETXTBSY",
  27: "EFBIG",
  28: "ENOSPC",
  30: "EROFS",
  36: "ENAMETOOLONG",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
  18: "EXDEV",
};

/** {@linkcode KnnError} codes for the errno values that have one; the rest are `E_IO`. */
const ERRNO_CODES: Record<string, ErrorCode> = {
  ENOENT: "E_NOT_FOUND",
  ENOTDIR: "E_NOT_FOUND",
  EACCES: "E_PERMISSION",
  EPERM: "E_PERMISSION",
  EROFS: "E_PERMISSION",
  ENOSPC: "E_NO_SPACE",
  EFBIG: "E_NO_SPACE",
  EDQUOT: "E_NO_SPACE",
};

/** An errno failure of a libc call: a {@linkcode KnnError} that also keeps the errno. */
export class ErrnoError extends KnnError {
  /** The numeric errno. */
  readonly errno: number;
  /** Symbolic errno name such as `"ENOENT"`, or `"E<number>"` when unknown. */
  readonly errnoName: string;
  /** An error with `message` for the failed call and its numeric `errno`. */
  constructor(message: string, errno: number, path?: string) {
    const name = ERRNO_NAMES[errno] ?? `E${errno}`;
    super(ERRNO_CODES[name] ?? "E_IO", message, path === undefined ? {} : { path });
    this.name = "ErrnoError";
    this.errno = errno;
    this.errnoName = name;
  }
}

type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];
let lib: Libc | undefined;

/** The loaded libc symbols; the first call opens `libc.so.6`. */
export function libc(): Libc {
  if (lib) return lib;
  const tried = ["libc.so.6"];
  try {
    lib = Deno.dlopen(tried[0], LIBC_SYMBOLS).symbols;
  } catch (cause) {
    throw new Error(
      `cannot load the C library for memory-mapped storage (tried: ${tried.join(", ")}); ` +
        `knnlm needs Linux with glibc, and Deno run with --allow-ffi (or -A)`,
      { cause },
    );
  }
  return lib;
}

/** The calling thread's errno (read right after a failed synchronous call). */
export function errno(): number {
  const p = libc().__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

/** `strerror(code)` as a JS string, e.g. `"Permission denied"`. */
export function strerror(code: number): string {
  const p = libc().strerror(code);
  return p ? Deno.UnsafePointerView.getCString(p) : `errno ${code}`;
}

/** An {@link ErrnoError} `"<what>: <strerror> (<ENAME>)"`; errno is read now unless given. */
export function errnoError(what: string, code: number = errno(), path?: string): ErrnoError {
  const err = new ErrnoError("", code, path);
  err.message = `${what}: ${strerror(code)} (${err.errnoName})`;
  return err;
}

/** A NUL-terminated UTF-8 copy of `path` for `const char *` parameters. */
export function cPath(path: string): Uint8Array<ArrayBuffer> {
  if (path.includes("\0")) throw new Error(`${JSON.stringify(path)}: path contains a NUL byte`);
  return new TextEncoder().encode(path + "\0");
}

/** The page size (alignment unit for `msync`/`madvise`). */
export function pageSize(): number {
  const n = Number(libc().sysconf(SC_PAGESIZE));
  return n > 0 ? n : 4096;
}
