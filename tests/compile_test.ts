/**
 * `deno task compile`. Without `denort` (Deno's slim runtime; not reachable here) no working
 * executable can be made, so these tests check what can be checked: the exact `deno compile`
 * command line, what `deno compile` embeds (it still builds, onto the `deno` binary given as
 * `DENORT_BIN`, which the task then rejects and removes), and that the CLI works when run as the
 * executable runs it — from another directory, out of a folder holding only the module graph
 * and the `--include`d files.
 */
import assert from "node:assert/strict";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { compileArgs, INCLUDED_FILES, isKnnUsage, ROOT } from "../tasks/compile.ts";

const decode = (b: Uint8Array) => new TextDecoder().decode(b);

async function deno(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: opts.cwd,
    env: { NO_COLOR: "1", ...opts.env },
    stdin: "null",
  }).output();
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

Deno.test("deno compile gets --allow-all, the bundled model as --include, the output and cli.ts", () => {
  assert.deepEqual(INCLUDED_FILES, ["models/byte_gpt.onnx"]);
  assert.deepEqual(compileArgs({ output: "dist/knnlm", root: "/src" }), [
    "compile",
    "--allow-all",
    "--include",
    "/src/models/byte_gpt.onnx",
    "--output",
    "/src/dist/knnlm",
    "/src/cli.ts",
  ]);
  assert.deepEqual(
    compileArgs({ output: "/tmp/k", target: "aarch64-unknown-linux-gnu", root: "/src" }),
    [
      "compile",
      "--allow-all",
      "--include",
      "/src/models/byte_gpt.onnx",
      "--output",
      "/tmp/k",
      "--target",
      "aarch64-unknown-linux-gnu",
      "/src/cli.ts",
    ],
  );
  assert.equal(compileArgs({ output: "x" }).at(-1), join(ROOT, "cli.ts"));
});

Deno.test("the compile check accepts the knn CLI's --help and rejects the deno CLI's", async () => {
  const knn = await deno(["run", "-A", join(ROOT, "cli.ts"), "--help"]);
  assert.equal(knn.code, 0, knn.stderr);
  assert.ok(isKnnUsage(knn.stdout), knn.stdout.slice(0, 300));
  const plain = await deno(["--help"]);
  assert.ok(!isKnnUsage(plain.stdout), "the deno CLI's help is not knn's");
});

Deno.test("deno compile embeds the code, the npm packages and the model; a non-working result is removed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_compile_" });
  try {
    const output = join(dir, "dist", "knnlm");
    // DENORT_BIN = the deno CLI: deno compile succeeds, but the result runs as `deno`.
    const r = await deno(["run", "-A", join(ROOT, "tasks/compile.ts"), "--output", output], {
      env: { DENORT_BIN: Deno.execPath() },
    });
    assert.equal(r.code, 1, r.stderr);
    const listing = r.stderr.slice(r.stderr.indexOf("Embedded Files"));
    for (const part of ["cli.ts", "deno.json", "lib", "models/byte_gpt.onnx", "node_modules"]) {
      assert.ok(listing.includes(part), `${part} not embedded:\n${listing.slice(0, 2000)}`);
    }
    assert.match(r.stderr, /did not print the knn usage/);
    assert.match(r.stderr, /removed /);
    await assert.rejects(Deno.stat(output), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(dirname(output)), Deno.errors.NotFound, "empty dist/ removed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the CLI runs from just the embedded files, from another directory, with the bundled model", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "knnlm_image_" });
  try {
    // The executable's file system: the module graph of cli.ts plus the --include'd files.
    const image = join(tmp, "image");
    const info = JSON.parse((await deno(["info", "--json", join(ROOT, "cli.ts")])).stdout);
    const files = (info.modules as { specifier: string }[])
      .filter((m) => m.specifier.startsWith("file:"))
      .map((m) => relative(ROOT, fileURLToPath(m.specifier)));
    assert.ok(files.includes("lib/index/_shim_source.ts"), "the shim source is in the graph");
    for (const f of [...files, ...INCLUDED_FILES]) {
      await Deno.mkdir(dirname(join(image, f)), { recursive: true });
      await Deno.copyFile(join(ROOT, f), join(image, f));
    }
    const work = join(tmp, "work");
    await Deno.mkdir(work);
    const env = { KNNLM_CACHE_DIR: join(tmp, "cache") };
    const knn = (...args: string[]) =>
      deno(["run", "--no-config", "-A", join(image, "cli.ts"), ...args], { cwd: work, env });

    const model = join(image, "models/byte_gpt.onnx");
    const inspect = await knn("model", "inspect", model);
    assert.equal(inspect.code, 0, inspect.stderr);
    assert.match(inspect.stdout, /ff_input/);

    const build = await knn(
      "build-index",
      ...["--max-tokens", "3000", "--seq-len", "64", "--stride", "32", "--threads", "1"],
      ...["--nlist", "8", "--m", "8", "--nbits", "6", "--train-size", "3000", "--out", "ds"],
    );
    assert.equal(build.code, 0, build.stderr);
    const manifest = JSON.parse(await Deno.readTextFile(join(work, "ds", "datastore.json")));
    assert.equal(manifest.model.path, model, "the default model is the embedded file");
    assert.equal(manifest.corpus.spec, "brown:train");
    assert.deepEqual(manifest.keys.shape, [2999, 192]);
    assert.equal(manifest.index.ntotal, 2999);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
