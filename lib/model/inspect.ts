/**
 * Describes an ONNX causal LM for `knn model inspect`: its inputs (and how the runner will
 * feed them), its outputs, and the tensors that could serve as kNN-LM keys.
 *
 * @module
 */
import { type GraphNode, type OnnxModel, parseOnnxModel, type TensorType } from "./model_proto.ts";
import { readModelFile } from "./_files.ts";
import { inlineNoCacheBranch, USE_CACHE_BRANCH } from "./merged.ts";

/** How the runner feeds a graph input, by its name. */
export type InputRole = InputInfo["role"];

/** A graph input or output. */
export interface TensorInfo {
  /** Tensor name. */
  name: string;
  /** Element type, e.g. `int64`, `float32`; `unknown` when not recorded. */
  elemType: string;
  /** Dimensions: numbers are fixed, strings are symbolic (dynamic), `null` unknown. */
  shape: (number | string | null)[] | null;
}

/** A graph input with the role the runner gives it. */
export interface InputInfo extends TensorInfo {
  /**
   * `tokens` (token ids), `attention_mask` (fed all ones), `position_ids` (0..seq-1),
   * `past` (a `past_key_values.N.key/value` cache input, fed empty: past length 0),
   * `use_cache_branch` (a merged decoder's branch switch, fed false).
   */
  role:
    | "tokens"
    | "attention_mask"
    | "position_ids"
    | "past"
    | "use_cache_branch"
    | "unsupported";
}

/** A tensor that could be used as the kNN-LM key. */
export interface KeyCandidate {
  /** Tensor name to pass as `keyTensor`. */
  tensor: string;
  /** Operator that produces it, e.g. `LayerNormalization`, or `Add` for a decomposed norm. */
  producerOp: string;
  /** Name of the producing node. */
  producerName: string;
  /** Operators that consume it, e.g. `["MatMul"]`. */
  consumerOps: string[];
  /** Whether the tensor is already a graph output (no graph edit needed). */
  isGraphOutput: boolean;
  /** Heuristic role, e.g. `last block: FFN input (recommended)`, `final norm (LM head input)`. */
  role: string;
  /**
   * The tensor the feed-forward projection actually reads, when it is not `tensor` itself
   * (e.g. after a `Cast` in a float16 export); absent when they are the same.
   */
  ffnInput?: string;
}

/** Result of {@linkcode inspectModel}. */
export interface ModelInspection {
  /** Path that was inspected. */
  path: string;
  /** File size in bytes. */
  sizeBytes: number;
  /** ONNX IR version. */
  irVersion: number;
  /** Producer, e.g. `pytorch 1.13.0`. */
  producer: string;
  /** Operator set imports, e.g. `ai.onnx 17`. */
  opsets: string[];
  /** Number of nodes in the main graph. */
  nodeCount: number;
  /** Graph inputs (initializers excluded) with their runner roles. */
  inputs: InputInfo[];
  /** Graph outputs. */
  outputs: TensorInfo[];
  /**
   * Norm outputs that feed a projection (MatMul/Gemm), best first: the last block's
   * pre-FFN norm, then the final norm, then earlier ones (at most `maxCandidates`).
   */
  keyCandidates: KeyCandidate[];
  /**
   * For a merged decoder (an `If` on `use_cache_branch`): candidates come from its no-cache
   * branch, which is what the runner executes.
   */
  merged?: boolean;
}

const TOKEN_INPUTS = ["tokens", "input_ids"];

/** KV-cache inputs as Hugging Face exporters name them: `past_key_values.0.key`, … */
const PAST_INPUT = /^past_key_values\.\d+\.(key|value)$/;

/** The runner's role for a graph input, by name. */
export function inputRole(name: string): InputRole {
  if (TOKEN_INPUTS.includes(name)) return "tokens";
  if (name === "attention_mask") return "attention_mask";
  if (name === "position_ids") return "position_ids";
  if (PAST_INPUT.test(name)) return "past";
  if (name === USE_CACHE_BRANCH) return "use_cache_branch";
  return "unsupported";
}

function tensorInfo(name: string, type: TensorType | null): TensorInfo {
  return { name, elemType: type?.elemTypeName ?? "unknown", shape: type?.shape ?? null };
}

