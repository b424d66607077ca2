/**
 * Command-line flags for configuration keys, and the declarative option tables a command
 * line is parsed with.
 *
 * Every key has a flag: its kebab-case dotted path (`--seq-len`, `--index.add-chunk`) and,
 * where the leaf name is unambiguous, the bare leaf name (`--nlist`). A command declares its
 * options as a table of {@linkcode OptionSpec}s — configuration keys (type, range, default and
 * description from the schema) plus command-only options — and {@linkcode parseCommandLine}
 * parses `argv` against it, so the same bad value gets the same message in every command.
 *
 * @module
 */
import { closest } from "../core/_suggest.ts";
import { KnnError } from "../core/errors.ts";
import {
  allowed,
  check,
  coerceString,
  CONFIG_LEAVES,
  ConfigError,
  type ConfigIssue,
  type DeepPartial,
  enumValues,
  type KnnlmConfig,
  type Leaf,
  leafOf,
  setPath,
  show,
  type ValueType,
} from "./schema.ts";

function kebab(s: string): string {
  return s.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

/** `seq-len`, `seqLen`, `SEQ_LEN` → `seqlen`: flag names compare with dashes and case ignored. */
function normal(name: string): string {
  return name.replace(/[-_]/g, "").toLowerCase();
}

/** Flag names for `keys`: each key's kebab path, plus its bare leaf name where unique. */
function flagNamesFor(keys: readonly string[], taken: readonly string[] = []): Map<string, string> {
  const m = new Map<string, string>();
  const leafCount = new Map<string, number>();
  const leafOfKey = (key: string) => key.split(".").at(-1)!;
  for (const key of keys) leafCount.set(leafOfKey(key), (leafCount.get(leafOfKey(key)) ?? 0) + 1);
  for (const key of keys) {
    const bare = kebab(leafOfKey(key));
    const full = key.split(".").map(kebab).join(".");
    if (full !== bare && leafCount.get(leafOfKey(key)) === 1 && !taken.includes(bare)) {
      m.set(bare, key);
    }
    m.set(full, key);
  }
  return m;
}

/**
 * The library's flag names (for `loadConfig({ flags })`): every key's kebab-case path, plus
 * the bare leaf name of a nested key when it clashes with no top-level key and no other
 * section's key.
 */
const FLAG_TO_KEY: Map<string, string> = (() => {
  const keys = CONFIG_LEAVES.map((l) => l.key);
  const byFull = flagNamesFor(keys);
  // Full paths first (the canonical name), then the bare aliases.
  return new Map([
    ...[...byFull].filter(([f, k]) => f.includes(".") || !k.includes(".")),
    ...[...byFull].filter(([f, k]) => !f.includes(".") && k.includes(".")),
  ]);
})();

/** Flags that set `key` (without dashes): its full path first. */
function flagsOf(key: string): string[] {
  return [...FLAG_TO_KEY].filter(([, k]) => k === key).map(([f]) => f);
}

/**
 * `parseArgs` option declarations for every configuration flag (all `type: "string"`; values
 * are coerced and validated by `loadConfig`).
 *
 * @returns A record to spread into `parseArgs({ options })`.
 */
export function configArgOptions(): Record<string, { type: "string" }> {
  return Object.fromEntries([...FLAG_TO_KEY.keys()].map((f) => [f, { type: "string" }]));
}

/** One row of {@linkcode describeConfigKeys}. */
export interface ConfigKeyDescription {
  /** Dotted key, e.g. `index.nlist`. */
  key: string;
  /** Flags that set it, with dashes, e.g. `["--index.nlist", "--nlist"]`. */
  flags: string[];
  /** Allowed values, e.g. `an integer ≥ 1`, `one of "l2", "ip"`. */
  type: string;
  /** Built-in default as JSON text. */
  default: string;
  /** One-line description. */
  description: string;
}

/**
 * Describes every configuration key.
 *
 * @returns One row per key, in schema order.
 */
export function describeConfigKeys(): ConfigKeyDescription[] {
  return CONFIG_LEAVES.map(({ key, leaf }) => ({
    key,
    flags: flagsOf(key).map((f) => "--" + f),
    type: allowed(leaf),
    default: JSON.stringify(leaf.default),
    description: leaf.doc,
  }));
}

/**
 * Reads flag values (`parseArgs` strings) into typed values by key, unvalidated: what cannot
 * be converted stays a string for `check` to report. Unknown flags become issues.
 *
 * @param flagMap flag name → dotted key; default: the library's flag names
 */
export function readFlags(
  flags: Record<string, unknown>,
  ignore: readonly string[],
  issues: ConfigIssue[],
  flagMap?: Readonly<Record<string, string>>,
): { values: Map<string, unknown>; source: Map<string, string> } {
  const names = flagMap ? new Map(Object.entries(flagMap)) : FLAG_TO_KEY;
  const byNormal = new Map([...names].map(([f, k]) => [normal(f), k]));
  const values = new Map<string, unknown>();
  const source = new Map<string, string>();
  for (const [name, raw] of Object.entries(flags)) {
    if (raw === undefined || ignore.includes(name)) continue;
    const flag = "--" + name;
    const key = names.get(name) ?? byNormal.get(normal(name));
    if (key === undefined) {
      const hint = closest(name, names.keys());
      issues.push({
        source: flag,
        key: "",
        message: `unknown option${hint ? `; did you mean --${hint}?` : ""}`,
      });
      continue;
    }
    const last = Array.isArray(raw) ? raw.at(-1) : raw;
    if (typeof last !== "string") {
      issues.push({ source: flag, key, message: `expected a value, found ${show(last)}` });
      continue;
    }
    values.set(key, coerceString(leafOf(key)!, last));
    source.set(key, flag);
  }
  return { values, source };
}

/** Result of {@linkcode coerceFlags}. */
export interface CoercedFlags {
  /** The flag values as a nested partial configuration. */
  values: DeepPartial<KnnlmConfig>;
  /** Dotted key → the flag that set it (`"--nlist"`). */
  sources: Record<string, string>;
}

/**
 * Converts `parseArgs` string values into typed configuration values and checks each one
 * (type and range; cross-field bounds such as `stride ≤ seqLen` need the merged result and
 * are checked by `loadConfig`).
 *
 * @param flags `parseArgs(...).values`; names without dashes, e.g. `"seq-len"`, `"nlist"`
 * @param options `ignore`: flag names that are not configuration keys
 * @throws {ConfigError} naming each bad `--flag`, its key and what is allowed
 */
export function coerceFlags(
  flags: Record<string, unknown>,
  options: { ignore?: readonly string[] } = {},
): CoercedFlags {
  const issues: ConfigIssue[] = [];
  const { values, source } = readFlags(flags, options.ignore ?? [], issues);
  const out: CoercedFlags = { values: {}, sources: {} };
  for (const [key, v] of values) {
    const message = check(leafOf(key)!, v);
    if (message) issues.push({ source: source.get(key)!, key, message });
    else {
      setPath(out.values as Record<string, unknown>, key, v);
      out.sources[key] = source.get(key)!;
    }
  }
  if (issues.length) throw new ConfigError(issues);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Command-line tables

/** An option that sets a configuration key: its type, range and description are the schema's. */
export interface KeyOption {
  /** Dotted configuration key, e.g. `"index.nprobe"`. */
  key: string;
  /** This command's default, when it differs from the schema's (validated like a value). */
  default?: unknown;
  /** What `--help` shows as the default instead of the value (e.g. `"the datastore's"`). */
  defaultText?: string;
  /** For an enum key: the values this command accepts, when fewer than the schema's. */
  only?: readonly string[];
}

/** An option of one command that is not a configuration key. */
export interface CommandOption {
  /** Flag name without dashes, e.g. `"datastore"`. */
  name: string;
  /** One-letter alias, e.g. `"d"` for `-d`. */
  short?: string;
  /** One-line description. */
  doc: string;
  /** The value's type and range; absent for a switch (`--json`). */
  value?: ValueType;
  /** Name of the value in `--help`, e.g. `DIR`. */
  arg?: string;
  /** The value when the option is not given. */
  default?: unknown;
  /** Whether the command refuses to run without it. */
  required?: boolean;
}

/** One row of a command's option table. */
export type OptionSpec = KeyOption | CommandOption;

/** What {@linkcode parseCommandLine} found. */
export interface ParsedCommandLine {
  /** Command-only options by name: validated values, `true` for a given switch. */
  options: Record<string, unknown>;
  /** Configuration flags as given (name without dashes → raw string), for `loadConfig`. */
  flags: Record<string, string>;
  /** This command's flag names → dotted keys (`loadConfig`'s `flagMap`). */
  flagMap: Record<string, string>;
  /** This command's defaults that differ from the schema's (`loadConfig`'s `defaults`). */
  defaults: DeepPartial<KnnlmConfig>;
  /** Arguments that are not options, in order. */
  positionals: string[];
}

function isKeyOption(o: OptionSpec): o is KeyOption {
  return "key" in o;
}

interface Resolved {
  /** Every accepted name (long, without dashes) → the spec. */
  long: Map<string, OptionSpec>;
  /** Short letter → spec. */
  short: Map<string, OptionSpec>;
  /** Config flag name → key. */
  flagMap: Record<string, string>;
  /** Spec → its primary name. */
  primary: Map<OptionSpec, string>;
}

function resolveTable(table: readonly OptionSpec[]): Resolved {
  const commandNames = table.filter((o) => !isKeyOption(o)).map((o) => (o as CommandOption).name);
  const keyOptions = table.filter(isKeyOption);
  for (const o of keyOptions) {
    if (!leafOf(o.key)) throw new TypeError(`option table: unknown configuration key ${o.key}`);
  }
  const names = flagNamesFor(keyOptions.map((o) => o.key), commandNames);
  const r: Resolved = { long: new Map(), short: new Map(), flagMap: {}, primary: new Map() };
  for (const o of table) {
    if (isKeyOption(o)) {
      const mine = [...names].filter(([, k]) => k === o.key).map(([f]) => f);
      // The bare name is the one to show; the dotted path stays accepted.
      r.primary.set(o, mine[0]);
      for (const f of mine) {
        r.long.set(f, o);
        r.flagMap[f] = o.key;
      }
    } else {
      r.primary.set(o, o.name);
      r.long.set(o.name, o);
      if (o.short) r.short.set(o.short, o);
    }
  }
  return r;
}

function usage(message: string, hint?: string): KnnError {
  return new KnnError("E_USAGE", message, { hint });
}

/**
 * Parses `argv` against a command's option table: `--name value`, `--name=value`, `-x value`,
 * switches, `--` and positionals. A value may start with a dash (`--nprobe -1` reaches the
 * range check) unless it is itself one of the table's options. Command-only values are
 * coerced and checked here; configuration values are left to `loadConfig` (with the returned
 * `flags`, `flagMap` and `defaults`), so both report a bad value the same way.
 *
 * @param maxPositionals how many positionals the command takes (default 0)
 * @throws {KnnError} `E_USAGE` for an unknown option, a missing value or argument;
 *   {@linkcode ConfigError} (`E_CONFIG`) for a bad command-only value
 */
export function parseCommandLine(
  argv: readonly string[],
  table: readonly OptionSpec[],
  maxPositionals = 0,
): ParsedCommandLine {
  const t = resolveTable(table);
  const out: ParsedCommandLine = {
    options: {},
    flags: {},
    flagMap: t.flagMap,
    defaults: {},
    positionals: [],
  };
  const byNormal = new Map([...t.long].map(([f, o]) => [normal(f), o]));
  const lookup = (tok: string): { spec: OptionSpec; name: string } | undefined => {
    if (tok.startsWith("--")) {
      const name = tok.slice(2).split("=")[0];
      const spec = t.long.get(name) ?? byNormal.get(normal(name));
      return spec && { spec, name };
    }
    if (/^-[A-Za-z]$/.test(tok)) {
      const spec = t.short.get(tok[1]);
      return spec && { spec, name: t.primary.get(spec)! };
    }
    return undefined;
  };
  const given = new Map<OptionSpec, { raw: string | true; flag: string }>();
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i];
    if (tok === "--") {
      out.positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!tok.startsWith("-") || tok === "-" || /^-[\d.]/.test(tok)) {
      out.positionals.push(tok);
      continue;
    }
    const hit = lookup(tok);
    const flag = tok.split("=")[0];
    if (!hit) {
      const hint = tok.startsWith("--") ? closest(tok.slice(2), t.long.keys()) : undefined;
      throw usage(
        `${flag}: unknown option${hint ? `; did you mean --${hint}?` : ""}`,
        "see --help",
      );
    }
    const takesValue = isKeyOption(hit.spec) || hit.spec.value !== undefined;
    const inline = tok.includes("=") ? tok.slice(tok.indexOf("=") + 1) : undefined;
    if (!takesValue) {
      if (inline !== undefined) throw usage(`${flag}: takes no value, found '${inline}'`);
      given.set(hit.spec, { raw: true, flag });
      continue;
    }
    let raw = inline;
    if (raw === undefined) {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith("-") && next !== "-" && lookup(next))) {
        throw usage(`${flag}: expected a value`, `e.g. ${flag}=${argName(hit.spec)}`);
      }
      raw = next;
      i++;
    }
    given.set(hit.spec, { raw, flag });
  }
  if (out.positionals.length > maxPositionals) {
    throw usage(`unexpected argument '${out.positionals[maxPositionals]}'`, "see --help");
  }

  const issues: ConfigIssue[] = [];
  for (const spec of table) {
    const g = given.get(spec);
    if (isKeyOption(spec)) {
      if (g && spec.only && !spec.only.includes((g.raw as string).trim())) {
        const message = `expected ${allowed({ kind: "enum", values: enumOf(spec.only) })}, ` +
          `found ${show((g.raw as string).trim())}`;
        issues.push({ source: g.flag, key: spec.key, message });
      }
      if (g) out.flags[g.flag.slice(2)] = g.raw as string;
      if (spec.default !== undefined) {
        setPath(out.defaults as Record<string, unknown>, spec.key, spec.default);
      }
      continue;
    }
    if (!spec.value) {
      out.options[spec.name] = g !== undefined;
      continue;
    }
    if (!g) {
      if (spec.required) {
        throw usage(`--${spec.name} ${argName(spec)} is required`, "see --help");
      }
      out.options[spec.name] = spec.default;
      continue;
    }
    const v = coerceString(spec.value, g.raw as string);
    const message = check(spec.value, v);
    if (message) issues.push({ source: g.flag, key: "", message });
    else out.options[spec.name] = v;
  }
  if (issues.length) throw new ConfigError(issues);
  return out;
}

