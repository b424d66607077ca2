/**
 * The config layer: one schema for every setting with its default, type and range;
 * {@linkcode loadConfig} merges defaults < a JSONC file < command-line flags and reports every
 * problem with its source and key.
 *
 * @module
 */

export {
  configArgOptions,
  ConfigError,
  type ConfigIssue,
  type ConfigKeyDescription,
  type DeepPartial,
  DEFAULT_CONFIG,
  describeConfigKeys,
  type EvalConfig,
  type IndexConfig,
  type KnnlmConfig,
  loadConfig,
  type LoadConfigOptions,
  type LoadedConfig,
} from "./config.ts";
export { type ErrorCode, KnnError, type KnnErrorOptions } from "../core/mod.ts";
