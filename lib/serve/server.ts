/**
 * `serve`: an HTTP server (`Deno.serve`) over one {@linkcode KnnApi}: the JSON API under
 * `/v1/` and the explorer page, whose three files are embedded in the module graph (nothing
 * is read from disk per request, and no request names a file).
 *
 * Safe by default: it binds 127.0.0.1; a loopback server answers only requests addressed to a
 * loopback name (so a web page cannot reach it through DNS rebinding); bodies, their transfer
 * time and every request field are bounded; API posts must be `application/json` (which a
 * cross-site form cannot send). Aborting `signal`, or `shutdown()`, drains: new requests get
 * 503, the requests in flight finish, then the server closes, then the datastore and model.
 *
 * @module
 */

import { KnnError } from "../core/mod.ts";
import type { ErrorResponse, ServeLimits } from "./api.ts";
import { KnnApi, type KnnApiOptions } from "./knn_api.ts";
import { ASSETS } from "./_assets.ts";

/** Options of {@linkcode serve}: where to listen, plus the {@linkcode KnnApiOptions}. */
export interface ServeOptions extends KnnApiOptions {
  /** Interface to bind. Default `"127.0.0.1"` (this machine only). */
  hostname?: string;
  /** Port. Default 8080; 0 picks a free one (see {@linkcode KnnServer.port}). */
  port?: number;
  /** Aborting it drains the server: see {@linkcode KnnServer.shutdown}. */
  signal?: AbortSignal;
  /** Called with each request that failed on the server's side (a 5xx answer). */
  onError?: (error: unknown, request: Request) => void;
}

/** A running server. */
export interface KnnServer extends AsyncDisposable {
  /** The page's address, e.g. `http://127.0.0.1:8080/`. */
  readonly url: string;
  /** The bound interface. */
  readonly hostname: string;
  /** The bound port. */
  readonly port: number;
  /** The API it serves (its datastore and model). */
  readonly api: KnnApi;
  /** Requests being answered now. */
  readonly inFlight: number;
  /** Settles once the server has shut down and the datastore and model are closed. */
  readonly finished: Promise<void>;
  /**
   * Drains: answers new requests with 503, waits until every request in flight is answered,
   * stops listening, then closes the datastore and model; resolves with {@linkcode finished}.
   * A connection that a client keeps open after its answer (idle, or stalled mid-body) is
   * waited for one second at most.
   */
  shutdown(): Promise<void>;
}

/** An answer other than 200, with the field (or header) at fault. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
    /** For 405: the methods the path takes. */
    readonly allow?: string,
  ) {
    super(message);
  }
}

const JSON_TYPE = "application/json; charset=utf-8";
/** How long a shutdown waits for connections to close once every handler has answered. */
const DRAIN_GRACE_MS = 1000;
const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);
/** The page may load only its own files and talk only to this server. */
const PAGE_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": JSON_TYPE, "cache-control": "no-store", ...PAGE_HEADERS },
  });
}

function errorResponse(e: HttpError): Response {
  const body: ErrorResponse = { error: { status: e.status, message: e.message } };
  if (e.field !== undefined) body.error.field = e.field;
  const res = json(e.status, body);
  if (e.allow) res.headers.set("allow", e.allow);
  // A body left unread (too large, too slow) must not keep its connection: close it.
  if (e.status === 408 || e.status === 413) res.headers.set("connection", "close");
  return res;
}

/** The hostname of a Host header (`[::1]:8080` → `[::1]`), lower-cased. */
function hostOf(header: string | null): string | null {
  if (!header) return null;
  try {
    return new URL(`http://${header}`).hostname.toLowerCase();
  } catch {
    return null;
  }
}

/**
 * Reads a JSON body of at most `maxBodyBytes`, sent within `bodyTimeoutMs`. Errors name the
 * body: 413 too large, 408 too slow, 400 not UTF-8 or not JSON.
 */
