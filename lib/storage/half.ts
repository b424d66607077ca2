/**
 * IEEE 754 binary16 ("float16", numpy `<f2`) conversions for raw half bits held in a
 * `Uint16Array`, the view type of `<f2` mapped arrays. Pure JS, so results do not depend on
 * whether the runtime has `Float16Array`.
 *
 * @module
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
let table: Float32Array | undefined;

/** The value of half-precision bits `h` (0..65535) as a number; exact, keeps -0 and NaN. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero or subnormal
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/**
 * Half-precision bits of `x`, rounded to nearest, ties to even (numpy's `astype(np.float16)`).
 * `x` is first rounded to float32, which is exact for values read from a `Float32Array`.
 * Overflow gives ±Infinity, underflow ±0, NaN a quiet NaN.
 */
export function f32ToF16(x: number): number {
  f32[0] = x;
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15; // rebased exponent
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half: value = m × 2^-24 with m = (1.mant) × 2^(e-1+10), i.e. shift by 14 - e.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rem = mant & ((1 << shift) - 1);
    let r = mant >>> shift;
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa bumps the exponent, which is the right rounding (up to Inf).
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) r++;
  return sign | r;
}

/** Convert half bits to float32 values: `dst[i] = f16ToF32(src[i])` (dst defaults to new). */
export function f16ArrayToF32(
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
): Float32Array {
  if (dst.length < src.length) {
    throw new RangeError(`f16ArrayToF32: dst has ${dst.length} elements, need ${src.length}`);
  }
  if (!table) {
    table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) table[h] = f16ToF32(h);
  }
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]];
  return dst;
}

/** Convert float32 values to half bits: `dst[i] = f32ToF16(src[i])` (dst defaults to new). */
export function f32ArrayToF16(
  src: Float32Array,
  dst: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  if (dst.length < src.length) {
    throw new RangeError(`f32ArrayToF16: dst has ${dst.length} elements, need ${src.length}`);
  }
  for (let i = 0; i < src.length; i++) dst[i] = f32ToF16(src[i]);
  return dst;
}
