/**
 * `deno task bench-serve`: a bounded load run against `knn serve` — it starts the server as
 * its own process on 127.0.0.1 (a free port), sends a fixed list of requests (POST /v1/next
 * on Brown test contexts and, every fourth, POST /v1/score on a Brown test passage) from
 * concurrent clients, reports p50/p90/p99 latency and every error, then stops the server
 * with SIGTERM and records its exit status. Writes bench/results/serve.json and serve.md.
 *
 *   deno task bench-serve [--datastore data/default] [--requests 200] [--concurrency 16]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadCorpus } from "../lib/corpus/mod.ts";
import { readManifest } from "../lib/datastore/mod.ts";
import type { InfoResponse } from "../lib/serve/mod.ts";
import { loadAverage, machineInfo } from "../bench/machine.ts";
import { type LatencySummary, type LoadRequest, runLoad, summarise } from "../bench/serve_load.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** Requests of the one-client pass (the first of the list). */
const ALONE = 20;
const CLI = join(ROOT, "cli.ts");
const HELP = `Usage: deno task bench-serve [options]

Starts \`knn serve\` on 127.0.0.1 (its own process), sends --requests requests from
--concurrency clients (3 of 4 POST /v1/next on 64–256 bytes of Brown test, 1 of 4 POST
/v1/score on 256 bytes), and writes latency percentiles and errors to
bench/results/serve.json and serve.md. Then stops the server with SIGTERM.

Options (defaults in brackets):
  --datastore DIR     a built datastore [data/default]
  --requests N        requests measured, after 8 warm-up requests [200]
  --concurrency N     concurrent clients [16]
  --k N               k of every request [the server's default]
  --seed N            seed of the request list [1]
  --results-dir DIR   where serve.json / serve.md go [bench/results]`;

