/**
 * Configuration for `build-index` and `eval`: built-in defaults, then a JSON/JSONC file
 * (`--config`), then command-line flags, each layer validated against one small schema.
 *
 * Every error names the source (file path or `--flag`), the dotted key and what is allowed,
 * e.g. `knnlm.jsonc: index.nlist: expected an integer ≥ 1, found "abc"`.
 *
 * @module
 */
import { isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { closest } from "../core/_suggest.ts";
import { KnnError } from "../core/errors.ts";

/** FAISS index parameters (reference kNN-LM defaults: IVFPQ, 2048 lists, 64-byte codes). */
export interface IndexConfig {
  /** FAISS `index_factory` string; `null` builds `IVF{nlist},PQ{m}x{nbits}`. */
  factory: string | null;
  /** Number of inverted lists (coarse centroids). */
  nlist: number;
  /** Number of PQ sub-quantizers (bytes per code when `nbits` is 8). */
  m: number;
  /** Bits per PQ sub-quantizer code, 1..16. */
  nbits: number;
  /** Distance: squared L2 or inner product. */
  metric: "l2" | "ip";
  /** Inverted lists probed per query. */
  nprobe: number;
  /** Number of randomly sampled keys used to train the index. */
  trainSize: number;
  /** Keys added per `add_with_ids` call. */
  addChunk: number;
  /** Seed for the training sample and FAISS's k-means. */
  seed: number;
  /**
   * Where an IVF index keeps its inverted lists (the codes) while keys are added and after:
   * `"disk"`, a memory-mapped `faiss.ivfdata` beside `faiss.index` (process memory stays flat
   * as the datastore grows), or `"memory"`, inside `faiss.index` (one self-contained file).
   */
  invlists: "disk" | "memory";
}

/** Evaluation parameters (perplexity of the interpolated kNN-LM). */
export interface EvalConfig {
  /** `brown:train|valid|test` or a path to a corpus file. */
  corpus: string;
  /** Neighbours retrieved per query. */
  k: number;
  /** Softmax temperature over negative distances. */
  temperature: number;
  /** Interpolation weights λ in [0, 1] to report. */
  lambdas: number[];
  /** Which distances score the neighbours: FAISS's PQ estimates, exact re-computed, or both. */
  distance: "faiss" | "exact" | "both";
  /** Cap on evaluated tokens; `null` evaluates the whole corpus. */
  maxTokens: number | null;
  /**
   * Exact re-ranking: FAISS returns this many candidates (≥ k) and the k nearest by exact L2
   * from keys.npy are the `exact` neighbours (for a fast approximate index such as
   * `IVF1024,PQ64x4fs`); 0 = off.
   */
  rerank: number;
}

/** The resolved knnlm configuration: a plain JSON-serialisable object. */
export interface KnnlmConfig {
  /** ONNX causal LM. The built-in default is resolved against the toolkit's directory. */
  model: string;
  /** Tensor whose rows are the keys: a graph output or any intermediate tensor name. */
  keyTensor: string;
  /** Graph output holding the logits `[batch, seq, vocab]`. */
  logitsOutput: string;
  /** `brown:train|valid|test` or a path to a corpus file. */
  corpus: string;
  /** Cap on datastore tokens; `null` uses the whole corpus. */
  maxTokens: number | null;
  /** Tokens per model window. */
  seqLen: number;
  /** Tokens the window advances by (≤ `seqLen`); each token gets its key once. */
  stride: number;
  /** Windows per model call. */
  batchSize: number;
  /** Threads for ONNX Runtime and FAISS; 0 uses all cores. */
  threads: number;
  /** Stored dtype of the keys. */
  keyDtype: "float32" | "float16";
  /** Output directory of the datastore. */
  out: string;
  /** FAISS index parameters. */
  index: IndexConfig;
  /** Evaluation parameters. */
  eval: EvalConfig;
}

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
   * Use {@linkcode configArgOptions} to declare them to `parseArgs`.
   */
  flags?: Record<string, unknown>;
  /** Flag names that are not configuration keys (e.g. `help`, `config`) and are ignored. */
  ignoreFlags?: readonly string[];
  /** Overrides of the built-in defaults (validated; source `"defaults"`). */
  defaults?: DeepPartial<KnnlmConfig>;
}

