// The probe table of the reliability issue, row by row, on real `knn` child processes: a second
// writer, readers during a rebuild, signals in every stage, damaged files and an nprobe change.
// Each test asserts the error code or exit status, that nothing looks complete, and that a
// rerun recovers to what an uninterrupted build gives. Disk-full rows: disk_full_test.ts.
import { searchAll } from "./_equivalent.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Datastore, KnnError, MappedArray } from "../mod.ts";
import { readManifest } from "../lib/datastore/mod.ts";
import {
  arrays,
  buildArgs,
  copyDir,
  corpusText,
  knn,
  selfSearch,
  StoppingChild,
} from "./_child.ts";

const N = 12000; // corpus bytes → 11999 keys of width 64

const root = await Deno.makeTempDir({ prefix: "knnlm_rely_" });
const corpus = join(root, "corpus.txt");
await Deno.writeTextFile(corpus, corpusText(N));
let refDir: Promise<string> | undefined;

/** The uninterrupted build everything is compared with (built once). */
function reference(): Promise<string> {
  refDir ??= (async () => {
    const out = join(root, "ref");
    const r = await knn("build-index", ...buildArgs(corpus, out));
    assert.equal(r.code, 0, r.stderr);
    return out;
  })();
  return refDir;
}

/** A fresh copy of the reference datastore to damage. */
async function refCopy(name: string): Promise<string> {
  const out = join(root, name);
  await copyDir(await reference(), out);
  return out;
}

/** Asserts that `dir` is a complete datastore equal to the reference. */
async function assertRecovered(dir: string) {
  const ref = await reference();
  assert.deepEqual(await arrays(dir), await arrays(ref), "keys.npy / vals.npy bytes");
  assert.deepEqual(await searchAll(dir), await searchAll(ref), "search results");
  const v = await knn("verify", dir, "--json");
  assert.equal(v.code, 0, v.stdout + v.stderr);
  assert.equal(JSON.parse(v.stdout).ok, true);
}

/** Asserts that nothing in `dir` looks complete: no finished index for any reader. */
async function assertNothingComplete(dir: string) {
  const m = await readManifest(dir);
  assert.equal(m?.index, undefined, "datastore.json records no finished index");
  await assert.rejects(Datastore.open(dir), (e) => KnnError.is(e, "E_NOT_FOUND"));
  await assert.rejects(Deno.stat(join(dir, "faiss.index")), Deno.errors.NotFound);
}

const GATHER_LINE = String.raw`^gather .*%`;
// An add progress line past 0 %: at least one block is done when the signal lands.
const ADD_LINE = String.raw`^add .*?(?:[1-9]\d*\.\d|0\.[1-9])%`;

Deno.test("a second writer fails at once with E_LOCKED naming the first, which then completes", async () => {
  const out = join(root, "locked");
  const first = new StoppingChild(["build-index", ...buildArgs(corpus, out)], [GATHER_LINE]);
  try {
    await first.stopped();
    const second = await knn("build-index", ...buildArgs(corpus, out));
    assert.equal(second.code, 75, second.stderr);
    assert.match(
      second.stderr,
      new RegExp(
        `(^|\\n)error: .*: the datastore is being written by process ${first.pid} \\(knn build-index\\)`,
      ),
    );
    const gather = await knn("gather", ...buildArgs(corpus, out));
    assert.equal(gather.code, 75, gather.stderr);
    // A reader meanwhile gets a clear error, not a half-written datastore.
    const reader = await selfSearch(out);
    assert.equal(reader.code, 1, reader.stdout + reader.stderr);
    assert.deepEqual(reader.result, { error: "E_NOT_FOUND" });
    await first.resume();
    const r = await first.finished();
    assert.equal(r.code, 0, r.stderr);
    await assertRecovered(out);
  } finally {
    try {
      Deno.kill(first.pid, "SIGKILL");
    } catch { /* exited */ }
  }
});

