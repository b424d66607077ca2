/**
 * The default tokenizer: UTF-8 bytes. Token id = byte value, so the vocabulary is exactly 256
 * and every string (and every byte sequence) round-trips without an unknown token.
 *
 * @module
 */
import { KnnError } from "../core/errors.ts";

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

/**
 * What identifies a tokenizer: a datastore records it, and reading the datastore with any
 * other tokenizer is refused.
 */
export interface TokenizerIdentity {
  /**
   * `bytes` (UTF-8 bytes, the default), `huggingface` (a `tokenizer.json`), or `none`: the
   * corpus came as pre-tokenized ids and no tokenizer was named, so text cannot be encoded.
   */
  kind: "bytes" | "huggingface" | "none";
  /** sha256 hex of the `tokenizer.json` file; `null` for bytes and none. */
  sha256: string | null;
  /** sha256 hex of the `tokenizer_config.json` beside it, or `null` when there is none. */
  configSha256: string | null;
  /** Ids are drawn from 0..vocabSize-1. */
  vocabSize: number;
}

/**
 * Turns text into token ids and back. {@linkcode BYTE_TOKENIZER} is the default;
 * `openTokenizer` (in `hf_tokenizer.ts`) reads a Hugging Face `tokenizer.json`.
 */
export interface Tokenizer {
  /** Kind, file hashes and vocabulary size (recorded in `datastore.json`). */
  readonly identity: TokenizerIdentity;
  /** The file it was read from (`tokenizer.json`), or `null` for bytes. */
  readonly path: string | null;
  /** Vocabulary size: every id is in 0..vocabSize-1. */
  readonly vocabSize: number;
  /**
   * Encodes text with no special tokens added (no BOS/EOS): the same text always gives the
   * same ids whether it is a whole corpus, a chunk of one, or an `eval --text` context.
   */
  encode(text: string): Int32Array;
  /**
   * Decodes ids back to text, special tokens included; a window cut out of a stream that
   * starts or ends inside a multi-byte character shows U+FFFD there.
   */
  decode(ids: ArrayLike<number>): string;
  /**
   * One token for display: its text with line breaks and tabs escaped (`\n`, `\t`); a
   * subword tokenizer shows spaces as `␣` so that `" the"` and `"the"` stay distinct.
   */
  tokenLabel(id: number): string;
}

/** The byte tokenizer as a {@linkcode Tokenizer}: ids are UTF-8 bytes, vocabulary 256. */
export const BYTE_TOKENIZER: Tokenizer = Object.freeze({
  identity: Object.freeze({
    kind: "bytes" as const,
    sha256: null,
    configSha256: null,
    vocabSize: BYTE_VOCAB_SIZE,
  }),
  path: null,
  vocabSize: BYTE_VOCAB_SIZE,
  encode: encodeBytes,
  decode: (ids: ArrayLike<number>) => decodeBytes(ids),
  tokenLabel: byteTokenLabel,
});

/**
 * The stand-in for a corpus of pre-tokenized ids made without a named tokenizer: it cannot
 * encode text (it throws a `KnnError` `E_USAGE` asking for `--tokenizer`) and shows ids as
 * `⟨id⟩`.
 */
export function idsOnlyTokenizer(vocabSize: number): Tokenizer {
  const label = (id: number) => `⟨${id}⟩`;
  return Object.freeze({
    identity: Object.freeze({ kind: "none" as const, sha256: null, configSha256: null, vocabSize }),
    path: null,
    vocabSize,
    encode(): Int32Array {
      throw new KnnError(
        "E_USAGE",
        "the datastore was built from pre-tokenized ids without a tokenizer, so text cannot be " +
          "encoded",
        { hint: "pass --tokenizer PATH (the tokenizer.json that made the ids)" },
      );
    },
    decode: (ids: ArrayLike<number>) => Array.from(ids, label).join(""),
    tokenLabel: label,
  });
}

/** Whether two identities name the same tokenizer (kind, file hashes and vocabulary size). */
export function sameTokenizer(a: TokenizerIdentity, b: TokenizerIdentity): boolean {
  return a.kind === b.kind && a.sha256 === b.sha256 &&
    (a.configSha256 ?? null) === (b.configSha256 ?? null) && a.vocabSize === b.vocabSize;
}

/** A tokenizer identity in one short phrase, for messages: `huggingface 3f2a…, vocab 50257`. */
export function describeTokenizer(t: TokenizerIdentity): string {
  if (t.kind === "bytes") return "UTF-8 bytes (vocab 256)";
  if (t.kind === "none") return `pre-tokenized ids (vocab ${t.vocabSize})`;
  return `tokenizer.json sha256 ${t.sha256?.slice(0, 12)}…` +
    (t.configSha256 ? ` with tokenizer_config.json ${t.configSha256.slice(0, 12)}…` : "") +
    `, vocab ${t.vocabSize}`;
}
