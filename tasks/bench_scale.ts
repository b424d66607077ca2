/**
 * `deno task bench-scale`: a datastore of tens of millions of keys on this machine, built the
 * sharded way — train once, add per shard in worker processes, merge — and the same recipe
 * done by FAISS from Python (`faiss.contrib.ondisk.merge_ondisk`) on the same keys.
 *
 * The keys are synthetic (bench/scale_keys.ts: a fixed, seeded Gaussian mixture, float16),
 * written straight into the shard layout `knn gather --shard I/N` leaves, so the gather stage
 * (the model) is bypassed. Then `knn train-index` and `knn add` (which adds every shard in
 * worker processes and merges) run as a user runs them, and each side's search is timed on
 * the merged index. Every process runs under the same, recorded thread environment
 * (OMP_WAIT_POLICY, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS); its wall time and peak RssAnon
 * (summed over the process and its workers, sampled from /proc) are measured from outside,
 * the same way for both sides. The shard files' pages are dropped from the page cache before
 * each side trains, so both read them from disk.
 *
 * Writes bench/results/scale.json and scale.md.
 *
 *   deno task bench-scale [--sizes 5000000,10000000,20000000] [--compare 20000000] [--keep] …
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type MeasuredRun, runMeasured } from "../bench/proc.ts";
import { machineInfo } from "../bench/machine.ts";
import { type Mixture, writeGeneratorFile } from "../bench/scale_keys.ts";
import { MappedArray } from "../lib/storage/mmap.ts";
import { sampleRows } from "../lib/datastore/sample.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "cli.ts");
const PY = join(ROOT, "bench/scale_reference.py");

const DEFAULTS = {
  sizes: "5000000,10000000,20000000",
  compare: "20000000",
  d: 192,
  components: 256,
  sigma: 0.5,
  seed: 1,
  nlist: 1024,
  m: 32,
  nbits: 4,
  nprobe: 32,
  "train-size": 65536,
  "add-chunk": 32768,
  "shard-keys": 2_000_000,
  workers: 0,
  threads: 0,
  queries: 4096,
  k: 1024,
  "work-dir": "data/bench-scale",
  "results-dir": "bench/results",
  python: "/usr/bin/python3",
  "interval-ms": 50,
};

const HELP = `Usage: deno task bench-scale [options]

Builds sharded datastores of synthetic float16 keys (a seeded Gaussian mixture written straight
into DIR/shards/I, bypassing gather) with knn train-index and knn add (workers + merge), times
a search, and runs FAISS's merge_ondisk recipe from Python on the same keys at --compare.

Options (defaults in brackets):
  --sizes LIST        datastore sizes in keys [${DEFAULTS.sizes}]
  --compare N         the size also built by Python ("none": no comparison) [${DEFAULTS.compare}]
  --d N --components N --sigma X --seed N     the mixture [192, 256, 0.5, 1]
  --nlist N --m N --nbits N --nprobe N        IVFPQ [1024, 32, 4, 32]
  --train-size N      training sample [${DEFAULTS["train-size"]}]
  --add-chunk N       keys per add_with_ids call, both sides [${DEFAULTS["add-chunk"]}]
  --shard-keys N      keys per shard (shards = ceil(n / N)) [${DEFAULTS["shard-keys"]}]
  --workers N         toolkit worker processes [cores]
  --threads N         OMP_NUM_THREADS and OPENBLAS_NUM_THREADS for both sides [cores]
  --queries N --k N   search: queries (keys of the datastore) and neighbours [4096, 1024]
  --work-dir DIR      where the datastores go [${DEFAULTS["work-dir"]}]
  --results-dir DIR   where scale.json / scale.md go [${DEFAULTS["results-dir"]}]
  --python PATH       Python with faiss and numpy [${DEFAULTS.python}]
  --keep              keep the datastores
`;

type Opts = typeof DEFAULTS & { keep: boolean };

function options(): Opts {
  const spec = Object.fromEntries(
    Object.keys(DEFAULTS).map((k) => [k, { type: "string" as const }]),
  );
  const { values } = parseArgs({
    args: Deno.args,
    options: { ...spec, keep: { type: "boolean" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const out: Record<string, unknown> = { keep: !!values.keep };
  for (const [k, def] of Object.entries(DEFAULTS)) {
    const v = (values as Record<string, string | undefined>)[k];
    out[k] = v === undefined ? def : typeof def === "number" ? Number(v) : v;
  }
  return out as Opts;
}

/** One measured stage: wall time and memory of its process tree. */
interface StageResult {
  seconds: number;
  keysPerSecond: number;
  peakRssAnon: number;
  peakProcessRssAnon: number;
  peakHwm: number;
  processes: number;
}