// Normalization operators (ONNX, and ONNX Runtime's com.microsoft fused forms).
const NORM_OPS = new Set([
  "LayerNormalization",
  "SimplifiedLayerNormalization",
  "SkipLayerNormalization",
  "SkipSimplifiedLayerNormalization",
  "RMSNormalization",
]);
// Operators a decomposed LayerNorm/RMSNorm is built from (torch exports before opset 17).
const DECOMPOSED_NORM_OPS = new Set([
  "ReduceMean",
  "Sub",
  "Pow",
  "Mul",
  "Add",
  "Sqrt",
  "Div",
  "Reciprocal",
  "Cast",
]);
// Shape-only or type-only operators between a norm and its projection.
const PASSTHROUGH_OPS = new Set([
  "Cast",
  "Reshape",
  "Flatten",
  "Identity",
  "Transpose",
  "Squeeze",
  "Unsqueeze",
]);

function isProjection(op: string): boolean {
  return op.includes("MatMul") || op === "Gemm" || op === "Attention" ||
    op === "MultiHeadAttention";
}

interface GraphIndex {
  producer: Map<string, number>;
  consumers: Map<string, number[]>;
}

function indexGraph(nodes: GraphNode[]): GraphIndex {
  const producer = new Map<string, number>();
  const consumers = new Map<string, number[]>();
  nodes.forEach((n, i) => {
    for (const o of n.outputs) if (o) producer.set(o, i);
    for (const x of n.inputs) {
      if (!x) continue;
      const list = consumers.get(x);
      if (list) list.push(i);
      else consumers.set(x, [i]);
    }
  });
  return { producer, consumers };
}

/**
 * Whether `Add`/`Mul` node `i` ends a decomposed norm: walking back through elementwise
 * operators only, within a few steps, reaches a ReduceMean and a Sqrt/Reciprocal.
 */
function endsDecomposedNorm(nodes: GraphNode[], g: GraphIndex, i: number): boolean {
  if (nodes[i].opType !== "Add" && nodes[i].opType !== "Mul") return false;
  const seen = new Set<number>();
  let frontier = [i];
  let reduceMean = false, root = false;
  for (let depth = 0; depth < 8 && frontier.length; depth++) {
    const next: number[] = [];
    for (const j of frontier) {
      if (seen.has(j)) continue;
      seen.add(j);
      const op = nodes[j].opType;
      if (op === "ReduceMean") reduceMean = true;
      if (op === "Sqrt" || op === "Reciprocal") root = true;
      for (const x of nodes[j].inputs) {
        const p = g.producer.get(x);
        if (p !== undefined && DECOMPOSED_NORM_OPS.has(nodes[p].opType)) next.push(p);
      }
    }
    frontier = next;
  }
  return reduceMean && root;
}

/** Consumer node indices of `tensor`, looking through passthrough ops (two levels). */
function effectiveConsumers(nodes: GraphNode[], g: GraphIndex, tensor: string): number[] {
  const out: number[] = [];
  for (const c of g.consumers.get(tensor) ?? []) {
    out.push(c);
    if (PASSTHROUGH_OPS.has(nodes[c].opType)) {
      for (const o of nodes[c].outputs) {
        for (const cc of g.consumers.get(o) ?? []) {
          out.push(cc);
          if (PASSTHROUGH_OPS.has(nodes[cc].opType)) {
            for (const o2 of nodes[cc].outputs) out.push(...(g.consumers.get(o2) ?? []));
          }
        }
      }
    }
  }
  return out;
}

/**
 * Hugging Face module names of the pre-FFN norm: GPT-2/GPT-J/Falcon `ln_2`, Llama/Mistral/
 * Qwen `post_attention_layernorm`, OPT `final_layer_norm` (per block), GPT-NeoX/Pythia
 * `post_attention_layernorm`, BLOOM `post_attention_layernorm`.
 */
const PRE_FFN_NORM =
  /(?:^|[/.])(?:h|layers|layer|blocks|block|decoder\.layers)\.(\d+)[/.](?:ln_2|post_attention_layernorm|final_layer_norm)(?:[/.]|$)/;

/** The block index when `node`/`tensor` names a block's pre-FFN norm by HF convention. */
function preFfnBlock(nodeName: string, tensor: string): number | undefined {
  const m = PRE_FFN_NORM.exec(nodeName) ?? PRE_FFN_NORM.exec(tensor);
  return m ? Number(m[1]) : undefined;
}

