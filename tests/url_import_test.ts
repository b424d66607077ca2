/**
 * The toolkit imported by URL, as the design card says it is used: the checkout is served over
 * loopback HTTP, and scripts in temporary folders without `deno.json` import it and run with
 * exactly the permission flags the README's table gives for what they import.
 */
import assert from "node:assert/strict";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { ONNXRUNTIME_NODE_VERSION } from "../lib/core/version.ts";
import { BUNDLED_MODELS } from "../lib/model/default_model.ts";
import { ort } from "../lib/model/_ort.ts";
import { type Served, serveFolder } from "./_serve.ts";
import { tempDir } from "./_tmp.ts";
import { buildTinyDatastore } from "./_tiny_datastore.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** The README's permission table: imported module → flags, with `HOST` still in them. */
async function permissionTable(): Promise<Map<string, string[]>> {
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const rows = new Map<string, string[]>();
  for (const line of readme.split("\n")) {
    const m = /^\| `([\w/]*mod\.ts)` [^|]*\| `(--allow[^`]*)` *\|$/.exec(line);
    if (m) rows.set(m[1], m[2].split(/\s+/));
  }
  return rows;
}

/**
 * Runs `source` (with `BASE/` → the served toolkit) in a fresh folder with the README's flags
 * and returns the JSON it printed last; the folder (the script's own output) is then removed.
 */
async function runByUrl(
  served: Served,
  module: string,
  source: string,
  cacheDir: string,
): Promise<Record<string, unknown>> {
  const flags = (await permissionTable()).get(module);
  assert.ok(flags, `README's permission table has no row for ${module}`);
  const host = new URL(served.url).host;
  const dir = await Deno.makeTempDir({ prefix: "knnlm_consumer_" });
  await Deno.writeTextFile(join(dir, "main.ts"), source.replaceAll("BASE/", served.url));
  const out = await new Deno.Command(Deno.execPath(), {
    // --no-config: whatever folders above the temp dir hold, no deno.json applies.
    args: [
      "run",
      "--no-config",
      `--allow-import=${host}`,
      ...flags.map((f) => f.replace("HOST", host)),
      "main.ts",
      dir,
    ],
    cwd: dir,
    env: { KNNLM_CACHE_DIR: cacheDir, NO_COLOR: "1" },
    stdin: "null",
  }).output();
  try {
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.ok(
      out.success,
      `${module} with ${flags.join(" ")} exited ${out.code}:\n${stderr.slice(-3000)}`,
    );
    return JSON.parse(stdout.trim().split("\n").at(-1) ?? "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function withTemp<T>(f: (cacheDir: string) => Promise<T>): Promise<T> {
  const cacheDir = await Deno.makeTempDir({ prefix: "knnlm_cache_" });
  try {
    return await f(cacheDir);
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
}

Deno.test("every import in the toolkit's own modules is relative, node: or a pinned npm: specifier", async () => {
  const bad: string[] = [];
  const specifier =
    /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|import\.meta\.resolve\(\s*)"([^"]+)"/g;
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      const path = join(dir, e.name);
      if (e.isDirectory) await walk(path);
      else if (path.endsWith(".ts")) {
        // Doc comments hold usage examples (`from "@knnlm/knnlm"`), not imports.
        const code = (await Deno.readTextFile(path)).replace(/\/\*\*[\s\S]*?\*\//g, "");
        for (const [, s] of code.matchAll(specifier)) {
          const ok = s.startsWith("./") || s.startsWith("../") || s.startsWith("node:") ||
            /^npm:(@[\w.-]+\/)?[\w.-]+@\d+\.\d+\.\d+(\/.*)?$/.test(s);
          if (!ok) bad.push(`${relative(ROOT, path)}: "${s}"`);
        }
      }
    }
  };
  await walk(join(ROOT, "lib"));
  for (const f of ["mod.ts", "cli.ts"]) {
    const code = (await Deno.readTextFile(join(ROOT, f))).replace(/\/\*\*[\s\S]*?\*\//g, "");
    for (const [, s] of code.matchAll(specifier)) {
      if (!s.startsWith("./") && !s.startsWith("node:")) bad.push(`${f}: "${s}"`);
    }
  }
  assert.deepEqual(bad, [], "bare or unpinned specifiers need an import map, which URLs lack");

  const ortSource = await Deno.readTextFile(join(ROOT, "lib/model/_ort.ts"));
  assert.ok(ortSource.includes(`"npm:onnxruntime-node@${ONNXRUNTIME_NODE_VERSION}"`));
  assert.equal(ort.env.versions.node, ONNXRUNTIME_NODE_VERSION);
});