function stage(runs: MeasuredRun[], keys: number, seconds?: number): StageResult {
  const wall = seconds ?? runs.reduce((a, r) => a + r.wallSeconds, 0);
  return {
    seconds: wall,
    keysPerSecond: keys / wall,
    peakRssAnon: Math.max(...runs.map((r) => r.peakTreeRssAnon ?? r.peakRssAnon ?? 0)),
    peakProcessRssAnon: Math.max(...runs.map((r) => r.peakProcessRssAnon ?? r.peakRssAnon ?? 0)),
    peakHwm: Math.max(...runs.map((r) => r.peakHwm ?? 0)),
    processes: runs.length,
  };
}

function check(r: MeasuredRun, what: string): MeasuredRun {
  if (r.code !== 0) {
    throw new Error(
      `${what} exited ${r.code}:\n${r.stderr.slice(-3000)}\n${r.stdout.slice(-1000)}`,
    );
  }
  return r;
}

/** Seconds from a "STAGE done in 12.3s" / "1m02s" / "1h02m" line of the CLI's stderr. */
export function doneSeconds(stderr: string, stageName: string): number {
  const m = new RegExp(`(?:^|\\n)${stageName} done in (?:(\\d+)h)?(?:(\\d+)m)?([\\d.]+s)?`).exec(
    stderr,
  );
  if (!m) throw new Error(`no '${stageName} done in' line in:\n${stderr.slice(-2000)}`);
  return Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + parseFloat(m[3] ?? "0");
}

async function sizes(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && !e.name.startsWith(".")) {
      out[e.name] = (await Deno.stat(join(dir, e.name))).size;
    }
  }
  return Object.fromEntries(Object.entries(out).sort());
}

async function shardBytes(dir: string): Promise<number> {
  let total = 0;
  for await (const s of Deno.readDir(join(dir, "shards"))) {
    if (!s.isDirectory) continue;
    for await (const f of Deno.readDir(join(dir, "shards", s.name))) {
      if (f.isFile) total += (await Deno.stat(join(dir, "shards", s.name, f.name))).size;
    }
  }
  return total;
}

/** Drops the shard files' pages from the page cache (posix_fadvise DONTNEED through dd). */
async function dropCache(dir: string): Promise<void> {
  for await (const s of Deno.readDir(join(dir, "shards"))) {
    if (!s.isDirectory) continue;
    for (const f of ["keys.npy", "vals.npy"]) {
      await new Deno.Command("dd", {
        args: [`if=${join(dir, "shards", s.name, f)}`, "iflag=nocache", "count=0", "status=none"],
      }).output();
    }
  }
}

/** Runs `jobs` at most `n` at a time. */
async function pool<T>(n: number, jobs: (() => Promise<T>)[]): Promise<T[]> {
  const out: T[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, jobs.length) }, async () => {
      while (next < jobs.length) {
        const i = next++;
        out[i] = await jobs[i]();
      }
    }),
  );
  return out;
}

function writeNpy(
  path: string,
  dtype: "<i8" | "<f2",
  data: BigInt64Array | Uint16Array,
  shape: number[],
) {
  using a = MappedArray.create(path, { dtype, shape });
  (a.view() as BigInt64Array | Uint16Array).set(data as never);
  a.flush();
}

