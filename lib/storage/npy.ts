/**
 * NPY header reading and writing (format versions 1.0, 2.0 and 3.0), the on-disk contract for
 * datastore keys and values: every file written here is read by `numpy.load(path,
 * mmap_mode="r")`, and every C-order file numpy writes in a supported dtype is read here.
 *
 * Layout: `\x93NUMPY`, major, minor, header length (u16 LE for 1.0, u32 LE for 2.0/3.0), then a
 * Python dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`
 * padded with spaces and a final `\n` so that the data starts on a 64-byte boundary.
 *
 * @module
 */

/** Supported element types, spelled as numpy's little-endian `descr` strings. */
export type DType = "<f4" | "<f2" | "<i4" | "<i8" | "|u1" | "<u2";

/** Every supported {@link DType}. */
export const DTYPES: readonly DType[] = ["<f4", "<f2", "<i4", "<i8", "|u1", "<u2"];

/**
 * The typed view of each dtype; `<f2` is `Uint16Array` of raw IEEE half bits (convert with
 * `f16ToF32`/`f32ToF16`).
 */
export interface DTypeArrays {
  /** float32 */
  "<f4": Float32Array<ArrayBuffer>;
  /** float16, raw bits */
  "<f2": Uint16Array<ArrayBuffer>;
  /** int32 */
  "<i4": Int32Array<ArrayBuffer>;
  /** int64 */
  "<i8": BigInt64Array<ArrayBuffer>;
  /** uint8 */
  "|u1": Uint8Array<ArrayBuffer>;
  /** uint16 */
  "<u2": Uint16Array<ArrayBuffer>;
}

/** The typed array for dtype `D`, e.g. `ViewOf<"<f4">` is `Float32Array`. */
export type ViewOf<D extends DType> = DTypeArrays[D];

/** Any typed array a {@link DType} maps to. */
export type TypedArray = DTypeArrays[DType];

interface DTypeInfo {
  /** numpy's name, used in messages */
  name: string;
  itemSize: number;
  ctor: new (buffer: ArrayBuffer, byteOffset: number, length: number) => TypedArray;
}

const INFO: Record<DType, DTypeInfo> = {
  "<f4": { name: "float32", itemSize: 4, ctor: Float32Array },
  "<f2": { name: "float16", itemSize: 2, ctor: Uint16Array },
  "<i4": { name: "int32", itemSize: 4, ctor: Int32Array },
  "<i8": { name: "int64", itemSize: 8, ctor: BigInt64Array },
  "|u1": { name: "uint8", itemSize: 1, ctor: Uint8Array },
  "<u2": { name: "uint16", itemSize: 2, ctor: Uint16Array },
};

/** True when `s` is a supported {@link DType}. */
export function isDType(s: unknown): s is DType {
  return typeof s === "string" && Object.hasOwn(INFO, s);
}

/** Bytes per element of `dtype`, e.g. 4 for `<f4`. */
export function itemSize(dtype: DType): number {
  return INFO[dtype].itemSize;
}

/** numpy's name for `dtype`, e.g. `"float32"` for `<f4`. */
export function dtypeName(dtype: DType): string {
  return INFO[dtype].name;
}

/** A typed view of `length` elements of `dtype` at `byteOffset` in `buffer` (no copy). */
export function typedView<D extends DType>(
  dtype: D,
  buffer: ArrayBuffer,
  byteOffset: number,
  length: number,
): ViewOf<D> {
  return new INFO[dtype].ctor(buffer, byteOffset, length) as ViewOf<D>;
}

/** What an NPY header says about the array that follows it. */
export interface NpyHeader {
  /** Format major version: 1, 2 or 3 (minor is always 0). */
  version: 1 | 2 | 3;
  /** Element type. */
  dtype: DType;
  /** Array shape, C order; at least one dimension. */
  shape: number[];
  /** Byte offset of the dict text (10 for version 1.0, 12 for 2.0/3.0). */
  dictOffset: number;
  /** Byte offset of the first element = total header length. */
  dataOffset: number;
  /** Bytes of array data after the header: product(shape) × item size. */
  dataBytes: number;
}

/** The bytes every NPY file starts with. */
export const NPY_MAGIC: Uint8Array = Uint8Array.of(0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59);
/** Data offsets written here are multiples of this (numpy uses the same). */
export const NPY_ALIGN = 64;
/** Room kept in written headers so `shape[0]` can grow to this many digits in place. */
const GROWTH_DIGITS = 21;

/** Where {@link parseNpyHeader} errors say the problem is; `name` prefixes every message. */
export interface ParseNpyHeaderOptions {
  /** File name used in messages (default `"<npy>"`). */
  name?: string;
  /**
   * Total file size in bytes; when given, the header is checked against it (a truncated file or
   * trailing bytes are reported with expected and actual sizes).
   */
  fileSize?: number;
  /**
   * Accepted dtypes (default: all of {@link DTYPES}); anything else is reported as
   * `expected dtype float32 or float16, found '<i8'`.
   */
  dtypes?: readonly DType[];
}

