/**
 * The one place where the server turns text into token ids and ids back into text, with the
 * datastore's own tokenizer (UTF-8 bytes, or the Hugging Face `tokenizer.json` recorded in
 * `datastore.json`).
 *
 * @module
 */

import type { Tokenizer } from "../model/mod.ts";

/** Token ids of `text`. */
export function encode(t: Tokenizer, text: string): Int32Array {
  return t.encode(text);
}

/** The text of a run of token ids (a broken character at either end shows as U+FFFD). */
export function decode(t: Tokenizer, ids: ArrayLike<number>): string {
  return t.decode(ids);
}

/** One token as a short, printable label (`e`, `\n`, `\xc3`, `␣the`). */
export function label(t: Tokenizer, id: number): string {
  return t.tokenLabel(id);
}

/** Whether `id` is a token of the vocabulary. */
export function isToken(id: number, vocabSize: number): boolean {
  return Number.isInteger(id) && id >= 0 && id < vocabSize;
}

/**
 * The text each token adds when the ids are decoded left to right: joined, the pieces are the
 * decoded text. A token that only starts a multi-byte character adds "" and the one that
 * completes it adds the whole character, so a page can show one span per token.
 */
export function pieces(t: Tokenizer, ids: ArrayLike<number>): string[] {
  if (t.identity.kind === "bytes") {
    const decoder = new TextDecoder("utf-8");
    const out: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      out.push(decoder.decode(Uint8Array.of(ids[i]), { stream: true }));
    }
    const rest = decoder.decode();
    if (rest && out.length) out[out.length - 1] += rest;
    return out;
  }
  // Subword tokens: what decoding one more token adds to the decoded prefix (a prefix that
  // ends inside a character shows U+FFFD, which the next token's piece replaces).
  const all = Array.from(ids);
  const out: string[] = [];
  let prev = "";
  for (let i = 0; i < all.length; i++) {
    let text = t.decode(all.slice(0, i + 1));
    while (text.endsWith("\uFFFD") && i + 1 < all.length) text = text.slice(0, -1);
    const common = prev.length <= text.length && text.startsWith(prev) ? prev.length : 0;
    out.push(text.slice(common));
    prev = text;
  }
  return out;
}