/** A deep partial of a configuration object. */
export type DeepPartial<T> = {
  [K in keyof T]?: T[K] extends readonly unknown[] ? T[K]
    : T[K] extends object | null ? DeepPartial<T[K]>
    : T[K];
};

/** One problem found while loading the configuration. */
export interface ConfigIssue {
  /** Config file path, `--flag`, `"defaults"`, or the file path with `:line:col`. */
  source: string;
  /** Dotted key, or `""` for a whole-file problem. */
  key: string;
  /** What is wrong and what is allowed. */
  message: string;
}

/** Thrown by {@linkcode loadConfig}; the message lists every issue, one per line. */
export class ConfigError extends KnnError {
  /** Every problem found (there is at least one). */
  readonly issues: ConfigIssue[];
  /** Builds the error from its issues (message: `source: key: message` per line). */
  constructor(issues: ConfigIssue[], options?: ErrorOptions) {
    super(
      "E_CONFIG",
      issues.map((i) => [i.source, i.key, i.message].filter((s) => s !== "").join(": "))
        .join("\n"),
      { cause: options?.cause, key: issues[0]?.key || undefined },
    );
    this.name = "ConfigError";
    this.issues = issues;
  }
}

// ---------------------------------------------------------------------------------------------
// Schema

type Leaf =
  | { kind: "string"; nullable?: boolean; doc: string; default: string | null }
  | {
    kind: "integer";
    min?: number;
    max?: number;
    /** A cross-field upper bound: the value must be ≤ this sibling key. */
    maxKey?: string;
    nullable?: boolean;
    doc: string;
    default: number | null;
  }
  | {
    kind: "number";
    exclusiveMin?: number;
    min?: number;
    max?: number;
    doc: string;
    default: number;
  }
  | { kind: "enum"; values: readonly string[]; doc: string; default: string }
  | { kind: "numberList"; min: number; max: number; doc: string; default: readonly number[] };

interface Section {
  kind: "object";
  doc: string;
  fields: Record<string, Leaf>;
}

type Schema = {
  [K in keyof KnnlmConfig]: KnnlmConfig[K] extends IndexConfig | EvalConfig ? Section : Leaf;
};

