/**
 * Concatenation of `.npy` files along their first axis: one header for the total shape, then
 * each part's data bytes in order — a plain file copy done by the kernel (`copy_file_range`,
 * which may share blocks on file systems that can), with no pass through this process.
 *
 * @module
 */

import { encodeNpyHeader, type NpyHeader, npyHeaderLength, parseNpyHeader } from "./npy.ts";
import {
  cPath,
  errno,
  errnoError,
  libc,
  O_CLOEXEC,
  O_CREAT,
  O_RDONLY,
  O_RDWR,
  O_TRUNC,
} from "./_libc.ts";
import { ensureFreeSpace } from "./space.ts";
import { KnnError } from "../core/errors.ts";
import { dirname } from "node:path";

/** Options of {@link concatNpy}. */
export interface ConcatNpyOptions {
  /** The parts, in order: same dtype and same row shape (`shape[1..]`). */
  inputs: readonly string[];
  /** The file to write (replaced). Callers that publish atomically pass a `.tmp` name. */
  output: string;
  /** Stops between blocks of {@link COPY_BLOCK_BYTES} with `E_INTERRUPTED` (output removed). */
  signal?: AbortSignal;
  /** Called after each block with the data bytes copied so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** Bytes copied per `copy_file_range` call: between two calls a signal is noticed. */
export const COPY_BLOCK_BYTES = 64 << 20;

/** What {@link concatNpy} wrote. */
export interface ConcatNpyResult {
  /** The output's shape. */
  shape: number[];
  /** The output's size in bytes (header + data). */
  bytes: number;
}

function readHeader(path: string): NpyHeader & { size: number } {
  const c = libc();
  const fd = c.open(cPath(path), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) throw errnoError(`${path}: cannot open for reading`, undefined, path);
  try {
    const size = Number(c.lseek(fd, 0n, 2));
    const head = (n: number) => {
      const buf = new Uint8Array(n);
      const got = Number(c.pread(fd, buf, BigInt(n), 0n));
      if (got < 0) throw errnoError(`${path}: cannot read`, undefined, path);
      return buf.subarray(0, got);
    };
    const prefix = head(12);
    const h = parseNpyHeader(head(Math.min(size, npyHeaderLength(prefix) ?? 12, 1 << 21)), {
      name: path,
      fileSize: size,
    });
    return { ...h, size };
  } finally {
    c.close(fd);
  }
}

/**
 * Writes `output` as the concatenation of `inputs` along axis 0: an `.npy` numpy reads like
 * `np.concatenate([np.load(p) for p in inputs])`. Checks the parts agree (dtype, row shape) and
 * that the file system has room first (`E_NO_SPACE`); a part of another dtype or width is
 * `E_MISMATCH` naming it.
 */
export async function concatNpy(opts: ConcatNpyOptions): Promise<ConcatNpyResult> {
  if (opts.inputs.length === 0) throw new KnnError("E_USAGE", "concatNpy: no inputs");
  const parts = opts.inputs.map((path) => ({ path, ...readHeader(path) }));
  const first = parts[0];
  const rowShape = first.shape.slice(1);
  for (const p of parts) {
    if (p.dtype !== first.dtype || p.shape.slice(1).join() !== rowShape.join()) {
      throw new KnnError(
        "E_MISMATCH",
        `${p.path}: dtype ${p.dtype} rows [${p.shape.slice(1)}] do not match ${first.path}'s ` +
          `${first.dtype} [${rowShape}]`,
        { path: p.path },
      );
    }
  }
  const shape = [parts.reduce((n, p) => n + p.shape[0], 0), ...rowShape];
  const header = encodeNpyHeader({ dtype: first.dtype, shape });
  const data = parts.reduce((n, p) => n + (p.size - p.dataOffset), 0);
  const total = header.length + data;
  ensureFreeSpace(
    dirname(opts.output),
    total,
    `concatenating ${parts.length} parts into ${opts.output}`,
  );

  const c = libc();
  const out = opts.output;
  const fd = c.open(cPath(out), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644);
  if (fd < 0) throw errnoError(`${out}: cannot create`, undefined, out);
  let ok = false;
  try {
    const r = c.posix_fallocate(fd, 0n, BigInt(total));
    if (r !== 0) throw errnoError(`${out}: cannot reserve ${total} bytes`, r, out);
    if (Number(c.pwrite(fd, header, BigInt(header.length), 0n)) !== header.length) {
      throw errnoError(`${out}: cannot write the header`, undefined, out);
    }
    const offIn = new BigInt64Array(1);
    const offOut = BigInt64Array.of(BigInt(header.length));
    let done = 0;
    for (const p of parts) {
      const src = c.open(cPath(p.path), O_RDONLY | O_CLOEXEC, 0);
      if (src < 0) throw errnoError(`${p.path}: cannot open for reading`, undefined, p.path);
      try {
        offIn[0] = BigInt(p.dataOffset);
        let left = p.size - p.dataOffset;
        while (left > 0) {
          if (opts.signal?.aborted) {
            const reason = opts.signal.reason;
            throw KnnError.is(reason) ? reason : new KnnError(
              "E_INTERRUPTED",
              `concatenating into ${out}: interrupted`,
            );
          }
          const n = Number(c.copy_file_range(
            src,
            new Uint8Array(offIn.buffer),
            fd,
            new Uint8Array(offOut.buffer),
            BigInt(Math.min(left, COPY_BLOCK_BYTES)),
            0,
          ));
          if (n < 0) throw errnoError(`${out}: cannot copy ${p.path} into it`, errno(), out);
          if (n === 0) {
            throw new KnnError("E_CORRUPT", `${p.path}: shorter than its header says`, {
              path: p.path,
            });
          }
          left -= n;
          done += n;
          opts.onProgress?.(done, data);
          // Lets a signal's listener run between blocks.
          await new Promise((resolve) => setTimeout(resolve, 0));
        }
      } finally {
        c.close(src);
      }
    }
    if (c.fsync(fd) !== 0) throw errnoError(`${out}: cannot sync`, undefined, out);
    ok = true;
  } finally {
    c.close(fd);
    if (!ok) c.unlink(cPath(out));
  }
  return { shape, bytes: total };
}
