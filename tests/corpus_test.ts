import assert from "node:assert/strict";
import { join } from "node:path";
import {
  brownDir,
  brownFiles,
  brownSplitFiles,
  brownSplitSizes,
  cleanBrownText,
  loadBrownText,
  readBrownFile,
} from "../lib/corpus/brown.ts";
import { loadCorpus, tokenIdentity } from "../lib/corpus/mod.ts";
import { encodeBytes } from "../lib/model/tokenizer.ts";

Deno.test("Brown splits are 400/50/50 files, disjoint, and together cover all 500 files", async () => {
  const all = await brownFiles();
  assert.equal(all.length, 500);
  assert.equal(all[0], "ca01");
  assert.equal(all[499], "cr09");
  const train = await brownSplitFiles("train");
  const valid = await brownSplitFiles("valid");
  const test = await brownSplitFiles("test");
  assert.deepEqual([train.length, valid.length, test.length], [400, 50, 50]);
  const union = new Set([...train, ...valid, ...test]);
  assert.equal(union.size, 500);
  assert.deepEqual([...union].sort(), all);
  // Rule: sorted index % 10 == 0 -> test, == 1 -> valid.
  assert.deepEqual(test.slice(0, 3), ["ca01", "ca11", "ca21"]);
  assert.deepEqual(valid.slice(0, 3), ["ca02", "ca12", "ca22"]);
  assert.ok(train.includes("ca03") && !train.includes("ca01") && !train.includes("ca02"));
});

Deno.test("every Brown genre with ten or more files appears in each split", async () => {
  const genres = (files: string[]) => new Set(files.map((f) => f[1]));
  const all = genres(await brownFiles());
  const valid = genres(await brownSplitFiles("valid"));
  const test = genres(await brownSplitFiles("test"));
  for (const g of all) {
    if (g === "r") continue; // humor has 9 files (cr01..cr09): valid gets cr01, test none
    assert.ok(valid.has(g), `valid lacks genre ${g}`);
    assert.ok(test.has(g), `test lacks genre ${g}`);
  }
});

Deno.test("the first Brown file's first sentence comes out as clean plain text", async () => {
  const text = await readBrownFile("ca01");
  const first = text.split("\n\n")[0];
  assert.equal(
    first,
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary " +
      'election produced "no evidence" that any irregularities took place.',
  );
});