/** The input of the projection that reads `tensor`, through passthrough ops (Cast, …). */
function projectionInput(nodes: GraphNode[], g: GraphIndex, tensor: string): string | undefined {
  let frontier = [tensor];
  for (let depth = 0; depth < 3; depth++) {
    const next: string[] = [];
    for (const t of frontier) {
      for (const c of g.consumers.get(t) ?? []) {
        if (isProjection(nodes[c].opType)) return t;
        if (PASSTHROUGH_OPS.has(nodes[c].opType)) next.push(...nodes[c].outputs);
      }
    }
    frontier = next;
  }
  return undefined;
}

/**
 * Finds norm outputs that feed a projection and ranks them as kNN-LM key candidates.
 *
 * In a pre-LN transformer each block normalizes twice (attention input, then FFN input) and
 * a final norm feeds the LM head. Walking the norms backwards in graph order: the last is
 * the final norm, the one before it is the last block's FFN input (the kNN-LM key of
 * Khandelwal et al.), then the last block's attention input, and so on.
 */
export function findKeyCandidates(model: OnnxModel, maxCandidates = 4): KeyCandidate[] {
  const { nodes } = model;
  const g = indexGraph(nodes);
  const outputs = new Set(model.outputs.map((o) => o.name));
  const norms: { node: number; tensor: string; consumers: number[] }[] = [];
  nodes.forEach((n, i) => {
    const explicit = NORM_OPS.has(n.opType);
    if (!explicit && !endsDecomposedNorm(nodes, g, i)) return;
    const tensor = n.outputs[0];
    if (!tensor) return;
    const consumers = effectiveConsumers(nodes, g, tensor);
    if (!consumers.some((c) => isProjection(nodes[c].opType))) return;
    norms.push({ node: i, tensor, consumers: g.consumers.get(tensor) ?? [] });
  });
  const roles = (k: number, count: number): string => {
    // k = position from the end (0 = last norm in graph order).
    if (count === 1) return "only norm feeding a projection";
    if (k === 0) return "final norm (LM head input)";
    const block = Math.floor((k - 1) / 2);
    const where = block === 0 ? "last block" : `block -${block + 1}`;
    const what = (k - 1) % 2 === 0 ? "FFN input" : "attention input";
    return `${where}: ${what}${k === 1 ? " (recommended)" : ""}`;
  };
  // Hugging Face names, when the exporter kept them, say which norm is the last block's
  // pre-FFN one; otherwise its position (second to last norm) does.
  const blocks = norms.map((n) => preFfnBlock(nodes[n.node].name, n.tensor));
  const lastBlock = Math.max(-1, ...blocks.filter((b): b is number => b !== undefined));
  const named = lastBlock >= 0 ? blocks.indexOf(lastBlock) : -1;
  const ranked = norms.map((n, idx) => ({
    ...n,
    idx,
    k: norms.length - 1 - idx,
    recommended: named >= 0 ? idx === named : norms.length - 1 - idx === 1,
  }))
    // Best first: the recommended FFN input, the final norm (k = 0), then backwards.
    .sort((a, b) => (a.recommended ? -1 : b.recommended ? 1 : a.k - b.k));
  return ranked.slice(0, maxCandidates).map((n) => {
    const ffn = projectionInput(nodes, g, n.tensor);
    const block = blocks[n.idx];
    const role = n.recommended
      ? named >= 0 ? `last block (${block}): pre-FFN norm (recommended)` : roles(1, norms.length)
      : named >= 0 && block !== undefined
      ? `block ${block}: pre-FFN norm`
      : roles(n.k, norms.length).replace(" (recommended)", "");
    return {
      tensor: n.tensor,
      producerOp: nodes[n.node].opType,
      producerName: nodes[n.node].name,
      consumerOps: n.consumers.map((c) => nodes[c].opType),
      isGraphOutput: outputs.has(n.tensor),
      role,
      ...(ffn && ffn !== n.tensor ? { ffnInput: ffn } : {}),
    };
  });
}

/** Options for {@linkcode inspectModel}. */
export interface InspectOptions {
  /** Most key candidates to list (default 4). */
  maxCandidates?: number;
}

