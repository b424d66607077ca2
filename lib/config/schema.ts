/**
 * The configuration schema: every setting once, with its type, range, default and one-line
 * description. The {@linkcode KnnlmConfig} types below are tied to it by the compiler (the
 * schema must have exactly their keys, a default of their type, and, for a string union such
 * as {@linkcode Metric}, exactly its values), and {@linkcode DEFAULT_CONFIG} is built from it;
 * the other layers take their defaults from `DEFAULT_CONFIG` and their option types from these
 * interfaces instead of restating them.
 *
 * @module
 */
import type { Metric } from "../index/mod.ts";
import { KnnError } from "../core/errors.ts";

/** FAISS index settings (reference kNN-LM defaults: IVFPQ, 2048 lists, 64-byte codes). */
export interface IndexConfig {
  /** FAISS `index_factory` string; `null` builds `IVF{nlist},PQ{m}x{nbits}`. */
  factory: string | null;
  /** Number of inverted lists (coarse centroids); 0 in a manifest means not an IVF index. */
  nlist: number;
  /** PQ sub-quantizers (bytes per code when `nbits` is 8); 0 in a manifest means not PQ. */
  m: number;
  /** Bits per PQ sub-quantizer code, 1..16. */
  nbits: number;
  /** Distance: squared L2 or inner product. */
  metric: Metric;
  /** Inverted lists probed per query. */
  nprobe: number;
  /** Number of randomly sampled keys used to train the index. */
  trainSize: number;
  /** Keys added per `add_with_ids` call (how keys are added, not what the index holds). */
  addChunk: number;
  /** Seed of the training sample. */
  seed: number;
  /**
   * Where an IVF index keeps its inverted lists (the codes) while keys are added and after:
   * `"disk"`, a memory-mapped `faiss.ivfdata` beside `faiss.index` (process memory stays flat
   * as the datastore grows), or `"memory"`, inside `faiss.index` (one self-contained file).
   */
  invlists: "disk" | "memory";
}

/** Evaluation and query settings (perplexity of the interpolated kNN-LM, `KnnLm`). */
export interface EvalConfig {
  /** `brown:train|valid|test` or a path to a corpus file. */
  corpus: string;
  /** Neighbours retrieved per query. */
  k: number;
  /** Softmax temperature over negative distances. */
  temperature: number;
  /** Interpolation weights λ in [0, 1] that evaluation reports. */
  lambdas: number[];
  /** The interpolation weight λ of a `KnnLm` (and of `knn neighbors`). */
  lambda: number;
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
  /**
   * Hugging Face `tokenizer.json` (or a folder holding one) for text corpora, resolved to an
   * absolute path; `null` encodes text as UTF-8 bytes.
   */
  tokenizer: string | null;
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
  /**
   * Gather with the model's KV cache, in segments of at most this many positions (the model's
   * position table, e.g. 1024 for GPT-2); `null` runs every window whole (the default).
   */
  kvCache: number | null;
  /** Threads for ONNX Runtime and FAISS; 0 uses all cores. */
  threads: number;
  /** Stored dtype of the keys. */
  keyDtype: "float32" | "float16";
  /** Output directory of the datastore. */
  out: string;
  /** FAISS index settings. */
  index: IndexConfig;
  /** Evaluation and query settings. */
  eval: EvalConfig;
}

/** One problem found while loading the configuration or a command line. */
export interface ConfigIssue {
  /** Config file path, `--flag`, `"defaults"`, or the file path with `:line:col`. */
  source: string;
  /** Dotted key, or `""` for a whole-file problem or an option that is not a key. */
  key: string;
  /** What is wrong and what is allowed. */
  message: string;
}

/** A bad setting (`E_CONFIG`); the message lists every issue, one per line. */
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
// Leaves: what a value may be. `doc` is the one-line help; `arg` names the value in `--help`.

/** The part every leaf has: its one-line description. */
export interface LeafDoc {
  /** One-line description for `--help`. */
  doc: string;
}

