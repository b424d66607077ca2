/**
 * A loopback HTTP server over a folder, as a static host would serve the toolkit: files with
 * the content types Deno expects for modules, 404 for anything else. It records each request
 * path so tests can count downloads.
 *
 * @module
 */

import { extname, join, normalize } from "node:path";

const TYPES: Record<string, string> = {
  ".ts": "application/typescript; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".onnx": "application/octet-stream",
};

/** A running server; `url` ends in `/` and maps to the served folder. */
export interface Served extends AsyncDisposable {
  /** Base URL, e.g. `http://127.0.0.1:41234/`. */
  url: string;
  /** Paths requested so far, in order (`/lib/core/mod.ts`, …). */
  requests: string[];
  /** Stops the server. */
  close(): Promise<void>;
}

/**
 * Serves `root` on 127.0.0.1 at a free port. `override` may answer a path itself (return a
 * Response) before the file lookup, e.g. to simulate a corrupted download.
 */
export function serveFolder(
  root: string,
  override?: (path: string) => Response | undefined,
): Served {
  const requests: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    requests.push(path);
    const special = override?.(path);
    if (special) return special;
    const file = normalize(join(root, path));
    if (!file.startsWith(normalize(root))) return new Response("outside root", { status: 403 });
    try {
      const body = await Deno.readFile(file);
      const type = TYPES[extname(file)] ?? "application/octet-stream";
      return new Response(body, { headers: { "content-type": type } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  const close = async () => {
    await server.shutdown();
  };
  return {
    url: `http://127.0.0.1:${server.addr.port}/`,
    requests,
    close,
    [Symbol.asyncDispose]: close,
  };
}
