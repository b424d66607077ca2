/**
 * Reads the parts of an ONNX `ModelProto` that the adapter needs (graph inputs, outputs,
 * value_info, nodes, initializer names) straight from the protobuf wire format, and edits
 * the graph's outputs by splicing bytes, so everything else in the file, including fields
 * this reader does not know, is kept exactly.
 *
 * Field numbers are those of the public onnx.proto (ModelProto, GraphProto, NodeProto,
 * ValueInfoProto, TypeProto, TensorShapeProto, TensorProto).
 *
 * @module
 */
import {
  concat,
  encodeLen,
  encodeString,
  encodeVarint,
  fields,
  LEN,
  text,
  VARINT,
  type WireField,
} from "./_wire.ts";

// ModelProto
const MODEL_IR_VERSION = 1, MODEL_PRODUCER_NAME = 2, MODEL_PRODUCER_VERSION = 3, MODEL_GRAPH = 7;
const MODEL_OPSET_IMPORT = 8;
// OperatorSetIdProto
const OPSET_DOMAIN = 1, OPSET_VERSION = 2;
// GraphProto
const GRAPH_NODE = 1, GRAPH_NAME = 2, GRAPH_INITIALIZER = 5, GRAPH_INPUT = 11, GRAPH_OUTPUT = 12;
const GRAPH_VALUE_INFO = 13;
// NodeProto
const NODE_INPUT = 1, NODE_OUTPUT = 2, NODE_NAME = 3, NODE_OP_TYPE = 4, NODE_DOMAIN = 7;
// ValueInfoProto
const VALUE_NAME = 1, VALUE_TYPE = 2;
// TypeProto / TypeProto.Tensor / TensorShapeProto / TensorShapeProto.Dimension
const TYPE_TENSOR = 1, TENSOR_ELEM_TYPE = 1, TENSOR_SHAPE = 2, SHAPE_DIM = 1;
const DIM_VALUE = 1, DIM_PARAM = 2;
// TensorProto
const INIT_NAME = 8, INIT_DATA_LOCATION = 14, DATA_LOCATION_EXTERNAL = 1;

/** ONNX `TensorProto.DataType` code → name as used by onnxruntime (`float32`, `int64`, …). */
export const ELEM_TYPE_NAMES: Readonly<Record<number, string>> = {
  1: "float32",
  2: "uint8",
  3: "int8",
  4: "uint16",
  5: "int16",
  6: "int32",
  7: "int64",
  8: "string",
  9: "bool",
  10: "float16",
  11: "float64",
  12: "uint32",
  13: "uint64",
  14: "complex64",
  15: "complex128",
  16: "bfloat16",
  17: "float8e4m3fn",
  18: "float8e4m3fnuz",
  19: "float8e5m2",
  20: "float8e5m2fnuz",
  21: "uint4",
  22: "int4",
  23: "float4e2m1",
};

/** A tensor type: element type and shape (`number` fixed, `string` symbolic, `null` unknown). */
export interface TensorType {
  /** ONNX element type code (1 = float32, 7 = int64, 10 = float16, …). */
  elemType: number;
  /** Element type name, e.g. `float32`; `type<N>` for codes this reader does not name. */
  elemTypeName: string;
  /** Dimensions, or `null` when the shape is not recorded. */
  shape: (number | string | null)[] | null;
}

/** A graph input, output or value_info entry. */
export interface ValueInfo {
  /** Tensor name. */
  name: string;
  /** Tensor type, or `null` when absent or not a tensor. */
  type: TensorType | null;
  /** Raw bytes of the `TypeProto`, to copy into a new output unchanged (empty if absent). */
  typeBytes: Uint8Array;
}

/** A node of the main graph. */
export interface GraphNode {
  /** Node name (may be empty). */
  name: string;
  /** Operator, e.g. `LayerNormalization`, `MatMul`. */
  opType: string;
  /** Operator domain; `""` is the default ONNX domain. */
  domain: string;
  /** Input tensor names (`""` for an omitted optional input). */
  inputs: string[];
  /** Output tensor names. */
  outputs: string[];
}

/** What the adapter reads from an ONNX model. */
export interface OnnxModel {
  /** ONNX IR version. */
  irVersion: number;
  /** Producer, e.g. `pytorch 1.13.0`. */
  producer: string;
  /** Operator set imports. */
  opsets: { domain: string; version: number }[];
  /** Graph name. */
  graphName: string;
  /** Graph inputs that are not initializers (the values a caller must or may feed). */
  inputs: ValueInfo[];
  /** Graph outputs. */
  outputs: ValueInfo[];
  /** Intermediate tensor types recorded by the exporter or shape inference. */
  valueInfo: Map<string, ValueInfo>;
  /** Nodes of the main graph in file (topological) order. */
  nodes: GraphNode[];
  /** Names of initializers (weights). */
  initializers: Set<string>;
  /** Whether some initializer keeps its data in an external file. */
  hasExternalData: boolean;
}

