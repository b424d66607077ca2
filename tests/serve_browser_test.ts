// The explorer page in a real browser: Debian's chromium driven by playwright-core types a
// text, clicks a token and moves λ (tests/fixtures/drive_page.ts, in a process of its own: see
// why there); this test serves the page and checks that what it showed is what the API says.
//
// Chromium comes from `deno task setup-test` (apt-get install chromium). The test builds a
// tiny datastore and screenshots the page into its temp dir. With KNNLM_SCREENSHOT=FILE
// (`deno task screenshot` sets docs/serve.png) it keeps the picture and uses the datastore
// KNNLM_SERVE_DATASTORE names (default data/default, built from the bundled model).
import assert from "node:assert/strict";
import { join } from "node:path";
import { type NextResponse, type ScoreResponse, serve } from "../lib/serve/mod.ts";
import { tempDir } from "./_tmp.ts";
import { buildTinyDatastore, wordText } from "./_tiny_datastore.ts";
import type { Shown } from "./fixtures/drive_page.ts";

const CHROMIUM = "/usr/bin/chromium";
const DRIVER = new URL("./fixtures/drive_page.ts", import.meta.url).pathname;

/** The page's own formatting of a probability (app.js fmtP). */
function fmtP(p: number): string {
  if (p === 0) return "0";
  return p >= 0.001 ? p.toFixed(3) : p.toExponential(1);
}

Deno.test("the page shows, for a clicked token, the distributions and neighbours the API returns", async () => {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    assert.fail(`${CHROMIUM} is missing: run \`deno task setup-test\` (apt-get install chromium)`);
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

  const bytes = new TextEncoder().encode(text);
  const pos = text.lastIndexOf(given ? "election" : " a") + 2; // predicts a mid-word byte
  const path = shot ?? join(tmp.path, "serve.png");
  const run = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      DRIVER,
      server.url,
      text,
      String(pos),
      "0.25,0.5",
      join(tmp.path, "profile"),
      path,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const stderr = new TextDecoder().decode(run.stderr);
  assert.equal(run.code, 0, stderr.slice(-3000));
  const { states, errors } = JSON.parse(new TextDecoder().decode(run.stdout).trim()) as {
    states: Shown[];
    errors: string[];
  };
  assert.deepEqual(errors, [], "no script errors on the page");
  assert.deepEqual(states.map((s) => s.lambda), [0.25, 0.5], "the default λ, then the slider's");

  for (const shown of states) {
    const lambda = shown.lambda;
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
          label: t.label,
          p: String(t.p),
          text: fmtP(t.p),
        })),
        `${d} at λ=${lambda}`,
      );
    }
    assert.ok(shown.neighbours.length > 0);
    assert.deepEqual(
      shown.neighbours,
      next.neighbours.map((n) => ({
        rank: String(n.rank),
        row: String(n.row),
        distance: String(n.distance),
        id: String(n.id),
        mark: n.label,
        hit: n.id === bytes[pos + 1],
      })),
      `neighbours at λ=${lambda}`,
    );
    assert.deepEqual(shown.target, {
      lm: String(next.target!.lm),
      knn: String(next.target!.knn),
      mix: String(next.target!.mix),
    });
    // The token's colour comes from /v1/score at the same settings.
    const score = await post<ScoreResponse>("v1/score", { text, k: 32, lambda });
    const mix = score.mix[pos];
    const gain = mix === null ? -Infinity : (mix - score.lm[pos]) / Math.LN2;
    assert.equal(shown.gain, String(gain), `gain at λ=${lambda}`);
  }
  assert.ok((await Deno.stat(path)).size > 10_000, "a screenshot with content");
});
