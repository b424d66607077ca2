/**
 * knnlm: build and query kNN-LM datastores (Khandelwal et al., ICLR 2020) from Deno.
 *
 * @module
 */

// Storage: memory-mapped .npy keys/values (lib/npy.ts, lib/mmap.ts, lib/half.ts).
export {
  type AdviceHint,
  type CreateMappedArrayOptions,
  type MapMode,
  MappedArray,
  type OpenMappedArrayOptions,
} from "./lib/mmap.ts";
export {
  type DType,
  type DTypeArrays,
  dtypeName,
  DTYPES,
  encodeNpyHeader,
  type EncodeNpyHeaderOptions,
  isDType,
  itemSize,
  type NpyHeader,
  npyHeaderLength,
  parseNpyHeader,
  type ParseNpyHeaderOptions,
  type TypedArray,
  type ViewOf,
} from "./lib/npy.ts";
export { f16ArrayToF32, f16ToF32, f32ArrayToF16, f32ToF16 } from "./lib/half.ts";
export { ErrnoError } from "./lib/_libc.ts";