const SCHEMA: Schema = {
  model: {
    kind: "string",
    default: "models/byte_gpt.onnx",
    doc: "ONNX causal LM (default: the toolkit's bundled model)",
  },
  keyTensor: {
    kind: "string",
    default: "ff_input",
    doc: "key tensor: a graph output or any intermediate tensor name",
  },
  logitsOutput: { kind: "string", default: "logits", doc: "graph output holding the logits" },
  corpus: { kind: "string", default: "brown:train", doc: "brown:train|valid|test or a path" },
  maxTokens: {
    kind: "integer",
    min: 1,
    nullable: true,
    default: 2_000_000,
    doc: "cap on datastore tokens (null: whole corpus)",
  },
  seqLen: { kind: "integer", min: 2, max: 65536, default: 256, doc: "tokens per model window" },
  stride: {
    kind: "integer",
    min: 1,
    maxKey: "seqLen",
    default: 128,
    doc: "tokens the window advances by",
  },
  batchSize: { kind: "integer", min: 1, max: 4096, default: 8, doc: "windows per model call" },
  threads: { kind: "integer", min: 0, max: 1024, default: 0, doc: "threads (0: all cores)" },
  keyDtype: {
    kind: "enum",
    values: ["float32", "float16"],
    default: "float32",
    doc: "stored dtype of the keys",
  },
  out: { kind: "string", default: "data/default", doc: "output directory of the datastore" },
  index: {
    kind: "object",
    doc: "FAISS index parameters",
    fields: {
      factory: {
        kind: "string",
        nullable: true,
        default: null,
        doc: "FAISS index_factory string (null: IVF{nlist},PQ{m}x{nbits})",
      },
      nlist: { kind: "integer", min: 1, default: 2048, doc: "inverted lists (centroids)" },
      m: { kind: "integer", min: 1, default: 64, doc: "PQ sub-quantizers" },
      nbits: { kind: "integer", min: 1, max: 16, default: 8, doc: "bits per PQ code" },
      metric: { kind: "enum", values: ["l2", "ip"], default: "l2", doc: "distance metric" },
      nprobe: { kind: "integer", min: 1, default: 8, doc: "lists probed per query" },
      trainSize: { kind: "integer", min: 1, default: 200_000, doc: "keys sampled for training" },
      addChunk: { kind: "integer", min: 1, default: 65_536, doc: "keys per add_with_ids call" },
      seed: { kind: "integer", default: 1, doc: "seed for sampling and k-means" },
      invlists: {
        kind: "enum",
        values: ["disk", "memory"],
        default: "disk",
        doc: "IVF lists in a mapped faiss.ivfdata (disk) or inside faiss.index (memory)",
      },
    },
  },
  eval: {
    kind: "object",
    doc: "evaluation parameters",
    fields: {
      corpus: { kind: "string", default: "brown:test", doc: "evaluation corpus" },
      k: { kind: "integer", min: 1, default: 1024, doc: "neighbours per query" },
      temperature: {
        kind: "number",
        exclusiveMin: 0,
        default: 1,
        doc: "softmax temperature over distances",
      },
      lambdas: {
        kind: "numberList",
        min: 0,
        max: 1,
        default: [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5],
        doc: "interpolation weights to report (comma-separated on the command line)",
      },
      distance: {
        kind: "enum",
        values: ["faiss", "exact", "both"],
        default: "both",
        doc: "neighbour distances: FAISS estimates, exact, or both",
      },
      maxTokens: {
        kind: "integer",
        min: 1,
        nullable: true,
        default: 100_000,
        doc: "cap on evaluated tokens (null: whole corpus)",
      },
      rerank: {
        kind: "integer",
        min: 0,
        default: 0,
        doc: "candidates re-ranked by exact L2 from keys.npy (≥ k; 0: off)",
      },
    },
  },
};

