/**
 * Streaming corpus encoding for subword tokenizers: text is read in blocks, cut into chunks at
 * boundaries where the tokenizer cannot join tokens across the cut, and encoded chunk by
 * chunk straight into an `.npy` of int32 ids in the cache, so memory stays bounded however
 * large the text is (the ids themselves, 4 bytes a token, are the only thing that grows).
 *
 * The cache file is keyed by the sha256 of the source text and the tokenizer's identity:
 * `<cache>/corpus/<key>.npy`, where `<cache>` is `$KNNLM_CACHE_DIR`, else
 * `$XDG_CACHE_HOME/knnlm`, else `~/.cache/knnlm`. A second run over the same text with the
 * same tokenizer reads the ids from there.
 *
 * @module
 */
import { join } from "node:path";
import { createHash } from "node:crypto";
import { cacheRoot } from "../core/_cache.ts";
import { KnnError } from "../core/errors.ts";
import { sha256Hex } from "../core/_hash.ts";
import { encodeNpyHeader } from "../storage/npy.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { readNpyIds } from "./_npy_ids.ts";

/** Bump when the chunking rule or the file layout changes, so old cache files are not used. */
const CACHE_VERSION = 1;

/** Default characters per encoded chunk. */
export const DEFAULT_CHUNK_CHARS = 1 << 20;

const WS = /\s/;

/**
 * Where `text` may be cut so that encoding the two halves separately gives the same ids as
 * encoding the whole: before a whitespace run that follows a non-whitespace character.
 *
 * Byte-level BPE (GPT-2, Llama 3, …) pre-tokenizes with a regex whose matches never hold a
 * non-whitespace character followed by whitespace, so every such position is a token
 * boundary; and the run starts the second chunk whole, so `\s+(?!\S)` sees the same
 * lookahead it would in the whole text. (Cutting *after* a run would not do: at the end of a
 * chunk `"\n\n"` is one token, before a word it is two.) A newline is preferred, then any
 * whitespace; the search runs backwards from `end` and stops at `min`.
 *
 * @returns the cut position, or -1 when there is none in `(min, end)`
 */
export function safeCut(text: string, end: number, min = 1): number {
  let fallback = -1;
  for (let p = Math.min(end, text.length - 1); p > min; p--) {
    const c = text[p];
    if (!WS.test(c) || WS.test(text[p - 1])) continue;
    if (c === "\n") return p;
    if (fallback < 0) fallback = p;
  }
  return fallback;
}

