import assert from "node:assert/strict";
import { join } from "node:path";
import { main } from "../cli.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const TINY = new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname;

/** Runs the CLI as its own process (for work that loads FAISS / ONNX Runtime, and signals). */
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

/**
 * Runs the CLI's `main` in this process, capturing what it prints: for the checks that end
 * before any native library is touched (parsing, validation, missing inputs).
 */
async function knnHere(...args: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => void out.push(a.map(String).join(" "));
  console.error = (...a: unknown[]) => void err.push(a.map(String).join(" "));
  try {
    const code = await main(args);
    return { code, stdout: out.join("\n"), stderr: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

/** The long flags the Options section of `knn CMD --help` lists, with their value names. */
async function helpOptions(cmd: string): Promise<Map<string, string>> {
  const r = await knnHere(cmd, "--help");
  assert.equal(r.code, 0, `${cmd} --help exits 0`);
  const section = r.stdout.split("\nOptions:\n")[1].split("\n\n")[0];
  return new Map(
    [...section.matchAll(/^ {2}(?:-\w, | {4})--([\w.-]+)(?: (\S+))?/gm)].map((
      m,
    ) => [m[1], m[2] ?? ""]),
  );
}

/** A small text corpus of `bytes` bytes, seeded. */
function corpusText(bytes: number): string {
  const words = ["alpha", "beta", "gamma", "delta", "eps"];
  let s = 3;
  const parts: string[] = [];
  let n = 0;
  while (n < bytes) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const w = words[(s >>> 16) % 5] + " ";
    parts.push(w);
    n += w.length;
  }
  return parts.join("").slice(0, bytes);
}

async function withTempDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_cli_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const SETTINGS_BUILD = [
  "model",
  "tokenizer",
  "key-tensor",
  "logits-output",
  "corpus",
  "max-tokens",
  "seq-len",
  "stride",
  "batch-size",
  "kv-cache",
  "threads",
  "key-dtype",
  "out",
  "factory",
  "nlist",
  "m",
  "nbits",
  "metric",
  "nprobe",
  "train-size",
  "add-chunk",
  "seed",
  "invlists",
];
const buildOptions = (
  ...own: string[]
) => ["config", ...own, "json", "verbose", "help", ...SETTINGS_BUILD];
const BUILD_OPTIONS = buildOptions("force");
const EXPECTED_OPTIONS: Record<string, string[]> = {
  "build-index": buildOptions("force", "shards", "workers"),
  gather: buildOptions("force", "shard", "shards", "workers"),
  "train-index": BUILD_OPTIONS,
  add: buildOptions("force", "shard", "shards", "workers"),
  merge: buildOptions("shards"),
  info: ["json", "verbose", "help"],
  model: ["json", "verbose", "help"],
  eval: [
    "datastore",
    "tokenizer",
    "corpus",
    "max-tokens",
    "k",
    "nprobe",
    "temperature",
    "lambdas",
    "distance",
    "rerank",
    "batch-size",
    "threads",
    "plot",
    "config",
    "json",
    "verbose",
    "help",
  ],
  neighbors: [
    "datastore",
    "text",
    "tokenizer",
    "k",
    "lambda",
    "nprobe",
    "distance",
    "context",
    "json",
    "verbose",
    "help",
  ],
  serve: [
    "datastore",
    "host",
    "port",
    "k",
    "lambda",
    "temperature",
    "distance",
    "nprobe",
    "threads",
    "config",
    "json",
    "verbose",
    "help",
  ],
};

Deno.test("each command's --help lists exactly its options, with defaults", async () => {
  const top = await knnHere("--help");
  assert.equal(top.code, 0);
  for (const [cmd, expected] of Object.entries(EXPECTED_OPTIONS)) {
    assert.match(top.stdout, new RegExp(`\\n  ${cmd} `), `knn --help lists ${cmd}`);
    const listed = await helpOptions(cmd);
    assert.deepEqual([...listed.keys()], expected, `knn ${cmd} --help`);
  }
  const build = (await knnHere("build-index", "--help")).stdout;
  assert.match(build, /--nlist N +inverted lists.*\(≥ 1; default 2048\)/);
  assert.match(build, /dotted form \(e\.g\. --index\.factory\)/);
  const nb = (await knnHere("neighbors", "--help")).stdout;
  assert.match(nb, /--k N +neighbours per query \(≥ 1; default 8\)/, "the command's own default");
  assert.match(nb, /--distance exact\|faiss /);
  // Every listed option is accepted by the command (a flag --help shows but parsing rejects
  // would fail here with "unknown option").
  // (eval, neighbors and serve stop at the missing datastore; build commands would start building.)
  for (const cmd of ["eval", "neighbors", "info", "serve"]) {
    for (const [flag, arg] of await helpOptions(cmd)) {
      if (flag === "help") continue;
      const r = await knnHere(cmd, `--${flag}`, ...(arg ? ["x"] : []));
      assert.doesNotMatch(r.stderr, /unknown option/, `${cmd} --${flag}`);
    }
  }
});

/** Which of 0, −1, a huge value and a non-number each numeric flag accepts. */
const HUGE = "99999999999999999999";
const VALUES = ["0", "-1", HUGE, "abc"] as const;
type Accepts = Partial<Record<(typeof VALUES)[number], true>>;
const BUILD_NUMERIC: Record<string, Accepts> = {
  "max-tokens": {},
  "seq-len": {},
  stride: {},
  "batch-size": {},
  "kv-cache": {},
  threads: { "0": true },
  nlist: {},
  "index.nlist": {},
  m: {},
  "index.m": {},
  nbits: {},
  "index.nbits": {},
  nprobe: {},
  "index.nprobe": {},
  "train-size": {},
  "index.train-size": {},
  "add-chunk": {},
  "index.add-chunk": {},
  seed: { "0": true },
  "index.seed": { "0": true },
};
const SHARDED_NUMERIC: Record<string, Accepts> = { ...BUILD_NUMERIC, shards: {}, workers: {} };
const NUMERIC: Record<string, { base: string[]; flags: Record<string, Accepts> }> = {
  "build-index": { base: ["--model", "/nonexistent/m.onnx"], flags: SHARDED_NUMERIC },
  gather: { base: ["--model", "/nonexistent/m.onnx"], flags: SHARDED_NUMERIC },
  "train-index": { base: ["--model", "/nonexistent/m.onnx"], flags: BUILD_NUMERIC },
  add: { base: ["--model", "/nonexistent/m.onnx"], flags: SHARDED_NUMERIC },
  merge: {
    base: ["--model", "/nonexistent/m.onnx"],
    flags: { ...BUILD_NUMERIC, shards: {} },
  },
  eval: {
    base: ["--datastore", "/nonexistent/ds"],
    flags: {
      "max-tokens": {},
      "eval.max-tokens": {},
      k: {},
      "eval.k": {},
      nprobe: {},
      temperature: { [HUGE]: true },
      lambdas: { "0": true },
      rerank: { "0": true },
      "eval.rerank": { "0": true },
      "batch-size": {},
      threads: { "0": true },
    },
  },
  neighbors: {
    base: ["--datastore", "/nonexistent/ds", "--text", "abc"],
    flags: { k: {}, lambda: { "0": true }, nprobe: {}, context: {} },
  },
  serve: {
    base: ["--datastore", "/nonexistent/ds"],
    flags: {
      port: { "0": true },
      k: {},
      lambda: { "0": true },
      temperature: { [HUGE]: true },
      nprobe: {},
      threads: { "0": true },
    },
  },
};

Deno.test("every numeric flag of every command rejects 0, −1, huge and non-numbers alike", async () => {
  for (const [cmd, { base, flags }] of Object.entries(NUMERIC)) {
    // The table covers every numeric option the command's help lists.
    const numeric = [...(await helpOptions(cmd))].filter(([, arg]) => /^(N|X|LIST)$/.test(arg))
      .map(([f]) => f);
    assert.deepEqual(numeric.filter((f) => !(f in flags)), [], `${cmd}: numeric flags untested`);
    for (const [flag, accepts] of Object.entries(flags)) {
      for (const value of VALUES) {
        const r = await knnHere(cmd, ...base, `--${flag}`, value);
        const what = `knn ${cmd} --${flag} ${value}`;
        const errors = r.stderr.split("\n").filter((l) => !l.startsWith("hint: "));
        assert.equal(errors.length, 1, `${what}: one line, found ${JSON.stringify(r.stderr)}`);
        if (accepts[value]) {
          // Accepted: the run goes on and stops at the missing model / datastore instead.
          assert.equal(r.code, 1, `${what}: ${r.stderr}`);
          assert.match(r.stderr, /^error: (--model: model: \/nonexistent|\/nonexistent\/ds: )/);
        } else {
          assert.equal(r.code, 2, `${what}: exit status 2, got ${r.code}: ${r.stderr}`);
          assert.ok(r.stderr.startsWith(`error: --${flag}: `), `${what}: ${r.stderr}`);
          assert.match(r.stderr, /expected (an integer|a number|a non-empty list)/, what);
        }
      }
    }
  }
});

Deno.test("exit status follows the error code: usage and config 2, not found 1", async () => {
  const usage = await knnHere("frobnicate");
  assert.deepEqual([usage.code, usage.stderr], [
    2,
    "error: unknown command 'frobnicate'\nhint: see knn --help",
  ]);
  assert.equal((await knnHere("info")).code, 2, "missing DIR");
  assert.equal((await knnHere("build-index", "--nlsit", "3")).code, 2, "unknown option");
  const config = await knnHere("build-index", "--nlist", "abc");
  assert.equal(config.code, 2);
  assert.equal(config.stderr, 'error: --nlist: index.nlist: expected an integer ≥ 1, found "abc"');
  await withTempDir(async (dir) => {
    const file = join(dir, "bad.jsonc");
    await Deno.writeTextFile(file, `{\n  "seqLen": 64\n  "stride": 32\n}`);
    const r = await knnHere("build-index", "--config", file);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /invalid JSON at line 3, column 3/);
  });
  const missing = await knnHere("info", "/nonexistent/ds");
  assert.deepEqual([missing.code, missing.stderr], [
    1,
    "error: /nonexistent/ds: no such datastore directory",
  ]);
  const noKeys = await knnHere("train-index", "--out", "/nonexistent/ds");
  assert.equal(noKeys.code, 1);
  assert.match(noKeys.stderr, /^error: \/nonexistent\/ds: no gathered keys yet\nhint: /);
});

Deno.test("Ctrl-C during gather exits 130 and leaves a resumable checkpoint", async () => {
  await withTempDir(async (dir) => {
    const corpus = join(dir, "c.txt");
    await Deno.writeTextFile(corpus, corpusText(3_000_000));
    const out = join(dir, "ds");
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        CLI,
        "gather",
        "--model",
        TINY,
        "--corpus",
        corpus,
        "--out",
        out,
        "--max-tokens",
        "null",
        "--seq-len",
        "32",
        "--stride",
        "16",
        "--threads",
        "1",
      ],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const dec = new TextDecoder();
    let stderr = "";
    const reader = child.stderr.getReader();
    // Interrupt once gathering has started.
    while (!/\ngather: |^gather: /.test(stderr)) {
      const { value, done } = await reader.read();
      if (done) break;
      stderr += dec.decode(value);
    }
    child.kill("SIGINT");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      stderr += dec.decode(value);
    }
    const status = await child.status;
    await child.stdout.cancel();
    assert.equal(status.code, 130, stderr);
    assert.match(stderr, /error: gather interrupted after \d+ of \d+ rows; run it again to resume/);
    assert.ok((await Deno.stat(join(out, "gather.progress.json"))).isFile, "checkpoint kept");
  });
});