Deno.test("each layer imported by URL runs with exactly the flags the README lists for it", async () => {
  await using served = serveFolder(ROOT);

  const storage = await withTemp((cache) =>
    runByUrl(
      served,
      "lib/storage/mod.ts",
      `import { MappedArray } from "BASE/lib/storage/mod.ts";
       const path = Deno.args[0] + "/x.npy";
       { using a = MappedArray.create(path, { dtype: "<f4", shape: [4, 2] });
         a.view(0, 4).set([1, 2, 3, 4, 5, 6, 7, 8]); }
       using b = MappedArray.open(path);
       console.log(JSON.stringify({ shape: b.shape, sum: b.view(0, 4).reduce((s, x) => s + x, 0) }));`,
      cache,
    )
  );
  assert.deepEqual(storage, { shape: [4, 2], sum: 36 });

  const corpus = await withTemp((cache) =>
    runByUrl(
      served,
      "lib/corpus/mod.ts",
      `import { loadCorpus } from "BASE/lib/corpus/mod.ts";
       const c = await loadCorpus("brown:valid");
       console.log(JSON.stringify({ name: c.name, n: c.tokens.length }));`,
      cache,
    )
  );
  assert.equal(corpus.name, "brown:valid");
  assert.ok((corpus.n as number) > 100_000, `Brown valid has ${corpus.n} tokens`);

  const index = await withTemp((cache) =>
    runByUrl(
      served,
      "lib/index/mod.ts",
      `import { FaissIndex } from "BASE/lib/index/mod.ts";
       const d = 8, n = 1024;
       let s = 7;
       const keys = new Float32Array(n * d).map(() => (s = (s * 48271) % 2147483647) / 2147483647);
       using index = FaissIndex.ivfpq({ d, nlist: 4, m: 2, nbits: 4 });
       await index.trainAsync(keys);
       await index.addWithIdsAsync(keys, BigInt64Array.from({ length: n }, (_, i) => BigInt(i)));
       index.nprobe = 4;
       const { labels } = await index.searchAsync(keys.subarray(5 * d, 6 * d), 8);
       index.write(Deno.args[0] + "/k.index");
       console.log(JSON.stringify({ labels: Array.from(labels, Number), ntotal: Number(index.ntotal) }));`,
      cache,
    )
  );
  assert.equal(index.ntotal, 1024);
  assert.ok((index.labels as number[]).includes(5), `${index.labels}`);

  const model = await withTemp(async (cache) => {
    const r = await runByUrl(
      served,
      "lib/model/mod.ts",
      `import { loadConfig } from "BASE/lib/config/mod.ts";
       import { encodeBytes, OnnxLm } from "BASE/lib/model/mod.ts";
       const { config } = loadConfig();
       using lm = await OnnxLm.open(config.model);
       const t = Int32Array.from(encodeBytes("The jury said"));
       const { logits, keys } = await lm.run(t, 1, t.length);
       console.log(JSON.stringify({ path: config.model, vocab: lm.vocabSize, d: lm.dModel,
         logits: logits.length, keys: keys.length }));`,
      cache,
    );
    assert.ok((r.path as string).startsWith(join(cache, "models")), `${r.path}`);
    return r;
  });
  assert.deepEqual(
    { ...model, path: undefined },
    { path: undefined, vocab: 256, d: 192, logits: 13 * 256, keys: 13 * 192 },
  );
});

