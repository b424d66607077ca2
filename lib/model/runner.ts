/**
 * Runs an ONNX causal LM with onnxruntime-node and returns its logits and key tensor as
 * float32 arrays.
 *
 * @module
 */
import { f16ArrayToF32 } from "../storage/half.ts";
import { closest } from "../core/_suggest.ts";
import { readModelFile } from "./_files.ts";
import { ort } from "./_ort.ts";
import { exposeInModel, locateTensor } from "./expose.ts";
import { inlineNoCacheBranch } from "./merged.ts";
import { type InputInfo, inputRole, parseModelAt } from "./inspect.ts";
import type { OnnxModel, TensorType } from "./model_proto.ts";

/** Options for {@linkcode OnnxLm.open}. */
export interface OnnxLmOptions {
  /** Key tensor: a graph output or any intermediate tensor name (default `"ff_input"`). */
  keyTensor?: string;
  /** Graph output holding the logits `[batch, seq, vocab]` (default `"logits"`). */
  logitsOutput?: string;
  /** ONNX Runtime intra-op threads; 0 lets ONNX Runtime use all cores (default 0). */
  threads?: number;
  /**
   * Whether ONNX Runtime's intra-op threads spin while waiting for work (its default, true).
   * Turn it off when other thread pools run beside the model (evaluation overlaps FAISS
   * searches with the next batch): spinning threads then only take CPU from them.
   */
  spinning?: boolean;
  /** ONNX Runtime graph optimization level (default `"all"`). */
  graphOptimizationLevel?: "disabled" | "basic" | "extended" | "all";
  /** Cache directory for models with an exposed intermediate key tensor. */
  cacheDir?: string;
}

/** Options for {@linkcode OnnxLm.run}. */
export interface RunOptions {
  /**
   * Fetch the logits too (default true). With `false` only the key tensor is fetched and
   * ONNX Runtime skips the nodes that only the logits need (the LM head, and anything after
   * the key), which saves most with large vocabularies.
   */
  logits?: boolean;
}

/**
 * A token stream run through the model in chunks with its KV cache carried from call to call
 * (see {@linkcode OnnxLm.keyStream}). Position ids count the tokens fed since the stream
 * started (its first token has position 0), so a stream must restart before they pass the
 * model's position table.
 */
export interface KeyStream {
  /** Tokens fed so far: the position id of the next token. */
  readonly position: number;
  /** Tokens whose keys and values the cache holds now (the most recent ones). */
  readonly cached: number;
  /**
   * Feeds `tokens` after the last `keep` cached tokens (older entries are dropped first; 0
   * starts over with an empty cache but keeps counting positions) and returns their keys
   * `[tokens.length, dModel]`, float32 row-major. Afterwards the cache holds `keep +
   * tokens.length` tokens.
   */
  next(tokens: Int32Array, keep: number): Promise<Float32Array>;
}

/** Output of {@linkcode OnnxLm.run}. */
export interface LmOutput<L extends Float32Array | null = Float32Array> {
  /** `[batch, seq, vocabSize]` float32, row-major; `null` when not requested. */
  logits: L;
  /** `[batch, seq, dModel]` float32, row-major: row (b, t) is the key of the context ending at t. */
  keys: Float32Array;
}

type Feed = Exclude<InputInfo["role"], "unsupported">;
interface FeedSpec {
  name: string;
  role: Feed;
  type: string;
  /** Whether `position_ids` is declared with a fixed batch dimension of 1. */
  batchOne: boolean;
  /** For a `past` input: its declared shape `[batch, heads, past, headDim]`. */
  shape?: (number | string | null)[];
}

const TOKEN_TYPES = new Set(["int64", "int32"]);
const MASK_TYPES = new Set(["int64", "int32", "float32", "bool", "uint8", "int8"]);
const PAST_TYPES = new Set(["float32", "float16"]);
const BRANCH_TYPES = new Set(["bool"]);

function lastDim(type: TensorType | null | undefined): number | undefined {
  const d = type?.shape?.at(-1);
  return typeof d === "number" ? d : undefined;
}

