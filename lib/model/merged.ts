/**
 * Merged decoders (optimum's `decoder_model_merged.onnx`): the main graph is one `If` on the
 * input `use_cache_branch`, whose `then_branch` runs with a KV cache and whose `else_branch`
 * is the plain decoder. The toolkit always runs the plain decoder, so
 * {@linkcode inlineNoCacheBranch} rewrites the model with the `If` replaced by the nodes of
 * its `else_branch`: the key tensor inside it becomes an ordinary intermediate tensor that
 * `inspect` can rank and `expose` can make an output. The graph inputs stay as they are (the
 * runner feeds `use_cache_branch = false` and an empty past).
 *
 * @module
 */
import { concat, encodeLen, encodeString, fields, LEN, text, type WireField } from "./_wire.ts";
import { OnnxFormatError } from "./model_proto.ts";

// onnx.proto field numbers: ModelProto.graph; GraphProto.node/initializer/output/value_info/
// sparse_initializer; NodeProto.input/output/name/op_type/attribute; AttributeProto.name/g.
const MODEL_GRAPH = 7;
const GRAPH_NODE = 1, GRAPH_INITIALIZER = 5, GRAPH_OUTPUT = 12, GRAPH_VALUE_INFO = 13;
const GRAPH_SPARSE_INITIALIZER = 15;
const NODE_INPUT = 1, NODE_OUTPUT = 2, NODE_NAME = 3, NODE_OP_TYPE = 4, NODE_ATTRIBUTE = 5;
const ATTR_NAME = 1, ATTR_GRAPH = 6;
const VALUE_NAME = 1;

/** The input that selects the branch of a merged decoder. */
export const USE_CACHE_BRANCH = "use_cache_branch";

interface IfNode {
  field: WireField;
  outputs: string[];
  elseBranch: WireField;
}

function findCacheIf(bytes: Uint8Array, graph: WireField): IfNode | undefined {
  for (const f of fields(bytes, graph.valueStart, graph.end)) {
    if (f.field !== GRAPH_NODE || f.wireType !== LEN) continue;
    let op = "", firstInput: string | undefined;
    const outputs: string[] = [];
    let elseBranch: WireField | undefined;
    for (const n of fields(bytes, f.valueStart, f.end)) {
      if (n.wireType !== LEN) continue;
      if (n.field === NODE_OP_TYPE) op = text(bytes, n);
      else if (n.field === NODE_INPUT) firstInput ??= text(bytes, n);
      else if (n.field === NODE_OUTPUT) outputs.push(text(bytes, n));
      else if (n.field === NODE_ATTRIBUTE) {
        let name = "";
        let g: WireField | undefined;
        for (const a of fields(bytes, n.valueStart, n.end)) {
          if (a.field === ATTR_NAME && a.wireType === LEN) name = text(bytes, a);
          if (a.field === ATTR_GRAPH && a.wireType === LEN) g = a;
        }
        if (name === "else_branch") elseBranch = g;
      }
    }
    if (op === "If" && firstInput === USE_CACHE_BRANCH) {
      if (!elseBranch) throw new OnnxFormatError("the If on use_cache_branch has no else_branch");
      return { field: f, outputs, elseBranch };
    }
  }
  return undefined;
}

/**
 * The model with its `If(use_cache_branch)` replaced by the `else_branch` (no cache), or
 * `undefined` when the model is not a merged decoder. The branch's nodes take the `If`'s place
 * (so the node order stays topological), its initializers and value_info join the main graph,
 * and an `Identity` renames each branch output to the `If` output it stood for. Every other
 * byte of the model is kept.
 *
 * @throws {OnnxFormatError} for a model whose graph cannot be read
 */
export function inlineNoCacheBranch(bytes: Uint8Array): Uint8Array | undefined {
  const graphs = [...fields(bytes)].filter((f) => f.field === MODEL_GRAPH && f.wireType === LEN);
  if (graphs.length !== 1) return undefined;
  const g = graphs[0];
  const found = findCacheIf(bytes, g);
  if (!found) return undefined;
  const branch = found.elseBranch;
  const nodes: Uint8Array[] = [];
  const extras: Uint8Array[] = [];
  const branchOutputs: string[] = [];
  for (const f of fields(bytes, branch.valueStart, branch.end)) {
    if (f.wireType !== LEN) continue;
    const raw = bytes.subarray(f.start, f.end);
    if (f.field === GRAPH_NODE) nodes.push(raw);
    else if (
      f.field === GRAPH_INITIALIZER || f.field === GRAPH_VALUE_INFO ||
      f.field === GRAPH_SPARSE_INITIALIZER
    ) extras.push(raw);
    else if (f.field === GRAPH_OUTPUT) {
      for (const v of fields(bytes, f.valueStart, f.end)) {
        if (v.field === VALUE_NAME && v.wireType === LEN) branchOutputs.push(text(bytes, v));
      }
    }
  }
  if (branchOutputs.length !== found.outputs.length) {
    throw new OnnxFormatError(
      `the If on use_cache_branch has ${found.outputs.length} outputs but its else_branch ` +
        `${branchOutputs.length}`,
    );
  }
  found.outputs.forEach((out, j) => {
    if (out === branchOutputs[j] || out === "") return;
    nodes.push(encodeLen(
      GRAPH_NODE,
      concat([
        encodeString(NODE_INPUT, branchOutputs[j]),
        encodeString(NODE_OUTPUT, out),
        encodeString(NODE_NAME, `knnlm_inline/${out}`),
        encodeString(NODE_OP_TYPE, "Identity"),
      ]),
    ));
  });
  const graph = concat([
    bytes.subarray(g.valueStart, found.field.start),
    ...nodes,
    bytes.subarray(found.field.end, g.end),
    ...extras,
  ]);
  return concat([bytes.subarray(0, g.start), encodeLen(MODEL_GRAPH, graph), bytes.subarray(g.end)]);
}