function enumOf(values: readonly string[]): Record<string, string> {
  return Object.fromEntries(values.map((v) => [v, v]));
}

function argName(spec: OptionSpec): string {
  const leaf: ValueType | Leaf | undefined = isKeyOption(spec) ? leafOf(spec.key) : spec.value;
  if (!isKeyOption(spec) && spec.arg) return spec.arg;
  if (isKeyOption(spec) && spec.only) return spec.only.join("|");
  switch (leaf?.kind) {
    case "integer":
      return "N";
    case "number":
      return "X";
    case "numberList":
      return "LIST";
    case "enum":
      return enumValues(leaf).join("|");
    case "string":
      return leaf.arg ?? "TEXT";
    default:
      return "";
  }
}

/** One row of {@linkcode describeOptions}: what `--help` prints for an option. */
export interface OptionHelp {
  /** The flags with the value's name, e.g. `-d, --datastore DIR` or `--nlist N`. */
  flags: string;
  /** One-line description. */
  doc: string;
  /** The default as the user would type it (`2048`, `null`, `0.05,0.1`), if any. */
  default?: string;
  /** The allowed range, briefly (`≥ 1`, `2..65536`, `[0, 1]`, `≥ 1 or null`), where there is one. */
  range?: string;
  /** Other accepted spellings, with dashes (a key's dotted path, e.g. `--index.nlist`). */
  aliases: string[];
  /** Whether the command refuses to run without it. */
  required: boolean;
}

