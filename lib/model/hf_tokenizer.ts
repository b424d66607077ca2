/**
 * Hugging Face tokenizers: a `tokenizer.json` (BPE, WordPiece, Unigram with their
 * normalizers, pre-tokenizers and decoders) read by `npm:@huggingface/tokenizers`, a pure
 * JavaScript implementation (no native code, no network). This file is the package's only
 * import site.
 *
 * @module
 */
// A full specifier, not an import-map name: the toolkit must also load by URL, with no map.
// deno-lint-ignore no-import-prefix
import { Tokenizer as HfTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { dirname, join } from "node:path";
import { sha256Hex } from "../core/_hash.ts";
import { KnnError } from "../core/errors.ts";
import { BYTE_TOKENIZER, type Tokenizer, type TokenizerIdentity } from "./tokenizer.ts";

/** The file names a Hugging Face tokenizer folder holds. */
export const TOKENIZER_FILES = {
  tokenizer: "tokenizer.json",
  config: "tokenizer_config.json",
} as const;

async function readIfExists(path: string): Promise<Uint8Array | undefined> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new KnnError("E_IO", `${path}: cannot read (${(e as Error).message})`, {
      path,
      cause: e,
    });
  }
}

function parseJson(path: string, bytes: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new KnnError("E_CORRUPT", `${path}: not valid JSON (${(e as Error).message})`, {
      path,
      cause: e,
    });
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new KnnError("E_CORRUPT", `${path}: expected a JSON object`, { path });
  }
  return value as Record<string, unknown>;
}

/** Escapes a token's text for one-line display (see {@linkcode Tokenizer.tokenLabel}). */
function label(text: string): string {
  return text.replaceAll("\n", "\\n").replaceAll("\t", "\\t").replaceAll("\r", "\\r")
    .replaceAll(" ", "␣");
}

/** A {@linkcode Tokenizer} over a Hugging Face `tokenizer.json`. */
class HuggingFaceTokenizer implements Tokenizer {
  readonly identity: TokenizerIdentity;
  readonly path: string;
  readonly vocabSize: number;
  readonly #tok: HfTokenizer;
  readonly #vocab: readonly (string | undefined)[];

  constructor(path: string, tok: HfTokenizer, identity: TokenizerIdentity) {
    this.path = path;
    this.#tok = tok;
    this.identity = identity;
    this.vocabSize = identity.vocabSize;
    this.#vocab = (tok.model as unknown as { vocab: (string | undefined)[] }).vocab;
  }

  encode(text: string): Int32Array {
    if (text.length === 0) return new Int32Array(0);
    const { ids, tokens } = this.#tok.encode(text, { add_special_tokens: false });
    const out = new Int32Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === undefined || id === null) {
        throw new KnnError(
          "E_CORRUPT",
          `${this.path}: token ${JSON.stringify(tokens[i])} has no id and the tokenizer has no ` +
            `unknown token`,
          { path: this.path },
        );
      }
      out[i] = id;
    }
    return out;
  }

  decode(ids: ArrayLike<number>): string {
    if (ids.length === 0) return "";
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new RangeError(
          `token ${i}: id ${id} is outside the vocabulary 0..${this.vocabSize - 1}`,
        );
      }
    }
    return this.#tok.decode(Array.from(ids), {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: false,
    });
  }

  tokenLabel(id: number): string {
    const text = this.decode([id]);
    // A byte-level piece of a multi-byte character decodes to U+FFFD: show the raw token.
    if (text === "" || text.includes("\uFFFD")) return label(this.#vocab[id] ?? `<${id}>`);
    return label(text);
  }
}

/**
 * Resolves a `--tokenizer` PATH to the `tokenizer.json` file and its optional
 * `tokenizer_config.json`: PATH is either the `tokenizer.json` itself or a folder holding
 * one (a Hugging Face model folder, e.g. from `optimum-cli export onnx`).
 */
export async function resolveTokenizerFiles(
  path: string,
): Promise<{ tokenizer: string; config: string }> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    throw new KnnError(
      "E_NOT_FOUND",
      `${path}: tokenizer not found (expected a tokenizer.json, or a folder holding one)`,
      { path, cause: e },
    );
  }
  const file = info.isDirectory ? join(path, TOKENIZER_FILES.tokenizer) : path;
  if (info.isDirectory) {
    try {
      await Deno.stat(file);
    } catch (e) {
      throw new KnnError(
        "E_NOT_FOUND",
        `${path}: folder has no ${TOKENIZER_FILES.tokenizer} (a Hugging Face tokenizer folder ` +
          `holds ${TOKENIZER_FILES.tokenizer} and usually ${TOKENIZER_FILES.config})`,
        { path, cause: e },
      );
    }
  }
  return { tokenizer: file, config: join(dirname(file), TOKENIZER_FILES.config) };
}

/**
 * Opens a tokenizer: `null` gives the byte tokenizer; anything else is a
 * path to a Hugging Face `tokenizer.json` or a folder holding one. A `tokenizer_config.json`
 * beside the `tokenizer.json` is read too (it can change normalization).
 *
 * @example
 * ```ts ignore
 * import { openTokenizer } from "./hf_tokenizer.ts";
 * const tok = await openTokenizer("gpt2/tokenizer.json");
 * console.log(tok.encode("Hello world"), tok.identity.vocabSize); // Int32Array [15496, 995] 50257
 * ```
 *
 * @throws KnnError `E_NOT_FOUND` for a missing file or a folder without `tokenizer.json`,
 *   `E_CORRUPT` for a file that is not a tokenizer the library can build
 */
export async function openTokenizer(path: string | null | undefined): Promise<Tokenizer> {
  if (path === null || path === undefined) return BYTE_TOKENIZER;
  const files = await resolveTokenizerFiles(path);
  const bytes = await readIfExists(files.tokenizer);
  if (!bytes) {
    throw new KnnError("E_NOT_FOUND", `${files.tokenizer}: tokenizer not found`, {
      path: files.tokenizer,
    });
  }
  const json = parseJson(files.tokenizer, bytes);
  const configBytes = await readIfExists(files.config);
  const config = configBytes ? parseJson(files.config, configBytes) : {};
  let tok: HfTokenizer;
  try {
    tok = new HfTokenizer(json, config);
  } catch (e) {
    throw new KnnError(
      "E_CORRUPT",
      `${files.tokenizer}: not a tokenizer this toolkit can read (${(e as Error).message})`,
      { path: files.tokenizer, cause: e },
    );
  }
  const vocab = (tok.model as unknown as { vocab?: unknown[] }).vocab;
  if (!Array.isArray(vocab) || vocab.length === 0) {
    throw new KnnError("E_CORRUPT", `${files.tokenizer}: the tokenizer has no vocabulary`, {
      path: files.tokenizer,
    });
  }
  return new HuggingFaceTokenizer(files.tokenizer, tok, {
    kind: "huggingface",
    sha256: sha256Hex(bytes),
    configSha256: configBytes ? sha256Hex(configBytes) : null,
    vocabSize: vocab.length,
  });
}
