/**
 * Token files for the benchmark: an int32 `.npy` writer with no dependencies, so the harness
 * can hand both sides the same ids (see `writeTokenFile` in `harness.ts`).
 *
 * @module
 */

/**
 * A 1-D little-endian int32 `.npy` (format 1.0) holding `ids`; the header is padded so the
 * data starts at a multiple of 64 bytes, as numpy writes it.
 */
export function encodeTokensNpy(ids: Int32Array): Uint8Array {
  const dict = `{'descr': '<i4', 'fortran_order': False, 'shape': (${ids.length},), }`;
  // magic (6) + version (2) + header length (2) + dict + padding + "\n" ≡ 0 (mod 64)
  const unpadded = 10 + dict.length + 1;
  const header = dict + " ".repeat((64 - (unpadded % 64)) % 64) + "\n";
  const out = new Uint8Array(10 + header.length + ids.length * 4);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  const view = new DataView(out.buffer);
  view.setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  const data = 10 + header.length;
  for (let i = 0; i < ids.length; i++) view.setInt32(data + i * 4, ids[i], true);
  return out;
}