/**
 * Reads an ONNX model's inputs, outputs and key candidates (no inference session needed).
 *
 * @param path ONNX model file
 * @returns the model's description; format it with {@linkcode formatModelInspection}
 * @throws Error naming the path when the file is missing or not an ONNX model
 */
export async function inspectModel(
  path: string,
  options: InspectOptions = {},
): Promise<ModelInspection> {
  const bytes = await readModelFile(path);
  const model = parseModelAt(path, bytes);
  const inlined = inlineNoCacheBranch(bytes);
  if (!inlined) return describeModel(path, bytes.length, model, options);
  // A merged decoder: rank the tensors of the branch the runner executes.
  const branch = parseModelAt(path, inlined);
  return {
    ...describeModel(path, bytes.length, model, options),
    keyCandidates: findKeyCandidates(branch, options.maxCandidates ?? 4),
    merged: true,
  };
}

/** Parses model bytes, prefixing format errors with the path. */
export function parseModelAt(path: string, bytes: Uint8Array): OnnxModel {
  try {
    return parseOnnxModel(bytes);
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** Builds a {@linkcode ModelInspection} from an already parsed model. */
export function describeModel(
  path: string,
  sizeBytes: number,
  model: OnnxModel,
  options: InspectOptions = {},
): ModelInspection {
  return {
    path,
    sizeBytes,
    irVersion: model.irVersion,
    producer: model.producer,
    opsets: model.opsets.map((o) => `${o.domain || "ai.onnx"} ${o.version}`),
    nodeCount: model.nodes.length,
    inputs: model.inputs.map((i) => ({ ...tensorInfo(i.name, i.type), role: inputRole(i.name) })),
    outputs: model.outputs.map((o) => tensorInfo(o.name, o.type)),
    keyCandidates: findKeyCandidates(model, options.maxCandidates ?? 4),
  };
}

function formatShape(shape: (number | string | null)[] | null): string {
  return shape === null ? "?" : `[${shape.map((d) => d ?? "?").join(", ")}]`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (r: string[]) => r.map((s, c) => s.padEnd(widths[c])).join("  ").trimEnd();
  return [line(header), ...rows.map(line)].map((l) => "  " + l).join("\n");
}

/**
 * Formats an inspection as plain-text tables (for `knn model inspect`).
 *
 * @returns multi-line text without a trailing newline
 */
export function formatModelInspection(info: ModelInspection): string {
  const mib = (info.sizeBytes / 2 ** 20).toFixed(1);
  const parts = [
    `${info.path}: ONNX IR ${info.irVersion}, ${info.opsets.join(", ")}, ` +
    `${info.nodeCount} nodes, ${mib} MiB${info.producer ? `, from ${info.producer}` : ""}`,
    "",
    "Inputs:",
    table(
      ["name", "type", "shape", "fed as"],
      info.inputs.map((i) => [
        i.name,
        i.elemType,
        formatShape(i.shape),
        i.role === "tokens"
          ? "token ids"
          : i.role === "attention_mask"
          ? "all ones"
          : i.role === "position_ids"
          ? "0..seq-1"
          : i.role === "past"
          ? "empty (past length 0)"
          : i.role === "use_cache_branch"
          ? "false (no-cache branch)"
          : "UNSUPPORTED",
      ]),
    ),
    "",
    "Outputs:",
    table(
      ["name", "type", "shape"],
      info.outputs.map((o) => [o.name, o.elemType, formatShape(o.shape)]),
    ),
    "",
  ];
  if (info.keyCandidates.length === 0) {
    parts.push("Key candidates: none found (no normalization output feeds a MatMul/Gemm).");
  } else {
    if (info.merged) {
      parts.push(
        "Merged decoder: candidates are from the no-cache branch (use_cache_branch = false).",
      );
    }
    parts.push(
      "Key candidates (pass one as --key-tensor):",
      table(
        ["tensor", "role", "produced by", "consumed by", "output?"],
        info.keyCandidates.map((c) => [
          c.tensor,
          c.role + (c.ffnInput ? `; FFN reads ${c.ffnInput}` : ""),
          c.producerOp,
          c.consumerOps.join(", ") || "-",
          c.isGraphOutput ? "yes" : "no (exposed on use)",
        ]),
      ),
    );
  }
  return parts.join("\n");
}
