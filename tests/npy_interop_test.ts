// The .npy files are a contract with numpy: numpy.load(path, mmap_mode="r") reads what the
// toolkit writes, and the toolkit reads what np.save / open_memmap write. Needs /usr/bin/python3
// with numpy (Debian: python3-numpy).
import assert from "node:assert/strict";
import { MappedArray } from "../lib/storage/mmap.ts";
import { type DType, DTYPES, encodeNpyHeader, type TypedArray } from "../lib/storage/npy.ts";
import { f16ToF32 } from "../lib/storage/half.ts";
import { expectedValues, fillValues } from "./_values.ts";

const PYTHON = "/usr/bin/python3";

// The Python twin of tests/_values.ts valueAt().
const PY_VALUES = `
import json, sys
import numpy as np
from numpy.lib.format import open_memmap, write_array

def values(descr, n):
    i = np.arange(n, dtype=np.int64)
    if descr in ("<f4", "<f2"):
        return (((i * 37) % 101 - 50) / 4).astype(descr)
    if descr == "<i4":
        return ((i * 2654435761) % 2**32 - 2**31).astype("<i4")
    if descr == "<i8":
        return np.array([-(2**62) + k * 1234567890123 for k in range(n)], dtype="<i8")
    if descr == "|u1":
        return ((i * 31 + 7) % 256).astype("|u1")
    if descr == "<u2":
        return ((i * 40503 + 11) % 65536).astype("<u2")
    raise ValueError(descr)

def describe(path):
    a = np.load(path, mmap_mode="r")
    return {"memmap": isinstance(a, np.memmap), "dtype": a.dtype.str, "shape": list(a.shape),
            "values": [x if isinstance(x, float) else str(x) for x in a.ravel().tolist()]}

args = json.load(sys.stdin)
`;

