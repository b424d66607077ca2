/**
 * `deno task setup`: find FAISS (installing it with apt-get on Debian/Ubuntu when missing and
 * permitted), then compile the FFI shim into the build cache and check that it loads.
 *
 * Usage: deno run -A tasks/setup.ts [--force] [--no-install] [--test-deps] [--verbose]
 *
 * Quiet when all is in place (every `deno task knn` runs it first): it prints only what it
 * changed (an install, a compile) and problems; `--verbose` also reports what it found.
 *
 * `--test-deps` (used by `deno task test`) also makes sure the interop tests can run: Debian's
 * `/usr/bin/python3` with numpy and FAISS (`python3-numpy python3-faiss`), which read what the
 * toolkit writes; the browser test of `knn serve`'s page: Debian's `chromium`, driven by
 * playwright-core; and, where apt-get may run (root or passwordless sudo), Slurm and MUNGE
 * (`slurm-wlm munge`) for the test that runs the example Slurm scripts on a one-node cluster.
 * They are test dependencies only, never needed by the toolkit itself.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  APT_PACKAGES,
  buildShim,
  type FaissToolchain,
  findToolchain,
  LIB_ENV,
} from "../lib/index/build.ts";
import { faissLibraryPath, faissVersion } from "../lib/index/mod.ts";
import { runSync } from "../lib/core/_run.ts";

const INSTALL_CMD = `sudo apt-get update && sudo apt-get install -y ${APT_PACKAGES.join(" ")}`;
const TEST_PACKAGES = ["python3-numpy", "python3-faiss"];
const TEST_PYTHON = "/usr/bin/python3";
/** The browser tests/serve_browser_test.ts launches (Debian's package; no downloaded build). */
const TEST_BROWSER = "/usr/bin/chromium";
const BROWSER_PACKAGES = ["chromium"];

function say(msg: string): void {
  console.error(`setup: ${msg}`);
}

let verbose = false;

/** Reports what was found (not a change, not a problem): only with --verbose. */
function note(msg: string): void {
  if (verbose) say(msg);
}

function fail(msg: string, hint: string): never {
  say(msg);
  console.error(`  fix: ${hint}`);
  Deno.exit(1);
}

function isDebianLike(): boolean {
  try {
    const text = Deno.readTextFileSync("/etc/os-release");
    const ids = [...text.matchAll(/^(?:ID|ID_LIKE)=(.*)$/gm)].map((m) => m[1].replace(/"/g, ""));
    return ids.some((v) => /\b(debian|ubuntu)\b/.test(v));
  } catch {
    return false;
  }
}

// Root runs apt-get directly; others only with passwordless sudo (never prompts).
function aptPrefix(): string[] | null {
  if (Deno.uid() === 0) return [];
  if (runSync("sudo", ["-n", "true"]).ok) return ["sudo", "-n"];
  return null;
}

function aptInstall(prefix: string[], packages: readonly string[] = APT_PACKAGES): void {
  const steps = [
    ["apt-get", "update", "-qq"],
    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", ...packages],
  ];
  for (const step of steps) {
    const cmd = [...prefix, ...step];
    say(`running: ${cmd.join(" ")}`);
    const status = new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      env: { DEBIAN_FRONTEND: "noninteractive" },
      stdin: "null",
    }).outputSync();
    if (!status.success) {
      console.error(new TextDecoder().decode(status.stderr).trimEnd());
      fail(
        `'${cmd.join(" ")}' failed (exit ${status.code})`,
        `sudo apt-get update && sudo apt-get install -y ${packages.join(" ")}`,
      );
    }
  }
}

// Installs the apt packages when that is possible here; otherwise exits with the command.
function installOrExit(reason: string): void {
  if (!isDebianLike()) {
    fail(
      `${reason}; automatic install needs Debian or Ubuntu`,
      `install FAISS 1.7 (headers and libfaiss), OpenBLAS and a C++ compiler, then re-run ` +
        `\`deno task setup\`; or set ${LIB_ENV} to a compiled shim`,
    );
  }
  const prefix = aptPrefix();
  if (prefix === null) {
    fail(`${reason}; not root and sudo needs a password`, INSTALL_CMD);
  }
  say(`${reason}; installing ${APT_PACKAGES.join(" ")} with apt-get`);
  aptInstall(prefix);
}

// The interop tests read our files with numpy and Python FAISS (Debian's python3-*).
function ensureTestDeps(noInstall: boolean): void {
  if (runSync(TEST_PYTHON, ["-c", "import numpy, faiss"]).ok) {
    note(`test interop: ${TEST_PYTHON} has numpy and faiss`);
    return;
  }
  const cmd = `sudo apt-get update && sudo apt-get install -y ${TEST_PACKAGES.join(" ")}`;
  const reason = `test interop: ${TEST_PYTHON} lacks numpy or faiss`;
  const prefix = isDebianLike() && !noInstall ? aptPrefix() : null;
  if (prefix === null) fail(reason, cmd);
  say(`${reason}; installing ${TEST_PACKAGES.join(" ")} with apt-get`);
  aptInstall(prefix, TEST_PACKAGES);
  if (!runSync(TEST_PYTHON, ["-c", "import numpy, faiss"]).ok) fail(`${reason} after install`, cmd);
}

