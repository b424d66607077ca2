/**
 * Seeded sampling of row numbers, for choosing the keys an index is trained on.
 *
 * @module
 */

/** A small, fast, seedable PRNG (splitmix32) returning floats in [0, 1). */
export function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return z / 4294967296;
  };
}

/**
 * `k` distinct row numbers from `0..n-1`, chosen uniformly with `seed` and returned in
 * ascending order (so reading them from a memory map walks the file forwards). When
 * `k >= n` every row is returned.
 */
export function sampleRows(n: number, k: number, seed: number): Float64Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`n must be ≥ 0, found ${n}`);
  if (!Number.isSafeInteger(k) || k < 0) throw new RangeError(`k must be ≥ 0, found ${k}`);
  if (k >= n) return Float64Array.from({ length: n }, (_, i) => i);
  // Floyd's algorithm: k draws, no n-sized array.
  const rand = splitmix32(seed);
  const chosen = new Set<number>();
  for (let j = n - k; j < n; j++) {
    const t = Math.floor(rand() * (j + 1));
    chosen.add(chosen.has(t) ? j : t);
  }
  return Float64Array.from(chosen).sort();
}
