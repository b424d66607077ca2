/**
 * knnlm: build and query kNN-LM datastores (Khandelwal et al., ICLR 2020) from Deno.
 *
 * Corpus and tokenizer layer: the built-in Brown Corpus splits or user data, resolved to
 * byte-level token ids for the default model (`models/byte_gpt.onnx`, see models/README.md).
 *
 * ```ts
 * import { decodeBytes, loadCorpus } from "./mod.ts";
 *
 * const corpus = await loadCorpus("brown:valid");
 * console.log(corpus.description); // Brown corpus, valid split, …: 595289 tokens (UTF-8 bytes)
 * console.log(corpus.identity); // sha256 of the token stream
 * console.log(decodeBytes(corpus.tokens.subarray(0, 80)));
 * ```
 *
 * @module
 */

/**
 * Corpus sources. {@linkcode loadCorpus} takes `brown:train` / `brown:valid` / `brown:test`,
 * a UTF-8 text file, a folder of text files, a `.npy` of integer ids or a raw uint16 `.bin`
 * and returns `{ name, tokens: Int32Array, vocabSize, identity, description }`. The Brown
 * helpers expose the deterministic file split (sorted files; index % 10 == 0 → test,
 * == 1 → valid, rest → train: 400 / 50 / 50 files) and its sizes ({@linkcode brownSplitSizes}).
 */
export {
  BROWN_PACKAGE_VERSION,
  BROWN_SPLITS,
  brownDir,
  brownFiles,
  type BrownOptions,
  type BrownSplit,
  brownSplitFiles,
  brownSplitOf,
  brownSplitSizes,
  cleanBrownText,
  type Corpus,
  detokenize,
  loadBrownText,
  loadCorpus,
  type LoadCorpusOptions,
  readBrownFile,
  type SplitSize,
  tokenIdentity,
} from "./lib/corpus/mod.ts";

/**
 * The default tokenizer: UTF-8 bytes, vocabulary 256. {@linkcode decodeBytes} tolerates
 * windows cut inside a multi-byte character (U+FFFD) so display code never throws.
 */
export {
  BYTE_VOCAB_SIZE,
  byteTokenLabel,
  decodeBytes,
  type DecodeOptions,
  encodeBytes,
} from "./lib/tokenizer.ts";