// The page test of `knn serve` drives Debian's chromium.
function ensureBrowser(noInstall: boolean): void {
  const runs = () => runSync(TEST_BROWSER, ["--version"]).ok;
  if (runs()) {
    note(`test browser: ${TEST_BROWSER} runs`);
    return;
  }
  const cmd = `sudo apt-get update && sudo apt-get install -y ${BROWSER_PACKAGES.join(" ")}`;
  const reason = `test browser: no working ${TEST_BROWSER}`;
  const prefix = isDebianLike() && !noInstall ? aptPrefix() : null;
  if (prefix === null) fail(reason, cmd);
  say(`${reason}; installing ${BROWSER_PACKAGES.join(" ")} with apt-get`);
  aptInstall(prefix, BROWSER_PACKAGES);
  if (!runs()) fail(`${reason} after install`, cmd);
}

const SLURM_PACKAGES = ["slurm-wlm", "munge"];
const SLURM_COMMANDS = ["slurmctld", "slurmd", "sbatch", "munged"];

// tests/slurm_test.ts starts munged, slurmctld and slurmd on localhost (as root). Where apt-get
// may not run, the test is skipped (it needs root anyway): say so, do not fail.
function ensureSlurm(noInstall: boolean): void {
  const missing = SLURM_COMMANDS.filter((c) => !runSync("sh", ["-c", `command -v ${c}`]).ok);
  if (missing.length === 0) {
    note(`slurm test: ${SLURM_COMMANDS.join(", ")} found`);
    return;
  }
  const reason = `slurm test: missing ${missing.join(", ")}`;
  const prefix = isDebianLike() && !noInstall ? aptPrefix() : null;
  if (prefix === null) {
    say(
      `${reason}; the Slurm test needs them (and root): apt-get install ${
        SLURM_PACKAGES.join(" ")
      }`,
    );
    return;
  }
  say(`${reason}; installing ${SLURM_PACKAGES.join(" ")} with apt-get`);
  aptInstall(prefix, SLURM_PACKAGES);
}

function describe(tc: FaissToolchain): string {
  const pkg = tc.packageVersion ? ` (libfaiss-dev ${tc.packageVersion})` : "";
  return `FAISS ${tc.faissVersion ?? "?"}${pkg} at ${tc.library}, compiler ${tc.compilerVersion}`;
}

function main(): void {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      force: { type: "boolean" },
      "no-install": { type: "boolean" },
      "test-deps": { type: "boolean" },
      verbose: { type: "boolean", short: "v" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "Usage: deno task setup [--force] [--no-install] [--test-deps] [--verbose]\n" +
        "  --force       recompile the shim even when the cache has it\n" +
        "  --no-install  never run apt-get; print the command instead\n" +
        "  --test-deps   also ensure /usr/bin/python3 has numpy and faiss (interop tests),\n" +
        "                /usr/bin/chromium (the browser test of knn serve), and Slurm and\n" +
        "                MUNGE where apt-get may run (the Slurm test)\n" +
        "  --verbose     also say what was found when nothing needs doing",
    );
    return;
  }

  verbose = !!values.verbose;
  if (values["test-deps"]) {
    ensureTestDeps(!!values["no-install"]);
    ensureBrowser(!!values["no-install"]);
    ensureSlurm(!!values["no-install"]);
  }
  const explicit = Deno.env.get(LIB_ENV);
  if (explicit) {
    note(`${LIB_ENV}=${explicit} is set; checking it instead of building`);
    checkLoads(
      `${LIB_ENV}=${explicit}: set it to a shim built by \`deno task setup\`, or unset it`,
    );
    return;
  }

  let tc = findToolchain();
  if (tc.missing.length > 0) {
    const reason = `missing ${tc.missing.join(", ")}`;
    if (values["no-install"]) fail(reason, INSTALL_CMD);
    installOrExit(reason);
    tc = findToolchain();
    if (tc.missing.length > 0) {
      fail(`still missing after install: ${tc.missing.join(", ")}`, INSTALL_CMD);
    }
  }
  note(describe(tc));

  let build;
  try {
    build = buildShim({ toolchain: tc, force: values.force });
  } catch (e) {
    // A link failure usually means BLAS/LAPACK is missing (libopenblas-dev).
    const msg = e instanceof Error ? e.message : String(e);
    if (values["no-install"] || !isDebianLike() || aptPrefix() === null) {
      fail(msg, INSTALL_CMD);
    }
    installOrExit(`shim build failed (${msg.split("\n")[0]})`);
    build = buildShim({ toolchain: findToolchain(), force: true });
  }
  if (build.cached) note(`shim up to date (cached): ${build.path}`);
  else {say(
      `compiled the FAISS shim in ${build.seconds.toFixed(1)} s: ${build.path} (${describe(tc)})`,
    );}
  checkLoads("deno task setup --force");
}

// The shim must load, not just exist: report a failure as one line plus the fix.
function checkLoads(hint: string): void {
  let version: string;
  try {
    version = faissVersion();
  } catch (e) {
    fail(`the FAISS shim does not load: ${e instanceof Error ? e.message : e}`, hint);
  }
  note(`FAISS ${version} shim loads from ${faissLibraryPath()}`);
}

if (import.meta.main) main();