/**
 * Bytes needed to parse the header from the start of a file: 12 for the fixed part, or, once the
 * first 12 bytes are known, the full header length. Returns `undefined` when `prefix` is too
 * short to tell.
 */
export function npyHeaderLength(prefix: Uint8Array): number | undefined {
  if (prefix.length < 12) return undefined;
  const dv = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength);
  const major = prefix[6];
  return major === 1 ? 10 + dv.getUint16(8, true) : 12 + dv.getUint32(8, true);
}

/**
 * Parse an NPY header. `bytes` holds at least the whole header (it may hold the whole file).
 * Throws an `Error` naming the file and the problem: bad magic, unsupported version, malformed
 * dict, unsupported/big-endian dtype, Fortran order, bad shape, or a size mismatch.
 */
export function parseNpyHeader(bytes: Uint8Array, opts: ParseNpyHeaderOptions = {}): NpyHeader {
  const name = opts.name ?? "<npy>";
  const fail = (msg: string): never => {
    throw new Error(`${name}: ${msg}`);
  };
  const sizeNote = opts.fileSize !== undefined ? `file is ${opts.fileSize} bytes` : "";
  if (bytes.length < 10) {
    fail(`not an NPY file (${sizeNote || `${bytes.length} bytes`}, shorter than the preamble)`);
  }
  for (let i = 0; i < NPY_MAGIC.length; i++) {
    if (bytes[i] !== NPY_MAGIC[i]) {
      const got = Array.from(bytes.subarray(0, 6), (b) => b.toString(16).padStart(2, "0"));
      fail(`not an NPY file (bad magic: expected 93 4e 55 4d 50 59, found ${got.join(" ")})`);
    }
  }
  const major = bytes[6], minor = bytes[7];
  if (!(major === 1 || major === 2 || major === 3) || minor !== 0) {
    fail(`unsupported NPY format version ${major}.${minor} (supported: 1.0, 2.0, 3.0)`);
  }
  const version = major as 1 | 2 | 3;
  const dictOffset = version === 1 ? 10 : 12;
  if (bytes.length < dictOffset) fail(`truncated NPY preamble (${bytes.length} bytes)`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dictLength = version === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const dataOffset = dictOffset + dictLength;
  if (dictLength > MAX_DICT_BYTES) {
    fail(`NPY header of ${dictLength} bytes is implausibly large (limit ${MAX_DICT_BYTES})`);
  }
  if (bytes.length < dataOffset) {
    fail(
      `truncated NPY header: header says ${dataOffset} bytes, only ${bytes.length} available` +
        (sizeNote ? ` (${sizeNote})` : ""),
    );
  }
  const raw = bytes.subarray(dictOffset, dataOffset);
  // 1.0/2.0 headers are latin-1, 3.0 headers UTF-8.
  const text = version === 3 ? new TextDecoder().decode(raw) : latin1(raw);
  const dict = parseDict(text, dictOffset, name);
  const at = `header at byte ${dictOffset}`;

  for (const key of ["descr", "fortran_order", "shape"]) {
    if (!dict.has(key)) fail(`malformed NPY header: missing key '${key}' (${at})`);
  }
  const extra = [...dict.keys()].filter((k) => !["descr", "fortran_order", "shape"].includes(k));
  if (extra.length) fail(`malformed NPY header: unexpected key '${extra[0]}' (${at})`);

  const descr = dict.get("descr");
  const accepted = opts.dtypes ?? DTYPES;
  if (typeof descr !== "string") {
    fail(`unsupported dtype: structured dtypes are not supported (${at})`);
  }
  const d = descr as string;
  if (!isDType(d) || !accepted.includes(d)) {
    const why = d.startsWith(">") ? "big-endian; " : OTHER_DTYPES[d.replace(/^[<|=]/, "")] ?? "";
    const expected = accepted.length === DTYPES.length
      ? `a supported dtype (${DTYPES.map((t) => `'${t}'`).join(", ")})`
      : `dtype ${joinOr(accepted.map(dtypeName))}`;
    fail(`expected ${expected}, found '${d}' (${why}${at})`);
  }
  const dtype = d as DType;

  const fortran = dict.get("fortran_order");
  if (typeof fortran !== "boolean") {
    fail(`malformed NPY header: fortran_order must be True or False (${at})`);
  }

  const shapeValue = dict.get("shape");
  if (!Array.isArray(shapeValue)) fail(`malformed NPY header: shape must be a tuple (${at})`);
  const shape: number[] = [];
  for (const dim of shapeValue as unknown[]) {
    const ok = typeof dim === "number" && Number.isSafeInteger(dim) && dim >= 0;
    if (!ok) {
      fail(
        `invalid shape (${(shapeValue as unknown[]).map(pyRepr).join(", ")}): dimension ` +
          `${pyRepr(dim)} is not a non-negative integer below 2^53 (${at})`,
      );
    }
    shape.push(dim as number);
  }
  if (shape.length === 0) {
    fail(`unsupported shape (): a scalar; expected an array of one or more dimensions (${at})`);
  }
  // A 1-D array has the same layout in either order; numpy itself only writes False for it.
  if (fortran === true && shape.length > 1) {
    fail(
      `Fortran-order arrays are not supported; save a C-order copy ` +
        `(np.ascontiguousarray) (${at})`,
    );
  }
  const dataBytes = checkedDataBytes(dtype, shape, dataOffset, (msg) => fail(`${msg} (${at})`));

  if (opts.fileSize !== undefined) {
    const expected = dataOffset + dataBytes;
    if (opts.fileSize < expected) {
      fail(
        `truncated file: header says shape ${formatShape(shape)} ${dtypeName(dtype)}, which ` +
          `needs ${expected} bytes, but the file has ${opts.fileSize} bytes`,
      );
    }
    if (opts.fileSize > expected) {
      fail(
        `file size does not match its header: shape ${formatShape(shape)} ` +
          `${dtypeName(dtype)} needs ${expected} bytes, but the file has ${opts.fileSize} bytes ` +
          `(${opts.fileSize - expected} trailing bytes)`,
      );
    }
  }
  return { version, dtype, shape, dictOffset, dataOffset, dataBytes };
}

/**
 * product(shape) × item size, checked so that header + data stays below 2^53 (larger lengths
 * would abort the process when a view is created instead of throwing).
 */
export function checkedDataBytes(
  dtype: DType,
  shape: readonly number[],
  headerBytes = 0,
  fail: (msg: string) => never = (msg) => {
    throw new Error(msg);
  },
): number {
  let total = BigInt(itemSize(dtype));
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      fail(`invalid shape ${formatShape(shape)}: ${dim} is not a non-negative integer`);
    }
    total *= BigInt(dim);
  }
  if (total + BigInt(headerBytes) > BigInt(Number.MAX_SAFE_INTEGER)) {
    fail(`array too large: shape ${formatShape(shape)} ${dtypeName(dtype)} needs over 2^53 bytes`);
  }
  return Number(total);
}

