/**
 * What machine a benchmark ran on: CPU model, cores, RAM, kernel and load, read from
 * `/proc` (Linux) with fallbacks elsewhere.
 *
 * @module
 */

/** The machine a benchmark ran on. */
export interface MachineInfo {
  /** CPU model name from `/proc/cpuinfo`. */
  cpu: string;
  /** Logical cores visible to this process. */
  cores: number;
  /** Total RAM in bytes (`MemTotal`). */
  memTotalBytes?: number;
  /** OS and kernel release. */
  os: string;
  /** 1-minute load average when the benchmark started (other work skews timings). */
  loadAverage?: number;
  /** 1-minute load average when it finished (includes the benchmark's own load). */
  loadAverageEnd?: number;
  /**
   * Share of the machine's CPU time (0–1) used by processes other than the benchmark and its
   * children while it ran (filled in by the harness).
   */
  otherCpuShare?: number;
}

/** The first `model name` of a `/proc/cpuinfo` text. */
export function parseCpuModel(cpuinfo: string): string | undefined {
  return /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1].trim();
}

/** `MemTotal` of a `/proc/meminfo` text, in bytes. */
export function parseMemTotal(meminfo: string): number | undefined {
  const m = /^MemTotal:\s*(\d+)\s*kB/m.exec(meminfo);
  return m ? Number(m[1]) * 1024 : undefined;
}

function readOr(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** The 1-minute load average from `/proc/loadavg`, or `undefined` where there is none. */
export function loadAverage(): number | undefined {
  const text = readOr("/proc/loadavg");
  const load = Number(text.split(" ")[0]);
  return text && Number.isFinite(load) ? load : undefined;
}

/**
 * Busy and total CPU time of the whole machine, in clock ticks, from the `cpu` line of
 * `/proc/stat` (busy = everything but idle and iowait).
 */
export function parseSystemCpu(stat: string): { busy: number; total: number } | undefined {
  const line = stat.split("\n").find((l) => l.startsWith("cpu "));
  if (!line) return undefined;
  const ticks = line.trim().split(/\s+/).slice(1, 9).map(Number);
  if (ticks.length < 5 || ticks.some((t) => !Number.isFinite(t))) return undefined;
  const total = ticks.reduce((a, b) => a + b, 0);
  return { busy: total - ticks[3] - ticks[4], total };
}

/** This machine's CPU counters now (see {@link parseSystemCpu}). */
export function systemCpu(): { busy: number; total: number } | undefined {
  return parseSystemCpu(readOr("/proc/stat"));
}

/** Describes this machine. */
export function machineInfo(): MachineInfo {
  return {
    cpu: parseCpuModel(readOr("/proc/cpuinfo")) ?? Deno.build.arch,
    cores: navigator.hardwareConcurrency || 1,
    memTotalBytes: parseMemTotal(readOr("/proc/meminfo")),
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    loadAverage: loadAverage(),
  };
}
