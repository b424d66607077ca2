/**
 * The default tokenizer: UTF-8 bytes. Token id = byte value, so the vocabulary is exactly 256
 * and every string (and every byte sequence) round-trips without an unknown token.
 *
 * @module
 */

/** Vocabulary size of the byte tokenizer: one id per byte value. */
export const BYTE_VOCAB_SIZE = 256;

const encoder = new TextEncoder();

/** Encodes a string as UTF-8 and returns one token id (0..255) per byte. */
export function encodeBytes(text: string): Int32Array {
  return Int32Array.from(encoder.encode(text));
}

/** Options for {@linkcode decodeBytes}. */
export interface DecodeOptions {
  /**
   * Throw on malformed UTF-8 instead of substituting U+FFFD. Default `false`: a window cut
   * out of a token stream usually starts or ends inside a multi-byte character, and display
   * code must still show the rest.
   */
  fatal?: boolean;
}

/**
 * Decodes byte token ids back to text. Ids must be integers in 0..255; with the default
 * `fatal: false` a partial or invalid UTF-8 sequence becomes U+FFFD and decoding continues.
 */
export function decodeBytes(
  ids: ArrayLike<number>,
  opts: DecodeOptions = {},
): string {
  const bytes = new Uint8Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= BYTE_VOCAB_SIZE) {
      throw new RangeError(`token ${i}: id ${id} is not a byte (expected an integer 0..255)`);
    }
    bytes[i] = id;
  }
  return new TextDecoder("utf-8", { fatal: opts.fatal ?? false }).decode(bytes);
}

/**
 * Renders one byte token for display: printable ASCII as itself, whitespace and other
 * bytes as an escape (`\n`, `\x9c`), so a single continuation byte never prints as garbage.
 */
export function byteTokenLabel(id: number): string {
  if (id === 0x0a) return "\\n";
  if (id === 0x09) return "\\t";
  if (id === 0x0d) return "\\r";
  if (id >= 0x20 && id < 0x7f) return String.fromCharCode(id);
  return `\\x${id.toString(16).padStart(2, "0")}`;
}