function rangeOf(v: ValueType): string | undefined {
  let r: string | undefined;
  switch (v.kind) {
    case "integer": {
      const max = v.maxKey ?? v.max;
      r = v.min !== undefined && max !== undefined
        ? `${v.min}..${max}`
        : v.min !== undefined
        ? `≥ ${v.min}`
        : max !== undefined
        ? `≤ ${max}`
        : undefined;
      break;
    }
    case "number":
      r = v.exclusiveMin !== undefined
        ? `> ${v.exclusiveMin}`
        : v.min !== undefined && v.max !== undefined
        ? `[${v.min}, ${v.max}]`
        : undefined;
      break;
    case "numberList":
      r = `each in [${v.min}, ${v.max}]`;
      break;
  }
  return "nullable" in v && v.nullable && v.kind !== "string" ? `${r ?? "any"} or null` : r;
}

function showDefault(v: unknown): string {
  return Array.isArray(v) ? v.join(",") : typeof v === "string" ? v : JSON.stringify(v);
}

/**
 * Describes a command's options for `--help`, in table order.
 *
 * @returns One row per option; a configuration key's row shows its short flag (the dotted
 *   path is accepted too).
 */
export function describeOptions(table: readonly OptionSpec[]): OptionHelp[] {
  const t = resolveTable(table);
  return table.map((spec) => {
    const name = t.primary.get(spec)!;
    if (isKeyOption(spec)) {
      const leaf = leafOf(spec.key)!;
      const arg = argName(spec);
      return {
        flags: `    --${name} ${arg}`,
        doc: leaf.doc,
        default: spec.defaultText ?? showDefault(spec.default ?? leaf.default),
        range: rangeOf(leaf),
        aliases: Object.keys(t.flagMap).filter((f) => t.flagMap[f] === spec.key && f !== name)
          .map((f) => "--" + f),
        required: false,
      };
    }
    const head = spec.short ? `-${spec.short}, --${name}` : `    --${name}`;
    return {
      flags: spec.value ? `${head} ${argName(spec)}` : head,
      doc: spec.doc,
      default: spec.default === undefined ? undefined : showDefault(spec.default),
      range: spec.value && rangeOf(spec.value),
      aliases: [],
      required: spec.required ?? false,
    };
  });
}
