// `knn serve` as its own process: listening, draining on SIGTERM, one-line startup errors.
import assert from "node:assert/strict";
import { tempDir } from "./_tmp.ts";
import { buildTinyDatastore } from "./_tiny_datastore.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Starts `knn serve` and returns the process once it printed the address it listens on. */
async function startServe(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "serve", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!/http:\/\/\S+\//.test(out)) {
    const { done, value } = await lines.read();
    if (done) {
      const status = await child.status;
      throw new Error(`knn serve exited ${status.code}: ${out}${await stderr}`);
    }
    out += value;
  }
  const url = new URL(out.match(/http:\/\/\S+\//)![0]);
  const rest = (async () => {
    for (;;) {
      const { done, value } = await lines.read();
      if (done) return out;
      out += value;
    }
  })();
  return { child, url, stdout: rest, stderr };
}

/** One HTTP/1.1 response read off a raw connection: status, headers and a JSON body. */
async function readResponse(conn: Deno.Conn): Promise<{ status: number; body: unknown }> {
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(65536);
  let head = -1;
  let length = -1;
  for (;;) {
    if (head < 0) {
      head = dec.decode(buf).indexOf("\r\n\r\n");
      if (head >= 0) {
        length = Number(/content-length: (\d+)/i.exec(dec.decode(buf.subarray(0, head)))![1]);
      }
    }
    if (head >= 0 && buf.length >= head + 4 + length) break;
    const n = await conn.read(chunk);
    if (n === null) throw new Error(`connection closed after ${JSON.stringify(dec.decode(buf))}`);
    const next = new Uint8Array(buf.length + n);
    next.set(buf);
    next.set(chunk.subarray(0, n), buf.length);
    buf = next;
  }
  const text = dec.decode(buf);
  return {
    status: Number(text.slice(9, 12)),
    body: JSON.parse(text.slice(head + 4, head + 4 + length)),
  };
}

Deno.test("knn serve answers the request in flight when SIGTERM arrives, then exits 0", async () => {
  await using tmp = tempDir("knnlm_serve_cli_");
  const { dir } = await buildTinyDatastore(tmp.path);
  const { child, url, stdout, stderr } = await startServe(["--datastore", dir, "--port", "0"]);
  assert.equal(url.hostname, "127.0.0.1", "loopback unless --host says otherwise");
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(url.port) });
  try {
    // A first exchange on a kept-alive connection: the server has accepted it.
    await conn.write(enc.encode("GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
    const info = await readResponse(conn);
    assert.equal(info.status, 200);
    // The second request's head and half its body; the server is then reading the body.
    const body = enc.encode(JSON.stringify({ text: "the cat sat on the mat", k: 5 }));
    await conn.write(enc.encode(
      `POST /v1/next HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${body.length}\r\n\r\n`,
    ));
    await conn.write(body.subarray(0, 10));
    // Not a timing assertion: the server only has to parse a request head in this time.
    await new Promise((r) => setTimeout(r, 500));
    child.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 300));
    await conn.write(body.subarray(10));
    const next = await readResponse(conn);
    assert.equal(next.status, 200, JSON.stringify(next.body));
    assert.equal((next.body as { k: number }).k, 5);
  } finally {
    conn.close();
  }
  const status = await child.status;
  const err = await stderr;
  assert.equal(status.code, 0, err);
  assert.match(err, /interrupting \(SIGTERM\)/);
  assert.match(err, /knn serve: stopped/);
  assert.match(await stdout, /^knn serve: .* on http:\/\/127\.0\.0\.1:\d+\/ \(Ctrl-C to stop\)\n$/);
});

Deno.test("knn serve refuses a port in use with one line and exit status 1", async () => {
  await using tmp = tempDir("knnlm_serve_cli_");
  const { dir } = await buildTinyDatastore(tmp.path, 1000);
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "serve", "--datastore", dir, "--port", String(taken.addr.port)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const err = dec.decode(out.stderr);
  assert.equal(out.code, 1, err);
  assert.match(
    err,
    new RegExp(`^error: 127\\.0\\.0\\.1:${taken.addr.port}: address already in use\\n`),
  );
  assert.match(err, /hint: choose another --port/);
});