/**
 * An ONNX causal LM session: feeds token ids (plus an all-ones `attention_mask` and
 * `0..seq-1` `position_ids` when the model takes them) and returns float32 logits and keys.
 *
 * @example
 * ```ts
 * import { OnnxLm } from "@knnlm/knnlm";
 * using lm = await OnnxLm.open("tests/fixtures/tiny_lm.onnx", { keyTensor: "ff_input" });
 * const { logits, keys } = await lm.run(new Int32Array([116, 104, 101]), 1, 3);
 * console.log(logits.length === 3 * lm.vocabSize, keys.length === 3 * lm.dModel);
 * ```
 */
export class OnnxLm {
  #session: ort.InferenceSession | null;
  readonly #feeds: FeedSpec[];
  /** The model file the user gave. */
  readonly modelPath: string;
  /** The file onnxruntime loaded: `modelPath`, or a cached copy exposing the key tensor. */
  readonly sessionPath: string;
  /** Key tensor name. */
  readonly keyTensor: string;
  /** Logits output name. */
  readonly logitsOutput: string;
  /** Size of the logits' last dimension. */
  readonly vocabSize: number;
  /** Size of the keys' last dimension. */
  readonly dModel: number;
  /** Graph inputs and how they are fed. */
  readonly inputs: readonly InputInfo[];
  /**
   * Whether {@linkcode OnnxLm.keyStream} can carry a KV cache: the model is a decoder with
   * past (`past_key_values.N.key/value` inputs, each with a `present.N.key/value` output, and a
   * `position_ids` input) and not a merged decoder (which runs its no-cache branch).
   */
  readonly acceptsPast: boolean;

  private constructor(init: {
    session: ort.InferenceSession;
    feeds: FeedSpec[];
    modelPath: string;
    sessionPath: string;
    keyTensor: string;
    logitsOutput: string;
    vocabSize: number;
    dModel: number;
    inputs: InputInfo[];
    acceptsPast: boolean;
  }) {
    this.#session = init.session;
    this.#feeds = init.feeds;
    this.modelPath = init.modelPath;
    this.sessionPath = init.sessionPath;
    this.keyTensor = init.keyTensor;
    this.logitsOutput = init.logitsOutput;
    this.vocabSize = init.vocabSize;
    this.dModel = init.dModel;
    this.inputs = init.inputs;
    this.acceptsPast = init.acceptsPast;
  }

