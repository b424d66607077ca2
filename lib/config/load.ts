/**
 * Loading a configuration: built-in defaults, then a JSON/JSONC file (`--config`), then
 * command-line flags, each layer validated against the schema.
 *
 * Every error names the source (file path or `--flag`), the dotted key and what is allowed,
 * e.g. `knnlm.jsonc: index.nlist: expected an integer ≥ 1, found "abc"`.
 *
 * @module
 */
import { bundledModelPath } from "../model/default_model.ts";
import { isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { closest } from "../core/_suggest.ts";
import { parseJsonc } from "./_jsonc.ts";
import { readFlags } from "./flags.ts";
import {
  allowed,
  check,
  CONFIG_LEAVES,
  CONFIG_SCHEMA,
  ConfigError,
  type ConfigIssue,
  type DeepPartial,
  type KnnlmConfig,
  leafOf,
  setPath,
  show,
} from "./schema.ts";

/** A resolved configuration and where each (dotted) key's value came from. */
export interface LoadedConfig {
  /** The validated configuration. */
  config: KnnlmConfig;
  /** Dotted key (`index.nlist`) → source (`"default"`, file path, `"--nlist"`). */
  sources: Record<string, string>;
}

/** Options for {@linkcode loadConfig}. */
export interface LoadConfigOptions {
  /** Path of a JSON/JSONC config file; omitted means no file layer. */
  file?: string;
  /**
   * Flag values as returned by `node:util` `parseArgs` (`values`), keys being flag names
   * without dashes (`"seq-len"`, `"index.nlist"`, `"nlist"`). Undefined values are skipped.
   */
  flags?: Record<string, unknown>;
  /**
   * Flag name → dotted key, replacing the default naming (every key's kebab path plus
   * unambiguous bare names), e.g. `{ corpus: "eval.corpus" }` for a command whose `--corpus`
   * is the evaluation corpus.
   */
  flagMap?: Readonly<Record<string, string>>;
  /** Flag names that are not configuration keys (e.g. `help`, `config`) and are ignored. */
  ignoreFlags?: readonly string[];
  /** Overrides of the built-in defaults (validated; source `"defaults"`). */
  defaults?: DeepPartial<KnnlmConfig>;
}

function unknownKeyMessage(key: string): string {
  const leafName = key.split(".").at(-1)!;
  // Prefer a key that differs only by its section (`nlist` → `index.nlist`), then typos of
  // the full dotted path.
  const keys = CONFIG_LEAVES.map((l) => l.key);
  const sameLeaf = keys.filter((k) =>
    k !== key && k.split(".").at(-1)!.toLowerCase() === leafName.toLowerCase()
  );
  const sections = Object.keys(CONFIG_SCHEMA).filter((s) => !leafOf(s));
  const hint = sameLeaf[0] ?? closest(key, [...keys, ...sections]);
  return hint ? `unknown key; did you mean ${hint}?` : "unknown key";
}

/**
 * Walks a parsed config object in its own order, calling `visit` with each known dotted key
 * and reporting unknown keys and non-object sections in between (so issues keep file order).
 */
function flattenLayer(
  obj: unknown,
  source: string,
  issues: ConfigIssue[],
  visit: (key: string, value: unknown) => void,
): void {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    issues.push({ source, key: "", message: `expected a JSON object, found ${show(obj)}` });
    return;
  }
  for (const [k, v] of Object.entries(obj)) {
    if (k === "$schema") continue;
    const node = CONFIG_SCHEMA[k];
    if (node === undefined) {
      issues.push({ source, key: k, message: unknownKeyMessage(k) });
    } else if (node.kind === "object") {
      if (v === null || typeof v !== "object" || Array.isArray(v)) {
        issues.push({ source, key: k, message: `expected an object, found ${show(v)}` });
        continue;
      }
      for (const [f, fv] of Object.entries(v)) {
        const key = `${k}.${f}`;
        if (node.fields[f] === undefined) {
          issues.push({ source, key, message: unknownKeyMessage(key) });
        } else visit(key, fv);
      }
    } else visit(k, v);
  }
}