/** A string setting. */
export interface StringLeaf extends LeafDoc {
  /** Discriminant. */
  kind: "string";
  /** Whether `null` is allowed (a flag says `null` or `none`). */
  nullable?: false;
  /** The built-in default. */
  default: string;
  /** Name of the value in `--help` (e.g. `PATH`); default `TEXT`. */
  arg?: string;
}

/** A string setting that may be `null`. */
export interface NullableStringLeaf extends Omit<StringLeaf, "nullable" | "default"> {
  /** `null` is allowed. */
  nullable: true;
  /** The built-in default. */
  default: string | null;
}

/** An integer setting (a safe integer in its range). */
export interface IntegerLeaf extends LeafDoc {
  /** Discriminant. */
  kind: "integer";
  /** Smallest allowed value. */
  min?: number;
  /** Largest allowed value. */
  max?: number;
  /** A cross-field upper bound: the value must be ≤ this sibling key. */
  maxKey?: string;
  /** Whether `null` is allowed. */
  nullable?: false;
  /** The built-in default. */
  default: number;
}

/** An integer setting that may be `null` (e.g. "no cap"). */
export interface NullableIntegerLeaf extends Omit<IntegerLeaf, "nullable" | "default"> {
  /** `null` is allowed. */
  nullable: true;
  /** The built-in default. */
  default: number | null;
}

/** A finite number setting. */
export interface NumberLeaf extends LeafDoc {
  /** Discriminant. */
  kind: "number";
  /** The value must be greater than this. */
  exclusiveMin?: number;
  /** Smallest allowed value. */
  min?: number;
  /** Largest allowed value. */
  max?: number;
  /** The built-in default. */
  default: number;
}

/** One of a fixed set of strings, each with a short description. */
export interface EnumLeaf<T extends string = string> extends LeafDoc {
  /** Discriminant. */
  kind: "enum";
  /** Every allowed value → what it means (exactly the union's members). */
  values: Record<T, string>;
  /** The built-in default. */
  default: T;
}

/** A non-empty list of numbers in a range (comma-separated on the command line). */
export interface NumberListLeaf extends LeafDoc {
  /** Discriminant. */
  kind: "numberList";
  /** Smallest allowed element. */
  min: number;
  /** Largest allowed element. */
  max: number;
  /** The built-in default. */
  default: readonly number[];
}

/** What one setting (or one command-line option) may be. */
export type Leaf =
  | StringLeaf
  | NullableStringLeaf
  | IntegerLeaf
  | NullableIntegerLeaf
  | NumberLeaf
  | EnumLeaf
  | NumberListLeaf;

/** A leaf without its description and default: what a command-only option's value may be. */
export type ValueType = Leaf extends infer L ? L extends Leaf ? Omit<L, "doc" | "default"> : never
  : never;

/** A deep partial of a configuration object. */
export type DeepPartial<T> = {
  [K in keyof T]?: T[K] extends readonly unknown[] ? T[K]
    : T[K] extends object | null ? DeepPartial<T[K]>
    : T[K];
};

// The leaf a field of type T needs: the compiler ties the schema to the interfaces above.
type LeafFor<T> = [T] extends [readonly number[]] ? NumberListLeaf
  : [T] extends [number] ? IntegerLeaf | NumberLeaf
  : [T] extends [number | null] ? NullableIntegerLeaf
  : [T] extends [string] ? (string extends T ? StringLeaf : EnumLeaf<T>)
  : [T] extends [string | null] ? NullableStringLeaf
  : never;

interface SectionFor<T> {
  kind: "object";
  doc: string;
  fields: { [K in keyof T]-?: LeafFor<T[K]> };
}

type SchemaFor<C> = {
  [K in keyof C]-?: C[K] extends readonly unknown[] ? LeafFor<C[K]>
    : C[K] extends object ? SectionFor<C[K]>
    : LeafFor<C[K]>;
};

/** A section of the schema (`index`, `eval`). */
export interface Section {
  /** Discriminant. */
  kind: "object";
  /** One-line description. */
  doc: string;
  /** The section's settings. */
  fields: Record<string, Leaf>;
}