async function readJson(req: Request, limits: ServeLimits): Promise<unknown> {
  const max = limits.maxBodyBytes;
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > max) {
    throw new HttpError(413, `body: ${declared} bytes; at most ${max} are accepted`, "body");
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new HttpError(408, `body: not received within ${limits.bodyTimeoutMs} ms`, "body"),
          ),
        limits.bodyTimeoutMs,
      );
    });
    try {
      for (;;) {
        const { done, value } = await Promise.race([reader.read(), timeout]);
        if (done) break;
        size += value.byteLength;
        if (size > max) {
          throw new HttpError(
            413,
            `body: more than ${max} bytes; at most ${max} are accepted`,
            "body",
          );
        }
        chunks.push(value);
      }
    } catch (e) {
      reader.cancel().catch(() => {});
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new HttpError(400, "body: not valid UTF-8", "body");
  }
  if (text.trim() === "") throw new HttpError(400, "body: empty; expected a JSON object", "body");
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `body: malformed JSON (${(e as Error).message})`, "body");
  }
}

type Route = {
  method: "GET" | "POST";
  run: (req: Request, api: KnnApi) => Promise<Response> | Response;
};

/**
 * Starts `knn serve`: takes the port, opens the datastore and model, and answers.
 *
 * @example
 * ```ts ignore
 * import { serve } from "./mod.ts";
 * await using server = await serve({ datastore: "data/default", port: 0 });
 * const res = await fetch(new URL("v1/next", server.url), {
 *   method: "POST",
 *   headers: { "content-type": "application/json" },
 *   body: JSON.stringify({ text: "The jury said", k: 64, lambda: 0.25 }),
 * });
 * console.log((await res.json()).top.mix[0]); // { id: 32, label: " ", p: 0.41 }
 * ```
 *
 * @throws {KnnError} `E_IO` when the address is in use, `E_PERMISSION` when binding is not
 *   allowed; the errors of {@linkcode KnnApi.open}
 */