/** Every leaf of the schema with its dotted path, in declaration order. */
const LEAVES: { path: string; leaf: Leaf }[] = Object.entries(SCHEMA).flatMap(([k, node]) =>
  node.kind === "object"
    ? Object.entries(node.fields).map(([f, leaf]) => ({ path: `${k}.${f}`, leaf }))
    : [{ path: k, leaf: node }]
);
const LEAF_BY_PATH = new Map(LEAVES.map((l) => [l.path, l.leaf]));

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === "object") {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

function buildDefaults(): KnnlmConfig {
  const out: Record<string, unknown> = {};
  for (const { path, leaf } of LEAVES) {
    setPath(out, path, Array.isArray(leaf.default) ? [...leaf.default] : leaf.default);
  }
  return out as unknown as KnnlmConfig;
}

/**
 * The built-in defaults (deeply frozen). `model` is the schema value
 * `"models/byte_gpt.onnx"`; {@linkcode loadConfig} resolves it against the toolkit's
 * directory.
 */
export const DEFAULT_CONFIG: Readonly<KnnlmConfig> = deepFreeze(buildDefaults());

// ---------------------------------------------------------------------------------------------
// Flags

function kebab(s: string): string {
  return s.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

/**
 * Flag name (no dashes) → dotted key. Every key has its kebab-case path (`seq-len`,
 * `index.add-chunk`); nested keys also have their bare leaf name (`nlist`, `k`) when it does
 * not clash with a top-level key or another section's key.
 */
const FLAG_TO_PATH: Map<string, string> = (() => {
  const m = new Map<string, string>();
  const leafCount = new Map<string, number>();
  for (const { path } of LEAVES) {
    const leaf = path.split(".").at(-1)!;
    leafCount.set(leaf, (leafCount.get(leaf) ?? 0) + 1);
  }
  for (const { path } of LEAVES) m.set(path.split(".").map(kebab).join("."), path);
  for (const { path } of LEAVES) {
    const parts = path.split(".");
    if (parts.length > 1 && leafCount.get(parts[1]) === 1) m.set(kebab(parts[1]), path);
  }
  return m;
})();

/** Canonical flag names per dotted key (first is the full path form). */
function flagsOf(path: string): string[] {
  return [...FLAG_TO_PATH].filter(([, p]) => p === path).map(([f]) => f);
}

/**
 * `parseArgs` option declarations for every configuration flag (all `type: "string"`, values
 * are coerced and validated by {@linkcode loadConfig}).
 *
 * @returns A record to spread into `parseArgs({ options })`.
 */
export function configArgOptions(): Record<string, { type: "string" }> {
  return Object.fromEntries([...FLAG_TO_PATH.keys()].map((f) => [f, { type: "string" }]));
}

/** One row of {@linkcode describeConfigKeys}. */
export interface ConfigKeyDescription {
  /** Dotted key, e.g. `index.nlist`. */
  key: string;
  /** Flags that set it, with dashes, e.g. `["--index.nlist", "--nlist"]`. */
  flags: string[];
  /** Allowed values, e.g. `integer ≥ 1`, `"l2" | "ip"`. */
  type: string;
  /** Built-in default as JSON text. */
  default: string;
  /** One-line description. */
  description: string;
}

/**
 * Describes every configuration key for `--help`.
 *
 * @returns One row per key, in schema order.
 */
export function describeConfigKeys(): ConfigKeyDescription[] {
  return LEAVES.map(({ path, leaf }) => ({
    key: path,
    flags: flagsOf(path).map((f) => "--" + f),
    type: allowed(leaf, undefined),
    default: JSON.stringify(leaf.default),
    description: leaf.doc,
  }));
}

// ---------------------------------------------------------------------------------------------
// Validation

function allowed(leaf: Leaf, maxFromKey: number | undefined): string {
  let s: string;
  switch (leaf.kind) {
    case "string":
      s = "a non-empty string";
      break;
    case "integer": {
      const max = leaf.maxKey
        ? (maxFromKey === undefined
          ? leaf.maxKey
          : `${leaf.maxKey} = ${leaf.min ?? ""}..${maxFromKey}`)
        : leaf.max;
      if (leaf.min !== undefined && max !== undefined) s = `an integer in ${leaf.min}..${max}`;
      else if (leaf.min !== undefined) s = `an integer ≥ ${leaf.min}`;
      else if (max !== undefined) s = `an integer ≤ ${max}`;
      else s = "an integer";
      break;
    }
    case "number":
      s = leaf.exclusiveMin !== undefined
        ? `a number > ${leaf.exclusiveMin}`
        : leaf.min !== undefined && leaf.max !== undefined
        ? `a number in [${leaf.min}, ${leaf.max}]`
        : "a number";
      break;
    case "enum":
      s = "one of " + leaf.values.map((v) => JSON.stringify(v)).join(", ");
      break;
    case "numberList":
      s = `a non-empty list of numbers in [${leaf.min}, ${leaf.max}]`;
      break;
  }
  const nullable = (leaf.kind === "string" || leaf.kind === "integer") && leaf.nullable;
  return nullable ? `${s} or null` : s;
}

function show(v: unknown): string {
  if (v === undefined) return "nothing";
  if (Array.isArray(v)) {
    return v.length === 0 ? "an empty list" : `a list ${clip(JSON.stringify(v))}`;
  }
  if (v !== null && typeof v === "object") return "an object";
  return clip(JSON.stringify(v));
}

function clip(s: string): string {
  return s.length > 60 ? s.slice(0, 57) + "..." : s;
}

/** Returns an error message ("expected …, found …") or undefined when `v` is valid. */
function check(leaf: Leaf, v: unknown): string | undefined {
  const bad = () => `expected ${allowed(leaf, undefined)}, found ${show(v)}`;
  if (v === null) {
    return (leaf.kind === "string" || leaf.kind === "integer") && leaf.nullable ? undefined : bad();
  }
  switch (leaf.kind) {
    case "string":
      return typeof v === "string" && v !== "" ? undefined : bad();
    case "integer":
      if (typeof v !== "number" || !Number.isSafeInteger(v)) return bad();
      if (leaf.min !== undefined && v < leaf.min) return bad();
      if (leaf.max !== undefined && v > leaf.max) return bad();
      return undefined;
    case "number":
      if (typeof v !== "number" || !Number.isFinite(v)) return bad();
      if (leaf.exclusiveMin !== undefined && !(v > leaf.exclusiveMin)) return bad();
      if (leaf.min !== undefined && v < leaf.min) return bad();
      if (leaf.max !== undefined && v > leaf.max) return bad();
      return undefined;
    case "enum":
      return typeof v === "string" && leaf.values.includes(v) ? undefined : bad();
    case "numberList":
      if (!Array.isArray(v) || v.length === 0) return bad();
      for (const [i, x] of v.entries()) {
        if (typeof x !== "number" || !Number.isFinite(x) || x < leaf.min || x > leaf.max) {
          return `expected ${allowed(leaf, undefined)}, found ${show(x)} at index ${i}`;
        }
      }
      return undefined;
  }
}

function unknownKeyMessage(path: string): string {
  const leafName = path.split(".").at(-1)!;
  // Prefer a key that differs only by its section (`nlist` → `index.nlist`), then typos of
  // the full dotted path.
  const sameLeaf = LEAVES.map((l) => l.path).filter((p) =>
    p !== path && p.split(".").at(-1)!.toLowerCase() === leafName.toLowerCase()
  );
  const sections = Object.keys(SCHEMA);
  const hint = sameLeaf[0] ??
    closest(path, [...LEAVES.map((l) => l.path), ...sections.filter((s) => !LEAF_BY_PATH.has(s))]);
  return hint ? `unknown key; did you mean ${hint}?` : "unknown key";
}

function setPath(o: Record<string, unknown>, path: string, v: unknown): void {
  const parts = path.split(".");
  let cur = o;
  for (const p of parts.slice(0, -1)) cur = (cur[p] ??= {}) as Record<string, unknown>;
  cur[parts.at(-1)!] = v;
}

/**
 * Walks a parsed config object in its own order, calling `visit` with each known dotted key
 * and reporting unknown keys and non-object sections in between (so issues keep file order).
 */
function flattenLayer(
  obj: unknown,
  source: string,
  issues: ConfigIssue[],
  visit: (path: string, value: unknown) => void,
): void {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    issues.push({ source, key: "", message: `expected a JSON object, found ${show(obj)}` });
    return;
  }
  for (const [k, v] of Object.entries(obj)) {
    if (k === "$schema") continue;
    const node = (SCHEMA as Record<string, Leaf | Section>)[k];
    if (node === undefined) {
      issues.push({ source, key: k, message: unknownKeyMessage(k) });
    } else if (node.kind === "object") {
      if (v === null || typeof v !== "object" || Array.isArray(v)) {
        issues.push({ source, key: k, message: `expected an object, found ${show(v)}` });
        continue;
      }
      for (const [f, fv] of Object.entries(v)) {
        const path = `${k}.${f}`;
        if (node.fields[f] === undefined) {
          issues.push({ source, key: path, message: unknownKeyMessage(path) });
        } else visit(path, fv);
      }
    } else visit(k, v);
  }
}

// ---------------------------------------------------------------------------------------------
// JSONC

/**
 * Parses JSON with `//` and `/* *\/` comments and trailing commas. Comments and trailing
 * commas are blanked to spaces (newlines kept) so JSON.parse's positions still point into
 * the original text.
 *
 * @throws SyntaxError with `line L, column C` of the problem.
 */
export function parseJsonc(text: string): unknown {
  const chars = text.split("");
  let i = 0;
  const n = chars.length;
  // Index of the last comma outside strings/comments not yet followed by a value.
  let pendingComma = -1;
  const blank = (from: number, to: number) => {
    for (let j = from; j < to; j++) if (chars[j] !== "\n" && chars[j] !== "\r") chars[j] = " ";
  };
  while (i < n) {
    const c = chars[i];
    if (c === '"') {
      pendingComma = -1;
      i++;
      while (i < n && chars[i] !== '"') i += chars[i] === "\\" ? 2 : 1;
      i++;
    } else if (c === "/" && chars[i + 1] === "/") {
      const start = i;
      while (i < n && chars[i] !== "\n") i++;
      blank(start, i);
    } else if (c === "/" && chars[i + 1] === "*") {
      const start = i;
      const end = text.indexOf("*/", i + 2);
      if (end < 0) throw new SyntaxError(`unterminated /* comment at ${lineCol(text, start)}`);
      i = end + 2;
      blank(start, i);
    } else if (c === ",") {
      pendingComma = i++;
    } else if (c === "}" || c === "]") {
      if (pendingComma >= 0) chars[pendingComma] = " ";
      pendingComma = -1;
      i++;
    } else {
      if (!/\s/.test(c)) pendingComma = -1;
      i++;
    }
  }
  const cleaned = chars.join("");
  try {
    return JSON.parse(cleaned);
  } catch (e) {
    const msg = (e as Error).message;
    const pos = Number(/position (\d+)/.exec(msg)?.[1] ?? jsonErrorPosition(cleaned));
    const where = Number.isFinite(pos) ? ` at ${lineCol(text, pos)}` : "";
    // V8 either appends the position or quotes the whole text; keep neither.
    const what = msg.replace(/ in JSON at position.*$/, "").replace(
      /, (\.\.\.)?".*" is not valid JSON$/s,
      "",
    );
    throw new SyntaxError(`invalid JSON${where}: ${what}`);
  }
}

/**
 * Offset of the first syntax error in `s` (strict JSON), for the V8 messages that do not give
 * one; NaN if none is found.
 */
function jsonErrorPosition(s: string): number {
  let i = 0;
  const ws = () => {
    while (i < s.length && " \t\n\r".includes(s[i])) i++;
  };
  const fail = (): never => {
    throw i;
  };
  const value = (): void => {
    ws();
    const c = s[i];
    if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      i++;
      ws();
      if (s[i] === close) return void i++;
      for (;;) {
        if (c === "{") {
          ws();
          if (s[i] !== '"') fail();
          value();
          ws();
          if (s[i] !== ":") fail();
          i++;
        }
        value();
        ws();
        if (s[i] === ",") i++;
        else if (s[i] === close) return void i++;
        else fail();
      }
    } else if (c === '"') {
      for (i++; i < s.length && s[i] !== '"'; i++) if (s[i] === "\\") i++;
      if (i >= s.length) fail();
      i++;
    } else {
      const m = /^(-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?|true|false|null)/.exec(s.slice(i));
      if (!m) fail();
      i += m![0].length;
    }
  };
  try {
    value();
    ws();
    return i < s.length ? i : NaN;
  } catch (at) {
    return typeof at === "number" ? at : NaN;
  }
}

