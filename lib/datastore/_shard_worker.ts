/**
 * The worker process of a build on one machine (started by `_workers.ts`, never by hand): reads
 * its {@linkcode WorkerTask} from the first line of stdin, runs that shard's stage with the
 * same pipeline as `knn gather --shard I/N` (its parent holds the datastore's lock), and writes
 * its events, then `{"ok":true}` or its error, as JSON lines on stdout.
 *
 * The first SIGINT/SIGTERM stops the stage at its safe point (later ones are the same request
 * again: a terminal delivers Ctrl-C to the parent and to its workers). When stdin closes, the
 * parent is gone: the worker quits at once.
 *
 * @module
 */

import { exitStatus, KnnError } from "../core/errors.ts";
import { runPipeline } from "./build.ts";
import type { WorkerMessage, WorkerTask } from "./_workers.ts";

function send(msg: WorkerMessage): void {
  const bytes = new TextEncoder().encode(JSON.stringify(msg) + "\n");
  let off = 0;
  while (off < bytes.length) off += Deno.stdout.writeSync(bytes.subarray(off));
}

async function main(): Promise<number> {
  const reader = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  while (!buf.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) return 2;
    buf += value;
  }
  const task = JSON.parse(buf.slice(0, buf.indexOf("\n"))) as WorkerTask;
  // The parent closes stdin only by exiting: quit at once, as a second Ctrl-C would.
  (async () => {
    while (!(await reader.read()).done) { /* nothing else is sent */ }
    Deno.exit(1);
  })();

  const controller = new AbortController();
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      if (controller.signal.aborted) return;
      controller.abort(new KnnError("E_INTERRUPTED", `interrupted by ${sig}`, { signal: sig }));
    });
  }
  try {
    await runPipeline(task.config, {
      stages: [task.stage],
      shard: task.shard,
      workerOf: Deno.ppid,
      command: task.command,
      signal: controller.signal,
      onEvent: (event) => send({ event }),
    });
    send({ ok: true });
    return 0;
  } catch (e) {
    const err = KnnError.is(e) ? e : new KnnError("E_NATIVE", (e as Error).message ?? String(e));
    send({
      error: {
        code: err.code,
        message: err.message,
        ...(err.path ? { path: err.path } : {}),
        ...(err.hint ? { hint: err.hint } : {}),
        ...(err.signal ? { signal: err.signal } : {}),
      },
    });
    return exitStatus(err);
  }
}

if (import.meta.main) Deno.exit(await main());