const SCHEMA = {
  model: {
    kind: "string",
    default: "models/byte_gpt.onnx",
    arg: "PATH",
    doc: "ONNX causal LM; the default ships with the toolkit",
  },
  tokenizer: {
    kind: "string",
    nullable: true,
    default: null,
    arg: "PATH",
    doc: "tokenizer.json, or a folder holding one (null: UTF-8 bytes)",
  },
  keyTensor: {
    kind: "string",
    default: "ff_input",
    arg: "NAME",
    doc: "key tensor: a graph output or any intermediate tensor name",
  },
  logitsOutput: {
    kind: "string",
    default: "logits",
    arg: "NAME",
    doc: "graph output holding the logits",
  },
  corpus: {
    kind: "string",
    default: "brown:train",
    arg: "SPEC",
    doc: "brown:train|valid|test or a text/.npy/.bin path",
  },
  maxTokens: {
    kind: "integer",
    min: 1,
    nullable: true,
    default: 2_000_000,
    doc: "cap on datastore tokens; null: the whole corpus",
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
  kvCache: {
    kind: "integer",
    min: 2,
    nullable: true,
    default: null,
    doc: "gather carrying the KV cache, ≤ this many positions a segment; null: windowed",
  },
  threads: { kind: "integer", min: 0, max: 1024, default: 0, doc: "threads; 0: all cores" },
  keyDtype: {
    kind: "enum",
    values: { float32: "4 bytes per value", float16: "2 bytes per value" },
    default: "float32",
    doc: "stored dtype of the keys",
  },
  out: {
    kind: "string",
    default: "data/default",
    arg: "DIR",
    doc: "output directory of the datastore",
  },
  index: {
    kind: "object",
    doc: "FAISS index settings",
    fields: {
      factory: {
        kind: "string",
        nullable: true,
        default: null,
        arg: "STRING",
        doc: "FAISS index_factory string; null: IVF{nlist},PQ{m}x{nbits}",
      },
      nlist: { kind: "integer", min: 1, default: 2048, doc: "inverted lists: coarse centroids" },
      m: { kind: "integer", min: 1, default: 64, doc: "PQ sub-quantizers" },
      nbits: { kind: "integer", min: 1, max: 16, default: 8, doc: "bits per PQ code" },
      metric: {
        kind: "enum",
        values: { l2: "squared L2", ip: "inner product" },
        default: "l2",
        doc: "distance metric",
      },
      nprobe: { kind: "integer", min: 1, default: 8, doc: "lists probed per query" },
      trainSize: { kind: "integer", min: 1, default: 200_000, doc: "keys sampled for training" },
      addChunk: { kind: "integer", min: 1, default: 65_536, doc: "keys per add_with_ids call" },
      seed: {
        kind: "integer",
        min: 0,
        max: 2 ** 32 - 1,
        default: 1,
        doc: "seed of the training sample",
      },
      invlists: {
        kind: "enum",
        values: { disk: "a mapped faiss.ivfdata", memory: "inside faiss.index" },
        default: "disk",
        doc: "where an IVF index keeps its lists",
      },
    },
  },
  eval: {
    kind: "object",
    doc: "evaluation and query settings",
    fields: {
      corpus: {
        kind: "string",
        default: "brown:test",
        arg: "SPEC",
        doc: "evaluation corpus: brown:test|valid|train or a path",
      },
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
        doc: "interpolation weights λ to report, comma-separated",
      },
      lambda: {
        kind: "number",
        min: 0,
        max: 1,
        default: 0.25,
        doc: "interpolation weight λ of p_kNN",
      },
      distance: {
        kind: "enum",
        values: {
          faiss: "FAISS's PQ estimates",
          exact: "exact, recomputed from keys.npy",
          both: "faiss and exact",
        },
        default: "both",
        doc: "neighbour distances",
      },
      maxTokens: {
        kind: "integer",
        min: 1,
        nullable: true,
        default: 100_000,
        doc: "cap on evaluated tokens; null: the whole corpus",
      },
      rerank: {
        kind: "integer",
        min: 0,
        default: 0,
        doc: "candidates re-ranked by exact L2 from keys.npy (≥ k; 0: off)",
      },
    },
  },
} as const satisfies SchemaFor<KnnlmConfig>;