function lineCol(text: string, pos: number): string {
  const before = text.slice(0, pos);
  const line = before.split("\n").length;
  const col = pos - before.lastIndexOf("\n");
  return `line ${line}, column ${col}`;
}

// ---------------------------------------------------------------------------------------------
// Flag coercion

/** Converts one flag string to the schema type; returns the raw string when it cannot. */
function coerceFlag(leaf: Leaf, raw: string): unknown {
  const s = raw.trim();
  const isNull = /^(null|none)$/i.test(s);
  switch (leaf.kind) {
    case "string":
      return leaf.nullable && isNull ? null : raw;
    case "enum":
      return s;
    case "integer":
    case "number":
      if (leaf.kind === "integer" && leaf.nullable && isNull) return null;
      return toNumber(s) ?? raw;
    case "numberList": {
      const parts = s.split(",").map((p) => p.trim()).filter((p) => p !== "");
      const nums = parts.map(toNumber);
      return nums.every((x) => x !== undefined) && nums.length > 0 ? nums : raw;
    }
  }
}

/** `"2048"`, `"1_000_000"`, `"1e6"`, `"0.25"` → number; anything else → undefined. */
function toNumber(s: string): number | undefined {
  const t = s.replaceAll("_", "");
  if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t)) return undefined;
  const x = Number(t);
  return Number.isFinite(x) ? x : undefined;
}

