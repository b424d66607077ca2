/**
 * Real child processes for the reliability tests: the `knn` CLI run to completion, or run under
 * `fixtures/stop_at.ts` so that it stops itself at a chosen progress line and the test can send
 * it signals at that point.
 *
 * @module
 */

import { join } from "node:path";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const STOP_AT = new URL("./fixtures/stop_at.ts", import.meta.url).pathname;
const SELF_SEARCH = new URL("./fixtures/self_search.ts", import.meta.url).pathname;
/** The tiny byte-level test model (d = 64, vocabulary 256). */
export const TINY = new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname;

/** Exit status, stdout and stderr of a finished child. */
export interface Finished {
  /** Exit status (128 + n for a process killed by signal n). */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/** Runs `knn ARGS…` to completion. */
export async function knn(...args: string[]): Promise<Finished> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code, // 128 + n when killed by signal n (135: SIGBUS)
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** Runs the reader fixture on DIR: exit 0 all keys found themselves, 3 wrong answers, 1 error. */
export async function selfSearch(dir: string): Promise<Finished & { result: unknown }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SELF_SEARCH, dir],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const stdout = dec.decode(out.stdout);
  let result: unknown;
  try {
    result = JSON.parse(stdout.trim().split("\n").at(-1) ?? "");
  } catch {
    result = undefined;
  }
  return {
    code: out.code, // 128 + n when killed by signal n (135: SIGBUS)
    stdout,
    stderr: dec.decode(out.stderr),
    result,
  };
}

/**
 * `knn ARGS…` that stops itself (SIGSTOP) after writing a stderr line matching each of `stopAt`
 * in turn. Its stderr is collected as it comes.
 */
export class StoppingChild {
  /** Process id of the child. */
  readonly pid: number;
  #stderr = "";
  #done: Promise<Finished>;

  constructor(args: string[], stopAt: string[]) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", STOP_AT, ...args],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", KNNLM_STOP_AT: JSON.stringify(stopAt) },
    }).spawn();
    this.pid = child.pid;
    const dec = new TextDecoder();
    const err = (async () => {
      for await (const chunk of child.stderr) this.#stderr += dec.decode(chunk);
    })();
    const out = new Response(child.stdout).text();
    this.#done = (async () => {
      const s = await child.status;
      this.#exited = true;
      await err;
      return { code: s.code, stdout: await out, stderr: this.#stderr };
    })();
  }

  /** Standard error so far. */
  get stderr(): string {
    return this.#stderr;
  }

  #exited = false;

  /** The child's scheduler state from /proc (`"T"`: stopped), or "" once it has exited. */
  #state(): string {
    try {
      // /proc/<pid>/stat: "pid (comm) S …"; comm may hold spaces, the state follows the ')'.
      const stat = Deno.readTextFileSync(`/proc/${this.pid}/stat`);
      const i = stat.lastIndexOf(")");
      return stat.slice(i + 2, i + 3);
    } catch {
      return "";
    }
  }

  /** Waits until the child has stopped itself; throws if it exits first or takes over 2 min. */
  async stopped(): Promise<void> {
    const t0 = Date.now();
    while (this.#state() !== "T") {
      if (this.#exited || this.#state() === "Z") {
        throw new Error(`child exited before stopping:\n${this.#stderr}`);
      }
      if (Date.now() - t0 > 120_000) throw new Error(`child never stopped:\n${this.#stderr}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Sends `signal`, then SIGCONT so the stopped child handles it. */
  async signal(signal: Deno.Signal): Promise<void> {
    Deno.kill(this.pid, signal);
    await this.resume();
  }

  /** Lets a stopped child go on (returns once it runs again, so a later stop is a new one). */
  async resume(): Promise<void> {
    Deno.kill(this.pid, "SIGCONT");
    while (this.#state() === "T") await new Promise((r) => setTimeout(r, 1));
  }

  /** Waits for the child to exit. */
  finished(): Promise<Finished> {
    return this.#done;
  }
}

/** A corpus without repeated 16-byte contexts: printable bytes of a fixed LCG sequence. */
export function corpusText(n: number, seed = 7): string {
  let s = seed;
  let out = "";
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out += String.fromCharCode(32 + ((s >>> 16) % 95));
  }
  return out;
}

/**
 * The flags of the test builds: the tiny model, short windows, one thread, a Flat-coded IVF
 * index (exact, so every key finds itself) and small add blocks.
 */
export function buildArgs(corpus: string, out: string, ...extra: string[]): string[] {
  return [
    "--model",
    TINY,
    "--corpus",
    corpus,
    "--out",
    out,
    "--seq-len",
    "32",
    "--stride",
    "16",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--factory",
    "IVF4,Flat",
    "--nprobe",
    "4",
    "--add-chunk",
    "1024",
    ...extra,
  ];
}

/** Copies a datastore directory (sparse files stay sparse). */
export async function copyDir(from: string, to: string): Promise<void> {
  const r = await new Deno.Command("cp", { args: ["-r", "--sparse=always", from, to] }).output();
  if (!r.success) throw new Error(`cp ${from} ${to}: ${new TextDecoder().decode(r.stderr)}`);
}

/** The bytes of a datastore's keys.npy and vals.npy. */
export async function arrays(dir: string): Promise<{ keys: Uint8Array; vals: Uint8Array }> {
  return {
    keys: await Deno.readFile(join(dir, "keys.npy")),
    vals: await Deno.readFile(join(dir, "vals.npy")),
  };
}
