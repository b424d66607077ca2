/**
 * Running a short helper command to completion (a compiler, `dpkg-query`, `python3 -c …`) and
 * quoting the end of its output in an error message.
 *
 * @module
 */

/** What {@linkcode runSync} observed. */
export interface RunResult {
  /** True when the command started and exited with status 0. */
  ok: boolean;
  /** Its standard output. */
  stdout: string;
  /** Its standard error, or why it could not be started. */
  stderr: string;
}

/**
 * Runs `cmd args…` with stdin closed and both outputs captured. Never throws: a command that
 * cannot be started (not installed, not permitted) gives `ok: false` and the reason in `stderr`.
 */
export function runSync(cmd: string, args: string[]): RunResult {
  try {
    const out = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .outputSync();
    const dec = new TextDecoder();
    return { ok: out.success, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    return { ok: false, stdout: "", stderr: e instanceof Error ? e.message : String(e) };
  }
}

/** The last `lines` lines of `text`, trailing white space dropped. */
export function tail(text: string, lines = 20): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}
