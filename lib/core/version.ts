/**
 * Versions recorded in `datastore.json`, so a datastore says what made it.
 *
 * @module
 */

import denoJson from "../../deno.json" with { type: "json" };

/** Package name. */
export const TOOLKIT_NAME: string = denoJson.name;
/** Package version. */
export const TOOLKIT_VERSION: string = denoJson.version;

/** Versions of the toolkit, Deno, ONNX Runtime and FAISS (as far as they are known). */
export function versions(extra: Record<string, string> = {}): Record<string, string> {
  return {
    knnlm: TOOLKIT_VERSION,
    deno: Deno.version.deno,
    onnxruntime: denoJson.imports["onnxruntime-node"].replace(/^npm:onnxruntime-node@/, ""),
    ...extra,
  };
}
