import assert from "node:assert/strict";
import { percentile, runLoad, summarise } from "../bench/serve_load.ts";

Deno.test("percentile is the nearest rank", () => {
  const xs = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted input
  assert.equal(percentile(xs, 50), 50);
  assert.equal(percentile(xs, 99), 99);
  assert.equal(percentile(xs, 100), 100);
  assert.equal(percentile([7], 99), 7);
  assert.ok(Number.isNaN(percentile([], 50)));
});

Deno.test("a load run keeps at most `concurrency` requests in flight and counts every error", async () => {
  let active = 0;
  let peak = 0;
  let seen = 0;
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (req) => {
      active++;
      peak = Math.max(peak, active);
      const n = Number(new URL(req.url).searchParams.get("n"));
      seen++;
      await new Promise((r) => setTimeout(r, 5));
      active--;
      return new Response(n % 5 === 0 ? "no" : "{}", { status: n % 5 === 0 ? 500 : 200 });
    },
  );
  const url = `http://127.0.0.1:${server.addr.port}/`;
  const requests = Array.from({ length: 20 }, (_, n) => ({ path: `x?n=${n}` }));
  const { samples } = await runLoad(url, requests, 4);
  assert.equal(seen, 20);
  assert.equal(peak, 4);
  assert.deepEqual(samples.map((s) => s.status), requests.map((_, n) => (n % 5 === 0 ? 500 : 200)));
  const summary = summarise(samples);
  assert.equal(summary.count, 20);
  assert.equal(summary.errors, 4);
  assert.equal(samples[0].error, "no");
  assert.ok(summary.p50 <= summary.p99 && summary.p99 <= summary.max);
});