/** The schema as data: top-level leaves and sections, in declaration order. */
export const CONFIG_SCHEMA: Readonly<Record<string, Leaf | Section>> = SCHEMA;

/** Every leaf of the schema with its dotted key, in declaration order. */
export const CONFIG_LEAVES: readonly { key: string; leaf: Leaf }[] = Object.entries(CONFIG_SCHEMA)
  .flatMap(([k, node]) =>
    node.kind === "object"
      ? Object.entries(node.fields).map(([f, leaf]) => ({ key: `${k}.${f}`, leaf }))
      : [{ key: k, leaf: node }]
  );

const LEAF_BY_KEY = new Map(CONFIG_LEAVES.map((l) => [l.key, l.leaf]));

/** The schema leaf of a dotted key (`"index.nlist"`), or undefined for an unknown key. */
export function leafOf(key: string): Leaf | undefined {
  return LEAF_BY_KEY.get(key);
}

/** Sets `o[a][b] = v` for the dotted path `a.b`, creating objects on the way. */
export function setPath(o: Record<string, unknown>, path: string, v: unknown): void {
  const parts = path.split(".");
  let cur = o;
  for (const p of parts.slice(0, -1)) cur = (cur[p] ??= {}) as Record<string, unknown>;
  cur[parts.at(-1)!] = v;
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === "object") {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/**
 * The built-in defaults (deeply frozen), built from the schema: the one place every layer
 * takes its defaults from. `model` is the schema value `"models/byte_gpt.onnx"`;
 * `loadConfig` resolves it against the toolkit's directory.
 */
export const DEFAULT_CONFIG: Readonly<KnnlmConfig> = deepFreeze((() => {
  const out: Record<string, unknown> = {};
  for (const { key, leaf } of CONFIG_LEAVES) {
    setPath(out, key, Array.isArray(leaf.default) ? [...leaf.default] : leaf.default);
  }
  return out as unknown as KnnlmConfig;
})());

// ---------------------------------------------------------------------------------------------
// Validation

/** The values of an enum leaf, in declaration order. */
export function enumValues(leaf: Pick<EnumLeaf, "values">): string[] {
  return Object.keys(leaf.values);
}

/**
 * What a leaf allows, in words (`an integer ≥ 1`, `one of "l2", "ip"`); `maxFromKey` is the
 * value of a `maxKey` sibling when known.
 */
export function allowed(leaf: ValueType, maxFromKey?: number): string {
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
      s = "one of " + enumValues(leaf).map((v) => JSON.stringify(v)).join(", ");
      break;
    case "numberList":
      s = `a non-empty list of numbers in [${leaf.min}, ${leaf.max}]`;
      break;
  }
  return leaf.kind !== "numberList" && "nullable" in leaf && leaf.nullable ? `${s} or null` : s;
}

/** A value as an error message shows it (`"abc"`, `3`, `a list [1,2]`, `nothing`). */
export function show(v: unknown): string {
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
export function check(leaf: ValueType, v: unknown): string | undefined {
  const bad = () => `expected ${allowed(leaf)}, found ${show(v)}`;
  if (v === null) return "nullable" in leaf && leaf.nullable ? undefined : bad();
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
      return typeof v === "string" && Object.hasOwn(leaf.values, v) ? undefined : bad();
    case "numberList":
      if (!Array.isArray(v) || v.length === 0) return bad();
      for (const [i, x] of v.entries()) {
        if (typeof x !== "number" || !Number.isFinite(x) || x < leaf.min || x > leaf.max) {
          return `expected ${allowed(leaf)}, found ${show(x)} at index ${i}`;
        }
      }
      return undefined;
  }
}

/** `"2048"`, `"1_000_000"`, `"1e6"`, `"-0.25"` → number; anything else → undefined. */
function toNumber(s: string): number | undefined {
  const t = s.replaceAll("_", "");
  if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t)) return undefined;
  const x = Number(t);
  return Number.isFinite(x) ? x : undefined;
}

/**
 * Converts one command-line string to the leaf's type (`"null"`/`"none"` → null where
 * allowed); returns the raw string when it cannot, so {@linkcode check} reports it as found.
 */
export function coerceString(leaf: ValueType, raw: string): unknown {
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
