import assert from "node:assert/strict";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  configArgOptions,
  ConfigError,
  DEFAULT_CONFIG,
  describeConfigKeys,
  describeOptions,
  KnnError,
  loadConfig,
  type OptionSpec,
  parseCommandLine,
} from "../lib/config/mod.ts";
import { coerceFlags } from "../lib/config/flags.ts";
import { parseJsonc } from "../lib/config/_jsonc.ts";

const tempDirs: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const d of tempDirs) Deno.removeSync(d, { recursive: true });
});

function writeConfig(text: string, name = "knnlm.jsonc"): string {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm-config-" });
  tempDirs.push(dir);
  const path = join(dir, name);
  Deno.writeTextFileSync(path, text);
  return path;
}

function issuesOf(fn: () => unknown): { source: string; key: string; message: string }[] {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`);
    return e.issues;
  }
  assert.fail("expected a ConfigError");
}

Deno.test("with no file and no flags every key takes its built-in default", () => {
  const { config, sources } = loadConfig();
  assert.equal(config.seqLen, 256);
  assert.equal(config.stride, 128);
  assert.equal(config.index.nlist, 2048);
  assert.equal(config.index.factory, null);
  assert.deepEqual(config.eval.lambdas, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]);
  assert.equal(config.eval.maxTokens, 100_000);
  assert.ok(Object.values(sources).every((s) => s === "default"));
  // The resolved configuration is plain JSON.
  assert.deepEqual(JSON.parse(JSON.stringify(config)), config);
});

Deno.test("the default model resolves against the toolkit directory, a user model against the CWD", () => {
  const toolkit = new URL("../models/byte_gpt.onnx", import.meta.url).pathname;
  assert.equal(loadConfig().config.model, toolkit);
  const { config } = loadConfig({ flags: { model: "my/model.onnx" } });
  assert.equal(config.model, join(Deno.cwd(), "my/model.onnx"));
});

Deno.test("a config file overrides defaults and flags override the file", () => {
  const file = writeConfig(`{
    "seqLen": 512,
    "batchSize": 4,
    "index": { "nlist": 1024, "metric": "ip" },
  }`);
  const { config, sources } = loadConfig({
    file,
    flags: { "batch-size": "16", nprobe: "32", "index.m": "16" },
  });
  assert.equal(config.seqLen, 512);
  assert.equal(sources.seqLen, file);
  assert.equal(config.batchSize, 16);
  assert.equal(sources.batchSize, "--batch-size");
  assert.equal(config.index.nlist, 1024);
  assert.equal(config.index.metric, "ip");
  assert.equal(sources["index.metric"], file);
  assert.equal(config.index.nprobe, 32);
  assert.equal(sources["index.nprobe"], "--nprobe");
  assert.equal(config.index.m, 16);
  assert.equal(sources["index.m"], "--index.m");
  assert.equal(config.stride, 128);
  assert.equal(sources.stride, "default");
});

Deno.test("JSONC comments and trailing commas are stripped but not inside strings", () => {
  const text = `{
    // a line comment with "quotes" and a trailing comma,
    "out": "data/a//b,}", /* block comment, with { braces ] */
    "corpus": "x/*not a comment*/y",
    "eval": { "lambdas": [0.1, 0.2,], "corpus": "say \\"hi\\", // still a string", },
  }`;
  assert.deepEqual(parseJsonc(text), {
    out: "data/a//b,}",
    corpus: "x/*not a comment*/y",
    eval: { lambdas: [0.1, 0.2], corpus: 'say "hi", // still a string' },
  });
  const { config } = loadConfig({ file: writeConfig(text) });
  assert.equal(config.out, "data/a//b,}");
  assert.deepEqual(config.eval.lambdas, [0.1, 0.2]);
});

Deno.test("a JSON syntax error names the file and the line", () => {
  const file = writeConfig(`{\n  "seqLen": 64\n  "stride": 32\n}`);
  const [issue, ...rest] = issuesOf(() => loadConfig({ file }));
  assert.equal(rest.length, 0);
  assert.equal(issue.source, file);
  assert.match(issue.message, /invalid JSON at line 3, column 3/);
  // V8 gives no position for some errors; the line is still found.
  const file2 = writeConfig(`{\n  // comment\n  "seqLen": }`);
  const [issue2] = issuesOf(() => loadConfig({ file: file2 }));
  assert.equal(issue2.message, "invalid JSON at line 3, column 13: expected a value");
});

