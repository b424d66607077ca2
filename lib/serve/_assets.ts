/**
 * The explorer page's files, embedded as text imports: they travel in the module graph, so
 * they are there when the toolkit is imported by URL and inside a `deno compile` executable,
 * with no build step and no file read per request. Paths → content type and body.
 *
 * @module
 */

import indexHtml from "./assets/index.html" with { type: "text" };
import appJs from "./assets/app.js" with { type: "text" };
import styleCss from "./assets/style.css" with { type: "text" };

/** One embedded file. */
export interface Asset {
  /** Its Content-Type. */
  type: string;
  /** Its text. */
  body: string;
}

/** The only paths the server answers with a file. */
export const ASSETS: ReadonlyMap<string, Asset> = new Map([
  ["/", { type: "text/html; charset=utf-8", body: indexHtml }],
  ["/app.js", { type: "text/javascript; charset=utf-8", body: appJs }],
  ["/style.css", { type: "text/css; charset=utf-8", body: styleCss }],
]);