  /**
   * Opens a model. An intermediate `keyTensor` is exposed as an output in a cached copy (see
   * `exposeTensors`); the user's file is never modified. When the output shapes do not fix
   * `vocabSize`/`dModel`, one probe run on two tokens determines them.
   *
   * @throws Error naming the path for a missing file, unsupported inputs, a missing logits
   *   output or an unknown key tensor (with close names)
   */
  static async open(path: string, options: OnnxLmOptions = {}): Promise<OnnxLm> {
    const keyTensor = options.keyTensor ?? "ff_input";
    const logitsOutput = options.logitsOutput ?? "logits";
    const threads = options.threads ?? 0;
    if (!Number.isSafeInteger(threads) || threads < 0) {
      throw new RangeError(`threads: expected an integer ≥ 0, found ${threads}`);
    }
    const original = await readModelFile(path);
    // A merged decoder runs as its no-cache branch, inlined (the graph inputs stay).
    const inlined = inlineNoCacheBranch(original);
    const bytes = inlined ?? original;
    const model = parseModelAt(path, bytes);
    const feeds = feedSpecs(path, model);
    if (!model.outputs.some((o) => o.name === logitsOutput)) {
      const names = model.outputs.map((o) => `"${o.name}"`).join(", ");
      const hint = closest(logitsOutput, model.outputs.map((o) => o.name));
      throw new Error(
        `${path}: no graph output "${logitsOutput}" for the logits; outputs are ${names}` +
          (hint ? ` (did you mean "${hint}"?)` : ""),
      );
    }
    locateTensor(path, model, keyTensor);
    const exposed = await exposeInModel(path, bytes, model, [keyTensor], {
      cacheDir: options.cacheDir,
      // The inlined model exists only in memory: it goes to the cache even with no new output.
      ...(inlined ? { always: true } : {}),
    });

    const session = await ort.InferenceSession.create(exposed.path, {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: "sequential",
      graphOptimizationLevel: options.graphOptimizationLevel ?? "all",
      ...(options.spinning === false
        ? { extra: { session: { intra_op: { allow_spinning: "0" } } } }
        : {}),
    });
    const meta = (name: string) => session.outputMetadata.find((m) => m.name === name);
    const staticLast = (name: string, declared: TensorType | null | undefined) => {
      const m = meta(name);
      const d = m && m.isTensor ? m.shape.at(-1) : undefined;
      return typeof d === "number" && d > 0 ? d : lastDim(declared);
    };
    const lm = new OnnxLm({
      session,
      feeds,
      modelPath: path,
      sessionPath: exposed.path,
      keyTensor,
      logitsOutput,
      vocabSize: staticLast(
        logitsOutput,
        model.outputs.find((o) => o.name === logitsOutput)?.type,
      ) ?? 0,
      dModel: staticLast(keyTensor, model.valueInfo.get(keyTensor)?.type) ?? 0,
      inputs: model.inputs.map((i) => ({
        name: i.name,
        elemType: i.type?.elemTypeName ?? "unknown",
        shape: i.type?.shape ?? null,
        role: inputRole(i.name),
      })),
      // position_ids is required: a model that derives positions from the mask would number
      // the new tokens from the cache's length, not from where the stream's positions are.
      acceptsPast: !inlined && feeds.some((f) => f.role === "past") &&
        feeds.some((f) => f.role === "position_ids") &&
        feeds.every((f) =>
          f.role !== "past" || model.outputs.some((o) => o.name === presentOf(f.name))
        ),
    });
    if (lm.vocabSize === 0 || lm.dModel === 0) {
      // Dynamic last dims: read them off a two-token probe.
      const probe = await lm.#raw(new Int32Array(2), 1, 2, true);
      const dims = (t: ort.Tensor) => Number(t.dims.at(-1));
      (lm as { vocabSize: number }).vocabSize = dims(probe[logitsOutput]);
      (lm as { dModel: number }).dModel = dims(probe[keyTensor]);
    }
    return lm;
  }

  #open(): ort.InferenceSession {
    if (!this.#session) throw new Error(`${this.modelPath}: OnnxLm is closed`);
    return this.#session;
  }

