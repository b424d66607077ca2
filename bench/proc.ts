/**
 * Measuring processes: wall time, and peak memory sampled from `/proc/<pid>/status` (Linux),
 * for the benchmark's child processes and the tests' bounded-memory checks. Both sides of the benchmark are measured by this same code, so their numbers are
 * comparable whatever each side would say about itself.
 *
 * `VmHWM` is the kernel's own peak resident set size: monotonic, so the last sample taken
 * before exit is the peak up to that moment. It counts file-backed pages too (a memory-mapped
 * `keys.npy` being written or read is resident), which is why `RssAnon` — heaps, stacks,
 * private copies, what the process really allocated — is sampled alongside and its maximum
 * kept. Sampling every ~20 ms can miss a spike shorter than the interval; that holds for
 * both sides alike.
 *
 * @module
 */

/** Memory counters of one process, in bytes. */
export interface ProcMemory {
  /** `VmRSS`: resident set size now (anonymous + file-backed + shared). */
  vmRSS: number;
  /** `VmHWM`: peak resident set size so far. */
  vmHWM: number;
  /** `RssAnon`: resident anonymous memory now (absent on kernels before 4.5). */
  rssAnon?: number;
  /** `RssFile`: resident file-backed memory now, e.g. mapped datastore pages. */
  rssFile?: number;
  /** `RssShmem`: resident shared memory now (`vmRSS` = rssAnon + rssFile + rssShmem). */
  rssShmem?: number;
}

const FIELDS: Record<string, keyof ProcMemory> = {
  VmRSS: "vmRSS",
  VmHWM: "vmHWM",
  RssAnon: "rssAnon",
  RssFile: "rssFile",
  RssShmem: "rssShmem",
};

/**
 * Parses the memory lines of a `/proc/<pid>/status` text (`VmHWM:\t  123 kB`, where the
 * kernel's "kB" means KiB). Returns `undefined` when the process has no memory lines (a zombie
 * or a kernel thread); throws on a memory line it cannot read.
 */
export function parseProcStatus(text: string): ProcMemory | undefined {
  const out: Partial<ProcMemory> = {};
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const field = FIELDS[line.slice(0, colon)];
    if (!field) continue;
    const m = /^\s*(\d+)\s*kB\s*$/.exec(line.slice(colon + 1));
    if (!m) throw new Error(`/proc status: cannot read '${line.trim()}' (expected 'N kB')`);
    out[field] = Number(m[1]) * 1024;
  }
  if (out.vmRSS === undefined || out.vmHWM === undefined) return undefined;
  return out as ProcMemory;
}

/**
 * Reads the memory counters of a process (default: this one) from `/proc/<pid>/status`.
 * Throws, naming the file, when it cannot be read (not Linux, process gone) or has no memory
 * lines.
 */
export function readProcStatus(pid: number | "self" = "self"): ProcMemory {
  const path = `/proc/${pid}/status`;
  const m = parseProcStatus(Deno.readTextFileSync(path));
  if (!m) throw new Error(`${path}: no VmRSS/VmHWM lines`);
  return m;
}

/** Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux). */
export const USER_HZ = 100;

/**
 * User + system CPU seconds of a process from a `/proc/<pid>/stat` text (fields 14 and 15,
 * counted after the parenthesised command name, which may itself hold spaces or parentheses).
 */
export function parsePidCpuSeconds(stat: string): number | undefined {
  const close = stat.lastIndexOf(")");
  if (close < 0) return undefined;
  const fields = stat.slice(close + 1).trim().split(/\s+/);
  // fields[0] is field 3 (state), so field n is fields[n - 3].
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
  return (utime + stime) / USER_HZ;
}

/** Peaks seen over a process's life. */
export interface MemoryPeaks {
  /** Largest `VmHWM` read (bytes). */
  peakHwm?: number;
  /** Largest `RssAnon` read (bytes). */
  peakRssAnon?: number;
  /** Largest `VmRSS` read (bytes). */
  peakRss?: number;
  /** Number of successful reads. */
  samples: number;
  /** User + system CPU seconds at the last reading (the process's own threads). */
  cpuSeconds?: number;
}