Deno.test("a failed build removes the --out directories it created", async () => {
  await withTempDir(async (dir) => {
    const corpus = join(dir, "c.txt");
    await Deno.writeTextFile(corpus, corpusText(100));
    const out = join(dir, "new", "ds");
    // 100 tokens cannot fill one window of 256.
    const r = await knn("build-index", "--model", TINY, "--corpus", corpus, "--out", out);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /one window needs/);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["c.txt"]);
    // A directory that existed before stays.
    await Deno.mkdir(out, { recursive: true });
    assert.equal(
      (await knn("build-index", "--model", TINY, "--corpus", corpus, "--out", out)).code,
      1,
    );
    assert.ok((await Deno.stat(out)).isDirectory);
    // --out naming a file is refused before any work.
    const file = join(dir, "c.txt");
    const f = await knnHere(
      "build-index",
      "--model",
      TINY,
      "--corpus",
      corpus,
      "--out",
      join(file, "x"),
    );
    assert.equal(f.code, 2);
    assert.equal(f.stderr, `error: --out: out: ${file} is a file, not a directory`);
  });
});

Deno.test("build-index, info, eval and neighbors work together: results on stdout", async () => {
  await withTempDir(async (dir) => {
    const corpus = join(dir, "c.txt");
    const t = corpusText(4000);
    await Deno.writeTextFile(corpus, t);
    const out = join(dir, "ds");
    const common = ["--model", TINY, "--seq-len", "32", "--stride", "16", "--threads", "1"];
    const b = await knn("build-index", ...common, "--corpus", corpus, "--out", out, "--json");
    assert.equal(b.code, 0, b.stderr);
    const manifest = JSON.parse(b.stdout);
    assert.equal(manifest.index.ntotal, t.length - 1);
    assert.equal(manifest.keys.shape[1], 64);
    const nlist = manifest.index.nlist;
    assert.ok(nlist > 0 && nlist < 100_000, `nlist ${nlist}: clamped to the small corpus`);
    // The manifest records the index settings in the config's shape.
    for (
      const key of [
        "factory",
        "nlist",
        "m",
        "nbits",
        "metric",
        "nprobe",
        "trainSize",
        "addChunk",
        "seed",
        "invlists",
      ]
    ) {
      assert.ok(key in manifest.index, `manifest.index.${key}`);
    }

    // Without --json the summary goes to stdout too (every stage is skipped now).
    const again = await knn("build-index", ...common, "--corpus", corpus, "--out", out);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, new RegExp(`^datastore ${out}: ${t.length - 1} keys of width 64`));
    assert.match(again.stderr, /skip gather/);

    const info = await knn("info", out);
    assert.match(info.stdout, new RegExp(`keys        keys\\.npy <f4 \\[${t.length - 1},64\\]`));

    // Output paths are checked before the evaluation starts.
    const badPlot = await knn("eval", "--datastore", out, "--plot", "/no/such/dir/x.svg");
    assert.equal(badPlot.code, 1);
    assert.equal(
      badPlot.stderr,
      "error: --plot: /no/such/dir/x.svg: no directory /no/such/dir\n" +
        "hint: create the directory first or choose another path\n",
    );
    // k beyond the datastore is a bad setting, reported like the others.
    const bigK = await knn("eval", "--datastore", out, "--k", String(t.length));
    assert.equal(bigK.code, 2);
    assert.equal(
      bigK.stderr,
      `error: --k: eval.k: expected an integer in 1..${t.length - 1} (the datastore's size), ` +
        `found ${t.length}\n`,
    );

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
      "--nprobe",
      "100000",
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
    // nprobe beyond nlist is clamped, with one note on stderr.
    assert.equal(r.nprobe, nlist);
    assert.equal(
      ev.stderr.split("\n").filter((l) => l.startsWith("note: ")).join("\n"),
      `note: --nprobe 100000 > nlist ${nlist}: using nprobe ${nlist}`,
    );
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
    assert.equal(n.distance, "exact");
    assert.equal(n.top.interpolated.length, 5);
    const table = await knn("neighbors", "--datastore", out, "--text", "alpha beta ");
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /top-5 interpolated: /);
    assert.equal(table.stdout.split("\n").filter((l) => /^ +\d+ +\d+ /.test(l)).length, 8);
  });
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
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, new RegExp(info.keyCandidates[0].tensor.replace(/[./]/g, "\\$&")));
  const missing = await knn("model", "inspect", "/nonexistent/m.onnx");
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /\/nonexistent\/m\.onnx/);
});
