import assert from "node:assert/strict";
import {
  DTYPES,
  encodeNpyHeader,
  type NpyHeader,
  npyHeaderLength,
  parseNpyHeader,
} from "../lib/storage/npy.ts";
import { f16ArrayToF32, f16ToF32, f32ArrayToF16, f32ToF16 } from "../lib/storage/half.ts";

/** An NPY header around `dict`, padded with spaces + "\n" to `total` bytes (or 64-aligned). */
function header(dict: string, opts: { version?: number; minor?: number; total?: number } = {}) {
  const version = opts.version ?? 1;
  const pre = version === 1 ? 10 : 12;
  const total = opts.total ?? Math.ceil((pre + dict.length + 1) / 64) * 64;
  const out = new Uint8Array(total).fill(0x20);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, opts.minor ?? 0]);
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, total - pre, true);
  else dv.setUint32(8, total - pre, true);
  out.set(new TextEncoder().encode(dict), pre);
  out[total - 1] = 0x0a;
  return out;
}

function parseError(bytes: Uint8Array, opts = {}): string {
  try {
    parseNpyHeader(bytes, { name: "keys.npy", ...opts });
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail("expected parseNpyHeader to throw");
}

const F4_3x4 = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";

Deno.test("a numpy-style 1.0 header parses to dtype, shape and a 64-aligned data offset", () => {
  const h: NpyHeader = parseNpyHeader(header(F4_3x4), { name: "keys.npy" });
  assert.deepEqual(h, {
    version: 1,
    dtype: "<f4",
    shape: [3, 4],
    dictOffset: 10,
    dataOffset: 128,
    dataBytes: 48,
  });
});

Deno.test("a 1-D shape written as (5,) parses as one dimension", () => {
  const h = parseNpyHeader(header("{'descr': '|u1', 'fortran_order': False, 'shape': (5,), }"));
  assert.deepEqual(h.shape, [5]);
  assert.equal(h.dataBytes, 5);
});

Deno.test("header dicts parse whatever the quoting, key order, spacing or trailing commas", () => {
  const variants = [
    '{"shape": (3, 4), "descr": "<f4", "fortran_order": False}',
    "{ 'fortran_order' :False,'shape':(3,4),'descr':'<f4' }",
    "{'descr': '<f4',\n 'fortran_order': False,\n 'shape': (3L, 4L),}",
    "{'descr':'<f4','fortran_order':False,'shape':[3, 4,],}",
  ];
  for (const dict of variants) {
    const h = parseNpyHeader(header(dict));
    assert.equal(h.dtype, "<f4", dict);
    assert.deepEqual(h.shape, [3, 4], dict);
  }
});

Deno.test("format 2.0 and 3.0 headers use a 4-byte length and start the dict at byte 12", () => {
  for (const version of [2, 3]) {
    const h = parseNpyHeader(header(F4_3x4, { version }));
    assert.equal(h.version, version);
    assert.equal(h.dictOffset, 12);
    assert.equal(h.dataOffset, 128);
    assert.deepEqual(h.shape, [3, 4]);
  }
});

Deno.test("encoded headers round-trip, are 64-aligned and keep room for shape[0] to grow", () => {
  for (const dtype of DTYPES) {
    for (const shape of [[0], [5], [3, 4], [1_000_000_007, 1024], [2, 3, 4]]) {
      const bytes = encodeNpyHeader({ dtype, shape });
      assert.equal(bytes.length % 64, 0);
      assert.equal(bytes.at(-1), 0x0a);
      const h = parseNpyHeader(bytes);
      assert.equal(h.dtype, dtype);
      assert.deepEqual(h.shape, shape);
      assert.equal(h.dataOffset, bytes.length);
      // Spaces before the final "\n" leave room for shape[0] to grow to 21 digits in place.
      const text = new TextDecoder().decode(bytes);
      const spaces = bytes.length - 1 - (text.lastIndexOf("}") + 1);
      assert.ok(spaces >= 21 - String(shape[0]).length, `${dtype} ${shape}: ${spaces} spaces`);
    }
  }
  const text = String.fromCharCode(...encodeNpyHeader({ dtype: "<f4", shape: [3, 4] }));
  assert.ok(text.startsWith(`\x93NUMPY\x01\x00v\x00${F4_3x4} `), JSON.stringify(text));
  assert.equal(
    new TextDecoder().decode(encodeNpyHeader({ dtype: "<i8", shape: [7] })).slice(10, 67),
    "{'descr': '<i8', 'fortran_order': False, 'shape': (7,), }",
  );
});

Deno.test("encoding into a fixed header length pads exactly or refuses when it cannot fit", () => {
  const exact = encodeNpyHeader({ dtype: "<f4", shape: [3, 4], headerLength: 70 });
  assert.equal(exact.length, 70);
  assert.deepEqual(parseNpyHeader(exact).shape, [3, 4]);
  assert.throws(
    () => encodeNpyHeader({ dtype: "<f4", shape: [30, 4], headerLength: 70 }),
    /needs 71 bytes, only 70 reserved/,
  );
  const v2 = encodeNpyHeader({ dtype: "<u2", shape: [9], version: 2 });
  assert.equal(v2[6], 2);
  assert.equal(parseNpyHeader(v2).dictOffset, 12);
});

Deno.test("npyHeaderLength reads the total header size from the first 12 bytes", () => {
  assert.equal(npyHeaderLength(header(F4_3x4).subarray(0, 12)), 128);
  assert.equal(npyHeaderLength(header(F4_3x4, { version: 2, total: 192 })), 192);
  assert.equal(npyHeaderLength(new Uint8Array(11)), undefined);
});

Deno.test("a file without the NPY magic is refused as not an NPY file", () => {
  const bytes = new TextEncoder().encode("import numpy as np\nprint(1)\n");
  assert.equal(
    parseError(bytes),
    "keys.npy: not an NPY file (bad magic: expected 93 4e 55 4d 50 59, found 69 6d 70 6f 72 74)",
  );
  assert.match(parseError(new Uint8Array(0), { fileSize: 0 }), /not an NPY file \(file is 0 bytes/);
});

Deno.test("unsupported format versions are refused with the version found", () => {
  assert.equal(
    parseError(header(F4_3x4, { version: 4 })),
    "keys.npy: unsupported NPY format version 4.0 (supported: 1.0, 2.0, 3.0)",
  );
  assert.match(parseError(header(F4_3x4, { minor: 1 })), /version 1\.1/);
});

Deno.test("a big-endian dtype is refused naming the dtype, endianness and header offset", () => {
  const bytes = header("{'descr': '>f4', 'fortran_order': False, 'shape': (3, 4), }");
  assert.equal(
    parseError(bytes, { dtypes: ["<f4", "<f2"] }),
    "keys.npy: expected dtype float32 or float16, found '>f4' (big-endian; header at byte 10)",
  );
  assert.match(parseError(bytes), /found '>f4' \(big-endian; header at byte 10\)/);
});

Deno.test("dtypes outside the supported or requested set are refused by name", () => {
  const i8 = header("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }");
  assert.equal(
    parseError(i8, { dtypes: ["<f4", "<f2"] }),
    "keys.npy: expected dtype float32 or float16, found '<i8' (header at byte 10)",
  );
  const f8 = header("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", { version: 2 });
  assert.match(parseError(f8), /found '<f8' \(float64; header at byte 12\)/);
  const structured = header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }");
  assert.match(parseError(structured), /structured dtypes are not supported/);
});

Deno.test("Fortran-order 2-D arrays are refused; a 1-D one has C layout and is accepted", () => {
  const f2d = header("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }");
  assert.match(parseError(f2d), /Fortran-order arrays are not supported.*header at byte 10/);
  const f1d = header("{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }");
  assert.deepEqual(parseNpyHeader(f1d).shape, [3]);
});

Deno.test("negative, non-integer and oversized dimensions are refused quoting the shape", () => {
  const cases: [string, RegExp][] = [
    ["(-3, 4)", /invalid shape \(-3, 4\): dimension -3 is not a non-negative integer/],
    ["(3.5, 4)", /dimension 3\.5 is not/],
    ["(3.0, 4)", /dimension 3\.0 is not/],
    ["('3', 4)", /dimension '3' is not/],
    ["(None,)", /dimension None is not/],
    ["(99999999999999999999, 4)", /dimension 99999999999999999999 is not/],
    ["()", /unsupported shape \(\): a scalar; expected an array of one or more dimensions/],
  ];
  for (const [shape, re] of cases) {
    const bytes = header(`{'descr': '<f4', 'fortran_order': False, 'shape': ${shape}, }`);
    assert.match(parseError(bytes), re, shape);
  }
  const huge = header("{'descr': '<f4', 'fortran_order': False, 'shape': (4503599627370495, 4), }");
  assert.match(parseError(huge), /array too large: .* needs over 2\^53 bytes/);
});

Deno.test("malformed dicts are refused with the byte position of the problem", () => {
  assert.match(
    parseError(header("{'descr': '<f4', 'fortran_order': False 'shape': (3,), }")),
    /malformed NPY header: expected ',' or '}' at byte 50/,
  );
  assert.match(
    parseError(header("{'descr': '<f4', 'shape': (3,), }")),
    /missing key 'fortran_order'/,
  );
  assert.match(
    parseError(header("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}")),
    /unexpected key 'x'/,
  );
  assert.match(parseError(header(F4_3x4).subarray(0, 40)), /truncated NPY header: header says 128/);
});

Deno.test("a header that does not match the file size reports expected and actual bytes", () => {
  assert.equal(
    parseError(header(F4_3x4), { fileSize: 150 }),
    "keys.npy: truncated file: header says shape (3, 4) float32, which needs 176 bytes, " +
      "but the file has 150 bytes",
  );
  assert.match(parseError(header(F4_3x4), { fileSize: 180 }), /needs 176 bytes.*4 trailing bytes/);
  assert.equal(parseNpyHeader(header(F4_3x4), { fileSize: 176 }).dataBytes, 48);
});

// ---- float16 helpers ----

Deno.test("f16ToF32 decodes every half bit pattern exactly like the native Float16Array", () => {
  const bits = new Uint16Array(65536).map((_, i) => i);
  const native = new Float16Array(bits.buffer);
  const ours = f16ArrayToF32(bits);
  for (let h = 0; h < 65536; h++) {
    assert.ok(
      Object.is(f16ToF32(h), native[h]) || (isNaN(native[h]) && isNaN(f16ToF32(h))),
      `h=${h}`,
    );
    assert.ok(Object.is(ours[h], native[h]) || (isNaN(native[h]) && isNaN(ours[h])), `h=${h}`);
  }
});

Deno.test("f32ToF16 inverts f16ToF32 for every non-NaN half value", () => {
  for (let h = 0; h < 65536; h++) {
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue; // NaN payloads
    assert.equal(f32ToF16(f16ToF32(h)), h, `h=${h}`);
  }
});

Deno.test("f32ToF16 rounds to nearest with ties to even, overflows to Inf and keeps NaN", () => {
  assert.equal(f32ToF16(65504), 0x7bff); // largest finite half
  assert.equal(f32ToF16(65519), 0x7bff); // below the midpoint to 65536
  assert.equal(f32ToF16(65520), 0x7c00); // midpoint ties to even = Inf
  assert.equal(f32ToF16(-1e9), 0xfc00);
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // tie between 1 and 1+2^-10: even is 1
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02); // tie: even is 1+2^-9
  assert.equal(f32ToF16(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(f32ToF16(2 ** -25), 0x0000); // tie to even rounds to zero
  assert.equal(f32ToF16(1.5 * 2 ** -25), 0x0001);
  assert.equal(f32ToF16(3 * 2 ** -25), 0x0002); // 1.5 ulp ties to even 2
  assert.equal(f32ToF16(-0), 0x8000);
  const nan = f32ToF16(NaN);
  assert.equal(nan & 0x7c00, 0x7c00);
  assert.notEqual(nan & 0x3ff, 0);
});

Deno.test("f32ToF16 agrees with the native Float16Array on random float32 bit patterns", () => {
  const u = new Uint32Array(200_000);
  let s = 12345;
  for (let i = 0; i < u.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    u[i] = (s ^ (s << 7)) >>> 0;
  }
  const f = new Float32Array(u.buffer);
  const ours = f32ArrayToF16(f);
  const native = new Uint16Array(Float16Array.from(f).buffer);
  for (let i = 0; i < f.length; i++) {
    if (isNaN(f[i])) continue;
    assert.equal(ours[i], native[i], `x=${f[i]}`);
  }
});