Deno.test("every JSONC syntax error names its line and column", () => {
  const cases: [string, string][] = [
    [`{\n  "seqLen": 64\n  "stride": 32\n}`, "line 3, column 3: expected ',' or the end"],
    [`{\n  "seqLen": 64,\n  /* never closed\n}`, "line 3, column 3: unterminated /* comment"],
    [`{ "seqLen": 64 }\n}`, "line 2, column 1: unexpected text after the value"],
    [`{\r\n  "out": "abc\r\n}`, "line 2, column 10: unterminated string"],
    [`{ seqLen: 64 }`, "line 1, column 3: unexpected character"],
    [``, "line 1, column 1: expected a value"],
  ];
  for (const [text, where] of cases) {
    assert.throws(() => parseJsonc(text), (e: Error) => {
      assert.ok(e instanceof SyntaxError);
      assert.ok(
        e.message.startsWith(`invalid JSON at ${where}`),
        `${JSON.stringify(text)}: ${e.message}`,
      );
      return true;
    });
  }
  // Through loadConfig the file is named and the code is E_CONFIG.
  const file = writeConfig(cases[0][0]);
  assert.throws(() => loadConfig({ file }), (e: Error) => {
    assert.ok(KnnError.is(e, "E_CONFIG"));
    assert.ok(e.message.startsWith(`${file}: invalid JSON at line 3, column 3`), e.message);
    return true;
  });
});

Deno.test("a missing config file is an error naming its path", () => {
  const dir = Deno.makeTempDirSync();
  tempDirs.push(dir);
  const file = join(dir, "absent.jsonc");
  assert.throws(() => loadConfig({ file }), (e: Error) => {
    assert.ok(e instanceof ConfigError);
    assert.equal(e.message, `${file}: config file not found`);
    return true;
  });
});

Deno.test("an unknown key names the file and suggests the closest known key", () => {
  const file = writeConfig(`{ "index": { "nlsit": 3 }, "nprobe": 4, "seqlen": 64, "zzzzzz": 1 }`);
  const issues = issuesOf(() => loadConfig({ file }));
  assert.deepEqual(issues.map((i) => `${i.source}: ${i.key}: ${i.message}`), [
    `${file}: index.nlsit: unknown key; did you mean index.nlist?`,
    `${file}: nprobe: unknown key; did you mean index.nprobe?`,
    `${file}: seqlen: unknown key; did you mean seqLen?`,
    `${file}: zzzzzz: unknown key`,
  ]);
});

Deno.test("a wrong type names file, key, what is allowed and what was found", () => {
  const file = writeConfig(`{ "index": { "nlist": "abc" }, "keyDtype": "float64", "eval": 3 }`);
  const issues = issuesOf(() => loadConfig({ file }));
  assert.equal(
    new ConfigError(issues).message,
    [
      `${file}: index.nlist: expected an integer ≥ 1, found "abc"`,
      `${file}: keyDtype: expected one of "float32", "float16", found "float64"`,
      `${file}: eval: expected an object, found 3`,
    ].join("\n"),
  );
});

Deno.test("out-of-range values are rejected with the allowed range", () => {
  const file = writeConfig(
    `{ "seqLen": 1, "index": { "nbits": 17, "m": 2.5 }, "eval": { "temperature": 0, "lambdas": [0.5, 1.5] } }`,
  );
  const issues = issuesOf(() => loadConfig({ file }));
  assert.deepEqual(issues.map((i) => [i.key, i.message]), [
    ["seqLen", "expected an integer in 2..65536, found 1"],
    ["index.nbits", "expected an integer in 1..16, found 17"],
    ["index.m", "expected an integer ≥ 1, found 2.5"],
    ["eval.temperature", "expected a number > 0, found 0"],
    ["eval.lambdas", "expected a non-empty list of numbers in [0, 1], found 1.5 at index 1"],
  ]);
});

Deno.test("stride larger than seqLen is an error naming both sources", () => {
  const file = writeConfig(`{ "seqLen": 64 }`);
  const [issue] = issuesOf(() => loadConfig({ file, flags: { stride: "100" } }));
  assert.equal(issue.source, "--stride");
  assert.equal(issue.key, "stride");
  assert.equal(
    issue.message,
    `expected an integer in 1..seqLen = 1..64 (seqLen from ${file}), found 100`,
  );
  // Equal is allowed.
  assert.equal(loadConfig({ file, flags: { stride: "64" } }).config.stride, 64);
});

