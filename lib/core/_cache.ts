/**
 * The toolkit's cache directory, shared by every cache it keeps (compiled FAISS shims under
 * `faiss-shim/`, edited ONNX models under `onnx/`): `$KNNLM_CACHE_DIR`, else
 * `$XDG_CACHE_HOME/knnlm`, else `~/.cache/knnlm`. An empty variable counts as unset.
 *
 * @module
 */

import { homedir, tmpdir } from "node:os";
import { join } from "node:path";

function env(name: string): string | undefined {
  const v = Deno.env.get(name);
  return v === undefined || v === "" ? undefined : v;
}

/**
 * The cache root. Without `$HOME`, the home directory comes from the user database; without
 * that either (a bare container user), the system temp directory stands in for it.
 */
export function cacheRoot(): string {
  const explicit = env("KNNLM_CACHE_DIR");
  if (explicit) return explicit;
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "knnlm");
  let home = env("HOME");
  if (!home) {
    try {
      home = homedir() || undefined;
    } catch {
      home = undefined;
    }
  }
  return join(home ?? tmpdir(), ".cache", "knnlm");
}
