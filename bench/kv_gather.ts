/**
 * CPU time of gathering keys windowed vs with the KV cache (`kvCache`), each side in its own
 * child process, measured as the child's user + system CPU time (`process.cpuUsage()` at
 * exit, so ONNX Runtime's threads count too): the machine may be shared, so wall time would
 * measure the neighbours. Prints one JSON line per run and the ratio of the medians.
 *
 *   /usr/bin/python3 bench/make_kv_model.py /tmp/gpt2_kv.onnx
 *   deno run -A bench/kv_gather.ts --model /tmp/gpt2_kv.onnx [--tokens 20000]
 *     [--seq-len 256] [--stride 128] [--kv-cache 1024] [--batch-size 8] [--repeats 3]
 *
 * @module
 */

import { parseArgs } from "node:util";
import process from "node:process";
import { gather, keyModelOf } from "../lib/datastore/gather.ts";
import { inspectModel, OnnxLm } from "../lib/model/mod.ts";

/** One child's measurement. */
export interface KvGatherRun {
  /** `windowed` or `kv`. */
  mode: string;
  /** Key rows gathered. */
  rows: number;
  /** User + system CPU seconds of the whole child process (start-up and model load included). */
  processCpuSeconds: number;
  /** User + system CPU seconds of the `gather` call alone. */
  gatherCpuSeconds: number;
}

const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

async function child(mode: string, a: Record<string, string>): Promise<KvGatherRun> {
  const n = Number(a.tokens);
  let s = 7;
  // Seeded ids over the model's 1024-id vocabulary.
  const tokens = Int32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % 1024;
  });
  const keyTensor = (await inspectModel(a.model)).keyCandidates[0].tensor;
  using lm = await OnnxLm.open(a.model, { keyTensor, threads: 1 });
  const dir = await Deno.makeTempDir({ prefix: "knnlm_kv_bench_" });
  try {
    const c0 = cpu();
    const g = await gather({
      model: keyModelOf(lm),
      tokens,
      dir,
      identity: { modelSha256: "bench", keyTensor, corpusIdentity: "bench" },
      seqLen: Number(a["seq-len"]),
      stride: Number(a.stride),
      batchSize: Number(a["batch-size"]),
      kvCache: mode === "kv" ? Number(a["kv-cache"]) : null,
    });
    const gatherCpuSeconds = cpu() - c0;
    return { mode, rows: g.rows, processCpuSeconds: cpu(), gatherCpuSeconds };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      tokens: { type: "string", default: "20000" },
      "seq-len": { type: "string", default: "256" },
      stride: { type: "string", default: "128" },
      "kv-cache": { type: "string", default: "1024" },
      "batch-size": { type: "string", default: "8" },
      repeats: { type: "string", default: "3" },
      child: { type: "string" },
    },
  });
  if (!values.model) throw new Error("--model PATH is required (see bench/make_kv_model.py)");
  const a = values as Record<string, string>;
  if (values.child) {
    console.log(JSON.stringify(await child(values.child, a)));
  } else {
    const runs: Record<string, KvGatherRun[]> = { windowed: [], kv: [] };
    const self = new URL(import.meta.url).pathname;
    for (let r = 0; r < Number(values.repeats); r++) {
      for (const mode of ["windowed", "kv"]) {
        const args = ["run", "-A", self, "--child", mode];
        for (const k of ["model", "tokens", "seq-len", "stride", "kv-cache", "batch-size"]) {
          args.push(`--${k}`, a[k]);
        }
        const out = await new Deno.Command(Deno.execPath(), { args, stderr: "inherit" }).output();
        if (!out.success) throw new Error(`child ${mode} exited with ${out.code}`);
        const run = JSON.parse(new TextDecoder().decode(out.stdout)) as KvGatherRun;
        console.log(JSON.stringify(run));
        runs[mode].push(run);
      }
    }
    const m = (mode: string, f: keyof KvGatherRun) => median(runs[mode].map((r) => r[f] as number));
    console.log(JSON.stringify({
      gatherSpeedup: m("windowed", "gatherCpuSeconds") / m("kv", "gatherCpuSeconds"),
      processSpeedup: m("windowed", "processCpuSeconds") / m("kv", "processCpuSeconds"),
    }));
  }
}