Deno.test("flag strings are coerced to numbers, lists and null with the same error quality", () => {
  const { config, sources } = loadConfig({
    flags: {
      "max-tokens": "null",
      "eval.max-tokens": "1_000",
      lambdas: "0.25, 0.5",
      temperature: "2.5",
      factory: "none",
      seqLen: "1e3",
      "index.trainSize": "5000",
    },
  });
  assert.equal(config.maxTokens, null);
  assert.equal(config.eval.maxTokens, 1000);
  assert.deepEqual(config.eval.lambdas, [0.25, 0.5]);
  assert.equal(config.eval.temperature, 2.5);
  assert.equal(config.index.factory, null);
  assert.equal(config.seqLen, 1000);
  assert.equal(config.index.trainSize, 5000);
  assert.equal(sources["index.trainSize"], "--index.trainSize");

  const issues = issuesOf(() =>
    loadConfig({ flags: { nlist: "abc", "batch-size": "0", lambdas: "0.1,x", nlsit: "3" } })
  );
  assert.deepEqual(issues.map((i) => new ConfigError([i]).message), [
    "--nlsit: unknown option; did you mean --nlist?",
    '--nlist: index.nlist: expected an integer ≥ 1, found "abc"',
    "--batch-size: batchSize: expected an integer in 1..4096, found 0",
    '--lambdas: eval.lambdas: expected a non-empty list of numbers in [0, 1], found "0.1,x"',
  ]);
});

Deno.test("parseArgs declarations from configArgOptions feed loadConfig directly", () => {
  const { values } = parseArgs({
    args: ["--seq-len", "128", "--index.nlist", "64", "--config", "x", "--stride=32"],
    options: { ...configArgOptions(), config: { type: "string" } },
  });
  const { config } = loadConfig({ flags: values, ignoreFlags: ["config"] });
  assert.equal(config.seqLen, 128);
  assert.equal(config.stride, 32);
  assert.equal(config.index.nlist, 64);
});

Deno.test("coerceFlags turns parseArgs strings into a typed partial config on its own", () => {
  const { values, sources } = coerceFlags({ "seq-len": "64", nprobe: "4", verbose: true }, {
    ignore: ["verbose"],
  });
  assert.deepEqual(values, { seqLen: 64, index: { nprobe: 4 } });
  assert.deepEqual(sources, { seqLen: "--seq-len", "index.nprobe": "--nprobe" });
  assert.throws(
    () => coerceFlags({ metric: "cosine" }),
    new ConfigError([{
      source: "--metric",
      key: "index.metric",
      message: 'expected one of "l2", "ip", found "cosine"',
    }]),
  );
});

Deno.test("the defaults option replaces built-in defaults and is validated", () => {
  const { config, sources } = loadConfig({ defaults: { index: { nlist: 16 } } });
  assert.equal(config.index.nlist, 16);
  assert.equal(sources["index.nlist"], "defaults");
  const [issue] = issuesOf(() => loadConfig({ defaults: { seqLen: -1 } }));
  assert.equal(issue.source, "defaults");
  assert.equal(issue.key, "seqLen");
});

Deno.test("DEFAULT_CONFIG is frozen and describeConfigKeys covers every key with its flags", () => {
  assert.ok(Object.isFrozen(DEFAULT_CONFIG.index));
  assert.throws(() => {
    (DEFAULT_CONFIG.eval.lambdas as number[]).push(1);
  });
  const rows = describeConfigKeys();
  assert.equal(rows.length, 31); // tokenizer, eval.rerank and kvCache among them
  assert.deepEqual(rows.find((r) => r.key === "kvCache")!.flags, ["--kv-cache"]);
  const tokenizer = rows.find((r) => r.key === "tokenizer")!;
  assert.deepEqual(tokenizer.flags, ["--tokenizer"]);
  assert.equal(tokenizer.default, "null");
  const nlist = rows.find((r) => r.key === "index.nlist")!;
  assert.deepEqual(nlist.flags, ["--index.nlist", "--nlist"]);
  assert.equal(nlist.type, "an integer ≥ 1");
  assert.equal(nlist.default, "2048");
  // eval.maxTokens has no bare alias: --max-tokens belongs to the top-level key.
  const evalMax = rows.find((r) => r.key === "eval.maxTokens")!;
  assert.deepEqual(evalMax.flags, ["--eval.max-tokens"]);
  assert.equal(rows.find((r) => r.key === "stride")!.type, "an integer in 1..seqLen");
});

Deno.test("flagMap gives a command its own flag names for keys", () => {
  const flagMap = { corpus: "eval.corpus", "eval.corpus": "eval.corpus", k: "eval.k" };
  const { config, sources } = loadConfig({ flags: { corpus: "held.txt", k: "16" }, flagMap });
  assert.equal(config.eval.corpus, "held.txt");
  assert.equal(config.corpus, DEFAULT_CONFIG.corpus);
  assert.equal(sources["eval.corpus"], "--corpus");
  assert.equal(config.eval.k, 16);
  const issues = issuesOf(() => loadConfig({ flags: { nlist: "3", k: "0" }, flagMap }));
  assert.deepEqual(issues.map((i) => new ConfigError([i]).message), [
    "--nlist: unknown option",
    "--k: eval.k: expected an integer ≥ 1, found 0",
  ]);
});