/** Folds one reading into running peaks (pure; `undefined` readings are skipped). */
export function foldPeaks(peaks: MemoryPeaks, m: ProcMemory | undefined): MemoryPeaks {
  if (!m) return peaks;
  const max = (a: number | undefined, b: number | undefined) =>
    b === undefined ? a : a === undefined ? b : Math.max(a, b);
  return {
    ...peaks,
    peakHwm: max(peaks.peakHwm, m.vmHWM),
    peakRssAnon: max(peaks.peakRssAnon, m.rssAnon),
    peakRss: max(peaks.peakRss, m.vmRSS),
    samples: peaks.samples + 1,
  };
}

/** Options of {@link runMeasured}. */
export interface RunMeasuredOptions {
  /** Executable. */
  command: string;
  /** Its arguments. */
  args: string[];
  /** Working directory. Default: this process's. */
  cwd?: string;
  /** Extra environment variables (added to this process's environment). */
  env?: Record<string, string>;
  /** Sampling interval in milliseconds. Default 20. */
  intervalMs?: number;
  /**
   * Also sample the process's descendants (worker processes): `peakTreeRssAnon` is then the
   * largest sum of `RssAnon` over the whole tree at one sample, and `peakProcessRssAnon` the
   * largest of any one process in it. Default false.
   */
  tree?: boolean;
}

/** What {@link runMeasured} observed. */
export interface MeasuredRun extends MemoryPeaks {
  /** With `tree`: the largest sum of `RssAnon` over the process and its descendants (bytes). */
  peakTreeRssAnon?: number;
  /** With `tree`: the largest `RssAnon` of any one process of the tree (bytes). */
  peakProcessRssAnon?: number;
  /** Exit code. */
  code: number;
  /** Everything the process wrote on stdout. */
  stdout: string;
  /** Everything the process wrote on stderr. */
  stderr: string;
  /** Seconds from spawn to exit. */
  wallSeconds: number;
}

function readProc<T>(pid: number, file: string, parse: (text: string) => T): T | undefined {
  try {
    return parse(Deno.readTextFileSync(`/proc/${pid}/${file}`));
  } catch {
    return undefined; // gone already, or between exit and reaping
  }
}

/**
 * Runs a command to completion while sampling its `/proc/<pid>/status` every `intervalMs`;
 * returns its output, wall time and memory peaks. A non-zero exit is returned, not thrown.
 */
export async function runMeasured(opts: RunMeasuredOptions): Promise<MeasuredRun> {
  const interval = opts.intervalMs ?? 20;
  const t0 = performance.now();
  const child = new Deno.Command(opts.command, {
    args: opts.args,
    cwd: opts.cwd,
    env: opts.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let finished = false;
  const output = child.output().finally(() => (finished = true));
  let peaks: MemoryPeaks = { samples: 0 };
  let treeSum: number | undefined, treeMax: number | undefined;
  while (!finished) {
    peaks = foldPeaks(peaks, readProc(child.pid, "status", parseProcStatus));
    if (opts.tree) {
      let sum = 0;
      for (const pid of descendants(child.pid)) {
        const anon = readProc(pid, "status", parseProcStatus)?.rssAnon ?? 0;
        sum += anon;
        treeMax = Math.max(treeMax ?? 0, anon);
      }
      treeSum = Math.max(treeSum ?? 0, sum);
    }
    peaks.cpuSeconds = readProc(child.pid, "stat", parsePidCpuSeconds) ?? peaks.cpuSeconds;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      output.catch(() => {}),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, interval))),
    ]);
    clearTimeout(timer);
  }
  const out = await output;
  const decoder = new TextDecoder();
  return {
    ...peaks,
    ...(opts.tree ? { peakTreeRssAnon: treeSum, peakProcessRssAnon: treeMax } : {}),
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
    wallSeconds: (performance.now() - t0) / 1000,
  };
}

/** `pid` and all its descendants, from `/proc/<pid>/task/<tid>/children` (Linux ≥ 3.5). */
export function descendants(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    let tasks: string[] = [];
    try {
      tasks = [...Deno.readDirSync(`/proc/${out[i]}/task`)].map((e) => e.name);
    } catch {
      continue; // gone
    }
    for (const tid of tasks) {
      try {
        const text = Deno.readTextFileSync(`/proc/${out[i]}/task/${tid}/children`).trim();
        if (text) out.push(...text.split(/\s+/).map(Number));
      } catch { /* gone */ }
    }
  }
  return out;
}