export async function serve(opts: ServeOptions): Promise<KnnServer> {
  const hostname = opts.hostname ?? "127.0.0.1";
  const port = opts.port ?? 8080;
  const loopbackOnly = LOOPBACK.has(hostname);
  const inFlight = new Set<Promise<Response>>();
  let draining = false;
  // The port is taken first, so a busy port fails before the model is loaded; requests that
  // come in meanwhile wait for the API.
  const opened = Promise.withResolvers<KnnApi>();
  opened.promise.catch(() => {});

  const routes: Record<string, Route> = {
    "/v1/info": { method: "GET", run: (_req, api) => json(200, api.info()) },
    "/v1/next": {
      method: "POST",
      run: async (req, api) => json(200, await api.next(await readJson(req, api.limits) as never)),
    },
    "/v1/score": {
      method: "POST",
      run: async (req, api) => json(200, await api.score(await readJson(req, api.limits) as never)),
    },
  };

  async function answer(req: Request): Promise<Response> {
    try {
      if (draining) {
        const e = new HttpError(503, "the server is shutting down");
        const res = errorResponse(e);
        res.headers.set("connection", "close");
        return res;
      }
      const url = new URL(req.url);
      if (loopbackOnly && !LOOPBACK.has(hostOf(req.headers.get("host")) ?? "")) {
        throw new HttpError(
          403,
          `host: this server answers only to 127.0.0.1 or localhost, not ${
            JSON.stringify(req.headers.get("host"))
          }`,
          "host",
        );
      }
      const asset = ASSETS.get(url.pathname);
      if (asset) {
        if (req.method !== "GET" && req.method !== "HEAD") {
          throw new HttpError(
            405,
            `${req.method} ${url.pathname}: use GET`,
            undefined,
            "GET, HEAD",
          );
        }
        return new Response(req.method === "HEAD" ? null : asset.body, {
          headers: { "content-type": asset.type, "cache-control": "no-cache", ...PAGE_HEADERS },
        });
      }
      const route = Object.hasOwn(routes, url.pathname) ? routes[url.pathname] : undefined;
      if (!route) {
        throw new HttpError(
          404,
          `${url.pathname}: not found; the API is GET /v1/info, POST /v1/next, POST /v1/score`,
        );
      }
      if (req.method !== route.method) {
        throw new HttpError(
          405,
          `${req.method} ${url.pathname}: use ${route.method}`,
          undefined,
          route.method,
        );
      }
      if (route.method === "POST") {
        const type = req.headers.get("content-type") ?? "";
        if (!/^application\/json\s*(;|$)/i.test(type)) {
          throw new HttpError(
            415,
            `content-type: expected application/json, found ${JSON.stringify(type)}`,
            "content-type",
          );
        }
      }
      return await route.run(req, await opened.promise);
    } catch (e) {
      if (e instanceof HttpError) return errorResponse(e);
      if (KnnError.is(e, "E_USAGE") && e.key) {
        return errorResponse(new HttpError(400, e.message, e.key));
      }
      opts.onError?.(e, req);
      return errorResponse(new HttpError(500, `internal error: ${(e as Error).message}`));
    }
  }

  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname, port, onListen() {} }, (req) => {
      const p = answer(req);
      inFlight.add(p);
      p.finally(() => inFlight.delete(p));
      return p;
    });
  } catch (e) {
    const where = `${hostname}:${port}`;
    if (e instanceof Deno.errors.AddrInUse) {
      throw new KnnError("E_IO", `${where}: address already in use`, {
        cause: e,
        hint: "choose another --port (0 picks a free one)",
      });
    }
    if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
      throw new KnnError("E_PERMISSION", `${where}: not allowed to listen here`, { cause: e });
    }
    throw new KnnError("E_IO", `${where}: cannot listen (${(e as Error).message})`, { cause: e });
  }
  let api: KnnApi;
  try {
    api = await KnnApi.open(opts);
  } catch (e) {
    opened.reject(e);
    await server.shutdown();
    throw e;
  }
  opened.resolve(api);
  const addr = server.addr;
  const shown = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;

  let closing: Promise<void> | undefined;
  const stopped = Promise.withResolvers<void>();
  const shutdown = () => {
    if (closing) return closing;
    closing = (async () => {
      // New requests get 503 from now on. The ones in flight finish first (one waiting for
      // its body within bodyTimeoutMs): Deno's graceful shutdown cuts off request bodies not
      // yet read, and FaissIndex refuses to close while a search is running.
      draining = true;
      while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
      const graceful = server.shutdown();
      // The answers are written at once. A connection still open after the grace period is
      // idle or a client that stopped sending mid-body (hyper waits for the rest of a body
      // nobody reads): it must not keep the server from stopping, and Deno has no call to
      // drop it once a graceful shutdown began, so it is left to close.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const grace = new Promise<void>((r) => timer = setTimeout(r, DRAIN_GRACE_MS));
      await Promise.race([graceful, grace]);
      clearTimeout(timer);
      api.close();
    })();
    closing.then(stopped.resolve, stopped.reject);
    return closing;
  };
  const onAbort = () => void shutdown();
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener("abort", onAbort, { once: true });
  // Should Deno close the server by itself, the API is closed all the same (a failure there
  // reaches the caller through `finished`).
  const closed = () => void shutdown().catch(() => {});
  server.finished.then(closed, closed);
  const finished = stopped.promise.finally(() =>
    opts.signal?.removeEventListener("abort", onAbort)
  );

  return {
    url: `http://${shown}:${addr.port}/`,
    hostname: addr.hostname,
    port: addr.port,
    api,
    get inFlight() {
      return inFlight.size;
    },
    finished,
    shutdown: () => shutdown(),
    [Symbol.asyncDispose]: () => shutdown(),
  };
}
