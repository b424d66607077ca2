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

/**
 * Version of `npm:onnxruntime-node` that `lib/model/_ort.ts` imports (its specifier is pinned
 * in that one import; `tests/url_import_test.ts` checks the two agree).
 */
export const ONNXRUNTIME_NODE_VERSION = "1.30.0";

/** Versions of the toolkit, Deno, ONNX Runtime and FAISS (as far as they are known). */
export function versions(extra: Record<string, string> = {}): Record<string, string> {
  return {
    knnlm: TOOLKIT_VERSION,
    deno: Deno.version.deno,
    onnxruntime: ONNXRUNTIME_NODE_VERSION,
    ...extra,
  };
}
