/**
 * knnlm: build and query kNN-LM datastores (Khandelwal et al., ICLR 2020) from Deno.
 *
 * @module
 */

// Configuration: defaults < JSONC file < flags, validated with errors naming source and key.
export {
  configArgOptions,
  ConfigError,
  type ConfigIssue,
  type ConfigKeyDescription,
  type ConfigSource,
  type DeepPartial,
  DEFAULT_CONFIG,
  describeConfigKeys,
  type EvalConfig,
  type IndexConfig,
  type KnnlmConfig,
  loadConfig,
  type LoadConfigOptions,
  type LoadedConfig,
  parseJsonc,
} from "./lib/config.ts";

// ONNX causal LMs: inspect inputs/outputs/key candidates, expose any intermediate tensor as
// the key (cached edited copy, user's file untouched), and run the model with onnxruntime.
export {
  formatModelInspection,
  type InputInfo,
  type InputRole,
  inspectModel,
  type InspectOptions,
  type KeyCandidate,
  type ModelInspection,
  type TensorInfo,
} from "./lib/onnx/inspect.ts";
export {
  defaultOnnxCacheDir,
  type ExposedModel,
  type ExposeOptions,
  exposeTensors,
} from "./lib/onnx/expose.ts";
export { type LmOutput, OnnxLm, type OnnxLmOptions, type RunOptions } from "./lib/onnx/runner.ts";