/** Run `body` after PY_VALUES with `input` as JSON on stdin; returns its JSON stdout. */
async function python<T>(body: string, input: unknown): Promise<T> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(PYTHON, {
      args: ["-c", PY_VALUES + body],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (cause) {
    throw new Error(`${PYTHON} is needed for the numpy interop tests (apt install python3-numpy)`, {
      cause,
    });
  }
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(JSON.stringify(input)));
  await w.close();
  const out = await child.output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `python failed:\n${stderr}`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** Expected values as describe() reports them: floats as numbers, integers as decimal text. */
function expectedJson(dtype: DType, n: number, offset = 0): (number | string)[] {
  return expectedValues(dtype, n, offset).map((v) =>
    dtype === "<f2" ? f16ToF32(v as number) : dtype === "<f4" ? v as number : String(v)
  );
}

function list(view: TypedArray): (number | bigint)[] {
  return Array.from(view as ArrayLike<number | bigint>);
}

interface Described {
  memmap: boolean;
  dtype: string;
  shape: number[];
  values: (number | string)[];
}

const SHAPES = [[11], [5, 3]];

/** What numpy.load(path, mmap_mode="r") sees in one file. */
async function numpyDescribe(path: string): Promise<Described> {
  return await python<Described>("print(json.dumps(describe(args['path'])))", { path });
}

Deno.test("numpy.load(mmap_mode='r') reads every dtype and rank the toolkit wrote", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_interop_" });
  try {
    const files: { path: string; dtype: DType; shape: number[] }[] = [];
    for (const dtype of DTYPES) {
      for (const shape of SHAPES) {
        const path = `${dir}/t${dtype.slice(1)}_${shape.length}d.npy`;
        using a = MappedArray.create(path, { dtype, shape });
        fillValues(dtype, a.view());
        a.flush();
        files.push({ path, dtype, shape });
      }
    }
    const got = await python<Described[]>(
      "print(json.dumps([describe(f['path']) for f in args]))",
      files,
    );
    files.forEach((f, k) => {
      const n = f.shape.reduce((a, b) => a * b, 1);
      assert.deepEqual(got[k], {
        memmap: true,
        dtype: f.dtype,
        shape: f.shape,
        values: expectedJson(f.dtype, n),
      }, f.path);
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("numpy reads a file the toolkit grew with resize, old and new rows intact", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_interop_" });
  const path = `${dir}/keys.npy`;
  try {
    {
      using a = MappedArray.create(path, { dtype: "<f2", shape: [3, 4] });
      fillValues("<f2", a.view());
    }
    {
      using a = MappedArray.open(path, { mode: "r+", dtypes: ["<f2"] });
      a.resize(40);
      fillValues("<f2", a.view(3, 40), 12);
      a.flush();
    }
    const got = await numpyDescribe(path);
    assert.deepEqual(got, {
      memmap: true,
      dtype: "<f2",
      shape: [40, 4],
      values: expectedJson("<f2", 160),
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the toolkit reads np.save, open_memmap and format 2.0/3.0 files", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_interop_" });
  try {
    const jobs: { path: string; dtype: DType; shape: number[]; how: string }[] = [];
    for (const dtype of DTYPES) {
      for (const shape of SHAPES) {
        for (const how of ["save", "open_memmap", "v2", "v3"]) {
          jobs.push({
            path: `${dir}/${how}${dtype.slice(1)}_${shape.length}d.npy`,
            dtype,
            shape,
            how,
          });
        }
      }
    }
    await python(
      `
for j in args:
    n = int(np.prod(j["shape"]))
    arr = values(j["dtype"], n).reshape(j["shape"])
    if j["how"] == "save":
        np.save(j["path"], arr)
    elif j["how"] == "open_memmap":
        m = open_memmap(j["path"], mode="w+", dtype=j["dtype"], shape=tuple(j["shape"]))
        m[...] = arr
        m.flush()
        del m
    else:
        with open(j["path"], "wb") as f:
            write_array(f, arr, version=(2, 0) if j["how"] == "v2" else (3, 0))
print("null")
`,
      jobs,
    );
    for (const j of jobs) {
      using a = MappedArray.open(j.path);
      assert.equal(a.dtype, j.dtype, j.path);
      assert.deepEqual(a.shape, j.shape, j.path);
      assert.equal(a.version, j.how === "v2" ? 2 : j.how === "v3" ? 3 : 1, j.path);
      const n = j.shape.reduce((x, y) => x * y, 1);
      assert.deepEqual(list(a.view()), expectedValues(j.dtype, n), j.path);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a numpy-written file grows in place with resize and numpy still reads it", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_interop_" });
  const path = `${dir}/vals.npy`;
  try {
    await python(
      `
m = open_memmap(args["path"], mode="w+", dtype="<i8", shape=(4, 3))
m[...] = values("<i8", 12).reshape(4, 3)
m.flush()
print("null")
`,
      { path },
    );
    {
      using a = MappedArray.open(path, { mode: "r+", dtypes: ["<i8"] });
      a.resize(9);
      fillValues("<i8", a.view(4, 9), 12);
      a.flush();
    }
    const got = await numpyDescribe(path);
    assert.deepEqual(got, {
      memmap: true,
      dtype: "<i8",
      shape: [9, 3],
      values: expectedJson("<i8", 27),
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("written headers are spelled like numpy's and end at the same offset", async () => {
  const shapes = [[3, 4], [5], [0, 16], [1_000_000, 1024]];
  const got = await python<{ dict: string; offset: number; growth: boolean }[]>(
    `
import io
out = []
for shape in args:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                             "shape": tuple(shape)})
    b = f.getvalue()
    out.append({"dict": b[10:].decode("latin1").rstrip(), "offset": len(b),
                "growth": hasattr(np.lib.format, "GROWTH_AXIS_MAX_DIGITS")})
print(json.dumps(out))
`,
    shapes,
  );
  shapes.forEach((shape, k) => {
    const ours = encodeNpyHeader({ dtype: "<f4", shape });
    const dict = String.fromCharCode(...ours.subarray(10)).trimEnd();
    assert.equal(dict, got[k].dict);
    assert.equal(ours.length % 64, 0);
    // numpy >= 1.23 pads for shape growth the same way; older numpy only aligns to 64.
    if (got[k].growth) assert.equal(ours.length, got[k].offset, String(shape));
    else assert.equal(got[k].offset % 64, 0);
  });
});

Deno.test("numpy reads the last row of a sparse >4 GiB file written by the toolkit", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_interop_" });
  const path = `${dir}/big.npy`;
  try {
    const rows = 2 ** 22 + 2; // [rows, 256] float32 = 4 GiB + 2 KiB
    {
      using a = MappedArray.create(path, { dtype: "<f4", shape: [rows, 256] });
      a.view(rows - 1, rows).set(Float32Array.from({ length: 256 }, (_, i) => i - 0.25));
      a.flush(rows - 1, rows);
    }
    const got = await python<{ shape: number[]; last: number[]; prev: number[] }>(
      `
a = np.load(args["path"], mmap_mode="r")
print(json.dumps({"shape": list(a.shape), "last": a[-1].tolist(), "prev": a[-2, :3].tolist()}))
`,
      { path },
    );
    assert.deepEqual(got.shape, [rows, 256]);
    assert.deepEqual(got.last, Array.from({ length: 256 }, (_, i) => i - 0.25));
    assert.deepEqual(got.prev, [0, 0, 0]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("numpy files in big-endian, Fortran order or float64 are refused clearly", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_interop_" });
  try {
    await python(
      `
d = args["dir"]
np.save(d + "/be.npy", values("<f4", 12).reshape(3, 4).astype(">f4"))
np.save(d + "/fortran.npy", np.asfortranarray(values("<f4", 12).reshape(3, 4)))
np.save(d + "/f8.npy", np.zeros(3))
print("null")
`,
      { dir },
    );
    const err = (name: string) => {
      try {
        MappedArray.open(`${dir}/${name}`, { dtypes: ["<f4", "<f2"] });
      } catch (e) {
        return (e as Error).message;
      }
      assert.fail(`${name} opened`);
    };
    assert.equal(
      err("be.npy"),
      `${dir}/be.npy: expected dtype float32 or float16, found '>f4' ` +
        "(big-endian; header at byte 10)",
    );
    assert.match(err("fortran.npy"), /fortran\.npy: Fortran-order arrays are not supported/);
    assert.equal(
      err("f8.npy"),
      `${dir}/f8.npy: expected dtype float32 or float16, found '<f8' (float64; header at byte 10)`,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
