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
