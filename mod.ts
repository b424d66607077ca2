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
