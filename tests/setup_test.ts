/**
 * `deno task setup` runs before every `deno task knn`: it must say nothing when all is in
 * place, and say what it did when it did something.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const SETUP = fileURLToPath(new URL("../tasks/setup.ts", import.meta.url));

async function setup(cacheDir: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SETUP, "--no-install", ...args],
    env: { KNNLM_CACHE_DIR: cacheDir, NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("setup reports a compile once, then prints nothing while the shim is in place", async () => {
  const cacheDir = await Deno.makeTempDir({ prefix: "knnlm_setup_" });
  try {
    const first = await setup(cacheDir);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /^setup: compiled the FAISS shim in .* s: .*libknnlm_faiss\.so/);
    assert.ok(first.stderr.includes(join(cacheDir, "faiss-shim")), first.stderr);

    const again = await setup(cacheDir);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stdout + again.stderr, "", "nothing to report");

    const verbose = await setup(cacheDir, "--verbose");
    assert.equal(verbose.code, 0, verbose.stderr);
    assert.match(verbose.stderr, /setup: shim up to date \(cached\)/);
    assert.match(verbose.stderr, /setup: FAISS \S+ shim loads from /);
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("setup fails with one line and a fix when KNNLM_FAISS_LIB does not load", async () => {
  const cacheDir = await Deno.makeTempDir({ prefix: "knnlm_setup_" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SETUP, "--no-install"],
      env: { KNNLM_CACHE_DIR: cacheDir, KNNLM_FAISS_LIB: join(cacheDir, "none.so") },
      stdin: "null",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1);
    assert.match(stderr, /^setup: the FAISS shim does not load: /);
    assert.match(stderr, /\n {2}fix: /);
    assert.doesNotMatch(stderr, /\n\s+at /, "no stack trace");
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});