function flagLayer(
  flags: Record<string, unknown>,
  ignore: readonly string[],
  issues: ConfigIssue[],
): { values: Map<string, unknown>; source: Map<string, string> } {
  const values = new Map<string, unknown>();
  const source = new Map<string, string>();
  const byNorm = new Map(
    [...FLAG_TO_PATH].map(([f, p]) => [f.replaceAll("-", "").toLowerCase(), p]),
  );
  for (const [name, raw] of Object.entries(flags)) {
    if (raw === undefined || ignore.includes(name)) continue;
    const flag = "--" + name;
    // Accept `seq-len`, `seqLen`, `index.addChunk`: match with dashes and case ignored.
    const path = FLAG_TO_PATH.get(name) ?? byNorm.get(name.replaceAll("-", "").toLowerCase());
    if (path === undefined) {
      const hint = closest(name, FLAG_TO_PATH.keys());
      issues.push({
        source: flag,
        key: "",
        message: `unknown option${hint ? `; did you mean --${hint}?` : ""}`,
      });
      continue;
    }
    const last = Array.isArray(raw) ? raw.at(-1) : raw;
    if (typeof last !== "string") {
      issues.push({ source: flag, key: path, message: `expected a value, found ${show(last)}` });
      continue;
    }
    values.set(path, coerceFlag(LEAF_BY_PATH.get(path)!, last));
    source.set(path, flag);
  }
  return { values, source };
}