async function main() {
  const o = options();
  const cores = navigator.hardwareConcurrency || 1;
  const threads = o.threads > 0 ? o.threads : cores;
  const workers = o.workers > 0 ? o.workers : cores;
  const env = {
    OMP_WAIT_POLICY: "PASSIVE",
    OMP_NUM_THREADS: String(threads),
    OPENBLAS_NUM_THREADS: String(threads),
    NO_COLOR: "1",
  };
  const work = resolve(o["work-dir"]);
  await Deno.mkdir(work, { recursive: true });
  const compare = o.compare === "none" ? 0 : Number(o.compare);
  const generator = join(work, "generator.json");
  const runs: unknown[] = [];
  const say = (s: string) => console.error(`bench-scale: ${s}`);
  const measure = (command: string, args: string[], tree = false) =>
    runMeasured({ command, args, env, intervalMs: o["interval-ms"], tree });
  const loadBefore = Deno.loadavg();

  for (const n of o.sizes.split(",").map(Number)) {
    const mixture: Mixture = { n, d: o.d, components: o.components, sigma: o.sigma, seed: o.seed };
    await writeGeneratorFile(generator, mixture);
    const dir = join(work, `n${n}`);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.mkdir(dir, { recursive: true });
    const shards = Math.max(1, Math.ceil(n / o["shard-keys"]));
    say(`${n} keys: writing ${shards} shards of the mixture`);
    const tg = performance.now();
    await pool(
      workers,
      Array.from({ length: shards }, (_, i) => async () =>
        check(
          await measure(Deno.execPath(), [
            "run",
            "-A",
            join(ROOT, "bench/scale_keys.ts"),
            JSON.stringify({ dir, mixture, shard: { index: i, count: shards }, generator }),
          ]),
          `keys of shard ${i}`,
        )),
    );
    const generateSeconds = (performance.now() - tg) / 1000;
    const keysBytes = await shardBytes(dir);

    const knnArgs = [
      "--out",
      dir,
      "--model",
      generator,
      "--key-tensor",
      "synthetic",
      "--corpus",
      "synthetic",
      "--max-tokens",
      "null",
      "--seq-len",
      "2",
      "--stride",
      "2",
      "--batch-size",
      "1024",
      "--key-dtype",
      "float16",
      "--nlist",
      String(o.nlist),
      "--m",
      String(o.m),
      "--nbits",
      String(o.nbits),
      "--nprobe",
      String(o.nprobe),
      "--train-size",
      String(o["train-size"]),
      "--add-chunk",
      String(o["add-chunk"]),
      "--seed",
      String(o.seed),
      "--threads",
      String(threads),
    ];
    // Queries: keys of the datastore (seeded rows), float16, the same for both sides.
    const qRows = sampleRows(n, o.queries, o.seed + 1);
    const queries = join(work, `queries-${n}.npy`);
    {
      const q = new Uint16Array(qRows.length * o.d);
      let at = 0;
      for (let i = 0; i < shards; i++) {
        const rec = JSON.parse(
          await Deno.readTextFile(join(dir, "shards", String(i), "shard.json")),
        );
        using keys = MappedArray.open(join(dir, "shards", String(i), "keys.npy"));
        const [r0, r1] = rec.shard.rows;
        for (const r of qRows) {
          if (r >= r0 && r < r1) q.set(keys.view(r - r0, r - r0 + 1) as Uint16Array, (at++) * o.d);
        }
      }
      writeNpy(queries, "<f2", q, [qRows.length, o.d]);
    }

    let python: Record<string, unknown> | undefined;
    if (n === compare) {
      say(`${n} keys: FAISS from Python (train, add ${shards} shards, merge_ondisk)`);
      const py = join(work, `py-${n}`);
      await Deno.mkdir(py, { recursive: true });
      const rows = join(py, "train_rows.npy");
      const sample = sampleRows(n, Math.min(o["train-size"], n), o.seed);
      writeNpy(rows, "<i8", BigInt64Array.from(sample, (x) => BigInt(x)), [sample.length]);
      await dropCache(dir);
      const trained = join(py, "trained.index");
      const train = check(
        await measure(o.python, [
          PY,
          "train",
          dir,
          rows,
          String(o.nlist),
          String(o.m),
          String(o.nbits),
          trained,
        ]),
        "python train",
      );
      const adds: MeasuredRun[] = [];
      for (let i = 0; i < shards; i++) {
        adds.push(check(
          await measure(o.python, [
            PY,
            "add",
            dir,
            String(i),
            trained,
            join(py, `shard${i}.index`),
            String(o["add-chunk"]),
          ]),
          `python add ${i}`,
        ));
      }
      const merge = check(
        await measure(o.python, [
          PY,
          "merge",
          trained,
          py,
          ...Array.from({ length: shards }, (_, i) => join(py, `shard${i}.index`)),
        ]),
        "python merge",
      );
      const shardIndexBytes = Object.entries(await sizes(py)).filter(([f]) =>
        /^shard\d+\.index$/.test(f)
      )
        .reduce((a, [, b]) => a + b, 0);
      for (let i = 0; i < shards; i++) await Deno.remove(join(py, `shard${i}.index`));
      const search = check(
        await measure(o.python, [
          PY,
          "search",
          join(py, "populated.index"),
          queries,
          String(o.k),
          String(o.nprobe),
        ]),
        "python search",
      );
      const s = JSON.parse(search.stdout.trim().split("\n").at(-1)!);
      python = {
        stages: {
          train: stage([train], o["train-size"]),
          add: stage(adds, n),
          merge: stage([merge], n),
        },
        buildSeconds: train.wallSeconds + adds.reduce((a, r) => a + r.wallSeconds, 0) +
          merge.wallSeconds,
        files: {
          ...(await sizes(py)),
          "shard*.index (before merge, removed after)": shardIndexBytes,
        },
        search: { seconds: s.seconds, queries: s.queries, tokensPerSecond: s.queries / s.seconds },
      };
      await Deno.remove(py, { recursive: true });
    }

    say(
      `${n} keys: the toolkit (knn train-index, knn add: ${shards} shards, ${workers} workers, merge)`,
    );
    await dropCache(dir);
    const train = check(
      await measure(Deno.execPath(), ["run", "-A", CLI, "train-index", ...knnArgs], true),
      "knn train-index",
    );
    const add = check(
      await measure(Deno.execPath(), [
        "run",
        "-A",
        CLI,
        "add",
        ...knnArgs,
        "--workers",
        String(workers),
      ], true),
      "knn add",
    );
    const addSeconds = doneSeconds(add.stderr, "add");
    const mergeSeconds = doneSeconds(add.stderr, "merge");
    const search = check(
      await measure(Deno.execPath(), [
        "run",
        "-A",
        join(ROOT, "bench/scale_search.ts"),
        dir,
        queries,
        String(o.k),
        String(o.nprobe),
      ]),
      "toolkit search",
    );
    const s = JSON.parse(search.stdout.trim().split("\n").at(-1)!);
    const manifest = JSON.parse(await Deno.readTextFile(join(dir, "datastore.json")));
    const files = await sizes(dir);
    const codeSize = Math.ceil((o.m * o.nbits) / 8);
    const toolkit = {
      stages: {
        train: stage([train], o["train-size"]),
        // add and merge ran in one `knn add` process tree: its memory peak is shared.
        add: { ...stage([add], n, addSeconds), note: "memory: knn add (add + merge)" },
        merge: { ...stage([add], n, mergeSeconds), note: "memory: knn add (add + merge)" },
      },
      buildSeconds: train.wallSeconds + add.wallSeconds,
      files,
      shardFilesBytes: keysBytes,
      search: { seconds: s.seconds, queries: s.queries, tokensPerSecond: s.queries / s.seconds },
      ivfdata: {
        bytes: files["faiss.ivfdata"],
        limit: Math.floor(1.05 * n * (codeSize + 8)) + 4096 * o.nlist,
        exact: n * (codeSize + 8),
      },
      shards: manifest.shards?.count,
    };
    runs.push({ n, shards, workers, generateSeconds, toolkit, ...(python ? { python } : {}) });
    say(`${n} keys: done (build ${toolkit.buildSeconds.toFixed(1)} s)`);
    await writeResults(o, { loadBefore, env, threads, workers, runs });
    if (!o.keep) {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(queries);
    }
  }
  console.log(await writeResults(o, { loadBefore, env, threads, workers, runs }));
}

