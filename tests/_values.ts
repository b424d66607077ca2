// Deterministic test values per dtype, shared by the mmap and numpy interop tests. The same
// formulas are written in Python in npy_interop_test.ts (PY_VALUES); keep the two in step.
import type { DType, TypedArray } from "../lib/storage/npy.ts";
import { f32ToF16 } from "../lib/storage/half.ts";

/** Element `i` (flat C-order index) of a test array; floats are exact in float16. */
export function valueAt(dtype: DType, i: number): number | bigint {
  switch (dtype) {
    case "<f4":
      return ((i * 37) % 101 - 50) / 4;
    case "<f2":
      return f32ToF16(((i * 37) % 101 - 50) / 4); // raw half bits
    case "<i4":
      return (i * 2654435761) % 2 ** 32 - 2 ** 31;
    case "<i8":
      return -(2n ** 62n) + BigInt(i) * 1234567890123n; // beyond 2^53: needs BigInt
    case "|u1":
      return (i * 31 + 7) % 256;
    case "<u2":
      return (i * 40503 + 11) % 65536;
  }
}

/** Fill `view` with test values for flat indices `offset`, `offset + 1`, … */
export function fillValues(dtype: DType, view: TypedArray, offset = 0): void {
  for (let i = 0; i < view.length; i++) {
    (view as unknown as (number | bigint)[])[i] = valueAt(dtype, offset + i);
  }
}

/** The test values for flat indices `[offset, offset + n)` as a plain array. */
export function expectedValues(dtype: DType, n: number, offset = 0): (number | bigint)[] {
  return Array.from({ length: n }, (_, i) => valueAt(dtype, offset + i));
}
