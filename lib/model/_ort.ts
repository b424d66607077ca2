/**
 * The only importer of onnxruntime-node.
 *
 * Deno has a native `Float16Array`. onnxruntime-common then maps `float16` tensors to it, and
 * the native binding rejects them ("float16 input tensors fail"). The mapping is decided once,
 * lazily, by the first `Tensor` construction, so we hide `globalThis.Float16Array` for exactly
 * that construction: float16 tensors then hold raw IEEE half bits in a `Uint16Array`, which
 * the binding accepts, while the rest of the program keeps its `Float16Array`.
 *
 * @module
 */
import * as ort from "onnxruntime-node";

const g = globalThis as { Float16Array?: unknown };
const saved = Object.getOwnPropertyDescriptor(globalThis, "Float16Array");
if (saved) delete g.Float16Array;
try {
  new ort.Tensor("float32", new Float32Array(1), [1]);
} finally {
  if (saved) Object.defineProperty(globalThis, "Float16Array", saved);
}

export { ort };
