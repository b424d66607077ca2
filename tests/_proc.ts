/**
 * Process memory counters from `/proc/<pid>/status` (Linux), for bounded-memory checks and
 * benchmarks. File-backed pages of a memory-mapped datastore count in `rssFile`, not `rssAnon`.
 *
 * @module
 */

/** Memory counters of one process, in bytes. */
export interface ProcStatus {
  /** Resident set size (`VmRSS` = rssAnon + rssFile + rssShmem). */
  vmRSS: number;
  /** Peak resident set size (`VmHWM`). */
  vmHWM: number;
  /** Resident anonymous memory (`RssAnon`): heaps, stacks, private copies. */
  rssAnon: number;
  /** Resident file-backed memory (`RssFile`), including mapped datastore pages. */
  rssFile: number;
  /** Resident shared memory (`RssShmem`). */
  rssShmem: number;
  /** Virtual memory size (`VmSize`); large while big files are mapped. */
  vmSize: number;
}

const FIELDS: Record<string, keyof ProcStatus> = {
  VmRSS: "vmRSS",
  VmHWM: "vmHWM",
  RssAnon: "rssAnon",
  RssFile: "rssFile",
  RssShmem: "rssShmem",
  VmSize: "vmSize",
};

/** Options for {@link readProcStatus}. */
export interface ReadProcStatusOptions {
  /** Process id (default `"self"`, the calling process). */
  pid?: number | "self";
}

/**
 * Read the memory counters of a process from `/proc/<pid>/status` (needs read permission on
 * it). Throws if the file is missing (not Linux) or lacks a counter.
 */
export function readProcStatus(opts: ReadProcStatusOptions = {}): ProcStatus {
  const path = `/proc/${opts.pid ?? "self"}/status`;
  const text = Deno.readTextFileSync(path);
  return parseProcStatus(text, path);
}

/** Parse the text of a `/proc/<pid>/status` file (`RssAnon:   1234 kB` lines). */
export function parseProcStatus(text: string, name = "/proc/self/status"): ProcStatus {
  const out: Partial<ProcStatus> = {};
  for (const line of text.split("\n")) {
    const m = /^(\w+):\s+(\d+)\s*kB$/.exec(line.trim());
    if (m && FIELDS[m[1]]) out[FIELDS[m[1]]] = Number(m[2]) * 1024;
  }
  for (const [field, key] of Object.entries(FIELDS)) {
    if (out[key] === undefined) throw new Error(`${name}: no ${field} line`);
  }
  return out as ProcStatus;
}

/** Result of {@link runSampled}. */
export interface SampledRun {
  /** Exit code of the child. */
  code: number;
  /** Its stdout and stderr, as text. */
  stdout: string;
  /** Its stderr. */
  stderr: string;
  /** Largest `RssAnon` seen while it ran (bytes). */
  peakRssAnon: number;
}

/**
 * Runs a command and samples its `/proc/<pid>/status` every `intervalMs` until it exits;
 * returns its output and the largest `RssAnon` seen (a spike shorter than the interval can be
 * missed; the V8 heap does not shrink that fast).
 */
export async function runSampled(
  cmd: string,
  args: string[],
  intervalMs = 10,
): Promise<SampledRun> {
  const child = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).spawn();
  let peak = 0;
  let done = false;
  const sampler = (async () => {
    while (!done) {
      try {
        peak = Math.max(peak, readProcStatus({ pid: child.pid }).rssAnon);
      } catch { /* exited between samples */ }
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  const out = await child.output();
  done = true;
  await sampler;
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
    peakRssAnon: peak,
  };
}
