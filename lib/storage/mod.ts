/**
 * Storage: `.npy` files (NPY format 1.0/2.0, readable by `numpy.load(path, mmap_mode="r")`)
 * memory-mapped through libc `mmap` over Deno FFI, and float16 ⇄ float32 conversion.
 * This is one of the two FFI boundaries (the other is `lib/index/`); `_libc.ts` holds the
 * libc symbol table.
 *
 * @example
 * ```ts ignore
 * import { MappedArray } from "./mod.ts";
 *
 * // keys: [n, d] float32, row i = the key of position i
 * using keys = MappedArray.create("/tmp/keys.npy", { dtype: "<f4", shape: [1000, 16] });
 * keys.view().fill(1); // zero-copy Float32Array over the mapping
 * keys.flush();
 * ```
 *
 * @module
 */

export {
  type AdviceHint,
  type CreateMappedArrayOptions,
  type MapMode,
  MappedArray,
  type OpenMappedArrayOptions,
} from "./mmap.ts";
export {
  type DType,
  type DTypeArrays,
  DTYPES,
  encodeNpyHeader,
  type EncodeNpyHeaderOptions,
  type NpyHeader,
  parseNpyHeader,
  type ParseNpyHeaderOptions,
  type TypedArray,
  type ViewOf,
} from "./npy.ts";
export { f16ArrayToF32, f16ToF32, f32ArrayToF16, f32ToF16 } from "./half.ts";
export { type DiskSpace, diskSpace, ensureFreeSpace, formatBytes } from "./space.ts";
export {
  concatNpy,
  type ConcatNpyOptions,
  type ConcatNpyResult,
  COPY_BLOCK_BYTES,
} from "./concat.ts";
