/**
 * Worker processes for a build on one machine: each runs one shard's stage (gather or add) in
 * its own process (`_shard_worker.ts`, the same pipeline `knn gather --shard I/N` runs), at
 * most `workers` at a time, and reports its events as JSON lines on stdout.
 *
 * The parent keeps the datastore's lock for them (a worker checks that its parent holds it).
 * A signal is passed on to every worker once: each stops at its own safe point, leaving its
 * shard resumable. A worker whose parent dies (its stdin closes) quits at once.
 *
 * @module
 */

import { KnnError } from "../core/errors.ts";
import type { KnnlmConfig } from "../config/mod.ts";
import type { PipelineEvent } from "./build.ts";
import type { ShardSpec } from "./shards.ts";

/** What a worker is asked to do (sent as one JSON line on its stdin). */
export interface WorkerTask {
  /** The stage. */
  stage: "gather" | "add";
  /** Its shard. */
  shard: ShardSpec;
  /** The build's configuration (`threads`: this worker's share). */
  config: KnnlmConfig;
  /** What the worker's lock records as its command. */
  command: string;
}

/** A worker's stdout line: an event, the end, or its error. */
export type WorkerMessage =
  | { event: PipelineEvent }
  | { ok: true }
  | {
    error: {
      code: KnnError["code"];
      message: string;
      path?: string;
      hint?: string;
      signal?: "SIGINT" | "SIGTERM";
    };
  };

/** Whether this runtime can start worker processes (not inside a `deno compile` binary). */
export function canStartWorkers(): boolean {
  return !Deno.build.standalone;
}

function workerCommand(): { cmd: string; args: string[] } {
  const main = new URL("./_shard_worker.ts", import.meta.url);
  const args = ["run", "--allow-all", "--quiet"];
  if (main.protocol === "file:") {
    // The toolkit's own deno.json (npm packages, node_modules) wherever the caller runs.
    const config = new URL("../../deno.json", import.meta.url);
    try {
      Deno.statSync(config);
      args.push("--config", config.pathname);
    } catch { /* used from a copy without it: Deno finds what it can */ }
  }
  args.push(main.href);
  return { cmd: Deno.execPath(), args };
}

/**
 * glibc malloc settings for the workers (unless set already): FAISS's calls run on Deno's
 * blocking-call threads, one malloc arena each, and every add call allocates tens of MB of
 * temporary buffers; with the default settings each arena keeps its freed buffers, and a worker's
 * anonymous memory grew to ~400 MiB adding a 2M-key shard (~150 MiB of it lists and buffers).
 * Two arenas and a fixed mmap threshold (buffers above 4 MiB mapped, and unmapped when freed)
 * keep it to what is in use.
 */
const MALLOC_ENV: Record<string, string> = Object.fromEntries(
  Object.entries({ MALLOC_ARENA_MAX: "2", MALLOC_MMAP_THRESHOLD_: String(4 << 20) })
    .filter(([k]) => Deno.env.get(k) === undefined),
);

/** Options of {@link runWorkers}. */
export interface RunWorkersOptions {
  /** The stage every worker runs. */
  stage: "gather" | "add";
  /** The shards to run, in order. */
  shards: readonly number[];
  /** The shard count. */
  count: number;
  /** Worker processes at a time. */
  workers: number;
  /** The configuration for every worker (with its share of threads). */
  config: KnnlmConfig;
  /** The lock command the workers record. */
  command: string;
  /** Passed on to the workers (once), which stop at their safe points. */
  signal?: AbortSignal;
  /** Receives each worker's events with its shard. */
  onEvent: (shard: number, e: PipelineEvent) => void;
}

interface Running {
  shard: number;
  child: Deno.ChildProcess;
  stdin: WritableStreamDefaultWriter<Uint8Array>;
  done: Promise<{ shard: number; error?: KnnError }>;
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) yield buf;
}

