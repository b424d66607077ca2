// Faults around the FAISS index files: truncated or damaged files, a full disk while adding,
// merging or writing, and datastores the reader may not write. Each ends in a KnnError with a
// code and the file it concerns, never in SIGBUS. Disk-full tests mount a small tmpfs and the
// read-only test switches to user nobody, so both need root (they are ignored otherwise).
import assert from "node:assert/strict";
import { join } from "node:path";
import { buildIndex, Datastore, KnnError, loadConfig } from "../mod.ts";
import type { ErrorCode } from "../lib/core/errors.ts";
import { FaissIndex, faissLibraryPath } from "../lib/index/mod.ts";

const ROOT = Deno.uid() === 0;
const INDEX_MOD = JSON.stringify(new URL("../lib/index/mod.ts", import.meta.url).href);
const DATASTORE_MOD = JSON.stringify(
  new URL("../lib/datastore/datastore.ts", import.meta.url).href,
);
const TINY = new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname;

// Deterministic uniform [0, 1) floats: [n, d] row-major.
function rows(n: number, d: number, seed: number): Float32Array {
  let s = seed;
  return new Float32Array(n * d).map(() => (s = (s * 16807) % 2147483647) / 2147483647);
}

function errorOf(fn: () => unknown): KnnError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KnnError, `expected a KnnError, got ${e}`);
    return e;
  }
  assert.fail("expected an error");
}

async function rejection(p: Promise<unknown>): Promise<KnnError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof KnnError, `expected a KnnError, got ${e}`);
    return e;
  }
  assert.fail("expected a rejection");
}

// An IVF index with its lists in dir/faiss.ivfdata, written to dir/faiss.index.
function onDiskIndex(dir: string, n = 2_000, d = 8): { ivfdata: string; index: string } {
  using ix = FaissIndex.factory(d, "IVF8,Flat");
  const data = rows(n, d, 1);
  ix.train(data);
  ix.useOnDiskLists(join(dir, "faiss.ivfdata"));
  ix.add(data);
  ix.write(join(dir, "faiss.index"));
  return { ivfdata: join(dir, "faiss.ivfdata"), index: join(dir, "faiss.index") };
}

// Runs TypeScript in a child Deno process (as `user` nobody when asked).
async function child(
  code: string,
  opts: { env?: Record<string, string>; deno?: string; asNobody?: boolean } = {},
) {
  const deno = opts.deno ?? Deno.execPath();
  const args = ["eval", "--quiet", code];
  const cmd = opts.asNobody
    ? new Deno.Command("setpriv", {
      args: ["--reuid=65534", "--regid=65534", "--clear-groups", "--", deno, ...args],
      env: opts.env,
      cwd: "/",
      stdout: "piped",
      stderr: "piped",
    })
    : new Deno.Command(deno, { args, env: opts.env, stdout: "piped", stderr: "piped" });
  const out = await cmd.output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, signal: out.signal, stdout: text(out.stdout), stderr: text(out.stderr) };
}

