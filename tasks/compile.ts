/**
 * `deno task compile`: build a standalone `knnlm` executable from `cli.ts` with `deno compile`,
 * then run `knnlm --help` to check that the result really is the CLI.
 *
 * `deno compile` joins the program to `denort`, Deno's slim runtime, which it downloads from
 * Deno's servers unless `DENORT_BIN` names a local copy (no npm package ships denort). The
 * FAISS shim is not embedded: its C++ source is, and the executable compiles it into the cache
 * on first use like any other import (or uses `$KNNLM_FAISS_LIB`).
 *
 * Usage: deno run -A tasks/compile.ts [--output dist/knnlm] [--target TRIPLE]
 *
 * @module
 */

import { parseArgs } from "node:util";

function say(msg: string): void {
  console.error(`compile: ${msg}`);
}

function main(): number {
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
  const root = new URL("..", import.meta.url).pathname;
  const output = values.output.startsWith("/") ? values.output : `${root}${values.output}`;
  const denort = Deno.env.get("DENORT_BIN");
  say(denort ? `runtime: DENORT_BIN=${denort}` : "runtime: denort downloaded by deno compile");

  const args = [
    "compile",
    "--allow-all",
    "--output",
    output,
    ...(values.target ? ["--target", values.target] : []),
    `${root}cli.ts`,
  ];
  say(`deno ${args.join(" ")}`);
  const started = performance.now();
  const built = new Deno.Command(Deno.execPath(), { args, cwd: root, stdin: "null" }).outputSync();
  const stderr = new TextDecoder().decode(built.stderr);
  if (!built.success) {
    console.error(stderr.trimEnd());
    say("deno compile failed");
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
  const check = new Deno.Command(output, { args: ["--help"], stdin: "null" }).outputSync();
  const help = new TextDecoder().decode(check.stdout);
  if (!check.success || !help.includes("Usage: knnlm")) {
    say(`${output} --help did not print the knnlm usage; it is not a working knnlm executable`);
    console.error(
      `  hint: DENORT_BIN must be Deno's denort runtime, not the deno CLI ` +
        `(got ${denort ?? "the downloaded denort"})`,
    );
    return 1;
  }
  say(`${output} --help works`);
  return 0;
}

if (import.meta.main) Deno.exit(main());
