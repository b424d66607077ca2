/**
 * Arrays for the benchmark: `.npy` writers with no dependencies, so the harness can hand both
 * sides the same token ids (see `writeTokenFile` in `harness.ts`) and the same key and query
 * matrices (the stage benchmark, `stages.ts`).
 *
 * @module
 */

// magic (6) + version (2) + header length (2) + dict + padding + "\n" ≡ 0 (mod 64), as numpy
// writes it, so the data starts at a multiple of 64 bytes.
function npyWithHeader(dict: string, dataBytes: number): { out: Uint8Array; data: number } {
  const unpadded = 10 + dict.length + 1;
  const header = dict + " ".repeat((64 - (unpadded % 64)) % 64) + "\n";
  const out = new Uint8Array(10 + header.length + dataBytes);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  return { out, data: 10 + header.length };
}

/** A 1-D little-endian int32 `.npy` (format 1.0) holding `ids`. */
export function encodeTokensNpy(ids: Int32Array): Uint8Array {
  const dict = `{'descr': '<i4', 'fortran_order': False, 'shape': (${ids.length},), }`;
  const { out, data } = npyWithHeader(dict, ids.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < ids.length; i++) view.setInt32(data + i * 4, ids[i], true);
  return out;
}

/** A 2-D little-endian float32 `.npy` (format 1.0) of `rows × cols`, row-major. */
export function encodeFloat32Npy(values: Float32Array, rows: number, cols: number): Uint8Array {
  if (values.length !== rows * cols) {
    throw new Error(`encodeFloat32Npy: ${values.length} values, expected ${rows} × ${cols}`);
  }
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${rows}, ${cols}), }`;
  const { out, data } = npyWithHeader(dict, values.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setFloat32(data + i * 4, values[i], true);
  return out;
}

/**
 * `rows × d` float32 vectors drawn from a seeded mixture of `clusters` Gaussians (centres
 * N(0, 4), unit noise): clustered like model keys, so IVF lists are uneven as in real use.
 * The same seed always gives the same values.
 */
export function gaussianMixture(
  rows: number,
  d: number,
  clusters: number,
  seed: number,
): Float32Array {
  let s = seed >>> 0;
  const uniform = () => {
    // mulberry32
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  const centres = new Float32Array(clusters * d).map(() => 2 * normal());
  const out = new Float32Array(rows * d);
  for (let i = 0; i < rows; i++) {
    const c = Math.floor(uniform() * clusters);
    for (let j = 0; j < d; j++) out[i * d + j] = centres[c * d + j] + normal();
  }
  return out;
}