Deno.test("readers during a rebuild get the old complete datastore, then the new one, never wrong answers", async () => {
  const out = await refCopy("rebuild");
  const args = buildArgs(corpus, out, "--factory", "IVF8,Flat", "--nprobe", "8");
  const writer = new StoppingChild(["build-index", ...args], [ADD_LINE]);
  try {
    await writer.stopped(); // retrained; the new lists are being written
    const during = await selfSearch(out);
    assert.equal(during.code, 0, during.stdout + during.stderr);
    assert.deepEqual(during.result, { searched: Math.ceil((N - 1) / 37), wrong: 0, nlist: 4 });
    await writer.resume();
    let finished = false;
    const done = writer.finished().then((r) => (finished = true, r));
    // Readers racing the end of the rebuild and the switch of datastore.json.
    while (!finished) {
      const r = await selfSearch(out);
      assert.ok(r.code === 0 || r.code === 1, `reader exit ${r.code}: ${r.stdout}${r.stderr}`);
    }
    const r = await done;
    assert.equal(r.code, 0, r.stderr);
    const after = await selfSearch(out);
    assert.equal(after.code, 0, after.stdout);
    assert.deepEqual(after.result, { searched: Math.ceil((N - 1) / 37), wrong: 0, nlist: 8 });
    // The new lists went under the other name; the old ones are gone.
    const m = await readManifest(out);
    assert.equal(m?.index?.ivfdata?.file, "faiss.1.ivfdata");
    await assert.rejects(Deno.stat(join(out, "faiss.ivfdata")), Deno.errors.NotFound);
    const v = await knn("verify", out);
    assert.equal(v.code, 0, v.stdout + v.stderr);
  } finally {
    try {
      Deno.kill(writer.pid, "SIGKILL");
    } catch { /* exited */ }
  }
});

Deno.test("SIGINT during gather exits 130 with nothing complete, and the rerun resumes to identical files", async () => {
  const out = join(root, "sigint_gather");
  const args = buildArgs(corpus, out);
  const child = new StoppingChild(["build-index", ...args], [String.raw`^gather .* [1-9]\d*\.\d%`]);
  await child.stopped();
  await child.signal("SIGINT");
  const r = await child.finished();
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /\nerror: gather interrupted after \d+ of 11999 rows; run it again/);
  assert.equal(await readManifest(out), undefined);
  await assert.rejects(Deno.stat(join(out, "keys.npy")), Deno.errors.NotFound);
  await Deno.stat(join(out, "gather.progress.json"));
  const again = await knn("build-index", ...args);
  assert.equal(again.code, 0, again.stderr);
  await assertRecovered(out);
});

Deno.test("SIGTERM as training starts exits 143 once the trained index is saved; the rerun trains no more", async () => {
  const out = join(root, "sigterm_train");
  const args = buildArgs(corpus, out);
  const child = new StoppingChild(["build-index", ...args], [String.raw`^train: `]);
  await child.stopped();
  await child.signal("SIGTERM");
  const r = await child.finished();
  assert.equal(r.code, 143, r.stderr);
  assert.match(r.stderr, /\nerror: .*interrupted/);
  await assertNothingComplete(out);
  const again = await knn("build-index", ...args);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /skip gather/);
  await assertRecovered(out);
});

Deno.test("SIGINT during add exits 130 at a block boundary and the rerun resumes without redoing blocks", async () => {
  const out = join(root, "sigint_add");
  const args = buildArgs(corpus, out);
  const child = new StoppingChild(["build-index", ...args], [ADD_LINE]);
  await child.stopped();
  await child.signal("SIGINT");
  const r = await child.finished();
  assert.equal(r.code, 130, r.stderr);
  const m = /error: add interrupted after (\d+) of 11999 keys \((\d+) blocks\)/.exec(r.stderr);
  assert.ok(m, r.stderr);
  const keysDone = Number(m[1]);
  assert.ok(keysDone > 0 && keysDone < 11999 && keysDone % 1024 === 0, `stopped at ${keysDone}`);
  await assertNothingComplete(out);
  const progress = JSON.parse(await Deno.readTextFile(join(out, "add.progress.json")));
  assert.equal(progress.keysDone, keysDone);
  assert.equal(progress.saved, true);

  const again = await knn("build-index", ...args);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, new RegExp(`add: resuming after ${keysDone} keys`));
  assert.match(again.stderr, /skip train/);
  await assertRecovered(out);
  // Resumed lists hold the same bytes as lists added in one go.
  const ref = await reference();
  assert.deepEqual(
    await Deno.readFile(join(out, "faiss.ivfdata")),
    await Deno.readFile(join(ref, "faiss.ivfdata")),
  );
  for (const f of ["add.progress.json", "faiss.partial.index"]) {
    await assert.rejects(Deno.stat(join(out, f)), Deno.errors.NotFound, f);
  }
});