/** Options for {@linkcode encodeChunks}. */
export interface EncodeChunksOptions {
  /** Target characters per chunk (default {@linkcode DEFAULT_CHUNK_CHARS}). */
  chunkChars?: number;
  /** Stops between chunks with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * Encodes a stream of text pieces (file blocks, in order) chunk by chunk: pieces are
 * gathered until `chunkChars`, the chunk is cut at the last {@linkcode safeCut} and encoded,
 * and the rest carries over. A stretch with no whitespace longer than 16 chunks is cut
 * anyway (outside a surrogate pair); no natural text has one.
 *
 * @returns the ids of each chunk, in order
 */
export async function* encodeChunks(
  pieces: AsyncIterable<string> | Iterable<string>,
  tokenizer: Tokenizer,
  opts: EncodeChunksOptions = {},
): AsyncGenerator<Int32Array> {
  const chunk = opts.chunkChars ?? DEFAULT_CHUNK_CHARS;
  if (!Number.isSafeInteger(chunk) || chunk < 1) {
    throw new RangeError(`chunkChars must be an integer ≥ 1, found ${chunk}`);
  }
  let buf = "";
  for await (const piece of pieces) {
    buf += piece;
    while (buf.length >= 2 * chunk) {
      opts.signal?.throwIfAborted();
      let cut = safeCut(buf, chunk, 0);
      if (cut < 0) cut = safeCut(buf, buf.length - 1, chunk);
      if (cut < 0) {
        if (buf.length < 16 * chunk) break;
        cut = chunk;
        const c = buf.charCodeAt(cut - 1);
        if (c >= 0xd800 && c < 0xdc00) cut++; // keep a surrogate pair together
      }
      yield tokenizer.encode(buf.slice(0, cut));
      buf = buf.slice(cut);
    }
  }
  opts.signal?.throwIfAborted();
  if (buf.length) yield tokenizer.encode(buf);
}

/** A text source for {@linkcode encodeCorpusCached}: its identity and its pieces. */
export interface TextSource {
  /** sha256 hex of the text (the UTF-8 bytes the pieces decode from). */
  sha256: string;
  /** The text, in pieces (read lazily; called once, on a cache miss). */
  pieces: () => AsyncIterable<string> | Iterable<string>;
  /** Path or spec named in errors. */
  where: string;
}

/** Options for {@linkcode encodeCorpusCached}. */
export interface EncodeCorpusOptions extends EncodeChunksOptions {
  /** Cache directory for encoded ids (default `<cache>/corpus`). */
  cacheDir?: string;
}

/** Result of {@linkcode encodeCorpusCached}. */
export interface EncodedCorpus {
  /** The ids, in text order. */
  tokens: Int32Array;
  /** The cache file they were read from or written to. */
  cacheFile: string;
  /** Whether the ids came from the cache (false: encoded now). */
  cached: boolean;
}

/** The default cache directory for encoded corpora: `<cache root>/corpus`. */
export function defaultCorpusCacheDir(): string {
  return join(cacheRoot(), "corpus");
}

/**
 * Encodes a text with a tokenizer through the cache: the ids of the same text and the same
 * tokenizer are read back from `<cacheDir>/<key>.npy`; otherwise they are encoded chunk by
 * chunk into a temporary `.npy` that is renamed into place when complete.
 *
 * @throws KnnError `E_CORRUPT` for an empty text, or errors from reading the source
 */
export async function encodeCorpusCached(
  source: TextSource,
  tokenizer: Tokenizer,
  opts: EncodeCorpusOptions = {},
): Promise<EncodedCorpus> {
  const dir = opts.cacheDir ?? defaultCorpusCacheDir();
  const t = tokenizer.identity;
  const key = sha256Hex(JSON.stringify({
    v: CACHE_VERSION,
    text: source.sha256,
    tokenizer: [t.kind, t.sha256, t.configSha256 ?? null, t.vocabSize],
  }));
  const file = join(dir, `${key}.npy`);
  try {
    return { tokens: readNpyIds(file), cacheFile: file, cached: true };
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound) && !KnnError.is(e, "E_NOT_FOUND")) {
      // A damaged cache file is re-made below rather than trusted.
      await Deno.remove(file).catch(() => {});
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${file}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    // Header first with room for the final count, then the ids as they come, then the header
    // again with the real shape (same length, so the data offset does not move).
    const header = encodeNpyHeader({ dtype: "<i4", shape: [0] });
    let count = 0;
    {
      using f = await Deno.open(tmp, { write: true, create: true, truncate: true });
      await writeAll(f, header);
      for await (const ids of encodeChunks(source.pieces(), tokenizer, opts)) {
        await writeAll(f, littleEndianBytes(ids));
        count += ids.length;
      }
      if (count === 0) {
        throw new KnnError("E_CORRUPT", `${source.where}: empty corpus (no tokens)`, {
          path: source.where,
        });
      }
      await f.seek(0, Deno.SeekMode.Start);
      await writeAll(
        f,
        encodeNpyHeader({ dtype: "<i4", shape: [count], headerLength: header.length }),
      );
      await f.sync();
    }
    await Deno.rename(tmp, file);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  return { tokens: readNpyIds(file), cacheFile: file, cached: false };
}

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await f.write(bytes.subarray(off));
}

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** The ids as little-endian int32 bytes (a view when the machine is little-endian). */
export function littleEndianBytes(ids: Int32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength);
  const out = new Uint8Array(ids.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < ids.length; i++) view.setInt32(i * 4, ids[i], true);
  return out;
}

/** Reads a file as text blocks (UTF-8, validated), for {@linkcode encodeChunks}. */
export async function* readTextBlocks(
  path: string,
  blockBytes = 1 << 20,
): AsyncGenerator<string> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (e) {
    throw new KnnError("E_NOT_FOUND", `${path}: cannot read corpus file`, { path, cause: e });
  }
  using file = f;
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const buf = new Uint8Array(blockBytes);
  let offset = 0;
  for (;;) {
    const n = await file.read(buf);
    try {
      if (n === null) {
        const rest = decoder.decode();
        if (rest) yield rest;
        return;
      }
      yield decoder.decode(buf.subarray(0, n), { stream: true });
    } catch (e) {
      if (!(e instanceof TypeError)) throw e;
      throw new KnnError(
        "E_CORRUPT",
        `${path}: not valid UTF-8 text near byte ${offset} (pass token ids as .npy or .bin instead)`,
        { path, cause: e },
      );
    }
    offset += n;
  }
}

/** sha256 hex of several files' bytes in order (each streamed), joined by `separator`. */
export async function sha256Files(paths: string[], separator = ""): Promise<string> {
  const hash = createHash("sha256");
  const buf = new Uint8Array(4 << 20);
  for (const [i, path] of paths.entries()) {
    if (i > 0) hash.update(separator);
    using f = await Deno.open(path, { read: true });
    for (;;) {
      const n = await f.read(buf);
      if (n === null) break;
      hash.update(buf.subarray(0, n));
    }
  }
  return hash.digest("hex");
}
