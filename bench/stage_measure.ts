/**
 * Measuring one stage from inside a process (the toolkit's stage benchmark child): wall time,
 * the process's user and system CPU from `/proc/self/stat`, and every thread's CPU from
 * `/proc/self/task/<tid>/stat`, so the busiest thread can be reported. `bench/stages.py`
 * measures the Python side the same way.
 *
 * @module
 */

import { USER_HZ } from "./proc.ts";

/** One stage's numbers (seconds). */
export interface StageMeasure {
  /** Wall time. */
  wall: number;
  /** Process user CPU. */
  user: number;
  /** Process system CPU. */
  sys: number;
  /** CPU of the thread that used the most during the stage. */
  busiestThread: number;
  /** Threads that used more than 10 ms of CPU during the stage. */
  activeThreads: number;
}

function statFields(text: string): string[] {
  return text.slice(text.lastIndexOf(")") + 2).split(" ");
}

/** utime and stime (seconds) of `/proc/self/stat`. */
export function processCpu(): { user: number; sys: number } {
  const f = statFields(Deno.readTextFileSync("/proc/self/stat"));
  // f[0] is field 3 (state): utime is field 14, stime field 15.
  return { user: Number(f[11]) / USER_HZ, sys: Number(f[12]) / USER_HZ };
}

/** CPU seconds (user + system) of every live thread of this process, by thread id. */
export function threadCpu(): Map<string, number> {
  const out = new Map<string, number>();
  for (const e of Deno.readDirSync("/proc/self/task")) {
    try {
      const f = statFields(Deno.readTextFileSync(`/proc/self/task/${e.name}/stat`));
      out.set(e.name, (Number(f[11]) + Number(f[12])) / USER_HZ);
    } catch { /* the thread ended between the listing and the read */ }
  }
  return out;
}

/** Runs `fn` and measures it. */
export async function stageOf(fn: () => Promise<void> | void): Promise<StageMeasure> {
  const t0 = threadCpu();
  const c0 = processCpu();
  const w0 = performance.now();
  await fn();
  const wall = (performance.now() - w0) / 1000;
  const c1 = processCpu();
  const t1 = threadCpu();
  const per = [...t1].map(([tid, s]) => s - (t0.get(tid) ?? 0));
  return {
    wall,
    user: c1.user - c0.user,
    sys: c1.sys - c0.sys,
    busiestThread: Math.max(0, ...per),
    activeThreads: per.filter((s) => s > 0.01).length,
  };
}
