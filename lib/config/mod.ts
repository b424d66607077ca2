/**
 * The config layer: one schema for every setting with its default, type and range
 * ({@linkcode DEFAULT_CONFIG} and the {@linkcode KnnlmConfig} types come from it);
 * {@linkcode loadConfig} merges defaults < a JSONC file < command-line flags and reports every
 * problem with its source and key; {@linkcode parseCommandLine} parses a command's
 * declarative option table (configuration keys plus command-only options).
 *
 * @module
 */

export {
  ConfigError,
  type ConfigIssue,
  type DeepPartial,
  DEFAULT_CONFIG,
  type EnumLeaf,
  type EvalConfig,
  type IndexConfig,
  type IntegerLeaf,
  type KnnlmConfig,
  type Leaf,
  type LeafDoc,
  type NullableIntegerLeaf,
  type NullableStringLeaf,
  type NumberLeaf,
  type NumberListLeaf,
  type StringLeaf,
  type ValueType,
} from "./schema.ts";
export {
  type CommandOption,
  configArgOptions,
  type ConfigKeyDescription,
  describeConfigKeys,
  describeOptions,
  type KeyOption,
  type OptionHelp,
  type OptionSpec,
  parseCommandLine,
  type ParsedCommandLine,
} from "./flags.ts";
export { loadConfig, type LoadConfigOptions, type LoadedConfig } from "./load.ts";
export { type ErrorCode, KnnError, type KnnErrorOptions } from "../core/mod.ts";
export type { Metric } from "../index/mod.ts";
