/**
 * Minimal reader for token-id `.npy` files (NPY format 1.0/2.0/3.0, C order, integer dtypes).
 *
 * TODO(lead): `lib/npy.ts` (written in parallel) parses NPY headers for the whole toolkit;
 * once merged, replace `parseNpyHeader` below with it. This copy exists only so the corpus
 * layer has no dependency on an unmerged branch.
 */

/** Integer dtypes accepted for token ids. */
const ID_DTYPES = ["<i4", "<u2", "|u1", "<i8"] as const;
type IdDType = typeof ID_DTYPES[number];

interface NpyHeader {
  descr: string;
  fortranOrder: boolean;
  shape: number[];
  dataOffset: number;
}

function parseNpyHeader(bytes: Uint8Array, path: string): NpyHeader {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) {
    throw new Error(`${path}: not a .npy file (missing \\x93NUMPY magic)`);
  }
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number, start: number;
  if (major === 1) [headerLen, start] = [view.getUint16(8, true), 10];
  else if (major === 2 || major === 3) [headerLen, start] = [view.getUint32(8, true), 12];
  else throw new Error(`${path}: unsupported .npy format version ${major}`);
  if (start + headerLen > bytes.length) throw new Error(`${path}: truncated .npy header`);
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new Error(`${path}: cannot parse .npy header ${JSON.stringify(header.trim())}`);
  }
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  return { descr, fortranOrder: fortran === "True", shape, dataOffset: start + headerLen };
}

/** Reads a `.npy` of integer token ids (any shape, flattened in C order) as Int32Array. */
export function readNpyIds(bytes: Uint8Array, path: string): Int32Array {
  const h = parseNpyHeader(bytes, path);
  if (!(ID_DTYPES as readonly string[]).includes(h.descr)) {
    throw new Error(
      `${path}: expected token ids of dtype ${ID_DTYPES.join(", ")}, found '${h.descr}' ` +
        `(header at byte ${h.dataOffset - (bytes[6] === 1 ? 10 : 12)})`,
    );
  }
  if (h.fortranOrder && h.shape.length > 1) {
    throw new Error(`${path}: Fortran-ordered arrays are not supported; save with C order`);
  }
  const dtype = h.descr as IdDType;
  const count = h.shape.reduce((a, b) => a * b, 1);
  const itemSize = { "<i4": 4, "<u2": 2, "|u1": 1, "<i8": 8 }[dtype];
  if (h.dataOffset + count * itemSize > bytes.length) {
    throw new Error(
      `${path}: header says shape [${h.shape}] (${count * itemSize} bytes of data) but the ` +
        `file has ${bytes.length - h.dataOffset}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + h.dataOffset);
  const out = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    switch (dtype) {
      case "<i4":
        out[i] = view.getInt32(i * 4, true);
        break;
      case "<u2":
        out[i] = view.getUint16(i * 2, true);
        break;
      case "|u1":
        out[i] = view.getUint8(i);
        break;
      case "<i8": {
        const v = view.getBigInt64(i * 8, true);
        if (v < -0x80000000n || v > 0x7fffffffn) {
          throw new Error(`${path}: token ${i} = ${v} does not fit in int32`);
        }
        out[i] = Number(v);
        break;
      }
    }
  }
  return out;
}
