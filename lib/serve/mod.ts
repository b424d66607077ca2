/**
 * The serve layer: `knn serve` as a library. {@linkcode serve} starts a `Deno.serve` server
 * over one open datastore and its model with a small JSON API — `GET /v1/info`,
 * `POST /v1/next` (p_LM, p_kNN, the mix and the neighbours after a context) and
 * `POST /v1/score` (per-token log-probabilities and perplexities, exactly as `knn eval`) —
 * and an explorer page embedded in the module graph. {@linkcode KnnApi} is the same API
 * without HTTP. The request and response types are in `api.ts`.
 *
 * @example
 * ```ts ignore
 * import { serve } from "./mod.ts";
 * const server = await serve({ datastore: "data/default", port: 8080 });
 * console.log(`open ${server.url}`); // http://127.0.0.1:8080/
 * Deno.addSignalListener("SIGINT", () => server.shutdown()); // drains, then closes
 * await server.finished;
 * ```
 *
 * @module
 */

export {
  DEFAULT_LIMITS,
  type ErrorResponse,
  type InfoResponse,
  type NeighbourContext,
  type NextRequest,
  type NextResponse,
  type ScoreRequest,
  type ScoreResponse,
  type ServeDefaults,
  type ServeLimits,
  type TokenProb,
} from "./api.ts";
export { KnnApi, type KnnApiOptions } from "./knn_api.ts";
export { type KnnServer, serve, type ServeOptions } from "./server.ts";
// Types of the layers below that this layer's API mentions.
export type * from "../query/mod.ts";
