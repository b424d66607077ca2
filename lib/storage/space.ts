/**
 * Free disk space (`statvfs` over Deno FFI), so a stage can refuse up front, naming the
 * directory, the bytes it needs and the bytes free, instead of failing half-way.
 *
 * @module
 */

import { cPath, errnoError, libc } from "./_libc.ts";
import { KnnError } from "../core/errors.ts";

/** Space on the file system holding a path, in bytes. */
export interface DiskSpace {
  /** Bytes an unprivileged process may still allocate (`f_bavail × f_frsize`). */
  free: number;
  /** Size of the file system (`f_blocks × f_frsize`). */
  total: number;
}

// struct statvfs on 64-bit Linux (glibc): eleven 8-byte fields, then int __f_spare[6].
const STATVFS_BYTES = 112;
const F_FRSIZE = 8, F_BLOCKS = 16, F_BAVAIL = 32;

/** Free and total bytes of the file system that holds `path` (which must exist). */
export function diskSpace(path: string): DiskSpace {
  const buf = new Uint8Array(STATVFS_BYTES);
  if (libc().statvfs(cPath(path), buf) !== 0) {
    throw errnoError(`${path}: cannot read the free disk space (statvfs)`, undefined, path);
  }
  const v = new DataView(buf.buffer);
  const frsize = Number(v.getBigUint64(F_FRSIZE, true));
  return {
    free: Number(v.getBigUint64(F_BAVAIL, true)) * frsize,
    total: Number(v.getBigUint64(F_BLOCKS, true)) * frsize,
  };
}

/** `n` bytes for people: `512 B`, `3.2 MB`, `1.50 GB` (powers of 1000, like `df -H`). */
export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB", "PB"];
  let v = n, i = -1;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/**
 * Throws `E_NO_SPACE` when the file system of `dir` has fewer than `needed` bytes free, with a
 * message naming the directory, what the bytes are for, the bytes needed and the bytes free,
 * e.g. `data/x: gather needs 1.07 GB (keys.npy, vals.npy) but only 40.0 MB are free`.
 */
export function ensureFreeSpace(dir: string, needed: number, what: string): void {
  if (!(needed > 0)) return;
  const { free } = diskSpace(dir);
  if (free < needed) {
    throw new KnnError(
      "E_NO_SPACE",
      `${dir}: ${what} needs ${formatBytes(needed)} (${needed} bytes) but only ` +
        `${formatBytes(free)} (${free} bytes) are free`,
      { path: dir, hint: "free some space or choose another --out directory" },
    );
  }
}