/**
 * Runs `stage` for each of `shards` in worker processes, `workers` at a time. Resolves when all
 * succeeded; otherwise stops starting new ones, asks the running ones to stop (SIGTERM: they
 * leave their shards resumable), and rejects with the first error (for a signal: an
 * `E_INTERRUPTED` naming the shards that stopped).
 */
export async function runWorkers(opts: RunWorkersOptions): Promise<void> {
  const { cmd, args } = workerCommand();
  const queue = [...opts.shards];
  const running = new Map<number, Running>();
  const errors: KnnError[] = [];
  let stopping = false;
  const forward = () => {
    if (stopping) return;
    stopping = true;
    const reason = opts.signal?.reason;
    const sig = KnnError.is(reason) && reason.signal ? reason.signal : "SIGTERM";
    for (const r of running.values()) {
      try {
        r.child.kill(sig);
      } catch { /* already gone */ }
    }
  };
  opts.signal?.addEventListener("abort", forward, { once: true });

  const start = (shard: number): Running => {
    const child = new Deno.Command(cmd, {
      args,
      env: MALLOC_ENV,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stdin = child.stdin.getWriter();
    const task: WorkerTask = {
      stage: opts.stage,
      shard: { index: shard, count: opts.count },
      config: opts.config,
      command: `${opts.command} (worker: shard ${shard}/${opts.count})`,
    };
    stdin.write(new TextEncoder().encode(JSON.stringify(task) + "\n")).catch(() => {});
    let stderr = "";
    const errDone = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        stderr = (stderr + chunk).slice(-4000);
      }
    })();
    const done = (async () => {
      let error: KnnError | undefined;
      let ok = false;
      for await (const line of lines(child.stdout)) {
        let msg: WorkerMessage;
        try {
          msg = JSON.parse(line);
        } catch {
          continue; // not ours (a library printing on stdout)
        }
        if ("event" in msg) opts.onEvent(shard, msg.event);
        else if ("ok" in msg) ok = true;
        else if ("error" in msg) {
          const e = msg.error;
          error = new KnnError(e.code, e.message, { path: e.path, hint: e.hint, signal: e.signal });
        }
      }
      const status = await child.status;
      await errDone;
      await stdin.close().catch(() => {});
      if (!ok && !error) {
        error = new KnnError(
          "E_NATIVE",
          `shard ${shard}/${opts.count}: the ${opts.stage} worker exited with status ` +
            `${status.code}${status.signal ? ` (${status.signal})` : ""}` +
            (stderr.trim() ? `: ${stderr.trim().split("\n").slice(-3).join(" | ")}` : ""),
        );
      }
      return { shard, error };
    })();
    return { shard, child, stdin, done };
  };

  try {
    while (queue.length || running.size) {
      while (!stopping && !opts.signal?.aborted && queue.length && running.size < opts.workers) {
        const shard = queue.shift()!;
        running.set(shard, start(shard));
      }
      if (opts.signal?.aborted) forward();
      if (running.size === 0) break;
      const { shard, error } = await Promise.race([...running.values()].map((r) => r.done));
      running.delete(shard);
      if (error) {
        errors.push(error);
        // One shard failed: the others stop at their safe points, resumable.
        if (!KnnError.is(error, "E_INTERRUPTED")) forward();
      }
    }
  } finally {
    opts.signal?.removeEventListener("abort", forward);
  }
  if (errors.length === 0 && !opts.signal?.aborted) return;
  const real = errors.find((e) => !KnnError.is(e, "E_INTERRUPTED"));
  if (real) throw real;
  const reason = opts.signal?.reason;
  const sig = KnnError.is(reason) ? reason.signal : errors[0]?.signal;
  throw new KnnError(
    "E_INTERRUPTED",
    `${opts.stage} interrupted` +
      (errors.length ? `: ${errors.map((e) => e.message).join("; ")}` : "") +
      (queue.length ? `; shards ${queue.join(", ")} not started` : ""),
    { signal: sig },
  );
}
