/**
 * The one place where the server turns text into token ids and ids back into text. Today the
 * datastore's tokenizer is the byte tokenizer of lib/model; a tokenizer-aware server changes
 * only this file.
 *
 * @module
 */

import { byteTokenLabel, decodeBytes, encodeBytes } from "../model/mod.ts";

/** Token ids of `text`. */
export function encode(text: string): Int32Array {
  return encodeBytes(text);
}

/** The text of a run of token ids (a broken character at either end shows as U+FFFD). */
export function decode(ids: ArrayLike<number>): string {
  return decodeBytes(ids);
}

/** One token as a short, printable label (`e`, `\n`, `\xc3`). */
export function label(id: number): string {
  return byteTokenLabel(id);
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
export function pieces(ids: ArrayLike<number>): string[] {
  const decoder = new TextDecoder("utf-8");
  const out: string[] = [];
  for (let i = 0; i < ids.length; i++) {
    out.push(decoder.decode(Uint8Array.of(ids[i]), { stream: true }));
  }
  const rest = decoder.decode();
  if (rest && out.length) out[out.length - 1] += rest;
  return out;
}
