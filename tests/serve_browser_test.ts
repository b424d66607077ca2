// The explorer page in a real browser: Debian's chromium driven by playwright-core. It types
// a text, clicks a token, moves λ, and checks that what the page shows is what the API says.
//
// Chromium comes from `deno task setup-test` (apt-get install chromium). The test builds a
// tiny datastore and screenshots the page into its temp dir. With KNNLM_SCREENSHOT=FILE
// (`deno task screenshot` sets docs/serve.png) it keeps the picture and uses the datastore
// KNNLM_SERVE_DATASTORE names (default data/default, built from the bundled model).
import assert from "node:assert/strict";
import { join } from "node:path";
// An import map would not reach scripts importing the toolkit by URL, hence inline and pinned.
// deno-lint-ignore no-import-prefix
import { chromium } from "npm:playwright-core@1.65.1";
import { type NextResponse, type ScoreResponse, serve } from "../lib/serve/mod.ts";
import { tempDir } from "./_tmp.ts";
import { buildTinyDatastore, wordText } from "./_tiny_datastore.ts";

const CHROMIUM = "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// The functions handed to page.evaluate run in the browser, not in Deno; this module-scoped
// declaration is all of the DOM they use (the project's type check has no DOM library).
interface PageElement {
  dataset: Record<string, string | undefined>;
  textContent: string | null;
  classList: { contains(name: string): boolean };
  querySelector(selector: string): PageElement | null;
  getAttribute(name: string): string | null;
}
declare const document: {
  getElementById(id: string): PageElement | null;
  querySelector(selector: string): PageElement | null;
  querySelectorAll(selector: string): Iterable<PageElement>;
};

/** The page's own formatting of a probability (app.js fmtP). */
function fmtP(p: number): string {
  if (p === 0) return "0";
  return p >= 0.001 ? p.toFixed(3) : p.toExponential(1);
}

Deno.test({
  name: "the page shows, for a clicked token, the distributions and neighbours the API returns",
  // playwright-core keeps timers and pipes to the browser alive between its calls.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    try {
      await Deno.stat(CHROMIUM);
    } catch {
      assert.fail(
        `${CHROMIUM} is missing: run \`deno task setup-test\` (apt-get install chromium)`,
      );
    }
    await using tmp = tempDir("knnlm_browser_");
    const shot = Deno.env.get("KNNLM_SCREENSHOT");
    const given = Deno.env.get("KNNLM_SERVE_DATASTORE") ?? (shot ? "data/default" : undefined);
    const dir = given ?? (await buildTinyDatastore(tmp.path)).dir;
    const text = given
      ? "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent " +
        "primary election produced no evidence that any irregularities took place."
      : wordText(80, 3);
    await using server = await serve({ datastore: dir, port: 0, defaults: { k: 32 } });
    const post = async <T>(path: string, body: unknown): Promise<T> => {
      const res = await fetch(new URL(path, server.url), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      assert.equal(res.status, 200);
      return await res.json() as T;
    };

    const profile = join(tmp.path, "profile");
    const browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: { width: 1380, height: 940 },
      timeout: 60_000,
    });
    try {
      const page = browser.pages()[0] ?? await browser.newPage();
      page.setDefaultTimeout(60_000);
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(String(e)));
      await page.goto(server.url);
      await page.fill("#text", text);
      await page.waitForFunction((t) => {
        const box = document.getElementById("tokens")!;
        return box.dataset.state === "ready" && box.textContent === t;
      }, text);

      const bytes = new TextEncoder().encode(text);
      const pos = text.lastIndexOf(given ? "election" : " a") + 2; // predicts a mid-word byte
      // What the page holds and shows for the clicked position, and the API's answer.
      const check = async (lambda: number) => {
        await page.waitForFunction(
          ([p, l]) => {
            const d = document.getElementById("details")!;
            return d.dataset.state === "ready" && d.dataset.pos === String(p) &&
              d.dataset.lambda === String(l);
          },
          [pos, lambda] as const,
        );
        const shown = await page.evaluate(() => {
          const dists: Record<string, { id: string; p: string; label: string; text: string }[]> =
            {};
          for (const d of ["lm", "knn", "mix"]) {
            dists[d] = [...document.querySelectorAll(`.dist[data-dist="${d}"] li`)].map((
              li,
            ) => ({
              id: li.dataset.id!,
              p: li.dataset.p!,
              label: li.dataset.label!,
              text: li.querySelector(".p")!.textContent!,
            }));
          }
          const neighbours = [...document.querySelectorAll(".neighbours li")].map((li) => ({
            rank: li.dataset.rank,
            row: li.dataset.row,
            distance: li.dataset.distance,
            id: li.dataset.id,
            mark: li.querySelector("mark")!.dataset.label,
            hit: li.querySelector("mark")!.classList.contains("hit"),
          }));
          const target = { ...document.getElementById("target")!.dataset };
          const gain = document.querySelector(".tok.selected")!.getAttribute("data-gain");
          return { dists, neighbours, target, gain };
        });
        const next = await post<NextResponse>("v1/next", {
          ids: Array.from(bytes.subarray(0, pos + 1)),
          k: 32,
          lambda,
          temperature: 1,
          top: 10,
          neighbours: 16,
          context: 40,
          target: bytes[pos + 1],
        });
        for (const d of ["lm", "knn", "mix"] as const) {
          assert.deepEqual(
            shown.dists[d],
            next.top[d].map((t) => ({
              id: String(t.id),
              p: String(t.p),
              label: t.label,
              text: fmtP(t.p),
            })),
            `${d} at λ=${lambda}`,
          );
        }
        assert.equal(shown.neighbours.length, Math.min(16, next.neighbours.length));
        assert.ok(shown.neighbours.length > 0);
        shown.neighbours.forEach((n, i) => {
          const want = next.neighbours[i];
          assert.equal(n.rank, String(want.rank));
          assert.equal(n.row, String(want.row));
          assert.equal(n.distance, String(want.distance));
          assert.equal(n.id, String(want.id));
          assert.equal(n.mark, want.label);
          assert.equal(n.hit, want.id === bytes[pos + 1]);
        });
        assert.deepEqual(shown.target, {
          lm: String(next.target!.lm),
          knn: String(next.target!.knn),
          mix: String(next.target!.mix),
        });
        // The token's colour comes from /v1/score at the same settings.
        const score = await post<ScoreResponse>("v1/score", { text, k: 32, lambda });
        const gain = score.mix[pos] === null
          ? -Infinity
          : (score.mix[pos]! - score.lm[pos]) / Math.LN2;
        assert.equal(shown.gain, String(gain));
      };

      await page.click(`.tok[data-pos="${pos}"]`);
      await check(0.25);
      await page.fill("#lambda", "0.5"); // re-scores and refreshes the details live
      await check(0.5);
      assert.deepEqual(errors, [], "no script errors");

      const path = shot ?? join(tmp.path, "serve.png");
      await page.screenshot({ path, fullPage: true });
      assert.ok((await Deno.stat(path)).size > 10_000, "a screenshot with content");
    } finally {
      await browser.close();
    }
  },
});
