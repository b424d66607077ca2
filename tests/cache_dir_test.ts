import assert from "node:assert/strict";

const SCRIPT = new URL("./fixtures/cache_dirs.ts", import.meta.url).pathname;

/** The cache directories a fresh process computes with exactly `env` (plus Deno's own dir). */
async function cacheDirsWith(env: Record<string, string>) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-config", "--allow-all", "--quiet", SCRIPT],
    env: { DENO_DIR: Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`, ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout)) as { root: string; shims: string };
}

Deno.test("the cache root is KNNLM_CACHE_DIR, else XDG_CACHE_HOME/knnlm, else ~/.cache/knnlm", async () => {
  const all = { KNNLM_CACHE_DIR: "/c/knn", XDG_CACHE_HOME: "/c/xdg", HOME: "/c/home" };
  assert.deepEqual(await cacheDirsWith(all), { root: "/c/knn", shims: "/c/knn/faiss-shim" });
  assert.equal((await cacheDirsWith({ ...all, KNNLM_CACHE_DIR: "" })).root, "/c/xdg/knnlm");
  assert.equal(
    (await cacheDirsWith({ ...all, KNNLM_CACHE_DIR: "", XDG_CACHE_HOME: "" })).root,
    "/c/home/.cache/knnlm",
  );
  assert.equal((await cacheDirsWith({ HOME: "/c/home" })).shims, "/c/home/.cache/knnlm/faiss-shim");
});
