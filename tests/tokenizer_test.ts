import assert from "node:assert/strict";
import {
  BYTE_VOCAB_SIZE,
  byteTokenLabel,
  decodeBytes,
  encodeBytes,
} from "../lib/model/tokenizer.ts";

Deno.test("byte tokenizer maps each UTF-8 byte to one id and decodes back to the same text", () => {
  const text = "naïve café — 東京 🙂\n\ttab";
  const ids = encodeBytes(text);
  assert.equal(ids.length, new TextEncoder().encode(text).length);
  assert.ok(ids.every((id) => id >= 0 && id < BYTE_VOCAB_SIZE));
  assert.deepEqual(Array.from(encodeBytes("Ab")), [65, 98]);
  assert.equal(decodeBytes(ids), text);
});

Deno.test("decoding a window cut inside a multi-byte character shows U+FFFD instead of failing", () => {
  const ids = encodeBytes("x🙂y"); // 🙂 is 4 bytes: f0 9f 99 82
  const cutEnd = ids.subarray(0, 3); // "x" + first two bytes of 🙂
  const cutStart = ids.subarray(2); // last three bytes of 🙂 + "y"
  assert.equal(decodeBytes(cutEnd), "x\uFFFD");
  assert.ok(decodeBytes(cutStart).endsWith("y"));
  assert.ok(decodeBytes(cutStart).includes("\uFFFD"));
  assert.throws(() => decodeBytes(cutEnd, { fatal: true }), TypeError);
});

Deno.test("decoding rejects ids that are not bytes, naming the position", () => {
  assert.throws(() => decodeBytes([65, 256]), /token 1: id 256 is not a byte/);
  assert.throws(() => decodeBytes([-1]), /token 0: id -1/);
});

Deno.test("byte token labels escape whitespace and non-ASCII bytes for display", () => {
  assert.equal(byteTokenLabel(65), "A");
  assert.equal(byteTokenLabel(10), "\\n");
  assert.equal(byteTokenLabel(0x9c), "\\x9c");
});
