import assert from "node:assert/strict";
import { join } from "node:path";
import { Datastore, evaluate, KnnLm, MappedArray, OnnxLm } from "../mod.ts";
import { readManifest } from "../lib/datastore/mod.ts";
import {
  type ErrorResponse,
  type InfoResponse,
  type KnnServer,
  type NextResponse,
  type ScoreResponse,
  serve,
} from "../lib/serve/mod.ts";
import { tempDir } from "./_tmp.ts";
import { maxAbsDiff } from "./_close.ts";
import { buildTinyDatastore, TINY_MODEL, type TinyDatastore, wordText } from "./_tiny_datastore.ts";

// One datastore for the whole file (building it is the slow part); removed at exit.
const tmp = tempDir("knnlm_serve_");
let built: Promise<TinyDatastore> | undefined;
const tiny = () => (built ??= buildTinyDatastore(tmp.path));
globalThis.addEventListener("unload", () => tmp[Symbol.dispose]());

async function post(server: KnnServer, path: string, body: unknown, headers = {}) {
  const res = await fetch(new URL(path, server.url), {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string"
      ? body
      : body instanceof Uint8Array
      ? new Uint8Array(body)
      : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** Sends `request` as written on a fresh connection and returns all the server sends back. */
async function rawHttp(port: number, request: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(request));
  return await new Response(conn.readable).text();
}

/** log-softmax of one row in float64. */
function logSoftmax64(row: ArrayLike<number>): number[] {
  const x = Array.from(row);
  const m = Math.max(...x);
  const lse = m + Math.log(x.reduce((a, v) => a + Math.exp(v - m), 0));
  return x.map((v) => v - lse);
}

Deno.test("/v1/score gives evaluate's per-token log-probs and perplexities for the same text", async () => {
  const { dir } = await tiny();
  await using server = await serve({ datastore: dir, port: 0 });
  // 200 bytes: several windows of the datastore's seqLen 32, so the window plan matters.
  const text = wordText(200, 7);
  const k = 8, lambda = 0.3, temperature = 2, lambdas = [0, 0.1, 0.3, 0.7];
  const res = await post(server, "v1/score", { text, k, lambda, lambdas, temperature });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const score = res.body as ScoreResponse;

  // What `knn eval --distance exact` computes for these tokens, through its own open datastore.
  using ds = await Datastore.open(dir);
  using model = await OnnxLm.open(TINY_MODEL, { keyTensor: "ff_input" });
  const tokens = Int32Array.from(new TextEncoder().encode(text));
  const ev = await evaluate({
    datastore: ds,
    model,
    tokens,
    k,
    temperature,
    lambdas,
    modes: ["exact"],
  });
  assert.deepEqual(score.ids, Array.from(tokens));
  assert.equal(score.pieces.join(""), text);
  assert.equal(score.lm.length, ev.tokens);
  assert.equal(score.perplexity.lm, ev.lmPerplexity);
  assert.deepEqual(score.perplexity.lambdas, lambdas);
  assert.deepEqual(score.perplexity.sweep, ev.modes.exact!.perplexities);
  assert.deepEqual(score.perplexity.best, ev.modes.exact!.best);
  assert.equal(score.perplexity.missRate, ev.modes.exact!.missRate);
  assert.ok(ev.modes.exact!.missRate > 0 && ev.modes.exact!.missRate < 1, "hits and misses");
  assert.equal(score.distance, "exact");

  // The per-token values are the ones the perplexities come from.
  const lp = (xs: (number | null)[]) => xs.map((x) => x ?? -Infinity);
  const ppl = (xs: number[]) => Math.exp(-xs.reduce((a, b) => a + b) / xs.length);
  assert.ok(Math.abs(ppl(score.lm) - ev.lmPerplexity) <= 1e-12 * ev.lmPerplexity);
  const mixAt = (l: number) =>
    score.lm.map((a, i) => Math.log((1 - l) * Math.exp(a) + l * Math.exp(lp(score.knn)[i])));
  for (const [j, l] of lambdas.entries()) {
    const want = ev.modes.exact!.perplexities[j];
    assert.ok(Math.abs(ppl(mixAt(l)) - want) <= 1e-9 * want, `λ=${l}`);
  }
  assert.ok(maxAbsDiff(lp(score.mix), mixAt(lambda)) < 1e-9, "per-token mix at λ");
  assert.ok(Math.abs(score.perplexity.mix! - ppl(mixAt(lambda))) <= 1e-9 * score.perplexity.mix!);
});

Deno.test("/v1/score's log-probs equal the model's softmax and a brute-force p_kNN", async () => {
  const { dir } = await tiny();
  await using server = await serve({ datastore: dir, port: 0 });
  // Shorter than a window (seqLen 32): every position is scored from one model call.
  const text = wordText(30, 5);
  const tokens = Int32Array.from(new TextEncoder().encode(text));
  const k = 6, temperature = 3;
  const res = await post(server, "v1/score", { ids: Array.from(tokens), k, temperature });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const score = res.body as ScoreResponse;

  using model = await OnnxLm.open(TINY_MODEL, { keyTensor: "ff_input" });
  const n = tokens.length - 1;
  const { logits, keys: q } = await model.run(tokens.subarray(0, n), 1, n);
  using keys = MappedArray.open(join(dir, "keys.npy"));
  using vals = MappedArray.open(join(dir, "vals.npy"));
  const K = keys.view() as Float32Array, V = vals.view() as Int32Array, d = keys.rowLength;
  for (let i = 0; i < n; i++) {
    const y = tokens[i + 1];
    const lm = logSoftmax64(logits.subarray(i * 256, i * 256 + 256))[y];
    // Same float32 logits, float64 softmax on both sides.
    assert.ok(Math.abs(score.lm[i] - lm) < 1e-9, `lm at ${i}: ${score.lm[i]} vs ${lm}`);
    const dist: [number, number][] = [];
    for (let j = 0; j < keys.rows; j++) {
      let s = 0;
      for (let t = 0; t < d; t++) s += (q[i * d + t] - K[j * d + t]) ** 2;
      dist.push([s, j]);
    }
    const top = dist.sort((a, b) => a[0] - b[0]).slice(0, k);
    const w = top.map(([s]) => Math.exp(-(s - top[0][0]) / temperature));
    const hit = top.reduce((a, [, j], r) => a + (V[j] === y ? w[r] : 0), 0);
    const knn = Math.log(hit / w.reduce((a, b) => a + b));
    // The server's distances are float32 sums, the test's float64: 1e-4 covers the rounding.
    if (knn === -Infinity) assert.equal(score.knn[i], null, `knn at ${i}`);
    else assert.ok(Math.abs(score.knn[i]! - knn) < 1e-4, `knn at ${i}: ${score.knn[i]} vs ${knn}`);
  }
});

Deno.test("/v1/next gives KnnLm.next's distributions and the corpus around each neighbour", async () => {
  const { dir, corpus } = await tiny();
  await using server = await serve({ datastore: dir, port: 0 });
  const text = wordText(50, 11); // longer than a window: the last 32 tokens are used
  const req = { text, k: 12, lambda: 0.4, temperature: 2, top: 5, neighbours: 7, context: 9 };
  const res = await post(server, "v1/next", { ...req, target: 32 });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const next = res.body as NextResponse;

  using lm = await KnnLm.open({ datastore: dir, k: 12, lambda: 0.4, temperature: 2 });
  const want = await lm.next(Int32Array.from(new TextEncoder().encode(text)));
  assert.equal(next.tokens, 50);
  assert.equal(next.window, 32);
  const top = (p: Float64Array) =>
    Array.from(p.keys()).filter((t) => p[t] > 0).sort((a, b) => p[b] - p[a] || a - b).slice(0, 5);
  assert.deepEqual(next.top.lm.map((t) => t.id), top(want.lm));
  assert.deepEqual(next.top.knn.map((t) => t.id), top(want.knn));
  assert.deepEqual(next.top.mix.map((t) => t.id), top(want.mixed));
  for (const t of next.top.mix) assert.equal(t.p, want.mixed[t.id]);
  assert.deepEqual(next.target, {
    id: 32,
    label: " ",
    lm: want.lm[32],
    knn: want.knn[32],
    mix: want.mixed[32],
  });
  assert.equal(next.neighbours.length, 7);
  next.neighbours.forEach((nb, r) => {
    assert.equal(nb.rank, r + 1);
    assert.equal(nb.row, want.neighbours[r].row);
    assert.equal(nb.distance, want.neighbours[r].distance);
    // The corpus is ASCII, so token j is character j; row i is the context ending at token i.
    assert.equal(nb.id, corpus.charCodeAt(nb.row + 1));
    assert.equal(nb.label, corpus[nb.row + 1]);
    assert.equal(nb.before, corpus.slice(Math.max(0, nb.row - 8), nb.row + 1));
    assert.equal(nb.after, corpus.slice(nb.row + 2, nb.row + 11));
  });
});

Deno.test("a datastore that cannot be opened fails serve and frees the port", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  await assert.rejects(serve({ datastore: join(tmp.path, "nowhere"), port }), /no datastore\.json/);
  using again = Deno.listen({ hostname: "127.0.0.1", port }); // free again
  assert.equal(again.addr.port, port);
});

Deno.test("/v1/info says what `knn info --json` says, plus the defaults and bounds", async () => {
  const { dir } = await tiny();
  await using server = await serve({ datastore: dir, port: 0, limits: { maxK: 100 } });
  const res = await fetch(new URL("v1/info", server.url));
  assert.equal(res.status, 200);
  const info = await res.json() as InfoResponse;
  assert.deepEqual(info.manifest, await readManifest(dir));
  assert.equal(info.size, 2999);
  assert.equal(info.vocabSize, 256);
  assert.equal(info.limits.maxK, 100);
  assert.equal(info.defaults.k, 100, "eval.k (1024) capped by maxK");
});

Deno.test("bad requests get a 4xx JSON error naming the field, and the server keeps serving", async () => {
  const { dir } = await tiny();
  await using server = await serve({
    datastore: dir,
    port: 0,
    limits: { maxTokens: 64, maxBodyBytes: 4096, maxK: 50 },
  });
  const cases: [string, string | Uint8Array | object, number, string | undefined][] = [
    ["v1/next", "{not json", 400, "body"],
    ["v1/next", "", 400, "body"],
    ["v1/next", "[1, 2]", 400, "body"],
    ["v1/next", new Uint8Array([0x7b, 0xff, 0x7d]), 400, "body"],
    ["v1/next", { text: "the cat", k: 51 }, 400, "k"],
    ["v1/next", { text: "the cat", k: 1e9 }, 400, "k"],
    ["v1/next", { text: "the cat", k: 0 }, 400, "k"],
    ["v1/next", { text: "the cat", k: 2.5 }, 400, "k"],
    ["v1/next", { text: "the cat", k: "8" }, 400, "k"],
    ["v1/next", { text: "x".repeat(65) }, 400, "text"],
    ["v1/next", { text: "é".repeat(33) }, 400, "text"], // 66 bytes
    ["v1/score", { text: "x".repeat(5000) }, 413, "body"],
    ["v1/next", { text: "the cat", colour: "red" }, 400, "colour"],
    ["v1/next", { text: "the cat", lamda: 0.3 }, 400, "lamda"],
    ["v1/next", { text: 42 }, 400, "text"],
    ["v1/next", { text: "the cat", lambda: "0.3" }, 400, "lambda"],
    ["v1/next", { text: "the cat", lambda: 1.5 }, 400, "lambda"],
    ["v1/next", { text: "the cat", temperature: 0 }, 400, "temperature"],
    ["v1/next", { text: "the cat", top: 257 }, 400, "top"],
    ["v1/next", { text: "the cat", target: 256 }, 400, "target"],
    ["v1/next", { ids: [1, 300] }, 400, "ids[1]"],
    ["v1/next", { ids: "1,2" }, 400, "ids"],
    ["v1/next", { text: "a", ids: [1] }, 400, "ids"],
    ["v1/next", { k: 4 }, 400, "text"],
    ["v1/next", { ids: [] }, 400, "ids"],
    ["v1/score", { text: "a" }, 400, "text"], // one token: nothing to predict
    ["v1/score", { text: "the cat", lambdas: [] }, 400, "lambdas"],
    ["v1/score", { text: "the cat", lambdas: [0.5, 2] }, 400, "lambdas[1]"],
    ["v1/score", { text: "the cat", target: 3 }, 400, "target"],
  ];
  for (const [path, body, status, field] of cases) {
    const res = await post(server, path, body);
    const what = `${path} ${
      body instanceof Uint8Array ? "bytes" : JSON.stringify(body).slice(0, 60)
    }`;
    assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
    const err = (res.body as ErrorResponse).error;
    assert.equal(err.status, status, what);
    assert.equal(err.field, field, `${what}: ${err.message}`);
    assert.ok(err.message.startsWith(`${field}: `), `${what}: ${err.message}`);
  }
  // HTTP-level mistakes.
  const form = await post(server, "v1/next", '{"text":"the cat"}', {
    "content-type": "text/plain",
  });
  assert.equal(form.status, 415);
  assert.equal(form.body.error.field, "content-type");
  const getNext = await fetch(new URL("v1/next", server.url));
  assert.equal(getNext.status, 405);
  assert.equal(getNext.headers.get("allow"), "POST");
  await getNext.body?.cancel();
  for (
    const path of [
      "etc/passwd",
      "..%2f..%2fetc%2fpasswd",
      "lib/serve/server.ts",
      "v2/next",
      "app.js/x",
    ]
  ) {
    const res = await fetch(new URL(path, server.url));
    assert.equal(res.status, 404, path);
    assert.equal((await res.json()).error.status, 404);
  }
  // A page on another origin whose name resolves to 127.0.0.1 (DNS rebinding) is refused;
  // fetch sets Host itself, so these requests are written by hand.
  const raw = (host: string) =>
    rawHttp(server.port, `GET /v1/info HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  const rebound = await raw("evil.example:8080");
  assert.match(rebound, /^HTTP\/1.1 403 /);
  assert.match(rebound, /"field":"host"/);
  assert.match(await raw(`localhost:${server.port}`), /^HTTP\/1.1 200 /);

  // Still serving.
  const ok = await post(server, "v1/next", { text: "the cat", k: 4 });
  assert.equal(ok.status, 200);
  assert.equal((ok.body as NextResponse).k, 4);
});

Deno.test("a body that arrives too slowly is answered 408 and does not hold the server", async () => {
  const { dir } = await tiny();
  await using server = await serve({ datastore: dir, port: 0, limits: { bodyTimeoutMs: 300 } });
  const stalled = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new TextEncoder().encode('{"text": "the'));
    }, // never closed
  });
  const res = await fetch(new URL("v1/next", server.url), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: stalled,
  });
  assert.equal(res.status, 408);
  assert.equal((await res.json()).error.field, "body");
  const ok = await post(server, "v1/next", { text: "the cat", k: 4 });
  assert.equal(ok.status, 200);
});

Deno.test("concurrent requests share the index and get the answers they get one at a time", async () => {
  const { dir } = await tiny();
  await using server = await serve({ datastore: dir, port: 0 });
  const requests = Array.from(
    { length: 24 },
    (_, i) =>
      i % 3 === 0
        ? { path: "v1/score", body: { text: wordText(120, i), k: 16, lambda: 0.2 } }
        : { path: "v1/next", body: { text: wordText(20 + i, i), k: 8 + i, neighbours: 4 } },
  );
  const alone: { status: number; body: unknown }[] = [];
  for (const r of requests) alone.push(await post(server, r.path, r.body));
  const together = await Promise.all(requests.map((r) => post(server, r.path, r.body)));
  together.forEach((res, i) => {
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, alone[i].body, `request ${i}`);
  });
});

Deno.test("the page and its two files are served with a content security policy", async () => {
  const { dir } = await tiny();
  await using server = await serve({ datastore: dir, port: 0 });
  for (
    const [path, type] of [["", "text/html"], ["app.js", "text/javascript"], [
      "style.css",
      "text/css",
    ]]
  ) {
    const res = await fetch(new URL(path, server.url));
    assert.equal(res.status, 200, path);
    assert.ok(res.headers.get("content-type")!.startsWith(type), path);
    assert.match(res.headers.get("content-security-policy")!, /script-src 'self'/);
    assert.ok((await res.text()).length > 100, path);
  }
  const html = await (await fetch(server.url)).text();
  assert.match(html, /<script type="module" src="app.js">/);
});

Deno.test("shutdown lets a request in flight finish, then closes the datastore", async () => {
  const { dir } = await tiny();
  const controller = new AbortController();
  const server = await serve({ datastore: dir, port: 0, signal: controller.signal });
  // The body arrives in two parts; the server is told to stop in between.
  let send!: () => void;
  const rest = new Promise<void>((r) => send = r);
  const body = new ReadableStream<Uint8Array>({
    async start(c) {
      c.enqueue(new TextEncoder().encode('{"text": "the cat sat on the'));
      await rest;
      c.enqueue(new TextEncoder().encode(' mat", "k": 5}'));
      c.close();
    },
  });
  const pending = fetch(new URL("v1/next", server.url), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  // Wait until the server is answering it (reading its body), then stop the server.
  while (server.inFlight === 0) await new Promise((r) => setTimeout(r, 10));
  controller.abort();
  // While it drains, new requests are turned away.
  const late = await fetch(new URL("v1/info", server.url));
  assert.equal(late.status, 503);
  await late.body?.cancel();
  send();
  const res = await pending;
  const answer = await res.json();
  assert.equal(res.status, 200, JSON.stringify(answer));
  assert.equal((answer as NextResponse).k, 5);
  await server.finished;
  assert.throws(() => server.api.lm.datastore.index.ntotal, /closed/);
  await assert.rejects(fetch(new URL("v1/info", server.url)));
});
