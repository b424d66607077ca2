/**
 * The model layer: ONNX causal LMs read and edited at the protobuf wire level (any
 * intermediate tensor can become the key, in a cached copy; the user's file is untouched),
 * run with ONNX Runtime ({@linkcode OnnxLm}), tokenizers (UTF-8 bytes by default, or a Hugging
 * Face `tokenizer.json` through {@linkcode openTokenizer}), and the sliding-window plan
 * shared by gathering and evaluation.
 *
 * @module
 */

export {
  formatModelInspection,
  type InputInfo,
  type InputRole,
  inspectModel,
  type InspectOptions,
  type KeyCandidate,
  type ModelInspection,
  type TensorInfo,
} from "./inspect.ts";
export { type ExposedModel, type ExposeOptions, exposeTensors } from "./expose.ts";
export {
  type KeyStream,
  type LmOutput,
  OnnxLm,
  type OnnxLmOptions,
  type RunOptions,
} from "./runner.ts";
export {
  BYTE_TOKENIZER,
  BYTE_VOCAB_SIZE,
  byteTokenLabel,
  decodeBytes,
  type DecodeOptions,
  describeTokenizer,
  encodeBytes,
  idsOnlyTokenizer,
  sameTokenizer,
  type Tokenizer,
  type TokenizerIdentity,
} from "./tokenizer.ts";
export { openTokenizer, resolveTokenizerFiles, TOKENIZER_FILES } from "./hf_tokenizer.ts";
export {
  planWindows,
  type Window,
  type WindowBatch,
  windowBatch,
  type WindowPlan,
} from "./windows.ts";