Deno.test("Brown headlines become their own paragraph and sentences in a paragraph join", async () => {
  const paragraphs = (await readBrownFile("ca01")).split("\n\n");
  const i = paragraphs.indexOf("Merger proposed");
  assert.ok(i > 0, "headline 'Merger proposed' is a paragraph");
  assert.match(paragraphs[i + 1], /^However, the jury said it believes "these two offices/);
  // Two tagged lines (sentences) of one block become one paragraph.
  assert.ok(
    paragraphs.some((p) =>
      p.startsWith("The City Purchasing Department, the jury said,") &&
      p.includes('. It urged that the city "take steps to remedy" this problem.')
    ),
  );
});

Deno.test("cleaned Brown text keeps no tags, no `` or '' quotes, and no tabs", async () => {
  const text = await loadBrownText("test");
  assert.doesNotMatch(text, /\S\/(at|nn|np|vbd|in|jj|cc|rb)(-tl|-hl)?\b/);
  assert.ok(!text.includes("``") && !text.includes("''"));
  assert.ok(!text.includes("\t"));
  assert.ok(!text.includes("\n\n\n"), "paragraphs are separated by exactly one blank line");
  assert.ok(text.includes('"'));
  assert.ok(text.endsWith(".\n") || text.endsWith('"\n') || text.endsWith("!\n"));
});

Deno.test("tags are split at the last slash and punctuation gets natural spacing", () => {
  const tagged = "\n\n\tHe/pps said/vbd ,/, ``/`` Take/vb 1/2/cd (/( and/or/cc ) ''/'' ./.\n" +
    "Then/rb '/' Met/np '/' can't/md* go/vb ;/. it's/pps+bez //in 5/cd !/.\n\n\n" +
    "\tNext/ap paragraph/nn ?/.\n";
  assert.equal(
    cleanBrownText(tagged),
    "He said, \"Take 1/2 (and/or)\". Then 'Met' can't go; it's / 5!\n\nNext paragraph?",
  );
});

Deno.test("split sizes count files and bytes, matching the loaded token streams", async () => {
  const sizes = await brownSplitSizes();
  assert.equal(sizes.train.files + sizes.valid.files + sizes.test.files, 500);
  const test = await loadCorpus("brown:test");
  assert.equal(test.tokens.length, sizes.test.bytes);
  assert.equal(test.vocabSize, 256);
  assert.equal(test.name, "brown:test");
  assert.match(test.identity, /^[0-9a-f]{64}$/);
  assert.ok(sizes.train.bytes > 7 * sizes.test.bytes, "train holds most of the text");
  const valid = await loadCorpus("brown:valid");
  assert.notEqual(valid.identity, test.identity);
  assert.equal((await loadCorpus("brown:test")).identity, test.identity);
});

Deno.test("an explicit Brown directory is honoured and a wrong one is named in the error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.copyFile(join(brownDir(), "ca01"), join(dir, "ca01"));
    await Deno.copyFile(join(brownDir(), "ca02"), join(dir, "ca02"));
    const test = await loadCorpus("brown:test", { brownDir: dir });
    assert.equal(
      new TextDecoder().decode(Uint8Array.from(test.tokens)),
      (await readBrownFile("ca01")) + "\n",
    );
    await assert.rejects(loadCorpus("brown:train", { brownDir: join(dir, "nope") }), /nope/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Builds a version-1.0 .npy file in memory (C order). */
function npy(descr: string, shape: number[], data: Uint8Array): Uint8Array {
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(", ")}${
    shape.length === 1 ? "," : ""
  }), }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const out = new Uint8Array(10 + header.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(data, 10 + header.length);
  return out;
}

Deno.test("user corpora: a text file, a folder of files, .npy ids and a uint16 .bin", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const txt = join(dir, "one.txt");
    await Deno.writeTextFile(txt, "héllo");
    const one = await loadCorpus(txt);
    assert.deepEqual(Array.from(one.tokens), Array.from(encodeBytes("héllo")));
    assert.equal(one.name, "one.txt");
    assert.equal(one.vocabSize, 256);

    const folder = join(dir, "docs");
    await Deno.mkdir(folder);
    await Deno.writeTextFile(join(folder, "b.txt"), "second");
    await Deno.writeTextFile(join(folder, "a.txt"), "first");
    await Deno.writeTextFile(join(folder, ".hidden"), "skipped");
    const docs = await loadCorpus(folder + "/");
    assert.equal(new TextDecoder().decode(Uint8Array.from(docs.tokens)), "first\n\nsecond");
    assert.equal(docs.name, "docs");

    // The same ids as int32 .npy have the same identity as the text they came from.
    const ids = encodeBytes("héllo");
    const i4 = join(dir, "ids.npy");
    await Deno.writeFile(i4, npy("<i4", [ids.length], new Uint8Array(ids.buffer)));
    const fromNpy = await loadCorpus(i4);
    assert.deepEqual(Array.from(fromNpy.tokens), Array.from(ids));
    assert.equal(fromNpy.identity, one.identity);
    // The identity is sha256 of the ids as little-endian int32, computed here with WebCrypto
    // over bytes laid out by hand (the library uses node:crypto over the Int32Array's buffer).
    const le = new DataView(new ArrayBuffer(4 * ids.length));
    ids.forEach((id, i) => le.setInt32(4 * i, id, true));
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", le.buffer));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    assert.equal(fromNpy.identity, hex);
    assert.equal(await tokenIdentity(ids), hex);

    const u2 = join(dir, "ids16.npy");
    await Deno.writeFile(
      u2,
      npy("<u2", [2, 2], new Uint8Array(Uint16Array.of(1, 2, 300, 65535).buffer)),
    );
    const wide = await loadCorpus(u2);
    assert.deepEqual(Array.from(wide.tokens), [1, 2, 300, 65535]);
    assert.equal(wide.vocabSize, 65536);

    const bin = join(dir, "train.bin");
    await Deno.writeFile(bin, Uint8Array.of(0x01, 0x00, 0x34, 0x12, 0xff, 0xff));
    const raw = await loadCorpus(bin, { vocabSize: 65536 });
    assert.deepEqual(Array.from(raw.tokens), [1, 0x1234, 0xffff]);
    assert.equal(raw.vocabSize, 65536);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bad corpora fail with an error that names the path and the problem", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = join(dir, "missing.txt");
    await assert.rejects(loadCorpus(missing), (e: Error) => {
      assert.match(e.message, /missing\.txt: corpus not found/);
      return true;
    });
    const empty = join(dir, "empty.txt");
    await Deno.writeTextFile(empty, "");
    await assert.rejects(loadCorpus(empty), /empty\.txt: empty corpus/);
    const emptyDir = join(dir, "nothing");
    await Deno.mkdir(emptyDir);
    await assert.rejects(loadCorpus(emptyDir), /nothing: empty corpus/);

    const f4 = join(dir, "floats.npy");
    await Deno.writeFile(f4, npy("<f4", [1], new Uint8Array(4)));
    await assert.rejects(
      loadCorpus(f4),
      /floats\.npy: expected dtype int32, uint16, uint8 or int64, found '<f4'/,
    );
    const junk = join(dir, "junk.npy");
    await Deno.writeFile(junk, new TextEncoder().encode("not numpy at all"));
    await assert.rejects(loadCorpus(junk), /junk\.npy: not an NPY file/);
    const short = join(dir, "short.npy");
    await Deno.writeFile(short, npy("<i4", [10], new Uint8Array(8)));
    await assert.rejects(
      loadCorpus(short),
      /short\.npy: truncated file: header says shape \(10,\)/,
    );

    const odd = join(dir, "odd.bin");
    await Deno.writeFile(odd, Uint8Array.of(1, 2, 3));
    await assert.rejects(loadCorpus(odd), /odd\.bin: 3 bytes is not a whole number/);
    const big = join(dir, "big.bin");
    await Deno.writeFile(big, Uint8Array.of(0, 1)); // id 256
    await assert.rejects(loadCorpus(big, { vocabSize: 256 }), /big\.bin: token 0 has id 256/);

    const latin1 = join(dir, "latin1.txt");
    await Deno.writeFile(latin1, Uint8Array.of(0x63, 0x61, 0x66, 0xe9)); // "café" in Latin-1
    await assert.rejects(loadCorpus(latin1), /latin1\.txt: not valid UTF-8/);
    await assert.rejects(loadCorpus("brown:dev"), /unknown Brown split/);
    await assert.rejects(loadCorpus(latin1.replace("latin1", "x"), {}), /corpus not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
