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

/** Describes this machine. */
export function machineInfo(): MachineInfo {
  const load = Number(readOr("/proc/loadavg").split(" ")[0]);
  return {
    cpu: parseCpuModel(readOr("/proc/cpuinfo")) ?? Deno.build.arch,
    cores: navigator.hardwareConcurrency || 1,
    memTotalBytes: parseMemTotal(readOr("/proc/meminfo")),
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    loadAverage: Number.isFinite(load) && readOr("/proc/loadavg") ? load : undefined,
  };
}