Deno.test("a script without deno.json builds a datastore with the default model by URL and queries it with KnnLm", async () => {
  await using served = serveFolder(ROOT);
  await withTemp(async (cache) => {
    // Corpus: 4000 bytes of real English (this repository's README), as a user's text file.
    // Windows of 64 at stride 32: row 1023 ends the window [960, 1024), so querying with
    // exactly those 64 tokens reproduces its key.
    const run = await runByUrl(
      served,
      "mod.ts",
      `import { buildIndex, KnnLm, loadConfig } from "BASE/mod.ts";
       const dir = Deno.args[0];
       const text = await (await fetch("BASE/README.md")).text();
       // Printable ASCII only, so 4000 characters are 4000 byte tokens.
       await Deno.writeTextFile(dir + "/corpus.txt", text.replace(/[^ -~]+/g, " ").slice(0, 4000));
       const { config } = loadConfig({ defaults: {
         corpus: dir + "/corpus.txt", out: dir + "/ds", seqLen: 64, stride: 32, threads: 1,
         index: { nlist: 8, m: 8, nbits: 6, nprobe: 8, trainSize: 4000 },
       } });
       const manifest = await buildIndex(config);
       using lm = await KnnLm.open({ datastore: config.out, k: 8, lambda: 0.5 });
       const r = await lm.next(lm.corpusTokens(960, 1024));
       const sum = (p) => p.reduce((a, b) => a + b, 0);
       console.log(JSON.stringify({
         model: manifest.model.path, sha256: manifest.model.sha256, shape: manifest.keys.shape,
         ntotal: manifest.index.ntotal, neighbours: r.neighbours,
         sums: [sum(r.lm), sum(r.knn), sum(r.mixed)],
       }));`,
      cache,
    );
    const j = run as {
      model: string;
      sha256: string;
      shape: number[];
      ntotal: number;
      neighbours: { row: number; distance: number }[];
      sums: number[];
    };
    assert.ok(j.model.startsWith(join(cache, "models")), j.model);
    assert.equal(j.sha256, BUNDLED_MODELS["models/byte_gpt.onnx"]);
    assert.deepEqual(j.shape, [3999, 192]);
    assert.equal(j.ntotal, 3999);
    assert.equal(j.neighbours[0].row, 1023, JSON.stringify(j.neighbours));
    assert.ok(j.neighbours[0].distance < 1e-3, `own key at distance ${j.neighbours[0].distance}`);
    for (const s of j.sums) assert.ok(Math.abs(s - 1) < 1e-9, `sums ${j.sums}`);
    const fetched = served.requests.filter((p) => p === "/models/byte_gpt.onnx");
    assert.equal(fetched.length, 1, "the model is fetched once, then read from the cache");
  });
});

Deno.test("the serve layer imported by URL serves its embedded page and answers the API", async () => {
  await using served = serveFolder(ROOT);
  await using tmp = tempDir("knnlm_serve_url_");
  const { dir } = await buildTinyDatastore(tmp.path, 1000);
  const r = await withTemp((cache) =>
    runByUrl(
      served,
      "lib/serve/mod.ts",
      `import { serve } from "BASE/lib/serve/mod.ts";
       await using server = await serve({ datastore: ${JSON.stringify(dir)}, port: 0 });
       const page = await (await fetch(server.url)).text();
       const js = await (await fetch(new URL("app.js", server.url))).text();
       const res = await fetch(new URL("v1/next", server.url), {
         method: "POST",
         headers: { "content-type": "application/json" },
         body: JSON.stringify({ text: "the cat", k: 3 }),
       });
       const next = await res.json();
       console.log(JSON.stringify({ page: page.includes("kNN-LM explorer"),
         js: js.includes("/v1/score"), status: res.status, neighbours: next.neighbours.length }));`,
      cache,
    )
  );
  assert.deepEqual(r, { page: true, js: true, status: 200, neighbours: 3 });
  // The page's files are text imports: fetched with the code, not read from a folder.
  for (const f of ["index.html", "app.js", "style.css"]) {
    assert.ok(served.requests.includes(`/lib/serve/assets/${f}`), `${f} fetched by URL`);
  }
});
