import assert from "node:assert/strict";
import { join } from "node:path";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const TINY = new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname;

async function knn(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("every command explains itself with --help", async () => {
  const main = await knn("--help");
  assert.equal(main.code, 0);
  for (const cmd of ["build-index", "gather", "train-index", "add", "info", "eval", "neighbors"]) {
    assert.match(main.stdout, new RegExp(`\\n  ${cmd} `));
    const r = await knn(cmd, "--help");
    assert.equal(r.code, 0, `${cmd} --help exits 0`);
    assert.match(r.stdout, new RegExp(`Usage: knn ${cmd}`));
  }
  const build = await knn("build-index", "--help");
  assert.match(build.stdout, /--index\.nlist, --nlist/);
});

Deno.test("bad flags and values give one-line errors, a hint and exit code 2", async () => {
  const r = await knn("build-index", "--nlist", "abc");
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^error: --nlist: index\.nlist: expected an integer ≥ 1, found "abc"/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace without --verbose");
  const u = await knn("frobnicate");
  assert.equal(u.code, 2);
  assert.match(u.stderr, /unknown command 'frobnicate'\nhint: see knn --help/);
  const e = await knn("eval");
  assert.match(e.stderr, /--datastore DIR is required/);
});

Deno.test("build-index, info, eval and neighbors work together with --json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_cli_" });
  try {
    const corpus = join(dir, "c.txt");
    const words = ["alpha", "beta", "gamma", "delta", "eps"];
    let s = 3;
    let t = "";
    while (t.length < 4000) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      t += words[(s >>> 16) % 5] + " ";
    }
    await Deno.writeTextFile(corpus, t);
    const out = join(dir, "ds");
    const common = ["--model", TINY, "--seq-len", "32", "--stride", "16", "--threads", "1"];
    const b = await knn("build-index", ...common, "--corpus", corpus, "--out", out, "--json");
    assert.equal(b.code, 0, b.stderr);
    const manifest = JSON.parse(b.stdout);
    assert.equal(manifest.index.ntotal, t.length - 1);
    assert.equal(manifest.keys.shape[1], 64);

    const info = await knn("info", out);
    assert.match(info.stdout, new RegExp(`keys        keys\\.npy <f4 \\[${t.length - 1},64\\]`));

    const plot = join(dir, "ppl.svg");
    const ev = await knn(
      "eval",
      "--datastore",
      out,
      "--corpus",
      corpus,
      "--max-tokens",
      "300",
      "--k",
      "16",
      "--lambdas",
      "0.1,0.5",
      "--plot",
      plot,
      "--json",
    );
    assert.equal(ev.code, 0, ev.stderr);
    const r = JSON.parse(ev.stdout);
    assert.equal(r.tokens, 299);
    assert.deepEqual(r.lambdas, [0.1, 0.5]);
    assert.ok(r.modes.exact.perplexities.every(Number.isFinite));
    assert.match(await Deno.readTextFile(plot), /^<svg[^>]*>[\s\S]*polyline[\s\S]*<\/svg>\n$/);

    const nb = await knn(
      "neighbors",
      "--datastore",
      out,
      "--text",
      "alpha beta ",
      "--k",
      "4",
      "--json",
    );
    assert.equal(nb.code, 0, nb.stderr);
    const n = JSON.parse(nb.stdout);
    assert.equal(n.neighbours.length, 4);
    assert.equal(n.top.interpolated.length, 5);
    const table = await knn("neighbors", "--datastore", out, "--text", "alpha beta ");
    assert.match(table.stdout, /top-5 interpolated: /);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("model inspect lists the inputs, outputs and the recommended key tensor", async () => {
  const nokey = new URL("./fixtures/tiny_lm_nokey.onnx", import.meta.url).pathname;
  const r = await knn("model", "inspect", nokey, "--json");
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.deepEqual(info.inputs.map((i: { name: string }) => i.name), ["tokens"]);
  assert.deepEqual(info.outputs.map((o: { name: string }) => o.name), ["logits"]);
  assert.match(info.keyCandidates[0].role, /recommended/);
  const text = await knn("model", "inspect", nokey);
  assert.match(text.stdout, new RegExp(info.keyCandidates[0].tensor.replace(/[./]/g, "\\$&")));
  const missing = await knn("model", "inspect", "/nonexistent/m.onnx");
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /\/nonexistent\/m\.onnx/);
});