/** Starts `knn serve` and waits for the address it prints. */
async function startServer(datastore: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "serve", "--datastore", datastore, "--port", "0"],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!/http:\/\/\S+\//.test(out)) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`knn serve exited (${(await child.status).code}) before listening`);
    out += value;
  }
  (async () => {
    while (!(await reader.read()).done);
  })();
  return { child, url: out.match(/http:\/\/\S+\//)![0] };
}

/** A seeded list of requests over the Brown test split. */
function requestList(tokens: Int32Array, n: number, seed: number, k?: number): LoadRequest[] {
  let s = seed >>> 0;
  const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  return Array.from({ length: n }, (_, i) => {
    const len = i % 4 === 3 ? 256 : 64 + Math.floor(rand() * 193);
    const start = Math.floor(rand() * (tokens.length - len));
    const ids = Array.from(tokens.subarray(start, start + len));
    const extra = k === undefined ? {} : { k };
    return i % 4 === 3
      ? { path: "v1/score", body: { ids, ...extra } }
      : { path: "v1/next", body: { ids, ...extra } };
  });
}

function row(name: string, s: LatencySummary): string {
  const f = (x: number) => x.toFixed(1);
  return `| ${name} | ${s.count} | ${s.errors} | ${f(s.p50)} | ${f(s.p90)} | ${f(s.p99)} | ` +
    `${f(s.max)} | ${f(s.mean)} |`;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      datastore: { type: "string", default: "data/default" },
      requests: { type: "string", default: "200" },
      concurrency: { type: "string", default: "16" },
      k: { type: "string" },
      seed: { type: "string", default: "1" },
      "results-dir": { type: "string", default: "bench/results" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const n = Number(values.requests);
  const concurrency = Number(values.concurrency);
  const k = values.k === undefined ? undefined : Number(values.k);
  for (const [flag, v] of [["--requests", n], ["--concurrency", concurrency], ["--k", k ?? 1]]) {
    if (!Number.isSafeInteger(v) || (v as number) < 1) {
      console.error(`bench-serve: ${flag}: expected an integer ≥ 1, found ${v}`);
      return 2;
    }
  }
  const datastore = values.datastore;
  if (!(await readManifest(datastore).catch(() => undefined))?.index) {
    console.error(`bench-serve: ${datastore}: no finished datastore`);
    console.error(`  fix: deno task build-index --out ${datastore} (or pass --datastore DIR)`);
    return 1;
  }
  const tokens = (await loadCorpus("brown:test")).tokens;
  const warmup = requestList(tokens, 8, Number(values.seed) + 1000, k);
  const requests = requestList(tokens, n, Number(values.seed), k);

  const machine = machineInfo();
  const { child, url } = await startServer(datastore);
  let stopped: { code: number; seconds: number };
  let run;
  let alone;
  let info: InfoResponse;
  try {
    info = await (await fetch(new URL("v1/info", url))).json();
    await runLoad(url, warmup, concurrency);
    // One client alone first: the time a request takes with no queue in front of it.
    alone = await runLoad(url, requests.slice(0, ALONE), 1);
    console.error(`bench-serve: ${n} requests from ${concurrency} clients to ${url}`);
    run = await runLoad(url, requests, concurrency);
  } finally {
    const t0 = performance.now();
    child.kill("SIGTERM");
    const status = await child.status;
    stopped = { code: status.code, seconds: (performance.now() - t0) / 1000 };
  }
  machine.loadAverageEnd = loadAverage();

  const all = summarise(run.samples);
  const byPath = Object.fromEntries(
    ["v1/next", "v1/score"].map((p) => [p, summarise(run.samples.filter((s) => s.path === p))]),
  );
  const single = summarise(alone.samples);
  const singleByPath = Object.fromEntries(
    ["v1/next", "v1/score"].map((p) => [p, summarise(alone.samples.filter((s) => s.path === p))]),
  );
  const errors = [...alone.samples, ...run.samples].filter((s) => s.status !== 200).slice(0, 10);
  const m = info.manifest;
  const setting = {
    datastore,
    keys: info.size,
    index: m.index?.factory,
    nprobe: info.nprobe,
    distance: info.distance,
    k: k ?? info.defaults.k,
    model: m.model.path,
  };
  const result = {
    date: new Date().toISOString(),
    requests: n,
    concurrency,
    warmupRequests: warmup.length,
    host: "127.0.0.1",
    seconds: run.seconds,
    requestsPerSecond: n / run.seconds,
    latencyMs: { all, ...byPath },
    oneClientLatencyMs: { all: single, ...singleByPath },
    errors,
    setting,
    sigterm: stopped,
    machine,
  };
  const md = `# \`knn serve\` under load

${n} requests (${byPath["v1/next"].count} POST /v1/next on 64–256 bytes of Brown test, ` +
    `${byPath["v1/score"].count} POST /v1/score on 256 bytes) from ${concurrency} concurrent ` +
    `clients on 127.0.0.1, after ${warmup.length} warm-up requests; client and server on the ` +
    `same machine. \`deno task bench-serve\`, ${result.date.slice(0, 10)}.

| endpoint | requests | errors | p50 ms | p90 ms | p99 ms | max ms | mean ms |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
${row("all", all)}
${row("POST /v1/next", byPath["v1/next"])}
${row("POST /v1/score", byPath["v1/score"])}
${row("all, one client", single)}
${row("POST /v1/next, one client", singleByPath["v1/next"])}
${row("POST /v1/score, one client", singleByPath["v1/score"])}

The "one client" rows are the first ${ALONE} requests of the list sent one at a time before the
concurrent run: the time a request takes with nobody ahead of it. Model runs and the
per-position arithmetic execute on the server's one JavaScript thread (FAISS searches run on
native threads), so with ${concurrency} clients most of a request's latency is waiting for the
requests ahead of it.

${run.seconds.toFixed(1)} s wall, ${result.requestsPerSecond.toFixed(1)} requests/s. ` +
    `${
      all.errors + single.errors === 0
        ? "No errors."
        : `${all.errors + single.errors} errors (see serve.json).`
    }

- datastore: \`${datastore}\`, ${setting.keys.toLocaleString("en-US")} keys, ` +
    `${setting.index}, nprobe ${setting.nprobe}, ${setting.distance} distances, k = ${setting.k}
- model: \`${setting.model}\`
- machine: ${machine.cpu}, ${machine.cores} cores, load average ` +
    `${machine.loadAverage?.toFixed(2)} at the start, ${machine.loadAverageEnd?.toFixed(2)} at ` +
    `the end (other work on the machine skews these timings)
- SIGTERM afterwards: exit status ${stopped.code} after ${stopped.seconds.toFixed(2)} s
`;
  const dir = values["results-dir"];
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "serve.json"), JSON.stringify(result, null, 2) + "\n");
  await Deno.writeTextFile(join(dir, "serve.md"), md);
  console.log(md);
  return all.errors + single.errors === 0 && stopped.code === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