  async #raw(tokens: Int32Array, batch: number, seq: number, withLogits: boolean) {
    const session = this.#open();
    const n = batch * seq;
    const feeds: Record<string, ort.Tensor> = {};
    for (const f of this.#feeds) {
      if (f.role === "tokens") {
        feeds[f.name] = f.type === "int32"
          ? new ort.Tensor("int32", tokens, [batch, seq])
          : new ort.Tensor("int64", BigInt64Array.from(tokens, BigInt), [batch, seq]);
      } else if (f.role === "attention_mask") {
        feeds[f.name] = filled(f.type, n, () => 1, [batch, seq]);
      } else if (f.role === "past") {
        // An empty cache: [batch, heads, 0, headDim].
        const [, heads, , headDim] = f.shape!;
        const dims = [batch, heads as number, 0, headDim as number];
        feeds[f.name] = f.type === "float16"
          ? new ort.Tensor("float16", new Uint16Array(0), dims)
          : new ort.Tensor("float32", new Float32Array(0), dims);
      } else if (f.role === "use_cache_branch") {
        feeds[f.name] = new ort.Tensor("bool", Uint8Array.of(0), [1]);
      } else {
        const rows = f.batchOne ? 1 : batch;
        feeds[f.name] = filled(f.type, rows * seq, (i) => i % seq, [rows, seq]);
      }
    }
    const fetches = withLogits ? [this.logitsOutput, this.keyTensor] : [this.keyTensor];
    try {
      // Failures are rethrown with their message below; keep ONNX Runtime's logger quiet.
      return await session.run(feeds, fetches, { logSeverityLevel: 4 });
    } catch (e) {
      const msg = (e as Error).message;
      // An embedding lookup past the table usually means seq exceeds the model's context.
      const hint = /out of (data )?bounds|out of range/i.test(msg)
        ? ` (is seq = ${seq} longer than the model's context?)`
        : "";
      throw new Error(
        `${this.modelPath}: inference failed on a [${batch}, ${seq}] batch: ${msg}${hint}`,
        { cause: e },
      );
    }
  }

  /**
   * Starts a {@linkcode KeyStream}: one sequence (batch 1) fed in chunks, each call getting
   * the `present.*` outputs of the previous calls back as `past_key_values.*` (trimmed to the
   * tokens asked to be kept), `position_ids` continuing where the last chunk ended and an
   * all-ones `attention_mask` over past + new tokens. Only the keys are fetched, never the
   * logits.
   *
   * @throws Error when the model does not accept a past ({@linkcode OnnxLm.acceptsPast})
   */
  keyStream(): KeyStream {
    if (!this.acceptsPast) {
      throw new Error(
        `${this.modelPath}: no KV cache to carry: the model needs past_key_values.N.key/value ` +
          `inputs with matching present.N.key/value outputs and a position_ids input (a ` +
          `decoder-with-past export; a merged decoder runs its no-cache branch)`,
      );
    }
    let past: Record<string, ort.Tensor> | null = null;
    let cached = 0;
    let position = 0;
    return {
      get position() {
        return position;
      },
      get cached() {
        return cached;
      },
      next: async (tokens: Int32Array, keep: number) => {
        const n = tokens.length;
        if (!Number.isSafeInteger(keep) || keep < 0 || keep > cached) {
          throw new RangeError(`keyStream: keep must be in 0..${cached}, found ${keep}`);
        }
        if (n < 1) throw new RangeError("keyStream: expected at least one token");
        this.#checkIds(tokens);
        const kept = past && keep > 0 ? trimPast(past, keep) : null;
        const out = await this.#rawCached(tokens, kept, keep, position);
        const keys = this.#float32(out[this.keyTensor], 1, n, this.dModel);
        past = {};
        for (const f of this.#feeds) {
          if (f.role === "past") past[f.name] = out[presentOf(f.name)];
        }
        cached = keep + n;
        position += n;
        return keys;
      },
    };
  }

  async #rawCached(
    tokens: Int32Array,
    past: Record<string, ort.Tensor> | null,
    pastLength: number,
    firstPosition: number,
  ) {
    const session = this.#open();
    const n = tokens.length;
    const feeds: Record<string, ort.Tensor> = {};
    for (const f of this.#feeds) {
      if (f.role === "tokens") {
        feeds[f.name] = f.type === "int32"
          ? new ort.Tensor("int32", tokens, [1, n])
          : new ort.Tensor("int64", BigInt64Array.from(tokens, BigInt), [1, n]);
      } else if (f.role === "attention_mask") {
        feeds[f.name] = filled(f.type, pastLength + n, () => 1, [1, pastLength + n]);
      } else if (f.role === "past") {
        if (past) feeds[f.name] = past[f.name];
        else {
          const [, heads, , headDim] = f.shape!;
          const dims = [1, heads as number, 0, headDim as number];
          feeds[f.name] = f.type === "float16"
            ? new ort.Tensor("float16", new Uint16Array(0), dims)
            : new ort.Tensor("float32", new Float32Array(0), dims);
        }
      } else if (f.role === "position_ids") {
        feeds[f.name] = filled(f.type, n, (i) => firstPosition + i, [1, n]);
      }
    }
    const fetches = [
      this.keyTensor,
      ...this.#feeds.filter((f) => f.role === "past").map((f) => presentOf(f.name)),
    ];
    try {
      return await session.run(feeds, fetches, { logSeverityLevel: 4 });
    } catch (e) {
      const msg = (e as Error).message;
      const hint = /out of (data )?bounds|out of range/i.test(msg)
        ? ` (do positions up to ${firstPosition + n - 1} pass the model's position table?)`
        : "";
      throw new Error(
        `${this.modelPath}: inference failed on ${n} tokens after a cache of ${pastLength}: ` +
          `${msg}${hint}`,
        { cause: e },
      );
    }
  }

  #checkIds(tokens: Int32Array): void {
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      if (t < 0 || t >= this.vocabSize) {
        throw new RangeError(
          `run: token id ${t} at index ${i} is outside the model's vocabulary 0..${
            this.vocabSize - 1
          }`,
        );
      }
    }
  }

  /**
   * Runs the model on `batch` windows of `seq` tokens.
   *
   * @param tokens `[batch, seq]` token ids, row-major
   * @returns float32 `logits` `[batch, seq, vocabSize]` (or `null` with `{ logits: false }`)
   *   and `keys` `[batch, seq, dModel]`
   * @throws Error for a closed session, a size mismatch, a token id outside the vocabulary,
   *   or an inference failure (naming the model path and the batch shape)
   */
  run(tokens: Int32Array, batch: number, seq: number): Promise<LmOutput>;
  /** Runs the model fetching only the keys (`logits` is `null`). */
  run(
    tokens: Int32Array,
    batch: number,
    seq: number,
    options: { logits: false },
  ): Promise<LmOutput<null>>;
  /** Runs the model; `logits` is `null` when `options.logits` is false. */
  run(
    tokens: Int32Array,
    batch: number,
    seq: number,
    options?: RunOptions,
  ): Promise<LmOutput<Float32Array | null>>;
  async run(
    tokens: Int32Array,
    batch: number,
    seq: number,
    options: RunOptions = {},
  ): Promise<LmOutput<Float32Array | null>> {
    this.#open();
    if (!Number.isSafeInteger(batch) || !Number.isSafeInteger(seq) || batch < 1 || seq < 1) {
      throw new RangeError(`run: batch and seq must be integers ≥ 1, got ${batch} and ${seq}`);
    }
    if (tokens.length !== batch * seq) {
      throw new RangeError(
        `run: expected ${batch}×${seq} = ${batch * seq} tokens, got ${tokens.length}`,
      );
    }
    this.#checkIds(tokens);
    const withLogits = options.logits ?? true;
    const out = await this.#raw(tokens, batch, seq, withLogits);
    return {
      logits: withLogits ? this.#float32(out[this.logitsOutput], batch, seq, this.vocabSize) : null,
      keys: this.#float32(out[this.keyTensor], batch, seq, this.dModel),
    };
  }

  /** Checks a `[batch, seq, last]` (or `[batch*seq, last]`) output and returns float32 data. */
  #float32(t: ort.Tensor, batch: number, seq: number, last: number): Float32Array {
    const dims = t.dims.map(Number);
    const ok = (dims.length === 3 && dims[0] === batch && dims[1] === seq && dims[2] === last) ||
      (dims.length === 2 && dims[0] === batch * seq && dims[1] === last);
    if (!ok) {
      throw new Error(
        `${this.modelPath}: expected an output of shape [${batch}, ${seq}, ${last}], ` +
          `got [${dims.join(", ")}]`,
      );
    }
    switch (t.type) {
      case "float32":
        return t.data as Float32Array;
      case "float16":
        return f16ArrayToF32(t.data as Uint16Array);
      case "float64":
        return Float32Array.from(t.data as Float64Array);
      default:
        throw new Error(`${this.modelPath}: expected a floating-point output, got ${t.type}`);
    }
  }

  /** Releases the ONNX Runtime session; later calls throw. Safe to call twice. */
  close(): void {
    const s = this.#session;
    this.#session = null;
    // The node backend disposes synchronously inside release().
    s?.release().catch(() => {});
  }

  /** Same as {@linkcode OnnxLm.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The output that returns the cache fed as past input `name` (HF/optimum naming). */
