/**
 * The only importer of onnxruntime-node. The specifier is fully qualified and pinned (no import
 * map), so the toolkit also works when a script imports it by URL: Deno applies no `deno.json`
 * to remote modules. {@linkcode ONNXRUNTIME_NODE_VERSION} in `lib/core/version.ts` names the
 * same version (a test checks that the loaded runtime reports it).
 *
 * Deno has a native `Float16Array`. onnxruntime-common then maps `float16` tensors to it, and
 * the native binding rejects them ("float16 input tensors fail"). The mapping is decided once,
 * lazily, by the first `Tensor` construction, so we hide `globalThis.Float16Array` for exactly
 * that construction: float16 tensors then hold raw IEEE half bits in a `Uint16Array`, which
 * the binding accepts, while the rest of the program keeps its `Float16Array`.
 *
 * @module
 */
// An import map would break loading by URL (see above), hence the inline specifier.
// deno-lint-ignore no-import-prefix
import * as ort from "npm:onnxruntime-node@1.30.0";

const g = globalThis as { Float16Array?: unknown };
const saved = Object.getOwnPropertyDescriptor(globalThis, "Float16Array");
if (saved) delete g.Float16Array;
try {
  new ort.Tensor("float32", new Float32Array(1), [1]);
} finally {
  if (saved) Object.defineProperty(globalThis, "Float16Array", saved);
}

export { ort };
