/**
 * The model layer: ONNX causal LMs read and edited at the protobuf wire level (any
 * intermediate tensor can become the key, in a cached copy; the user's file is untouched),
 * run with ONNX Runtime ({@linkcode OnnxLm}), the byte tokenizer, and the sliding-window plan
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
export { type LmOutput, OnnxLm, type OnnxLmOptions, type RunOptions } from "./runner.ts";
export {
  BYTE_VOCAB_SIZE,
  byteTokenLabel,
  decodeBytes,
  type DecodeOptions,
  encodeBytes,
} from "./tokenizer.ts";
export {
  planWindows,
  type Window,
  type WindowBatch,
  windowBatch,
  type WindowPlan,
} from "./windows.ts";