function presentOf(name: string): string {
  return name.replace(/^past_key_values\./, "present.");
}

/** Each `[1, heads, T, headDim]` cache tensor cut to its last `keep` steps (a copy). */
function trimPast(past: Record<string, ort.Tensor>, keep: number): Record<string, ort.Tensor> {
  const out: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(past)) {
    const [b, heads, T, hd] = t.dims.map(Number);
    if (keep === T) {
      out[name] = t;
      continue;
    }
    const src = t.data as Float32Array | Uint16Array;
    const dst = new (src.constructor as Float32ArrayConstructor | Uint16ArrayConstructor)(
      b * heads * keep * hd,
    );
    for (let h = 0; h < b * heads; h++) {
      dst.set(src.subarray((h * T + T - keep) * hd, (h + 1) * T * hd), h * keep * hd);
    }
    out[name] = new ort.Tensor(t.type as "float32", dst as Float32Array, [b, heads, keep, hd]);
  }
  return out;
}

function filled(
  type: string,
  n: number,
  value: (i: number) => number,
  dims: number[],
): ort.Tensor {
  switch (type) {
    case "int64":
      return new ort.Tensor(
        "int64",
        BigInt64Array.from({ length: n }, (_, i) => BigInt(value(i))),
        dims,
      );
    case "int32":
      return new ort.Tensor("int32", Int32Array.from({ length: n }, (_, i) => value(i)), dims);
    case "float32":
      return new ort.Tensor("float32", Float32Array.from({ length: n }, (_, i) => value(i)), dims);
    case "bool":
    case "uint8":
      return new ort.Tensor(type, Uint8Array.from({ length: n }, (_, i) => value(i)), dims);
    case "int8":
      return new ort.Tensor("int8", Int8Array.from({ length: n }, (_, i) => value(i)), dims);
    default:
      throw new Error(`unsupported input type ${type}`);
  }
}