// A tmpfs of `size` bytes at a fresh directory, unmounted and removed after fn.
async function withTmpfs(size: number, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_tmpfs_" });
  const mount = new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir],
  }).outputSync();
  assert.ok(mount.success, `mount tmpfs (as root): ${new TextDecoder().decode(mount.stderr)}`);
  try {
    await fn(dir);
  } finally {
    new Deno.Command("umount", { args: [dir] }).outputSync();
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("a truncated faiss.ivfdata is E_CORRUPT at open, naming the file and the bytes needed and found", () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_faults_" });
  try {
    const { ivfdata, index } = onDiskIndex(dir);
    using whole = FaissIndex.read(index, { readOnly: true });
    const used = whole.onDiskLists!.bytesUsed;
    const mapped = whole.onDiskLists!.bytesMapped;
    whole.close();
    for (const keep of [used - 1, 100, 0]) {
      Deno.truncateSync(ivfdata, keep);
      for (const readOnly of [true, false]) {
        const e = errorOf(() => FaissIndex.read(index, { readOnly }));
        assert.equal(e.code, "E_CORRUPT", `${keep} bytes, readOnly ${readOnly}`);
        assert.equal(e.path, ivfdata);
        const needed = readOnly ? used : mapped;
        assert.ok(e.message.startsWith(`${ivfdata}: ${keep} bytes, but`), e.message);
        assert.ok(e.message.includes(`needs ${needed}`), e.message);
      }
    }
    // Exactly the lists is enough for a reader, not for a writer (free space past the lists).
    Deno.truncateSync(ivfdata, used);
    using reader = FaissIndex.read(index, { readOnly: true });
    assert.equal(reader.ntotal, 2_000);
    if (mapped > used) assert.equal(errorOf(() => FaissIndex.read(index)).code, "E_CORRUPT");
    Deno.removeSync(ivfdata);
    const missing = errorOf(() => FaissIndex.read(index, { readOnly: true }));
    assert.equal(missing.code, "E_NOT_FOUND");
    assert.equal(missing.path, ivfdata);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a truncated or damaged faiss.index is E_CORRUPT naming it", () => {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_faults_" });
  try {
    const { index } = onDiskIndex(dir);
    const bytes = Deno.readFileSync(index);
    const cases: [string, Uint8Array][] = [
      ["truncated", bytes.subarray(0, bytes.length - 9)],
      ["half", bytes.subarray(0, bytes.length >> 1)],
      ["empty", new Uint8Array(0)],
      ["other magic", Uint8Array.from(bytes, (b, i) => (i < 4 ? 0x41 : b))],
    ];
    for (const [name, content] of cases) {
      Deno.writeFileSync(index, content);
      const e = errorOf(() => FaissIndex.read(index));
      assert.equal(e.code, "E_CORRUPT", name);
      assert.equal(e.path, index, name);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "a full disk while adding to on-disk lists is E_NO_SPACE naming faiss.ivfdata, never SIGBUS",
  ignore: !ROOT,
  fn: () =>
    withTmpfs(1 << 20, async (dir) => {
      // 136-byte entries (d = 32 floats + id): 1 MiB holds about 7700; add 20 000 in batches.
      const r = await child(`
        import { FaissIndex } from ${INDEX_MOD};
        const d = 32, dir = ${JSON.stringify(dir)};
        let s = 3;
        const x = new Float32Array(20000 * d).map(() => (s = (s * 16807) % 2147483647) / 2147483647);
        const ix = FaissIndex.factory(d, "IVF16,Flat");
        ix.train(x.subarray(0, 16 * 39 * d));
        ix.useOnDiskLists(dir + "/faiss.ivfdata");
        let failure = null, before = 0;
        for (let i = 0; i < 20000 && !failure; i += 1000) {
          before = ix.ntotal;
          try { await ix.addAsync(x.subarray(i * d, (i + 1000) * d)); }
          catch (e) { failure = { code: e.code, path: e.path, message: e.message }; }
        }
        ix.nprobe = 16;
        const hit = ix.search(x.subarray(0, d), 1).labels[0];
        console.log(JSON.stringify({ failure, before, after: ix.ntotal, hit: Number(hit) }));
      `);
      assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr}`);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout);
      assert.ok(out.failure, "the disk filled up");
      assert.equal(out.failure.code, "E_NO_SPACE" satisfies ErrorCode);
      assert.equal(out.failure.path, `${dir}/faiss.ivfdata`);
      assert.ok(out.failure.message.startsWith(`${dir}/faiss.ivfdata: `), out.failure.message);
      assert.equal(out.after, out.before, "the failed batch added nothing");
      assert.ok(out.before > 0);
      assert.equal(out.hit, 0, "the index still searches what it holds");
      assert.equal(r.stderr, "");
    }),
});

Deno.test({
  name:
    "a full disk while merging or writing is E_NO_SPACE naming the file, leaving no partial file",
  ignore: !ROOT,
  fn: () =>
    withTmpfs(1 << 20, async (dir) => {
      const d = 32;
      const data = rows(12_000, d, 4); // 12 000 × 136 bytes of lists: more than 1 MiB
      using trained = FaissIndex.factory(d, "IVF16,Flat");
      trained.train(data.subarray(0, 16 * 39 * d));
      const tmp = Deno.makeTempDirSync({ prefix: "knnlm_faiss_faults_" });
      try {
        trained.write(join(tmp, "trained.index"));
        using shard = FaissIndex.read(join(tmp, "trained.index"));
        shard.add(data);
        const merge = await rejection(
          FaissIndex.mergeOnDisk({ trained, shards: [shard], ivfdata: `${dir}/faiss.ivfdata` }),
        );
        assert.equal(merge.code, "E_NO_SPACE");
        assert.equal(merge.path, `${dir}/faiss.ivfdata`);
        assert.deepEqual([...Deno.readDirSync(dir)], [], "no partial faiss.ivfdata");

        const write = errorOf(() => shard.write(`${dir}/faiss.index`));
        assert.equal(write.code, "E_NO_SPACE");
        assert.equal(write.path, `${dir}/faiss.index.tmp`);
        assert.deepEqual([...Deno.readDirSync(dir)], [], "no partial faiss.index.tmp");
      } finally {
        Deno.removeSync(tmp, { recursive: true });
      }
    }),
});

Deno.test({
  name:
    "a datastore the user may read but not write is searched by user nobody; writing is refused",
  ignore: !ROOT,
  fn: async () => {
    // The reader runs as uid 65534, who cannot enter /root: it gets its own link to the deno
    // binary, a copy of the shim and a Deno cache of its own.
    const top = Deno.makeTempDirSync({ prefix: "knnlm_readonly_" });
    try {
      Deno.chmodSync(top, 0o755);
      const corpus = join(top, "corpus.txt");
      let s = 7;
      const text = Array.from({ length: 1_500 }, () => {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        return String.fromCharCode(32 + ((s >>> 16) % 95));
      }).join("");
      Deno.writeTextFileSync(corpus, text);
      const ds = join(top, "ds");
      const { config } = loadConfig({
        flags: {
          model: TINY,
          corpus,
          out: ds,
          "seq-len": "32",
          stride: "16",
          "batch-size": "4",
          threads: "1",
          factory: "IVF8,Flat",
          nprobe: "8",
        },
      });
      const manifest = await buildIndex(config);
      assert.equal(manifest.index?.invlists, "disk");
      for (const e of Deno.readDirSync(ds)) Deno.chmodSync(join(ds, e.name), 0o444);
      Deno.chmodSync(ds, 0o555);

      const bin = join(top, "bin");
      Deno.mkdirSync(bin, { mode: 0o755 });
      try {
        Deno.linkSync(Deno.execPath(), join(bin, "deno"));
      } catch {
        Deno.copyFileSync(Deno.execPath(), join(bin, "deno"));
      }
      Deno.copyFileSync(faissLibraryPath(), join(bin, "libknnlm_faiss.so"));
      Deno.chmodSync(join(bin, "libknnlm_faiss.so"), 0o755);
      const home = join(top, "home");
      Deno.mkdirSync(home);
      Deno.chownSync(home, 65534, 65534);

      const r = await child(
        `
        import { Datastore } from ${DATASTORE_MOD};
        import { FaissIndex } from ${INDEX_MOD};
        const dir = ${JSON.stringify(ds)};
        using ds = await Datastore.open(dir);
        const rows = [0, 17, 900];
        const found = [];
        for (const i of rows) {
          const q = Float32Array.from(ds.keys.view(i, i + 1));
          found.push(Number((await ds.index.searchAsync(q, 1)).labels[0]));
        }
        let writable = null;
        try { FaissIndex.read(dir + "/faiss.index"); } catch (e) { writable = { code: e.code, path: e.path }; }
        console.log(JSON.stringify({ uid: Deno.uid(), rows, found, writable }));
      `,
        {
          deno: join(bin, "deno"),
          asNobody: true,
          env: {
            HOME: home,
            DENO_DIR: join(home, "deno"),
            KNNLM_FAISS_LIB: join(bin, "libknnlm_faiss.so"),
            PATH: "/usr/bin:/bin",
          },
        },
      );
      assert.equal(r.signal, null, r.stderr);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout);
      assert.equal(out.uid, 65534);
      assert.deepEqual(out.found, out.rows, "each stored key finds itself");
      assert.deepEqual(out.writable, { code: "E_PERMISSION", path: join(ds, "faiss.ivfdata") });

      // The same datastore with a short faiss.ivfdata: E_CORRUPT when opened, not SIGBUS later.
      Deno.chmodSync(join(ds, "faiss.ivfdata"), 0o644);
      Deno.truncateSync(join(ds, "faiss.ivfdata"), 4096);
      const e = await rejection(Datastore.open(ds));
      assert.equal(e.code, "E_CORRUPT");
      assert.equal(e.path, join(ds, "faiss.ivfdata"));
    } finally {
      Deno.chmodSync(join(top, "ds"), 0o755);
      Deno.removeSync(top, { recursive: true });
    }
  },
});
