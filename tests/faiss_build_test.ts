import assert from "node:assert/strict";
import {
  buildShim,
  findCachedShim,
  findToolchain,
  LIB_NAME,
  shimSourceHash,
} from "../lib/index/build.ts";
import { SHIM_ABI_VERSION } from "../lib/index/_shim_source.ts";

const MOD_URL = new URL("../lib/index/mod.ts", import.meta.url).href;

// Runs a script that uses the binding in a fresh Deno process with the given environment only.
function runBinding(code: string, env: Record<string, string>) {
  const dir = Deno.makeTempDirSync({ prefix: "knnlm_faiss_load_" });
  try {
    Deno.writeTextFileSync(`${dir}/main.ts`, code.replace("MOD", MOD_URL));
    const out = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", "--allow-all", `${dir}/main.ts`],
      env: { HOME: dir, ...env },
      clearEnv: true,
    }).outputSync();
    return { ok: out.success, stderr: new TextDecoder().decode(out.stderr) };
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("buildShim compiles into an empty cache once and reuses the build afterwards", () => {
  const root = Deno.makeTempDirSync({ prefix: "knnlm_shim_cache_" });
  try {
    const toolchain = findToolchain();
    assert.deepEqual(toolchain.missing, [], "run `deno task setup` first");
    const first = buildShim({ toolchain, cacheRoot: root });
    assert.equal(first.cached, false);
    assert.equal(first.path, `${root}/${first.key}/${LIB_NAME}`);
    const record = JSON.parse(Deno.readTextFileSync(`${root}/${first.key}/build.json`));
    assert.equal(record.sourceSha256, shimSourceHash());
    assert.equal(record.faissVersion, toolchain.faissVersion);
    // Only the finished build is left: the temporary directory was renamed into place.
    assert.deepEqual(Array.from(Deno.readDirSync(root), (e) => e.name), [first.key]);

    const second = buildShim({ toolchain, cacheRoot: root });
    assert.deepEqual(second, { ...first, cached: true, seconds: 0 });

    const lib = Deno.dlopen(first.path, {
      knnlm_shim_abi: { parameters: [], result: "i32" },
      knnlm_faiss_version: { parameters: [], result: "pointer" },
    });
    try {
      assert.equal(lib.symbols.knnlm_shim_abi(), SHIM_ABI_VERSION);
      const version = Deno.UnsafePointerView.getCString(lib.symbols.knnlm_faiss_version()!);
      assert.equal(version, toolchain.faissVersion);
    } finally {
      lib.close();
    }

    // Without a compiler the key cannot be computed; a cached build of this source still serves.
    const noCompiler = { ...toolchain, compiler: null, compilerVersion: null };
    assert.equal(findCachedShim(noCompiler, root).path, first.path);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("a bad KNNLM_FAISS_LIB fails with one E_SETUP error naming the path and the fix", () => {
  const r = runBinding(
    `import { faissVersion } from "MOD";
     try { faissVersion(); } catch (e) { console.error("code:", e.code, "path:", e.path); throw e; }`,
    { KNNLM_FAISS_LIB: "/nonexistent/libknnlm_faiss.so" },
  );
  assert.equal(r.ok, false);
  assert.ok(r.stderr.includes("code: E_SETUP path: /nonexistent/libknnlm_faiss.so"), r.stderr);
  assert.match(
    r.stderr,
    /cannot load the FAISS shim from KNNLM_FAISS_LIB=\/nonexistent\/libknnlm_faiss\.so/,
  );
  assert.match(r.stderr, /deno task setup/);
});

Deno.test("with no cached build and no compiler the loader's E_SETUP error lists every path tried", () => {
  const cache = Deno.makeTempDirSync({ prefix: "knnlm_empty_cache_" });
  try {
    const r = runBinding(
      `import { FaissIndex } from "MOD";
       try { FaissIndex.factory(4, "Flat"); } catch (e) {
         console.error(e.code, e.message, "\\ncause:", String(e.cause)); Deno.exit(3);
       }`,
      { KNNLM_CACHE_DIR: cache, PATH: "/nonexistent" },
    );
    assert.equal(r.ok, false);
    assert.ok(r.stderr.startsWith("E_SETUP cannot load the FAISS shim"), r.stderr);
    assert.match(r.stderr, /cannot load the FAISS shim \(libknnlm_faiss\.so\)\. Tried:/);
    assert.ok(r.stderr.includes(`${cache}/faiss-shim/*/${LIB_NAME}`), r.stderr);
    assert.match(r.stderr, /no compile: missing C\+\+ compiler \(g\+\+\)/);
    assert.match(r.stderr, /Fix: run `deno task setup`/);
    assert.match(r.stderr, /cause: Error: FAISS toolchain incomplete: .*searched compiler g\+\+/);
  } finally {
    Deno.removeSync(cache, { recursive: true });
  }
});
