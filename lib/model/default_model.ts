/**
 * The model files shipped with the toolkit (`models/byte_gpt.onnx`, the default `model`),
 * wherever the toolkit was loaded from.
 *
 * - From a checkout, or a `deno compile`d executable (whose `--include`d files sit on a
 *   `file:` URL), the model is the file beside the code.
 * - Imported by URL (`import … from "https://host/knnlm/mod.ts"`), the toolkit cannot read its
 *   own folder, so the model is fetched once from beside the code into the cache
 *   (`<cache>/models/<sha256[0:16]>/byte_gpt.onnx`), checked against the sha256 recorded in
 *   {@linkcode BUNDLED_MODELS}, written to a temporary file and renamed into place; later runs
 *   read the cached copy without touching the network.
 *
 * @module
 */

import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { writeFileAtomic } from "../core/_atomic.ts";
import { cacheRoot } from "../core/_cache.ts";
import { sha256File, sha256Hex } from "../core/_hash.ts";
import { KnnError } from "../core/errors.ts";

/**
 * sha256 of each model file shipped with the toolkit, by path relative to the toolkit's root.
 * A download whose sha256 differs is refused; `tests/default_model_test.ts` recomputes these
 * from the files, so changing a model without updating its hash here fails the tests.
 */
export const BUNDLED_MODELS: Readonly<Record<string, string>> = {
  "models/byte_gpt.onnx": "b1506602554432a0b548f567de496890ec944c7943edda1de95ebeb5c5c38357",
};

// The toolkit's root (the folder holding mod.ts): this file is lib/model/default_model.ts.
const TOOLKIT_ROOT = new URL("../../", import.meta.url);

/** Where the toolkit and the cache are; both default to the real ones (tests override them). */
export interface BundledModelOptions {
  /** The toolkit's root URL (ending in `/`). Default: where this module was loaded from. */
  toolkitUrl?: string | URL;
  /**
   * Cache root. Default: `$KNNLM_CACHE_DIR`, else `$XDG_CACHE_HOME/knnlm`, else
   * `~/.cache/knnlm`.
   */
  cacheDir?: string;
}

/**
 * The local path of a shipped model, without any I/O (configuration loading is synchronous):
 * the file beside the code when the toolkit is on a `file:` URL, else its place in the cache,
 * which {@linkcode ensureModelFile} fills.
 *
 * @param relative path relative to the toolkit's root, e.g. `"models/byte_gpt.onnx"`
 * @throws {KnnError} `E_CONFIG` when the toolkit is remote and `relative` is not one of
 *   {@linkcode BUNDLED_MODELS} (nothing else can be fetched with a checked hash)
 */
export function bundledModelPath(relative: string, opts: BundledModelOptions = {}): string {
  const root = new URL(opts.toolkitUrl ?? TOOLKIT_ROOT);
  if (root.protocol === "file:") return fileURLToPath(new URL(relative, root));
  const sha256 = BUNDLED_MODELS[relative];
  if (!sha256) {
    throw new KnnError(
      "E_CONFIG",
      `model '${relative}': the toolkit was loaded from ${root.href}, and only its bundled ` +
        `models (${Object.keys(BUNDLED_MODELS).join(", ")}) can be fetched from there`,
      { key: "model", hint: "give the model as a local file path" },
    );
  }
  return join(opts.cacheDir ?? cacheRoot(), "models", sha256.slice(0, 16), basename(relative));
}

/**
 * Makes sure `path` holds its model before it is read. For a path that
 * {@linkcode bundledModelPath} gave for a remote toolkit, a missing cached copy, or one whose
 * sha256 is wrong, is (re)fetched from beside the code. Any other path is left alone, without
 * I/O, so local files and local toolkits never touch the network.
 *
 * @throws {KnnError} `E_NOT_FOUND` (HTTP 404), `E_IO` (offline, other HTTP errors),
 *   `E_PERMISSION` (no `--allow-net`) or `E_CORRUPT` (sha256 differs), each naming the URL
 */
export async function ensureModelFile(
  path: string,
  opts: BundledModelOptions & { signal?: AbortSignal } = {},
): Promise<void> {
  const root = new URL(opts.toolkitUrl ?? TOOLKIT_ROOT);
  if (root.protocol === "file:") return;
  for (const [relative, sha256] of Object.entries(BUNDLED_MODELS)) {
    if (basename(path) !== basename(relative)) continue;
    const cached = bundledModelPath(relative, opts);
    if (resolve(path) !== resolve(cached)) continue;
    if (await sha256File(cached).catch(() => undefined) === sha256) return;
    await download(new URL(relative, root), cached, sha256, opts.signal);
    return;
  }
}

async function download(url: URL, path: string, sha256: string, signal?: AbortSignal) {
  const hint = `the toolkit was imported by URL, so it fetches its default model once into ` +
    `${dirname(path)}; or download ${url.href} yourself and give its path as the model`;
  const fail = (
    code: "E_IO" | "E_NOT_FOUND" | "E_PERMISSION" | "E_CORRUPT",
    why: string,
    e?: unknown,
  ) => new KnnError(code, `${url.href}: ${why}`, { path, hint, cause: e });
  let bytes: Uint8Array;
  try {
    const res = await fetch(url, { signal });
    if (!res.ok) {
      await res.body?.cancel();
      throw fail(
        res.status === 404 ? "E_NOT_FOUND" : "E_IO",
        `cannot fetch the bundled model (HTTP ${res.status} ${res.statusText})`,
      );
    }
    bytes = new Uint8Array(await res.arrayBuffer());
  } catch (e) {
    if (e instanceof KnnError) throw e;
    if (signal?.aborted) throw signal.reason;
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      throw fail("E_PERMISSION", `fetching the bundled model needs --allow-net=${url.host}`, e);
    }
    throw fail("E_IO", `cannot fetch the bundled model (${(e as Error).message})`, e);
  }
  const got = sha256Hex(bytes);
  if (got !== sha256) {
    throw fail(
      "E_CORRUPT",
      `sha256 ${got.slice(0, 16)}… of the ${bytes.length} bytes fetched differs from ` +
        `${sha256.slice(0, 16)}… recorded in lib/model/default_model.ts; not using it`,
    );
  }
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    await writeFileAtomic(path, bytes);
  } catch (e) {
    const denied = e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied;
    throw new KnnError(
      denied ? "E_PERMISSION" : "E_IO",
      `${path}: cannot cache the bundled model fetched from ${url.href} (${(e as Error).message})`,
      { path, hint: "set KNNLM_CACHE_DIR to a writable folder (and allow writing it)", cause: e },
    );
  }
}