Deno.test("a second signal quits at once, leaving only temporary and progress files", async () => {
  const out = join(root, "twice");
  const args = buildArgs(corpus, out);
  // Stops at the first add line, then again right after announcing the first interrupt.
  const child = new StoppingChild(["build-index", ...args], [ADD_LINE, "interrupting"]);
  await child.stopped();
  await child.signal("SIGTERM");
  await child.stopped();
  await child.signal("SIGTERM");
  const r = await child.finished();
  assert.equal(r.code, 143, r.stderr);
  await assertNothingComplete(out);
  const allowed = new Set([
    ".lock",
    "keys.npy",
    "vals.npy",
    "checksums.json",
    "datastore.json",
    "faiss.trained.index",
    "faiss.ivfdata",
    "add.progress.json",
    "faiss.partial.index",
  ]);
  for await (const e of Deno.readDir(out)) {
    assert.ok(allowed.has(e.name) || e.name.endsWith(".tmp"), `left ${e.name}`);
  }
  const again = await knn("build-index", ...args);
  assert.equal(again.code, 0, again.stderr);
  await assertRecovered(out);
});

Deno.test("a truncated faiss.ivfdata is E_CORRUPT for readers, not SIGBUS, and build-index adds again", async () => {
  const out = await refCopy("short_ivfdata");
  const ivf = join(out, "faiss.ivfdata");
  const size = (await Deno.stat(ivf)).size;
  await Deno.truncate(ivf, size / 2);
  const reader = await selfSearch(out);
  assert.deepEqual(reader.result, { error: "E_CORRUPT" });
  assert.equal(reader.code, 1);
  const nb = await knn("neighbors", "--datastore", out, "--text", "abc");
  assert.equal(nb.code, 1, nb.stderr);
  assert.match(
    nb.stderr,
    new RegExp(
      `(^|\\n)error: .*faiss\\.ivfdata: ${size / 2} bytes, but datastore\\.json ` +
        `index\\.ivfdata\\.bytes records ${size} \\(truncated`,
    ),
  );
  const again = await knn("build-index", ...buildArgs(corpus, out));
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /adding the keys again/);
  await assertRecovered(out);
});

Deno.test("a truncated keys.npy is E_CORRUPT at open and is gathered again, not skipped", async () => {
  const out = await refCopy("short_keys");
  const keys = join(out, "keys.npy");
  await Deno.truncate(keys, (await Deno.stat(keys)).size - 100);
  const nb = await knn("neighbors", "--datastore", out, "--text", "abc");
  assert.equal(nb.code, 1, nb.stderr);
  assert.match(
    nb.stderr,
    /(^|\n)error: .*keys\.npy: truncated file: header says shape \(11999, 64\)/,
  );
  const add = await knn("add", ...buildArgs(corpus, out));
  assert.equal(add.code, 1, add.stderr);
  assert.match(add.stderr, /the gathered keys cannot be used\nhint: gather again/);
  const again = await knn("build-index", ...buildArgs(corpus, out));
  assert.equal(again.code, 0, again.stderr);
  assert.doesNotMatch(again.stderr, /skip gather/);
  assert.match(again.stderr, /gathering .* again: its keys cannot be trusted/);
  await assertRecovered(out);
});