/** Options for {@link encodeNpyHeader}. */
export interface EncodeNpyHeaderOptions {
  /** Element type. */
  dtype: DType;
  /** C-order shape, at least one dimension. */
  shape: readonly number[];
  /**
   * Exact total header length to produce (used to rewrite a header in place); by default the
   * smallest multiple of 64 that also leaves room for `shape[0]` to grow to 21 digits.
   */
  headerLength?: number;
  /** Format major version (default 1, or 2 if the header needs more than 65535 bytes). */
  version?: 1 | 2 | 3;
}

/**
 * Encode an NPY header (preamble + dict + padding + `\n`) in numpy's own spelling, e.g.
 * `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`. The result's length is the
 * data offset. Throws if `headerLength` is too small for the dict.
 */
export function encodeNpyHeader(opts: EncodeNpyHeaderOptions): Uint8Array<ArrayBuffer> {
  const { dtype, shape } = opts;
  if (!isDType(dtype)) throw new Error(`unsupported dtype '${String(dtype)}'`);
  if (shape.length === 0) throw new Error("unsupported shape (): expected at least one dimension");
  checkedDataBytes(dtype, shape);
  const shapeText = formatShape(shape);
  const dict = `{'descr': '${dtype}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  let version = opts.version ?? 1;
  const minLength = (v: number) => (v === 1 ? 10 : 12) + dict.length + 1;
  let total: number;
  if (opts.headerLength !== undefined) {
    total = opts.headerLength;
    if (total < minLength(version)) {
      throw new Error(
        `header for shape ${shapeText} needs ${minLength(version)} bytes, only ${total} reserved`,
      );
    }
  } else {
    const growth = Math.max(0, GROWTH_DIGITS - String(shape[0]).length);
    const round = (n: number) => Math.ceil(n / NPY_ALIGN) * NPY_ALIGN;
    total = round(minLength(version) + growth);
    if (version === 1 && total - 10 > 0xffff && opts.version === undefined) {
      version = 2;
      total = round(minLength(version) + growth);
    }
  }
  const dictOffset = version === 1 ? 10 : 12;
  const dictLength = total - dictOffset;
  if (version === 1 && dictLength > 0xffff) {
    throw new Error(`NPY 1.0 headers hold at most 65535 bytes; ${dictLength} needed`);
  }
  const out = new Uint8Array(total);
  out.set(NPY_MAGIC, 0);
  out[6] = version;
  out[7] = 0;
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, dictLength, true);
  else dv.setUint32(8, dictLength, true);
  out.fill(0x20, dictOffset, total - 1);
  for (let i = 0; i < dict.length; i++) out[dictOffset + i] = dict.charCodeAt(i);
  out[total - 1] = 0x0a;
  return out;
}

/** Names of common numpy dtypes this toolkit does not store, for messages. */
const OTHER_DTYPES: Record<string, string> = {
  f8: "float64; ",
  i1: "int8; ",
  i2: "int16; ",
  u4: "uint32; ",
  u8: "uint64; ",
  b1: "bool; ",
  c8: "complex64; ",
  c16: "complex128; ",
};

/** numpy refuses headers over 10000 bytes by default; allow far more but not gigabytes. */
const MAX_DICT_BYTES = 1 << 20;

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    s += String.fromCharCode(...bytes.subarray(i, i + 4096));
  }
  return s;
}

/** A shape as Python writes a tuple: `(5,)`, `(3, 4)`. */
export function formatShape(shape: readonly number[]): string {
  return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
}

function joinOr(items: string[]): string {
  return items.length <= 1 ? items.join("") : `${items.slice(0, -1).join(", ")} or ${items.at(-1)}`;
}

// ---------------------------------------------------------------------------------------------
// A small parser for the Python literal numpy writes: a dict of str keys whose values are str,
// True/False, ints or tuples/lists of them. It accepts what `ast.literal_eval` would for these
// forms: either quote style, any whitespace, trailing commas, and Python 2 `L` suffixes.

/**
 * A number literal that is not a safe integer (`3.0`, `1e3`, `99999999999999999999`), kept as
 * text so that messages quote the header; `3.0` is not a valid dimension even though 3 is.
 */
class PyLiteral {
  constructor(readonly text: string) {}
}

type PyValue = string | boolean | number | null | PyLiteral | PyValue[];

function pyRepr(v: unknown): string {
  if (typeof v === "string") return `'${v}'`;
  if (v === null) return "None";
  if (typeof v === "boolean") return v ? "True" : "False";
  if (Array.isArray(v)) return `(${v.map(pyRepr).join(", ")})`;
  if (v instanceof PyLiteral) return v.text;
  return String(v);
}

function parseDict(text: string, base: number, name: string): Map<string, PyValue> {
  let i = 0;
  const fail = (msg: string): never => {
    const near = JSON.stringify(text.slice(i, i + 20));
    throw new Error(
      `${name}: malformed NPY header: ${msg} at byte ${base + i} near ${near} ` +
        `(header at byte ${base})`,
    );
  };
  const ws = () => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  const expect = (c: string) => {
    ws();
    if (text[i] !== c) fail(`expected '${c}'`);
    i++;
  };
  const parseString = (): string => {
    const q = text[i];
    if (q !== "'" && q !== '"') fail("expected a quoted string");
    i++;
    let s = "";
    while (i < text.length && text[i] !== q) {
      if (text[i] === "\\") i++;
      s += text[i++];
    }
    if (i >= text.length) fail("unterminated string");
    i++;
    return s;
  };
  const parseValue = (): PyValue => {
    ws();
    const c = text[i];
    if (c === "'" || c === '"') return parseString();
    if (c === "(" || c === "[") {
      const close = c === "(" ? ")" : "]";
      i++;
      const items: PyValue[] = [];
      for (;;) {
        ws();
        if (text[i] === close) break;
        items.push(parseValue());
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] !== close) fail(`expected ',' or '${close}'`);
      }
      i++;
      return items;
    }
    const m = /^(True|False|None|[-+]?[0-9][0-9_]*(\.[0-9]*)?([eE][-+]?[0-9]+)?[lL]?)/.exec(
      text.slice(i, i + 64),
    );
    if (!m) return fail("expected a value");
    i += m[0].length;
    if (m[0] === "True") return true;
    if (m[0] === "False") return false;
    if (m[0] === "None") return null;
    // Floats and out-of-range ints are rejected by the shape check, quoting the header's text.
    const n = Number(m[0].replace(/[lL_]/g, ""));
    return /[.eE]/.test(m[0]) || !Number.isSafeInteger(n) ? new PyLiteral(m[0]) : n;
  };

  const dict = new Map<string, PyValue>();
  expect("{");
  for (;;) {
    ws();
    if (text[i] === "}") break;
    const key = parseString();
    expect(":");
    if (dict.has(key)) fail(`duplicate key '${key}'`);
    dict.set(key, parseValue());
    ws();
    if (text[i] === ",") {
      i++;
      continue;
    }
    if (text[i] !== "}") fail("expected ',' or '}'");
  }
  i++;
  ws();
  if (i < text.length && text.slice(i).replace(/\0/g, "").length) fail("unexpected text after '}'");
  return dict;
}