/** The toolkit's root directory (this file is `lib/config/load.ts`), or undefined if not local. */
function toolkitRoot(): string | undefined {
  const url = new URL("../..", import.meta.url);
  return url.protocol === "file:" ? fileURLToPath(url) : undefined;
}

/**
 * Loads and validates the configuration: built-in defaults < `defaults` < `file` < `flags`.
 *
 * `model` is resolved to an absolute path: the built-in default against the toolkit's own
 * directory, a user-given relative path against the current working directory.
 *
 * @example
 * ```ts
 * import { loadConfig } from "@knnlm/knnlm";
 * const { config, sources } = loadConfig({ flags: { "seq-len": "512", nlist: "1024" } });
 * console.log(config.seqLen, sources["index.nlist"]); // 512 "--nlist"
 * ```
 *
 * @returns The configuration and each key's source.
 * @throws {ConfigError} listing every unknown key, wrong type and out-of-range value, each
 *   with its source and dotted key; or the file's read or syntax error, naming the path (and
 *   the line and column), with the original error as `cause`.
 */
export function loadConfig(options: LoadConfigOptions = {}): LoadedConfig {
  const issues: ConfigIssue[] = [];
  const values = new Map<string, unknown>();
  const sources: Record<string, string> = {};
  for (const { key, leaf } of CONFIG_LEAVES) {
    values.set(key, leaf.default);
    sources[key] = "default";
  }
  const set = (key: string, v: unknown, source: string) => {
    const message = check(leafOf(key)!, v);
    if (message) issues.push({ source, key, message });
    else {
      values.set(key, v);
      sources[key] = source;
    }
  };

  if (options.defaults) {
    flattenLayer(options.defaults, "defaults", issues, (k, v) => set(k, v, "defaults"));
  }

  if (options.file !== undefined) {
    const file = options.file;
    let text: string;
    try {
      text = Deno.readTextFileSync(file);
    } catch (e) {
      const what = e instanceof Deno.errors.NotFound ? "config file not found" : String(e);
      throw new ConfigError([{ source: file, key: "", message: what }], { cause: e });
    }
    let parsed: unknown;
    try {
      parsed = parseJsonc(text);
    } catch (e) {
      throw new ConfigError([{ source: file, key: "", message: (e as Error).message }], {
        cause: e,
      });
    }
    flattenLayer(parsed, file, issues, (k, v) => set(k, v, file));
  }

  if (options.flags) {
    const { values: fv, source } = readFlags(
      options.flags,
      options.ignoreFlags ?? [],
      issues,
      options.flagMap,
    );
    for (const [k, v] of fv) set(k, v, source.get(k)!);
  }

  // Cross-field bounds (stride ≤ seqLen), checked on the merged result.
  for (const { key, leaf } of CONFIG_LEAVES) {
    if (leaf.kind !== "integer" || !leaf.maxKey) continue;
    const v = values.get(key) as number;
    const maxKey = key.split(".").slice(0, -1).concat(leaf.maxKey).join(".");
    const max = values.get(maxKey) as number;
    if (v > max) {
      issues.push({
        source: sources[key],
        key,
        message: `expected ${allowed(leaf, max)} (${maxKey} from ${sources[maxKey]}), found ${v}`,
      });
    }
  }
  if (issues.length) throw new ConfigError(issues);

  const config: Record<string, unknown> = {};
  for (const { key } of CONFIG_LEAVES) {
    const v = values.get(key);
    setPath(config, key, Array.isArray(v) ? [...v] : v);
  }
  const model = config.model as string;
  if (sources.model === "default" && !isAbsolute(model)) {
    const root = toolkitRoot();
    config.model = root ? resolve(root, model) : bundledModelPath(model); // cache path if by URL
  } else if (!isAbsolute(model)) {
    config.model = resolve(Deno.cwd(), model);
  }
  return { config: config as unknown as KnnlmConfig, sources };
}
