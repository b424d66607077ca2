/**
 * Exposes intermediate tensors of an ONNX model as graph outputs, so any hidden state can be
 * the kNN-LM key. The edited model goes to a cache file keyed by the model's content and the
 * tensor names; the user's file is only read.
 *
 * @module
 */
import { cacheRoot } from "../core/_cache.ts";
import { sha256Hex } from "../core/_hash.ts";
import { join } from "node:path";
import { nearest } from "../core/_suggest.ts";
import { writeFileAtomic } from "../core/_atomic.ts";
import { readModelFile } from "./_files.ts";
import { ort } from "./_ort.ts";
import { parseModelAt } from "./inspect.ts";
import {
  ELEM_TYPE_NAMES,
  encodeTensorType,
  type NewOutput,
  type OnnxModel,
  rewriteGraphOutputs,
} from "./model_proto.ts";

/** Bump when the edit changes, so stale cache files are not reused. */
const EDIT_VERSION = 1;

/** Options for {@linkcode exposeTensors}. */
export interface ExposeOptions {
  /**
   * Directory for edited models. Default: `$KNNLM_CACHE_DIR/onnx`, else
   * `$XDG_CACHE_HOME/knnlm/onnx`, else `~/.cache/knnlm/onnx`.
   */
  cacheDir?: string;
}

/** Result of {@linkcode exposeTensors}. */
export interface ExposedModel {
  /** Model file to load: the original path when nothing had to be added, else a cache file. */
  path: string;
  /** Tensors added as outputs (empty when all were already outputs). */
  added: string[];
  /** Whether the cache file was written by this call (false: reused or not needed). */
  created: boolean;
}

/** The default cache directory for edited models: `onnx/` in the toolkit's cache root. */
export function defaultOnnxCacheDir(): string {
  return join(cacheRoot(), "onnx");
}

/**
 * Checks that `name` is a graph output or an intermediate tensor of the main graph.
 *
 * @returns `"output"` or `"intermediate"`
 * @throws Error naming the model path and listing the closest tensor names
 */
export function locateTensor(
  path: string,
  model: OnnxModel,
  name: string,
): "output" | "intermediate" {
  if (model.outputs.some((o) => o.name === name)) return "output";
  const produced = model.nodes.flatMap((n) => n.outputs).filter((o) => o !== "");
  if (produced.includes(name)) return "intermediate";
  const what = model.inputs.some((i) => i.name === name)
    ? "is a graph input, not a computed tensor"
    : model.initializers.has(name)
    ? "is a weight (initializer), not a computed tensor"
    : "no such tensor in the graph";
  const close = nearest(name, [...model.outputs.map((o) => o.name), ...produced], 5, true);
  throw new Error(
    `${path}: tensor "${name}": ${what}; closest names: ${close.map((c) => `"${c}"`).join(", ")} ` +
      `(run \`knn model inspect ${path}\` for key candidates)`,
  );
}

/** Element type code for an onnxruntime type name (`float32` → 1). */
function elemTypeCode(name: string): number | undefined {
  for (const [code, n] of Object.entries(ELEM_TYPE_NAMES)) if (n === name) return Number(code);
  return undefined;
}

/**
 * Types for new outputs: taken from the model's value_info when recorded, otherwise
 * inferred by loading the untyped edit in onnxruntime (which accepts outputs without a type)
 * and reading its output metadata, so the cached file is a valid ONNX model for other tools.
 */
async function typedOutputs(
  model: OnnxModel,
  bytes: Uint8Array,
  names: string[],
): Promise<NewOutput[]> {
  const out: NewOutput[] = names.map((name) => ({
    name,
    typeBytes: model.valueInfo.get(name)?.type ? model.valueInfo.get(name)!.typeBytes : undefined,
  }));
  const untyped = out.filter((o) => !o.typeBytes);
  if (untyped.length === 0) return out;
  const probe = rewriteGraphOutputs(bytes, { add: untyped });
  const session = await ort.InferenceSession.create(probe, { graphOptimizationLevel: "disabled" });
  try {
    for (const o of untyped) {
      const meta = session.outputMetadata.find((m) => m.name === o.name);
      if (!meta || !meta.isTensor) continue;
      const code = elemTypeCode(meta.type);
      if (code === undefined) continue;
      // ORT reports unknown dims as "" and symbolic ones by name.
      o.typeBytes = encodeTensorType(code, meta.shape.map((d) => (d === "" ? null : d)));
    }
  } finally {
    await session.release();
  }
  return out;
}

/**
 * Makes `tensors` graph outputs. Tensors that already are outputs need no edit; if all are,
 * the original path is returned. Otherwise the edited model (existing outputs kept, new ones
 * appended; every other byte unchanged) is written atomically to
 * `<cacheDir>/<sha256(model sha256 + tensor names)>.onnx` and reused on later calls.
 *
 * @param path ONNX model file (never modified)
 * @param tensors tensor names: graph outputs or outputs of any node of the main graph
 * @returns the path to load and what was added
 * @throws Error naming the path when the file is missing, not ONNX, stores weights as external
 *   data (not relocatable), or a tensor does not exist (listing close names)
 */
export async function exposeTensors(
  path: string,
  tensors: readonly string[],
  options: ExposeOptions = {},
): Promise<ExposedModel> {
  const bytes = await readModelFile(path);
  return await exposeInModel(path, bytes, parseModelAt(path, bytes), tensors, options);
}

/** {@linkcode exposeTensors} for a model already read and parsed (saves a second read). */
export async function exposeInModel(
  path: string,
  bytes: Uint8Array,
  model: OnnxModel,
  tensors: readonly string[],
  options: ExposeOptions = {},
): Promise<ExposedModel> {
  const added = [...new Set(tensors)].filter((t) =>
    locateTensor(path, model, t) === "intermediate"
  );
  if (added.length === 0) return { path, added, created: false };
  if (model.hasExternalData) {
    throw new Error(
      `${path}: the model keeps weights in external data files, so an edited copy cannot be ` +
        `cached elsewhere; re-export it with ${added.join(", ")} as graph output(s)`,
    );
  }
  const dir = options.cacheDir ?? defaultOnnxCacheDir();
  const key = sha256Hex(
    `${sha256Hex(bytes)}\n${JSON.stringify({ v: EDIT_VERSION, expose: added })}`,
  );
  const target = join(dir, `${key}.onnx`);
  try {
    if ((await Deno.stat(target)).size > 0) return { path: target, added, created: false };
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const edited = rewriteGraphOutputs(bytes, { add: await typedOutputs(model, bytes, added) });
  await Deno.mkdir(dir, { recursive: true });
  await writeFileAtomic(target, edited);
  return { path: target, added, created: true };
}
