/**
 * The toolkit's cache root: `$KNNLM_CACHE_DIR`, else `$XDG_CACHE_HOME/knnlm`, else
 * `~/.cache/knnlm` (compiled shims, edited ONNX models, encoded corpora live below it).
 */
import { join } from "node:path";

/** The cache root directory (not created here). */
export function cacheRoot(): string {
  const env = (k: string) => Deno.env.get(k) || undefined;
  return env("KNNLM_CACHE_DIR") ??
    (env("XDG_CACHE_HOME") ? join(env("XDG_CACHE_HOME")!, "knnlm") : undefined) ??
    join(env("HOME") ?? Deno.cwd(), ".cache", "knnlm");
}