Deno.test("values outside the vocabulary are E_CORRUPT at eval and in verify; --force restores them", async () => {
  const out = await refCopy("bad_vals");
  {
    using vals = MappedArray.open(join(out, "vals.npy"), { mode: "r+" });
    (vals.view() as Int32Array).fill(999);
    vals.flush();
  }
  const ev = await knn("eval", "--datastore", out, "--corpus", corpus, "--max-tokens", "200");
  assert.equal(ev.code, 1, ev.stderr);
  assert.match(
    ev.stderr,
    /(^|\n)error: .*vals\.npy: row \d+ holds token 999, outside the model's vocabulary \[0, 256\)/,
  );
  const v = await knn("verify", out, "--json");
  assert.equal(v.code, 1);
  const report = JSON.parse(v.stdout);
  const failed = report.checks.filter((c: { status: string }) => c.status === "failed");
  assert.deepEqual(failed.map((c: { name: string }) => c.name), ["values", "checksums"]);
  const again = await knn("build-index", ...buildArgs(corpus, out), "--force");
  assert.equal(again.code, 0, again.stderr);
  await assertRecovered(out);
});

Deno.test("an edited index.ntotal is E_CORRUPT naming the field and both values; build-index adds again", async () => {
  const out = await refCopy("ntotal");
  const path = join(out, "datastore.json");
  const m = JSON.parse(await Deno.readTextFile(path));
  m.index.ntotal = 12345;
  await Deno.writeTextFile(path, JSON.stringify(m));
  const nb = await knn("neighbors", "--datastore", out, "--text", "abc");
  assert.equal(nb.code, 1, nb.stderr);
  assert.match(
    nb.stderr,
    /datastore\.json: index\.ntotal is 12345 but .*faiss\.index holds 11999 vectors/,
  );
  const again = await knn("build-index", ...buildArgs(corpus, out));
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /adding the keys again/);
  assert.equal((await readManifest(out))?.index?.ntotal, 11999);
  await assertRecovered(out);
});

Deno.test("changing only --nprobe records it in datastore.json without training or adding again", async () => {
  const out = await refCopy("nprobe");
  const before = await Deno.readFile(join(out, "faiss.index"));
  const r = await knn("build-index", ...buildArgs(corpus, out), "--nprobe", "2");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /nprobe 4 → 2: recorded/);
  assert.match(r.stderr, /skip train/);
  assert.match(r.stderr, /skip add/);
  assert.doesNotMatch(r.stderr, /^(train|add): /m);
  assert.equal((await readManifest(out))?.index?.nprobe, 2);
  assert.deepEqual(await Deno.readFile(join(out, "faiss.index")), before);
  using ds = await Datastore.open(out);
  assert.equal(ds.index.nprobe, 2);
});

Deno.test("verify accepts a sound datastore and names the block of a flipped key byte", async () => {
  const ok = await knn(
    "verify",
    await reference(),
    "--json",
    "--recall",
    "200",
    "--min-recall",
    "1",
  );
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  const report = JSON.parse(ok.stdout);
  assert.equal(report.ok, true);
  const status = Object.fromEntries(
    report.checks.map((c: { name: string; status: string }) => [c.name, c.status]),
  );
  for (
    const name of ["manifest", "keys", "vals", "values", "checksums", "index-files", "index", "ids"]
  ) {
    assert.equal(status[name], "ok", name);
  }
  assert.equal(status["self-recall"], "ok");

  const out = await refCopy("flipped");
  const path = join(out, "keys.npy");
  const bytes = await Deno.readFile(path);
  bytes[bytes.length - 3] ^= 0x40; // last row, same size
  await Deno.writeFile(path, bytes);
  const bad = await knn("verify", out);
  assert.equal(bad.code, 1);
  assert.match(
    bad.stdout,
    /FAIL checksums .*\n\s+E_CORRUPT: .*keys\.npy: rows \[0, 11999\) differ/,
  );
  assert.match(bad.stderr, /(^|\n)error: .*: 1 check failed \(checksums\)/);
});

Deno.test({
  name: "reliability test cleanup",
  fn: async () => {
    await Deno.remove(root, { recursive: true });
  },
});
