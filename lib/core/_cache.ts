import { join } from "node:path";

/**
 * The toolkit's cache root: `$KNNLM_CACHE_DIR`, else `$XDG_CACHE_HOME/knnlm`, else
 * `~/.cache/knnlm`. Edited ONNX models, compiled FAISS shims and (when the toolkit is imported
 * by URL) the bundled model live in sub-folders of it. Reading it needs `--allow-env`.
 */
export function cacheRoot(): string {
  const env = (k: string) => Deno.env.get(k) || undefined;
  const xdg = env("XDG_CACHE_HOME");
  return env("KNNLM_CACHE_DIR") ?? (xdg ? join(xdg, "knnlm") : undefined) ??
    join(env("HOME") ?? Deno.cwd(), ".cache", "knnlm");
}
