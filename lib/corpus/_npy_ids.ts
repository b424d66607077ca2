/**
 * Token ids from a `.npy` file (any C-ordered shape, flattened), read through the storage
 * layer's memory map so a large id file is not first read into a byte buffer.
 */

import { MappedArray } from "../storage/mmap.ts";

/** Reads a `.npy` of integer token ids (`<i4`, `<u2`, `|u1` or `<i8`) as an Int32Array. */
export function readNpyIds(path: string): Int32Array {
  using ids = MappedArray.open(path, { mode: "r", dtypes: ["<i4", "<u2", "|u1", "<i8"] });
  const view = ids.view();
  if (!(view instanceof BigInt64Array)) return Int32Array.from(view);
  const out = new Int32Array(view.length);
  for (let i = 0; i < view.length; i++) {
    const v = view[i];
    if (v < -0x80000000n || v > 0x7fffffffn) {
      throw new Error(`${path}: token ${i} = ${v} does not fit in int32`);
    }
    out[i] = Number(v);
  }
  return out;
}
