import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KnnError } from "../lib/core/errors.ts";
import { sha256File } from "../lib/core/_hash.ts";
import { BUNDLED_MODELS, bundledModelPath, ensureModelFile } from "../lib/model/default_model.ts";
import { serveFolder } from "./_serve.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const MODEL = "models/byte_gpt.onnx";

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "knnlm_default_model_" });
}

async function listAll(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory) out.push(...(await listAll(join(dir, e.name))).map((n) => `${e.name}/${n}`));
    else out.push(e.name);
  }
  return out.sort();
}

Deno.test("the recorded sha256 of every bundled model matches the file in the checkout", async () => {
  assert.ok(Object.keys(BUNDLED_MODELS).includes(MODEL));
  for (const [relative, sha256] of Object.entries(BUNDLED_MODELS)) {
    assert.equal(
      await sha256File(join(ROOT, relative)),
      sha256,
      `${relative} changed: update its sha256 in lib/model/default_model.ts`,
    );
  }
});

Deno.test("a local toolkit uses the model beside its code and never fetches", async () => {
  assert.equal(bundledModelPath(MODEL), join(ROOT, MODEL));
  // A missing path is left for the reader to report: no fetch, no error here.
  await ensureModelFile(join(ROOT, "models/no_such.onnx"));
});

Deno.test("a toolkit loaded by URL fetches its model once into the cache and checks it", async () => {
  const cacheDir = await tempDir();
  await using served = serveFolder(ROOT);
  try {
    const opts = { toolkitUrl: served.url, cacheDir };
    const path = bundledModelPath(MODEL, opts);
    assert.ok(path.startsWith(join(cacheDir, "models")), path);
    assert.ok(path.endsWith("byte_gpt.onnx"), path);

    await ensureModelFile(path, opts);
    assert.equal(await sha256File(path), BUNDLED_MODELS[MODEL]);
    assert.deepEqual(served.requests, [`/${MODEL}`]);
    await ensureModelFile(path, opts);
    assert.equal(served.requests.length, 1, "a verified cached copy is not fetched again");
    assert.deepEqual(await listAll(cacheDir), [path.slice(cacheDir.length + 1)], "no temp files");

    // A damaged cached copy is replaced.
    await Deno.writeFile(path, new Uint8Array([1, 2, 3]));
    await ensureModelFile(path, opts);
    assert.equal(served.requests.length, 2);
    assert.equal(await sha256File(path), BUNDLED_MODELS[MODEL]);

    // Other paths are not the toolkit's business.
    await ensureModelFile(join(cacheDir, "mine.onnx"), opts);
    assert.equal(served.requests.length, 2);
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("fetch failures name the URL: offline → E_IO, missing → E_NOT_FOUND, altered → E_CORRUPT", async () => {
  const cacheDir = await tempDir();
  try {
    // Offline: a port nothing listens on any more.
    const gone = serveFolder(ROOT);
    await gone.close();
    const offline = { toolkitUrl: gone.url, cacheDir };
    await assert.rejects(ensureModelFile(bundledModelPath(MODEL, offline), offline), (e) => {
      assert.ok(KnnError.is(e, "E_IO"), String(e));
      assert.ok(e.message.includes(`${gone.url}${MODEL}`), e.message);
      return true;
    });

    await using empty = serveFolder(cacheDir);
    const missing = { toolkitUrl: empty.url, cacheDir };
    await assert.rejects(ensureModelFile(bundledModelPath(MODEL, missing), missing), (e) => {
      assert.ok(KnnError.is(e, "E_NOT_FOUND"), String(e));
      assert.ok(e.message.includes(`${empty.url}${MODEL}`), e.message);
      return true;
    });

    await using altered = serveFolder(ROOT, () => new Response(new Uint8Array(64)));
    const bad = { toolkitUrl: altered.url, cacheDir };
    const path = bundledModelPath(MODEL, bad);
    await assert.rejects(ensureModelFile(path, bad), (e) => {
      assert.ok(KnnError.is(e, "E_CORRUPT"), String(e));
      assert.ok(e.message.includes(`${altered.url}${MODEL}`), e.message);
      return true;
    });
    assert.deepEqual(await listAll(cacheDir), [], "nothing is cached from a failed fetch");
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("a toolkit loaded by URL refuses a relative default it cannot fetch with a known hash", () => {
  assert.throws(
    () => bundledModelPath("models/other.onnx", { toolkitUrl: "https://example.org/knnlm/" }),
    (e) => KnnError.is(e, "E_CONFIG") && e.key === "model",
  );
});