// ---------------------------------------------------------------------------------------------
// Loading

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
 * are checked by {@linkcode loadConfig}, which calls this for its `flags` layer).
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
  const { values, source } = flagLayer(flags, options.ignore ?? [], issues);
  const out: CoercedFlags = { values: {}, sources: {} };
  for (const [path, v] of values) {
    const message = check(LEAF_BY_PATH.get(path)!, v);
    if (message) issues.push({ source: source.get(path)!, key: path, message });
    else {
      setPath(out.values as Record<string, unknown>, path, v);
      out.sources[path] = source.get(path)!;
    }
  }
  if (issues.length) throw new ConfigError(issues);
  return out;
}

/** The toolkit's root directory (this file is `lib/config/config.ts`), or undefined if not local. */
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
 *   with its source and dotted key; or the file's read error (naming the path) as `cause`.
 */
export function loadConfig(options: LoadConfigOptions = {}): LoadedConfig {
  const issues: ConfigIssue[] = [];
  const values = new Map<string, unknown>();
  const sources: Record<string, string> = {};
  for (const { path, leaf } of LEAVES) {
    values.set(path, leaf.default);
    sources[path] = "default";
  }
  const set = (path: string, v: unknown, source: string) => {
    const message = check(LEAF_BY_PATH.get(path)!, v);
    if (message) issues.push({ source, key: path, message });
    else {
      values.set(path, v);
      sources[path] = source;
    }
  };

  if (options.defaults) {
    flattenLayer(options.defaults, "defaults", issues, (p, v) => set(p, v, "defaults"));
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
    flattenLayer(parsed, file, issues, (p, v) => set(p, v, file));
  }

  if (options.flags) {
    const { values: fv, source } = flagLayer(options.flags, options.ignoreFlags ?? [], issues);
    for (const [p, v] of fv) set(p, v, source.get(p)!);
  }

  // Cross-field bounds (stride ≤ seqLen), checked on the merged result.
  for (const { path, leaf } of LEAVES) {
    if (leaf.kind !== "integer" || !leaf.maxKey) continue;
    const v = values.get(path) as number;
    const maxPath = path.split(".").slice(0, -1).concat(leaf.maxKey).join(".");
    const max = values.get(maxPath) as number;
    if (v > max) {
      issues.push({
        source: sources[path],
        key: path,
        message: `expected ${allowed(leaf, max)} (${maxPath} from ${sources[maxPath]}), found ${v}`,
      });
    }
  }
  if (issues.length) throw new ConfigError(issues);

  const config: Record<string, unknown> = {};
  for (const { path } of LEAVES) {
    const v = values.get(path);
    setPath(config, path, Array.isArray(v) ? [...v] : v);
  }
  const model = config.model as string;
  if (sources.model === "default" && !isAbsolute(model)) {
    const root = toolkitRoot();
    config.model = root ? resolve(root, model) : new URL(`../../${model}`, import.meta.url).href;
  } else if (!isAbsolute(model)) {
    config.model = resolve(Deno.cwd(), model);
  }
  return { config: config as unknown as KnnlmConfig, sources };
}