const TABLE: OptionSpec[] = [
  {
    name: "datastore",
    short: "d",
    value: { kind: "string" },
    arg: "DIR",
    doc: "d",
    required: true,
  },
  { name: "context", value: { kind: "integer", min: 1, max: 100 }, default: 60, doc: "c" },
  { name: "json", doc: "j" },
  { key: "eval.k", default: 8 },
  { key: "index.nprobe" },
  { key: "seqLen" },
  { key: "eval.distance", only: ["exact", "faiss"] },
];

function parseError(argv: string[]): KnnError {
  try {
    parseCommandLine(argv, TABLE, 1);
  } catch (e) {
    assert.ok(e instanceof KnnError, String(e));
    return e;
  }
  assert.fail(`parsed: ${argv.join(" ")}`);
}

Deno.test("parseCommandLine splits options, settings and positionals by the table", () => {
  const p = parseCommandLine(
    ["-d", "ds", "--k=4", "--nprobe", "-1", "--json", "--seqLen", "512", "--", "--pos"],
    TABLE,
    1,
  );
  assert.deepEqual(p.options, { datastore: "ds", context: 60, json: true });
  // Settings stay strings for loadConfig, which reports them like any other flag.
  assert.deepEqual(p.flags, { k: "4", nprobe: "-1", seqLen: "512" });
  assert.deepEqual(p.positionals, ["--pos"]);
  assert.deepEqual(p.defaults, { eval: { k: 8 } });
  assert.equal(p.flagMap.k, "eval.k");
  assert.equal(p.flagMap["eval.k"], "eval.k");
  assert.equal(p.flagMap["seq-len"], "seqLen");
  const issues = issuesOf(() =>
    loadConfig({ flags: p.flags, flagMap: p.flagMap, defaults: p.defaults })
  );
  assert.deepEqual(issues.map((i) => new ConfigError([i]).message), [
    "--nprobe: index.nprobe: expected an integer ≥ 1, found -1",
  ]);
  assert.equal(
    loadConfig({ flags: {}, flagMap: p.flagMap, defaults: p.defaults }).config.eval.k,
    8,
    "the command's own default",
  );
});

Deno.test("parseCommandLine reports usage and value mistakes with their codes", () => {
  const cases: [string[], string, string][] = [
    [["--nprobee", "3"], "E_USAGE", "--nprobee: unknown option; did you mean --nprobe?"],
    [["-d", "x", "--k"], "E_USAGE", "--k: expected a value"],
    [["-d", "x", "--k", "--json"], "E_USAGE", "--k: expected a value"],
    [["--json=yes"], "E_USAGE", "--json: takes no value, found 'yes'"],
    [["--json"], "E_USAGE", "--datastore DIR is required"],
    [["-d", "x", "a", "b"], "E_USAGE", "unexpected argument 'b'"],
    [
      ["-d", "x", "--context", "-1"],
      "E_CONFIG",
      "--context: expected an integer in 1..100, found -1",
    ],
    [
      ["-d", "x", "--context", "many"],
      "E_CONFIG",
      '--context: expected an integer in 1..100, found "many"',
    ],
    [
      ["-d", "x", "--distance", "both"],
      "E_CONFIG",
      '--distance: eval.distance: expected one of "exact", "faiss", found "both"',
    ],
  ];
  for (const [argv, code, message] of cases) {
    const e = parseError(argv);
    assert.equal(e.code, code, argv.join(" "));
    assert.equal(e.message, message);
  }
});

Deno.test("describeOptions lists each option once with its short flag, range and default", () => {
  const rows = describeOptions(TABLE);
  assert.deepEqual(rows.map((r) => r.flags.trim()), [
    "-d, --datastore DIR",
    "--context N",
    "--json",
    "--k N",
    "--nprobe N",
    "--seq-len N",
    "--distance exact|faiss",
  ]);
  const k = rows[3];
  assert.deepEqual([k.default, k.range, k.aliases], ["8", "≥ 1", ["--eval.k"]]);
  assert.equal(rows[0].required, true);
  assert.equal(rows[5].range, "2..65536");
  assert.equal(rows[5].default, String(DEFAULT_CONFIG.seqLen));
});

Deno.test("planIndex takes its defaults from the schema and returns the config's shape", async () => {
  const { planIndex } = await import("../lib/datastore/mod.ts");
  const { params, warnings } = planIndex(10_000_000, 128);
  assert.deepEqual(warnings, []);
  // The manifest records these: the config's index section, with the factory actually built.
  const { factory, ...rest } = params;
  const { factory: _none, ...defaults } = DEFAULT_CONFIG.index;
  assert.equal(factory, `IVF${defaults.nlist},PQ${defaults.m}x${defaults.nbits}`);
  assert.deepEqual(rest, defaults);
  assert.equal(planIndex(1000, 128, { nprobe: 3, nlist: 4 }).params.nprobe, 3);
});
