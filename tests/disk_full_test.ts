// Disk full is an error, never a crash: the rows of the reliability issue's probe table that
// fill a disk, on a small tmpfs mounted for the test (needs root; skipped otherwise). Each
// asserts E_NO_SPACE or exit status 1 with a one-line message naming the directory or file,
// that nothing looks complete, and that a rerun with space recovers.
import assert from "node:assert/strict";
import { join } from "node:path";
import { KnnError, MappedArray } from "../mod.ts";
import { readManifest } from "../lib/datastore/mod.ts";
import { writeManifest } from "../lib/datastore/manifest.ts";
import type { DatastoreManifest } from "../lib/datastore/manifest.ts";
import { diskSpace } from "../lib/storage/mod.ts";
import { arrays, buildArgs, corpusText, knn } from "./_child.ts";

const isRoot = Deno.uid() === 0;

async function run(cmd: string, ...args: string[]) {
  const r = await new Deno.Command(cmd, { args, stderr: "piped" }).output();
  if (!r.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  }
}

/** Runs `fn` on a fresh tmpfs of `size` mounted at a temporary directory. */
async function withTmpfs(size: string, fn: (mnt: string) => Promise<void>) {
  const mnt = await Deno.makeTempDir({ prefix: "knnlm_full_" });
  await run("mount", "-t", "tmpfs", "-o", `size=${size}`, "tmpfs", mnt);
  try {
    await fn(mnt);
  } finally {
    await run("umount", "-l", mnt);
    await Deno.remove(mnt);
  }
}

const N = 12000; // 11999 keys of width 64: keys.npy 3.07 MB, vals.npy 48 kB

async function corpusFile(): Promise<{ dir: string; corpus: string }> {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_full_corpus_" });
  const corpus = join(dir, "corpus.txt");
  await Deno.writeTextFile(corpus, corpusText(N));
  return { dir, corpus };
}

Deno.test({
  name:
    "a mapped array that cannot get its disk blocks is E_NO_SPACE at create and resize, never SIGBUS",
  ignore: !isRoot,
  fn: () =>
    withTmpfs("1m", async (mnt) => {
      const path = join(mnt, "big.npy");
      assert.throws(
        () => MappedArray.create(path, { dtype: "<f4", shape: [1024, 1024], allocate: true }),
        (e) =>
          KnnError.is(e, "E_NO_SPACE") && e.message.startsWith(`${path}: cannot reserve`) &&
          /No space left on device/.test(e.message),
      );
      await assert.rejects(Deno.stat(path), Deno.errors.NotFound, "no half file is left");

      using arr = MappedArray.create(path, { dtype: "<f4", shape: [16, 1024], allocate: true });
      (arr.view(0, 1) as Float32Array).fill(7);
      assert.throws(() => arr.resize(1024), (e) => KnnError.is(e, "E_NO_SPACE"));
      // The array is untouched and still usable.
      assert.equal(arr.rows, 16);
      assert.equal((arr.view(0, 1) as Float32Array)[5], 7);
      arr.resize(32);
      assert.equal(arr.rows, 32);
    }),
});

Deno.test({
  name: "writing datastore.json on a full disk is E_NO_SPACE naming the file, leaving no temp file",
  ignore: !isRoot,
  fn: () =>
    withTmpfs("256k", async (mnt) => {
      // Fill the file system.
      await Deno.writeFile(join(mnt, "filler"), new Uint8Array(512 << 10)).catch(() => {});
      assert.ok(diskSpace(mnt).free < 4096, "the tmpfs is full");
      await assert.rejects(
        writeManifest(mnt, { format: 1 } as DatastoreManifest),
        (e) =>
          KnnError.is(e, "E_NO_SPACE") &&
          e.message.startsWith(`${join(mnt, "datastore.json")}: cannot write: No space left`),
      );
      const names = [];
      for await (const e of Deno.readDir(mnt)) names.push(e.name);
      assert.deepEqual(names, ["filler"]);
    }),
});

Deno.test({
  name:
    "gather into a full disk exits 1 with an E_NO_SPACE one-liner, and a rerun with space recovers",
  ignore: !isRoot,
  fn: async () => {
    const { dir, corpus } = await corpusFile();
    try {
      await withTmpfs("2m", async (mnt) => {
        const out = join(mnt, "ds");
        const r = await knn("build-index", ...buildArgs(corpus, out));
        assert.equal(r.code, 1, r.stderr);
        assert.match(
          r.stderr,
          new RegExp(
            `\\nerror: ${out}: gathering 11999 keys of width 64 \\(.*keys\\.npy\\.tmp, .*\\) ` +
              `needs 3\\.13 MB \\(\\d+ bytes\\) but only 2\\.\\d+ MB \\(\\d+ bytes\\) are free\\n` +
              `hint: free some space`,
          ),
        );
        assert.equal(await readManifest(out), undefined, "nothing looks complete");
        await run("mount", "-o", "remount,size=64m", mnt);
        const again = await knn("build-index", ...buildArgs(corpus, out));
        assert.equal(again.code, 0, again.stderr);
        const ref = join(dir, "ref");
        const b = await knn("build-index", ...buildArgs(corpus, ref));
        assert.equal(b.code, 0, b.stderr);
        assert.deepEqual(await arrays(out), await arrays(ref));
        const v = await knn("verify", out);
        assert.equal(v.code, 0, v.stdout + v.stderr);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "adding into a full disk exits 1 with E_NO_SPACE before FAISS writes, and a rerun recovers",
  ignore: !isRoot,
  fn: async () => {
    const { dir, corpus } = await corpusFile();
    try {
      await withTmpfs("6m", async (mnt) => {
        const out = join(mnt, "ds");
        const r = await knn("build-index", ...buildArgs(corpus, out));
        assert.equal(r.code, 1, r.stderr);
        assert.match(
          r.stderr,
          new RegExp(
            `\\nerror: ${out}: adding 11999 keys to IVF4,Flat \\(faiss\\.ivfdata, .*faiss\\.index\\) ` +
              `needs [\\d.]+ MB \\(\\d+ bytes\\) but only [\\d.]+ MB \\(\\d+ bytes\\) are free`,
          ),
        );
        const m = await readManifest(out);
        assert.ok(m?.trained, "gathered and trained");
        assert.equal(m?.index, undefined, "no index looks complete");
        await assert.rejects(Deno.stat(join(out, "faiss.ivfdata")), Deno.errors.NotFound);
        await run("mount", "-o", "remount,size=64m", mnt);
        const again = await knn("build-index", ...buildArgs(corpus, out));
        assert.equal(again.code, 0, again.stderr);
        assert.match(again.stderr, /skip gather.*\n[^]*skip train/);
        const v = await knn("verify", out, "--recall", "100", "--min-recall", "1");
        assert.equal(v.code, 0, v.stdout + v.stderr);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