/** Maps graph inputs to feeds by name; anything else required is an error. */
function feedSpecs(path: string, model: OnnxModel): FeedSpec[] {
  const specs: FeedSpec[] = [];
  const problems: string[] = [];
  for (const input of model.inputs) {
    const role = inputRole(input.name);
    const type = input.type?.elemTypeName ?? "unknown";
    if (role === "unsupported") {
      problems.push(`input "${input.name}" (${type}) is not one the runner can feed`);
      continue;
    }
    const allowed = role === "tokens"
      ? TOKEN_TYPES
      : role === "past"
      ? PAST_TYPES
      : role === "use_cache_branch"
      ? BRANCH_TYPES
      : MASK_TYPES;
    if (!allowed.has(type)) {
      problems.push(
        `input "${input.name}" has type ${type}, expected one of ${[...allowed].join(", ")}`,
      );
      continue;
    }
    const shape = input.type?.shape ?? null;
    if (
      role === "past" &&
      !(shape?.length === 4 && typeof shape[1] === "number" && typeof shape[3] === "number")
    ) {
      problems.push(
        `input "${input.name}" has shape ${JSON.stringify(shape)}; an empty past needs ` +
          `[batch, heads, past, headDim] with heads and headDim fixed`,
      );
      continue;
    }
    specs.push({
      name: input.name,
      role,
      type,
      batchOne: role === "position_ids" && input.type?.shape?.[0] === 1,
      ...(role === "past" ? { shape: shape! } : {}),
    });
  }
  const tokenInputs = specs.filter((s) => s.role === "tokens");
  if (tokenInputs.length !== 1 && problems.length === 0) {
    problems.push(
      tokenInputs.length === 0
        ? "no token input (expected one named tokens or input_ids)"
        : `two token inputs (${tokenInputs.map((t) => t.name).join(", ")})`,
    );
  }
  if (problems.length) {
    throw new Error(
      `${path}: ${problems.join("; ")}. Supported inputs: tokens or input_ids (int64/int32 ` +
        `[batch, seq]), attention_mask (fed all ones), position_ids (fed 0..seq-1), ` +
        `past_key_values.N.key/value (fed empty), use_cache_branch (fed false)`,
    );
  }
  return specs;
}