/** Thrown when bytes are not an ONNX model this reader understands. */
export class OnnxFormatError extends Error {
  /** @param message what is wrong, prefixed by the caller with the file path */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "OnnxFormatError";
  }
}

function readTensorType(buf: Uint8Array, type: WireField): TensorType | null {
  for (const t of fields(buf, type.valueStart, type.end)) {
    if (t.field !== TYPE_TENSOR || t.wireType !== LEN) continue;
    let elemType = 0;
    let shape: (number | string | null)[] | null = null;
    for (const f of fields(buf, t.valueStart, t.end)) {
      if (f.field === TENSOR_ELEM_TYPE && f.wireType === VARINT) elemType = f.varint;
      if (f.field === TENSOR_SHAPE && f.wireType === LEN) {
        shape = [];
        for (const d of fields(buf, f.valueStart, f.end)) {
          if (d.field !== SHAPE_DIM || d.wireType !== LEN) continue;
          let dim: number | string | null = null;
          for (const v of fields(buf, d.valueStart, d.end)) {
            if (v.field === DIM_VALUE && v.wireType === VARINT) dim = v.varint;
            if (v.field === DIM_PARAM && v.wireType === LEN) dim = text(buf, v);
          }
          shape.push(dim);
        }
      }
    }
    return { elemType, elemTypeName: ELEM_TYPE_NAMES[elemType] ?? `type${elemType}`, shape };
  }
  return null;
}

function readValueInfo(buf: Uint8Array, vi: WireField): ValueInfo {
  let name = "";
  let type: TensorType | null = null;
  let typeBytes = new Uint8Array(0);
  for (const f of fields(buf, vi.valueStart, vi.end)) {
    if (f.field === VALUE_NAME && f.wireType === LEN) name = text(buf, f);
    if (f.field === VALUE_TYPE && f.wireType === LEN) {
      type = readTensorType(buf, f);
      typeBytes = buf.slice(f.valueStart, f.end);
    }
  }
  return { name, type, typeBytes };
}

function readNode(buf: Uint8Array, node: WireField): GraphNode {
  const n: GraphNode = { name: "", opType: "", domain: "", inputs: [], outputs: [] };
  for (const f of fields(buf, node.valueStart, node.end)) {
    if (f.wireType !== LEN) continue;
    if (f.field === NODE_INPUT) n.inputs.push(text(buf, f));
    else if (f.field === NODE_OUTPUT) n.outputs.push(text(buf, f));
    else if (f.field === NODE_NAME) n.name = text(buf, f);
    else if (f.field === NODE_OP_TYPE) n.opType = text(buf, f);
    else if (f.field === NODE_DOMAIN) n.domain = text(buf, f);
  }
  return n;
}

/** The top-level `graph` field(s) of a ModelProto. */
function graphFields(buf: Uint8Array): WireField[] {
  return [...fields(buf)].filter((f) => f.field === MODEL_GRAPH && f.wireType === LEN);
}

/**
 * Parses an ONNX model's structure (not its weights).
 *
 * @param bytes the serialized `ModelProto`
 * @throws {OnnxFormatError} when the bytes are not a protobuf message with a graph
 */