/** Writes scale.json and scale.md (after every size, so a run cut short keeps what it did). */
async function writeResults(
  o: Opts,
  r: {
    loadBefore: number[];
    env: Record<string, string>;
    threads: number;
    workers: number;
    runs: unknown[];
  },
): Promise<string> {
  const result = {
    date: new Date().toISOString(),
    machine: machineInfo(),
    loadAverage: { before: r.loadBefore, after: Deno.loadavg() },
    environment: r.env,
    settings: { ...o, threads: r.threads, workers: r.workers },
    runs: r.runs,
  };
  const outDir = resolve(o["results-dir"]);
  await Deno.mkdir(outDir, { recursive: true });
  await Deno.writeTextFile(join(outDir, "scale.json"), JSON.stringify(result, null, 2) + "\n");
  const md = renderScale(result);
  await Deno.writeTextFile(join(outDir, "scale.md"), md);
  return md;
}

const MiB = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const GB = (b: number) => `${(b / 1e9).toFixed(2)} GB`;
const rate = (x: number) =>
  x >= 1e6 ? `${(x / 1e6).toFixed(2)}M` : x >= 1e3 ? `${(x / 1e3).toFixed(1)}k` : x.toFixed(0);

/** scale.md from scale.json's object (its `notes`, if any, are listed under the table). */
// deno-lint-ignore no-explicit-any
export function renderScale(r: any): string {
  const lines = [
    `# Scale: sharded builds of synthetic float16 keys (${r.date.slice(0, 10)})`,
    "",
    `Keys: a seeded Gaussian mixture (d = ${r.settings.d}, ${r.settings.components} components, ` +
    `sigma ${r.settings.sigma}) written straight into the shard layout (gather bypassed). ` +
    `Index IVF${r.settings.nlist},PQ${r.settings.m}x${r.settings.nbits}, ${
      r.settings["train-size"]
    } ` +
    `training keys, nprobe ${r.settings.nprobe}; ${
      r.settings["shard-keys"]
    } keys per shard; toolkit ` +
    `${r.settings.workers} worker processes. Environment of every process: ` +
    Object.entries(r.environment).map(([k, v]) => `${k}=${v}`).join(" ") +
    `. Load average before/after: ${
      r.loadAverage.before.map((x: number) => x.toFixed(2)).join(" ")
    } / ` +
    `${r.loadAverage.after.map((x: number) => x.toFixed(2)).join(" ")} (the machine is shared).`,
    "",
    "| keys | side | shards | train s | add s (keys/s) | merge s (keys/s) | build s | peak RssAnon | faiss.ivfdata | search tok/s |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const run of r.runs) {
    for (const side of ["toolkit", "python"] as const) {
      const s = run[side];
      if (!s) continue;
      const peak = Math.max(
        s.stages.train.peakRssAnon,
        s.stages.add.peakRssAnon,
        s.stages.merge.peakRssAnon,
      );
      const ivf = s.files["faiss.ivfdata"] ?? s.files["merged_index.ivfdata"];
      lines.push(
        `| ${run.n} | ${side === "toolkit" ? "toolkit" : "FAISS (Python)"} | ${run.shards} | ` +
          `${s.stages.train.seconds.toFixed(1)} | ${s.stages.add.seconds.toFixed(1)} (${
            rate(s.stages.add.keysPerSecond)
          }) | ` +
          `${s.stages.merge.seconds.toFixed(1)} (${rate(s.stages.merge.keysPerSecond)}) | ${
            s.buildSeconds.toFixed(1)
          } | ` +
          `${MiB(peak)} | ${GB(ivf)} | ${rate(s.search.tokensPerSecond)} |`,
      );
    }
  }
  for (const note of r.notes ?? []) lines.push("", note);
  lines.push("", "Disk, bytes per file of the finished datastore:", "");
  for (const run of r.runs) {
    lines.push(
      `- ${run.n} keys, toolkit: ` +
        Object.entries(run.toolkit.files).map(([f, b]) => `${f} ${b}`).join(", ") +
        `; shard files before the merge ${run.toolkit.shardFilesBytes}; faiss.ivfdata limit ` +
        `(1.05·n·(code+8) + a page per list) ${run.toolkit.ivfdata.limit}, exact n·(code+8) ${run.toolkit.ivfdata.exact}`,
    );
    if (run.python) {
      lines.push(
        `- ${run.n} keys, FAISS (Python): ` +
          Object.entries(run.python.files).map(([f, b]) => `${f} ${b}`).join(", "),
      );
    }
  }
  lines.push(
    "",
    "Peak RssAnon: the largest sum over a stage's process tree (the toolkit's `knn add` with its " +
      "workers; each Python stage is one process). train keys/s is the training sample's.",
    "",
  );
  return lines.join("\n");
}

if (import.meta.main) await main();
