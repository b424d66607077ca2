import assert from "node:assert/strict";
import { MappedArray } from "../lib/storage/mmap.ts";
import type { ErrnoError } from "../lib/storage/_libc.ts";
import { DTYPES, encodeNpyHeader, type TypedArray } from "../lib/storage/npy.ts";
import { expectedValues, fillValues } from "./_values.ts";

/** Elements of any view as a plain array (numbers, or bigints for `<i8`). */
function list(view: TypedArray): (number | bigint)[] {
  return Array.from(view as ArrayLike<number | bigint>);
}

function tempDir(): string {
  return Deno.makeTempDirSync({ prefix: "knnlm_mmap_test_" });
}

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  assert.fail("expected an error");
}

/** Write a raw file: `header` (an encoded NPY header) followed by `dataBytes` zero bytes. */
function writeRaw(path: string, header: Uint8Array, dataBytes: number): void {
  const bytes = new Uint8Array(header.length + dataBytes);
  bytes.set(header);
  Deno.writeFileSync(path, bytes);
}

Deno.test("every dtype round-trips through create, a view, close and reopen", () => {
  const dir = tempDir();
  try {
    for (const dtype of DTYPES) {
      for (const shape of [[11], [7, 3]]) {
        const path = `${dir}/a${dtype.slice(1)}_${shape.length}d.npy`;
        const n = shape.reduce((a, b) => a * b, 1);
        {
          using a = MappedArray.create(path, { dtype, shape });
          assert.deepEqual(a.shape, shape);
          assert.equal(a.rows, shape[0]);
          assert.equal(a.rowLength, shape[1] ?? 1);
          fillValues(dtype, a.view());
          a.flush();
        }
        using b = MappedArray.open(path);
        assert.equal(b.dtype, dtype);
        assert.deepEqual(b.shape, shape);
        assert.equal(b.dataOffset % 64, 0);
        assert.deepEqual(list(b.view()), expectedValues(dtype, n), `${dtype} ${shape}`);
        assert.equal(Deno.statSync(path).size, b.dataOffset + b.byteLength);
      }
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("views are typed per dtype and alias the same mapped rows without copying", () => {
  const dir = tempDir();
  try {
    using f4 = MappedArray.create(`${dir}/f4.npy`, { dtype: "<f4", shape: [4, 3] });
    const all = f4.view();
    const rows12 = f4.view(1, 3);
    assert.ok(rows12 instanceof Float32Array);
    assert.equal(rows12.length, 6);
    rows12[0] = 2.5; // row 1, column 0
    assert.equal(all[3], 2.5);
    all[11] = -1;
    assert.equal(f4.view(3, 4)[2], -1);
    assert.equal(f4.view(2, 2).length, 0);
    using f2 = MappedArray.create(`${dir}/f2.npy`, { dtype: "<f2", shape: [2] });
    assert.ok(f2.view() instanceof Uint16Array);
    using i8 = MappedArray.create(`${dir}/i8.npy`, { dtype: "<i8", shape: [2] });
    assert.ok(i8.view() instanceof BigInt64Array);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("out-of-range or non-integer row ranges are refused before a view is made", () => {
  const dir = tempDir();
  try {
    using a = MappedArray.create(`${dir}/a.npy`, { dtype: "<f4", shape: [4, 3] });
    for (const [s, e] of [[-1, 2], [0, 5], [3, 2], [0.5, 2], [0, 2 ** 60], [NaN, 1]]) {
      assert.throws(() => a.view(s, e), RangeError, `[${s}, ${e})`);
    }
    assert.throws(() => a.pointer(5), /pointer: rows \[5, 4\) out of range for 4 rows/);
    assert.throws(() => a.flush(0, 9), RangeError);
    assert.throws(() => a.advise("random", 2, 1), RangeError);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("pointer(row) addresses the same bytes the views see", () => {
  const dir = tempDir();
  try {
    using a = MappedArray.create(`${dir}/a.npy`, { dtype: "<i4", shape: [5, 4] });
    fillValues("<i4", a.view());
    const pv = new Deno.UnsafePointerView(a.pointer(3));
    assert.equal(pv.getInt32(0), a.view(3, 4)[0]);
    assert.equal(pv.getInt32(4 * 5), a.view(4, 5)[1]);
    const start = Deno.UnsafePointer.value(a.pointer(0));
    assert.equal(BigInt(Deno.UnsafePointer.value(a.pointer(5))) - BigInt(start), 80n);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a view used after close() throws instead of reading unmapped memory", () => {
  const dir = tempDir();
  try {
    const a = MappedArray.create(`${dir}/a.npy`, { dtype: "<f4", shape: [4, 3] });
    const v = a.view(1, 3);
    v.fill(7);
    a.close();
    assert.equal(a.closed, true);
    assert.equal(v.length, 0);
    assert.equal(v.buffer.detached, true);
    assert.equal(v[0], undefined);
    assert.throws(() => v.subarray(0, 1), TypeError);
    assert.throws(() => v.set([1]), TypeError);
    assert.throws(() => [...v], TypeError);
    assert.throws(() => new Float32Array(v.buffer), TypeError);
    assert.throws(() => a.view(), /a\.npy: cannot view: the array is closed/);
    assert.throws(() => a.pointer(), /cannot pointer: the array is closed/);
    assert.throws(() => a.flush(), /closed/);
    assert.throws(() => a.advise("random"), /closed/);
    assert.throws(() => a.resize(8), /closed/);
    a.close(); // a second close is a no-op
    using b = MappedArray.open(`${dir}/a.npy`, { dtypes: ["<f4"] });
    assert.deepEqual(Array.from(b.view(1, 3)), [7, 7, 7, 7, 7, 7]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("`using` closes the mapping at the end of the block", () => {
  const dir = tempDir();
  try {
    let v: Float32Array;
    let escaped: MappedArray;
    {
      using a = MappedArray.create(`${dir}/a.npy`, { dtype: "<f4", shape: [2, 2] });
      v = a.view() as Float32Array;
      escaped = a;
    }
    assert.equal(escaped.closed, true);
    assert.throws(() => v.at(0), TypeError);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("resize grows a datastore in place, keeping rows and zero-filling new ones", () => {
  const dir = tempDir();
  const path = `${dir}/keys.npy`;
  try {
    {
      using a = MappedArray.create(path, { dtype: "<f4", shape: [3, 4] });
      fillValues("<f4", a.view());
      a.flush();
    }
    using a = MappedArray.open(path, { mode: "r+", dtypes: ["<f4"] });
    const offset = a.dataOffset;
    const before = a.view();
    a.resize(1000);
    assert.equal(before.length, 0, "views from before the resize are detached");
    assert.deepEqual(a.shape, [1000, 4]);
    assert.equal(a.dataOffset, offset, "header length unchanged");
    assert.deepEqual(Array.from(a.view(0, 3)), expectedValues("<f4", 12));
    assert.deepEqual(Array.from(a.view(3, 5)), new Array(8).fill(0));
    fillValues("<f4", a.view(3, 1000), 12);
    a.resize(123_456_789_012); // 12 digits: still fits the reserved header room
    a.resize(1000);
    a.flush();
    assert.equal(Deno.statSync(path).size, offset + 1000 * 16);
    a.close();
    using b = MappedArray.open(path, { dtypes: ["<f4"] });
    assert.deepEqual(b.shape, [1000, 4]);
    assert.deepEqual(Array.from(b.view()), expectedValues("<f4", 4000));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("resize shrinks by cutting rows off the end", () => {
  const dir = tempDir();
  const path = `${dir}/vals.npy`;
  try {
    using a = MappedArray.create(path, { dtype: "<i8", shape: [10] });
    fillValues("<i8", a.view());
    a.resize(4);
    assert.deepEqual(Array.from(a.view()), expectedValues("<i8", 4));
    a.resize(0);
    assert.equal(a.view().length, 0);
    a.resize(2);
    assert.deepEqual(Array.from(a.view()), [0n, 0n]);
    assert.equal(Deno.statSync(path).size, a.dataOffset + 16);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("resize refuses when the header has no room for the longer shape", () => {
  const dir = tempDir();
  const path = `${dir}/tight.npy`;
  try {
    // A 70-byte header (valid NPY, as some writers produce) leaves no spare padding.
    writeRaw(path, encodeNpyHeader({ dtype: "<f4", shape: [3, 4], headerLength: 70 }), 48);
    using a = MappedArray.open(path, { mode: "r+" });
    assert.throws(
      () => a.resize(10),
      /tight\.npy: cannot resize in place: header for shape \(10, 4\) needs 71 bytes, only 70/,
    );
    assert.deepEqual(a.shape, [3, 4]);
    a.resize(5); // same width: fits
    assert.deepEqual(a.shape, [5, 4]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("mode r maps copy-on-write: writes through a view never reach the file", () => {
  const dir = tempDir();
  const path = `${dir}/a.npy`;
  try {
    MappedArray.create(path, { dtype: "|u1", shape: [8] }).close();
    {
      using a = MappedArray.open(path, { dtypes: ["|u1"] });
      a.view().fill(9);
      assert.equal(a.view()[0], 9);
      assert.throws(() => a.flush(), /cannot flush: opened read-only/);
      assert.throws(() => a.resize(9), /cannot resize: opened read-only/);
    }
    using b = MappedArray.open(path, { dtypes: ["|u1"] });
    assert.deepEqual(Array.from(b.view()), new Array(8).fill(0));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("advise accepts every hint, whole file or a row range, and rejects unknown ones", () => {
  const dir = tempDir();
  try {
    using a = MappedArray.create(`${dir}/a.npy`, { dtype: "<f4", shape: [4096, 8] });
    a.view(100, 200).fill(3);
    a.flush(100, 200);
    for (const hint of ["normal", "sequential", "random", "willneed", "dontneed"] as const) {
      a.advise(hint);
      a.advise(hint, 1000, 3000);
    }
    // dontneed after a flush drops the pages, not the data.
    assert.deepEqual(Array.from(a.view(150, 151)), new Array(8).fill(3));
    assert.throws(
      () => a.advise("often" as "normal"),
      /unknown advice "often" \(expected normal, random, sequential, willneed, dontneed\)/,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a file over 4 GiB is created sparse and its last row written and read back", () => {
  const dir = tempDir();
  const path = `${dir}/big.npy`;
  try {
    const rows = 2 ** 22 + 2; // [rows, 256] float32 = 4 GiB + 2 KiB
    {
      using a = MappedArray.create(path, { dtype: "<f4", shape: [rows, 256] });
      assert.ok(a.byteLength > 2 ** 32);
      const last = a.view(rows - 1, rows);
      for (let i = 0; i < 256; i++) last[i] = i + 0.5;
      a.flush(rows - 1, rows);
    }
    const st = Deno.statSync(path);
    assert.equal(st.size, 128 + rows * 1024);
    assert.ok((st.blocks ?? 0) * 512 < 16 << 20, "sparse: only touched pages use disk");
    using b = MappedArray.open(path, { dtypes: ["<f4"] });
    const last = b.view(rows - 1, rows);
    assert.equal(last.length, 256);
    assert.equal(last[0], 0.5);
    assert.equal(last[255], 255.5);
    assert.deepEqual(Array.from(b.view(rows - 2, rows - 1)).slice(0, 4), [0, 0, 0, 0]);
    const pv = new Deno.UnsafePointerView(b.pointer(rows - 1));
    assert.equal(pv.getFloat32(255 * 4), 255.5);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("create over a still-mapped file replaces it and the old mapping stays valid", () => {
  const dir = tempDir();
  const path = `${dir}/keys.npy`;
  try {
    using old = MappedArray.create(path, { dtype: "<f4", shape: [1024, 64] });
    old.view().fill(5);
    // Truncating the old inode would make the next read fault (SIGBUS) and end the process.
    using fresh = MappedArray.create(path, { dtype: "<f4", shape: [2, 64] });
    assert.equal(old.view(1023, 1024)[63], 5);
    assert.deepEqual(Array.from(fresh.view(1, 2)).slice(0, 2), [0, 0]);
    assert.equal(Deno.statSync(path).size, fresh.dataOffset + 2 * 64 * 4);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("create with allocate reserves the disk blocks up front", () => {
  const dir = tempDir();
  try {
    const path = `${dir}/a.npy`;
    MappedArray.create(path, { dtype: "<f4", shape: [1024, 256], allocate: true }).close();
    assert.ok((Deno.statSync(path).blocks ?? 0) * 512 >= 1 << 20);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("create refuses a bad dtype or shape without touching the disk", () => {
  const dir = tempDir();
  const path = `${dir}/k.npy`;
  try {
    const create = (dtype: string, shape: number[]) => () =>
      MappedArray.create(path, { dtype: dtype as "<f4", shape });
    const cases: [() => unknown, RegExp][] = [
      [create("<f8", [3]), /unsupported dtype '<f8'/],
      [create("<f4", []), /at least one dimension/],
      [create("<f4", [3, -1]), /-1 is not a non-negative integer/],
      [create("<f4", [2.5]), /2\.5 is not a non-negative integer/],
      [create("<f4", [2 ** 51, 4]), /needs over 2\^53 bytes/],
    ];
    for (const [fn, re] of cases) {
      const err = errorOf(fn);
      assert.match(err.message, re);
      assert.ok(err.message.startsWith(`${path}: `), err.message);
    }
    assert.equal([...Deno.readDirSync(dir)].length, 0);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a path in a missing directory is refused naming the directory", () => {
  const dir = tempDir();
  try {
    const path = `${dir}/no/such/keys.npy`;
    const created = errorOf(() => MappedArray.create(path, { dtype: "<f4", shape: [3] }));
    assert.equal(
      created.message,
      `${path}: cannot create: directory '${dir}/no/such' does not exist (ENOENT)`,
    );
    assert.equal((created as ErrnoError).code, "E_NOT_FOUND");
    assert.equal((created as ErrnoError).errnoName, "ENOENT");
    const opened = errorOf(() => MappedArray.open(path));
    assert.match(
      opened.message,
      /cannot open for reading: directory '.*\/no\/such' does not exist/,
    );
    const missing = errorOf(() => MappedArray.open(`${dir}/keys.npy`));
    assert.equal(
      missing.message,
      `${dir}/keys.npy: cannot open for reading: No such file or directory (ENOENT)`,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a read-only file opened for writing is refused with EACCES from strerror", async () => {
  const dir = tempDir();
  const path = `${dir}/ro.npy`;
  try {
    MappedArray.create(path, { dtype: "<f4", shape: [3] }).close();
    Deno.chmodSync(path, 0o444);
    let message: string;
    if (Deno.uid() !== 0) {
      message = errorOf(() => MappedArray.open(path, { mode: "r+" })).message;
    } else {
      // root bypasses file permissions; drop that capability in a child process.
      const mod = new URL("../lib/storage/mmap.ts", import.meta.url).href;
      const code = `import { MappedArray } from ${JSON.stringify(mod)};
        try { MappedArray.open(${JSON.stringify(path)}, { mode: "r+" }); console.log("opened"); }
        catch (e) { console.log(e.message); }`;
      const out = await new Deno.Command("setpriv", {
        args: ["--bounding-set", "-dac_override,-dac_read_search", "--", Deno.execPath()]
          .concat(["eval", "--quiet", code]),
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `setpriv (util-linux) could not drop CAP_DAC_OVERRIDE: ${stderr}`);
      message = new TextDecoder().decode(out.stdout).trim();
    }
    assert.equal(
      message,
      `${path}: cannot open for reading and writing: Permission denied (EACCES)`,
    );
    using a = MappedArray.open(path); // reading is still fine
    assert.equal(a.rows, 3);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("files that are not valid NPY are refused naming the file and the problem", () => {
  const dir = tempDir();
  try {
    const f4 = (shape: number[], opts = {}) => encodeNpyHeader({ dtype: "<f4", shape, ...opts });
    const cases: [string, Uint8Array, number, RegExp | string][] = [
      ["text.npy", new TextEncoder().encode("hello, world\n"), 0, /not an NPY file \(bad magic/],
      ["empty.npy", new Uint8Array(0), 0, /empty\.npy: not an NPY file \(file is 0 bytes/],
      [
        "v9.npy",
        f4([3]).map((b, i) => (i === 6 ? 9 : b)),
        12,
        /unsupported NPY format version 9\.0/,
      ],
      [
        "trunc.npy",
        f4([3, 4]),
        40,
        "trunc.npy: truncated file: header says shape (3, 4) float32, " +
        "which needs 176 bytes, but the file has 168 bytes",
      ],
      ["long.npy", f4([3, 4]), 52, /needs 176 bytes, but the file has 180 bytes \(4 trailing/],
    ];
    const header = (dict: string) => {
      const h = f4([3]);
      h.fill(0x20, 10, h.length - 1);
      h.set(new TextEncoder().encode(dict), 10);
      return h;
    };
    cases.push(
      [
        "be.npy",
        header("{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }"),
        12,
        /be\.npy: expected a supported dtype .*, found '>f4' \(big-endian; header at byte 10\)/,
      ],
      [
        "fortran.npy",
        header("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 1), }"),
        12,
        /Fortran-order arrays are not supported/,
      ],
      [
        "neg.npy",
        header("{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }"),
        12,
        /invalid shape \(-3\): dimension -3 is not a non-negative integer/,
      ],
      [
        "frac.npy",
        header("{'descr': '<f4', 'fortran_order': False, 'shape': (1.5,), }"),
        12,
        /dimension 1\.5 is not/,
      ],
    );
    for (const [name, head, dataBytes, expected] of cases) {
      const path = `${dir}/${name}`;
      writeRaw(path, head, dataBytes);
      const err = errorOf(() => MappedArray.open(path));
      if (typeof expected === "string") assert.equal(err.message, `${dir}/${expected}`);
      else assert.match(err.message, expected);
      assert.ok(err.message.startsWith(`${path}: `), err.message);
    }
    const keys = `${dir}/keys.npy`;
    writeRaw(keys, encodeNpyHeader({ dtype: "<i8", shape: [3] }), 24);
    assert.equal(
      errorOf(() => MappedArray.open(keys, { dtypes: ["<f4", "<f2"] })).message,
      `${keys}: expected dtype float32 or float16, found '<i8' (header at byte 10)`,
    );
    assert.match(errorOf(() => MappedArray.open(dir)).message, /Is a directory \(EISDIR\)/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("writing a keys file 16x the memory bound keeps anonymous memory flat", async () => {
  const dir = tempDir();
  const path = `${dir}/keys.npy`;
  try {
    // 1 GiB written in 16 MiB blocks, each flushed and dropped (as the datastore builder does).
    const script = new URL("./fixtures/bounded_write.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "--quiet", script, path, "1024", "16"],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    assert.equal(out.code, 0);
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    const bound = 64 << 20; // a sixteenth of the file
    assert.ok(r.peakAnon < bound, `RssAnon grew by ${r.peakAnon} bytes`);
    assert.ok(r.peakFile < bound, `RssFile grew by ${r.peakFile} bytes`);
    // The data is all there: every block starts with its row index, then i % 997.
    using keys = MappedArray.open(path, { dtypes: ["<f4"] });
    assert.deepEqual(keys.shape, [r.rows, 1024]);
    for (let row = 0; row < r.rows; row += r.blockRows) {
      const v = keys.view(row, row + 1);
      assert.equal(v[0], row);
      assert.equal(v[1000], 1000 % 997);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