export function parseOnnxModel(bytes: Uint8Array): OnnxModel {
  const model: OnnxModel = {
    irVersion: 0,
    producer: "",
    opsets: [],
    graphName: "",
    inputs: [],
    outputs: [],
    valueInfo: new Map(),
    nodes: [],
    initializers: new Set(),
    hasExternalData: false,
  };
  let producerName = "", producerVersion = "";
  const graphs: WireField[] = [];
  const rawInputs: ValueInfo[] = [];
  try {
    for (const f of fields(bytes)) {
      if (f.field === MODEL_IR_VERSION && f.wireType === VARINT) model.irVersion = f.varint;
      else if (f.field === MODEL_PRODUCER_NAME && f.wireType === LEN) producerName = text(bytes, f);
      else if (f.field === MODEL_PRODUCER_VERSION && f.wireType === LEN) {
        producerVersion = text(bytes, f);
      } else if (f.field === MODEL_OPSET_IMPORT && f.wireType === LEN) {
        const op = { domain: "", version: 0 };
        for (const o of fields(bytes, f.valueStart, f.end)) {
          if (o.field === OPSET_DOMAIN && o.wireType === LEN) op.domain = text(bytes, o);
          if (o.field === OPSET_VERSION && o.wireType === VARINT) op.version = o.varint;
        }
        model.opsets.push(op);
      } else if (f.field === MODEL_GRAPH && f.wireType === LEN) graphs.push(f);
    }
    // Repeated occurrences of an embedded message merge; their repeated fields concatenate.
    for (const g of graphs) {
      for (const f of fields(bytes, g.valueStart, g.end)) {
        if (f.wireType !== LEN) continue;
        switch (f.field) {
          case GRAPH_NODE:
            model.nodes.push(readNode(bytes, f));
            break;
          case GRAPH_NAME:
            model.graphName = text(bytes, f);
            break;
          case GRAPH_INITIALIZER:
            for (const t of fields(bytes, f.valueStart, f.end)) {
              if (t.field === INIT_NAME && t.wireType === LEN) {
                model.initializers.add(text(bytes, t));
              }
              if (t.field === INIT_DATA_LOCATION && t.varint === DATA_LOCATION_EXTERNAL) {
                model.hasExternalData = true;
              }
            }
            break;
          case GRAPH_INPUT:
            rawInputs.push(readValueInfo(bytes, f));
            break;
          case GRAPH_OUTPUT:
            model.outputs.push(readValueInfo(bytes, f));
            break;
          case GRAPH_VALUE_INFO: {
            const vi = readValueInfo(bytes, f);
            model.valueInfo.set(vi.name, vi);
            break;
          }
        }
      }
    }
  } catch (e) {
    throw new OnnxFormatError(`not an ONNX model: ${(e as Error).message}`, { cause: e });
  }
  if (graphs.length === 0) throw new OnnxFormatError("not an ONNX model: no graph (field 7)");
  model.producer = [producerName, producerVersion].filter(Boolean).join(" ");
  // IR < 4 lists initializers among the inputs; those have defaults and are not fed.
  model.inputs = rawInputs.filter((i) => !model.initializers.has(i.name));
  return model;
}

/** A graph output to add: a tensor name and, optionally, its `TypeProto` bytes. */
export interface NewOutput {
  /** Tensor name (a node output of the main graph). */
  name: string;
  /** Serialized `TypeProto`; omitted or empty leaves the type for the runtime to infer. */
  typeBytes?: Uint8Array;
}

/**
 * Rewrites the main graph's outputs: keeps the existing outputs for which `keep` returns
 * true (all by default), then appends `add`. Every other byte of the model is copied
 * unchanged; only the graph field's length prefix is re-encoded.
 *
 * @returns the new serialized model
 */
export function rewriteGraphOutputs(
  bytes: Uint8Array,
  options: { keep?: (name: string) => boolean; add?: readonly NewOutput[] },
): Uint8Array {
  const graphs = graphFields(bytes);
  if (graphs.length !== 1) {
    throw new OnnxFormatError(`expected one graph field in the model, found ${graphs.length}`);
  }
  const g = graphs[0];
  const keep = options.keep ?? (() => true);
  // Graph payload with dropped outputs cut out, copied in slices.
  const parts: Uint8Array[] = [];
  let copied = g.valueStart;
  for (const f of fields(bytes, g.valueStart, g.end)) {
    if (f.field === GRAPH_OUTPUT && f.wireType === LEN && !keep(readValueInfo(bytes, f).name)) {
      parts.push(bytes.subarray(copied, f.start));
      copied = f.end;
    }
  }
  parts.push(bytes.subarray(copied, g.end));
  for (const out of options.add ?? []) {
    const vi = [encodeString(VALUE_NAME, out.name)];
    if (out.typeBytes && out.typeBytes.length) vi.push(encodeLen(VALUE_TYPE, out.typeBytes));
    parts.push(encodeLen(GRAPH_OUTPUT, concat(vi)));
  }
  const graph = concat(parts);
  return concat([
    bytes.subarray(0, g.start),
    encodeVarint(MODEL_GRAPH * 8 + LEN),
    encodeVarint(graph.length),
    graph,
    bytes.subarray(g.end),
  ]);
}

/**
 * Encodes a `TypeProto` for a tensor (element type code and optional shape), for adding an
 * output whose type the model does not record.
 */
export function encodeTensorType(elemType: number, shape?: (number | string | null)[]): Uint8Array {
  const tensor = [concat([encodeVarint(TENSOR_ELEM_TYPE * 8 + VARINT), encodeVarint(elemType)])];
  if (shape) {
    const dims = shape.map((d) => {
      const dim = d === null
        ? new Uint8Array(0)
        : typeof d === "number"
        ? concat([encodeVarint(DIM_VALUE * 8 + VARINT), encodeVarint(d)])
        : encodeString(DIM_PARAM, d);
      return encodeLen(SHAPE_DIM, dim);
    });
    tensor.push(encodeLen(TENSOR_SHAPE, concat(dims)));
  }
  return encodeLen(TYPE_TENSOR, concat(tensor));
}
