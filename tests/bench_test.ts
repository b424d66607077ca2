// Pure helpers of the benchmark harness. No timings are asserted anywhere.
import assert from "node:assert/strict";
import { describeRatio, formatMiB, formatRatio, median, ratio } from "../bench/stats.ts";
import { foldPeaks, parsePidCpuSeconds, parseProcStatus, readProcStatus } from "../bench/proc.ts";
import { parseCpuModel, parseMemTotal, parseSystemCpu } from "../bench/machine.ts";
import { encodeTokensNpy } from "../bench/tokens.ts";
import { numberAt, parseJsonOutput, referenceValues, toolkitValues } from "../bench/outputs.ts";
import { blasReport, type RepResult, summarize } from "../bench/report.ts";
import {
  blasCoreForFlags,
  blasCoreOverride,
  keyFlopsPerWindowToken,
  parseCpuFlags,
  parseModelShape,
  threadEnvironment,
} from "../bench/thread_env.ts";
import { encodeFloat32Npy, gaussianMixture } from "../bench/tokens.ts";
import { type StageRun, summarizeStages } from "../bench/stages.ts";
import { parseNpyHeader } from "../lib/storage/npy.ts";

Deno.test("median takes the middle value, or the mean of the two middle ones", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([7]), 7);
});

Deno.test("median skips missing and non-finite values and is undefined when none are left", () => {
  assert.equal(median([5, undefined, NaN, 1, Infinity, 3]), 3);
  assert.equal(median([]), undefined);
  assert.equal(median([undefined, NaN]), undefined);
});

Deno.test("ratio divides toolkit by reference and refuses a missing or zero reference", () => {
  assert.equal(ratio(3, 2), 1.5);
  assert.equal(ratio(undefined, 2), undefined);
  assert.equal(ratio(3, undefined), undefined);
  assert.equal(ratio(3, 0), undefined);
});

Deno.test("ratios print with three significant digits and a dash when unknown", () => {
  assert.equal(formatRatio(1.5), "1.50×");
  assert.equal(formatRatio(0.123456), "0.123×");
  assert.equal(formatRatio(12.345), "12.3×");
  assert.equal(formatRatio(undefined), "—");
  assert.equal(formatRatio(NaN), "—");
});

Deno.test("a ratio's words depend on whether higher is better for the metric", () => {
  assert.equal(describeRatio(2, "throughput"), "2.00× faster");
  assert.equal(describeRatio(0.5, "throughput"), "2.00× slower");
  assert.equal(describeRatio(0.5, "time"), "2.00× faster");
  assert.equal(describeRatio(1.25, "time"), "1.25× slower");
  assert.equal(describeRatio(0.8, "memory"), "1.25× less memory");
  assert.equal(describeRatio(3, "memory"), "3.00× more memory");
  assert.equal(describeRatio(1.1, "cpu"), "1.10× more CPU");
  assert.equal(describeRatio(1.01, "time"), "about the same");
  assert.equal(describeRatio(undefined, "time"), "—");
});

Deno.test("memory prints in MiB", () => {
  assert.equal(formatMiB(3 * 2 ** 20 + 2 ** 19), "3.5 MiB");
  assert.equal(formatMiB(undefined), "—");
});

const STATUS = `Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t 1794400 kB
VmSize:\t 1794396 kB
VmHWM:\t  790812 kB
VmRSS:\t  512000 kB
RssAnon:\t  400000 kB
RssFile:\t  110000 kB
RssShmem:\t    2000 kB
Threads:\t3
`;

Deno.test("/proc status memory lines are read in KiB and returned in bytes", () => {
  assert.deepEqual(parseProcStatus(STATUS), {
    vmHWM: 790812 * 1024,
    vmRSS: 512000 * 1024,
    rssAnon: 400000 * 1024,
    rssFile: 110000 * 1024,
    rssShmem: 2000 * 1024,
  });
});

Deno.test("this process's own counters are read live and add up as the kernel defines them", () => {
  const s = readProcStatus();
  assert.ok(s.rssAnon! > 0 && s.rssFile! > 0, JSON.stringify(s));
  assert.ok(s.vmHWM >= s.vmRSS);
  assert.equal(s.vmRSS, s.rssAnon! + s.rssFile! + s.rssShmem!);
  assert.throws(() => readProcStatus(2 ** 30), /\/proc\/1073741824\/status/);
});

Deno.test("a /proc status without memory lines (a zombie) parses to undefined", () => {
  assert.equal(parseProcStatus("Name:\tdeno\nState:\tZ (zombie)\nPid:\t7\n"), undefined);
});

Deno.test("an unreadable memory line in /proc status is an error naming the line", () => {
  assert.throws(() => parseProcStatus("VmRSS:\t12 MB\nVmHWM:\t1 kB\n"), /VmRSS:\t12 MB/);
});

Deno.test("peaks keep the largest reading of each counter and count the readings", () => {
  let p = foldPeaks({ samples: 0 }, parseProcStatus(STATUS));
  p = foldPeaks(p, { vmHWM: 10, vmRSS: 10 ** 10, rssAnon: 5 });
  p = foldPeaks(p, undefined);
  assert.deepEqual(p, {
    peakHwm: 790812 * 1024,
    peakRss: 10 ** 10,
    peakRssAnon: 400000 * 1024,
    samples: 2,
  });
});

Deno.test("a process's CPU seconds are utime + stime, even when its name holds ') '", () => {
  // Fields 14 and 15 (utime 250, stime 50 ticks) come after a command name with ") " in it.
  const stat = "4242 (we) ird name) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 3 0";
  assert.equal(parsePidCpuSeconds(stat), 3);
  assert.equal(parsePidCpuSeconds("garbage"), undefined);
});

Deno.test("machine CPU counters count everything but idle and iowait as busy", () => {
  const stat = "cpu  100 5 20 800 50 1 2 3 0 0\ncpu0 50 2 10 400 25 0 1 1 0 0\n";
  assert.deepEqual(parseSystemCpu(stat), { busy: 131, total: 981 });
  assert.equal(parseSystemCpu("intr 1 2 3\n"), undefined);
});

Deno.test("cpu model and total memory are read from /proc text", () => {
  const cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
  assert.equal(parseCpuModel(cpuinfo), "AMD EPYC 7B13");
  assert.equal(parseMemTotal("MemTotal:       24684100 kB\nMemFree: 1 kB\n"), 24684100 * 1024);
  assert.equal(parseCpuModel("processor\t: 0\n"), undefined);
});

Deno.test("token ids are written as an int32 .npy whose data starts on a 64-byte boundary", () => {
  const ids = Int32Array.of(0, 255, 65, -1, 2 ** 31 - 1);
  const bytes = encodeTokensNpy(ids);
  assert.deepEqual([...bytes.subarray(0, 8)], [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  const view = new DataView(bytes.buffer);
  const headerLength = view.getUint16(8, true);
  const data = 10 + headerLength;
  assert.equal(data % 64, 0);
  const header = new TextDecoder().decode(bytes.subarray(10, data));
  assert.match(header, /^\{'descr': '<i4', 'fortran_order': False, 'shape': \(5,\), \} *\n$/);
  assert.equal(bytes.length, data + 4 * ids.length);
  const back = Array.from({ length: ids.length }, (_, i) => view.getInt32(data + 4 * i, true));
  assert.deepEqual(back, [...ids]);
});

Deno.test("a command's JSON is found even after other lines on stdout", () => {
  assert.deepEqual(parseJsonOutput('{"a": 1}\n'), { a: 1 });
  assert.deepEqual(parseJsonOutput('loading…\n{\n  "a": {"b": [1, 2]}\n}\n'), { a: { b: [1, 2] } });
  assert.throws(() => parseJsonOutput("no json here"), /no JSON document/);
});

Deno.test("numberAt follows keys and array indexes and is undefined off the path", () => {
  const obj = { a: { b: [1.5, { c: 2 }] }, s: "x" };
  assert.equal(numberAt(obj, ["a", "b", 0]), 1.5);
  assert.equal(numberAt(obj, ["a", "b", 1, "c"]), 2);
  assert.equal(numberAt(obj, ["s"]), undefined);
  assert.equal(numberAt(obj, ["a", "x", "y"]), undefined);
});

Deno.test("both sides' outputs map onto the same metric names", () => {
  const manifest = {
    gather: { seconds: 10, tokensPerSecond: 2000 },
    trained: { seconds: 5 },
    index: { seconds: 1 },
  };
  const evalResult = {
    tokensPerSecond: 900,
    seconds: 11,
    lmPerplexity: 3.5,
    modes: { faiss: { perplexities: [3.1] } },
  };
  const tk = toolkitValues(manifest, evalResult);
  const ref = referenceValues(
    { gather: { seconds: 20, tokensPerSecond: 1000 }, train: { seconds: 6 }, add: { seconds: 2 } },
    { eval: { tokensPerSecond: 800, seconds: 12, lmPerplexity: 3.5, perplexity: { "0.25": 3.2 } } },
    0.25,
  );
  assert.deepEqual(Object.keys(tk).sort(), Object.keys(ref).sort());
  assert.equal(tk.stagesSeconds, 16);
  assert.equal(ref.stagesSeconds, 28);
  assert.equal(tk.knnPerplexity, 3.1);
  assert.equal(ref.knnPerplexity, 3.2);
  assert.equal(toolkitValues({ gather: { seconds: 1 } }, {}).stagesSeconds, undefined);
});

Deno.test("the summary holds each side's median and the ratio of the medians", () => {
  const reps: RepResult[] = [
    { rep: 0, side: "toolkit", values: { trainSeconds: 4 } },
    { rep: 1, side: "toolkit", values: { trainSeconds: 2 } },
    { rep: 2, side: "toolkit", values: { trainSeconds: 3 } },
    { rep: 0, side: "reference", values: { trainSeconds: 6 } },
    { rep: 1, side: "reference", values: { trainSeconds: 9 } },
    { rep: 2, side: "reference", values: { trainSeconds: 5 } },
  ];
  const [row] = summarize(reps, [
    { key: "trainSeconds", label: "index training", unit: "s", kind: "time", headline: true },
  ]);
  assert.equal(row.toolkit.median, 3);
  assert.deepEqual(row.toolkit.values, [4, 2, 3]);
  assert.equal(row.reference.median, 6);
  assert.equal(row.ratio, 0.5);
  assert.equal(row.verdict, "2.00× faster");
});

Deno.test("both sides get every thread pool pinned, and a BLAS core only when one is chosen", () => {
  assert.deepEqual(threadEnvironment({ threads: 2, waitPolicy: "PASSIVE" }), {
    OMP_WAIT_POLICY: "PASSIVE",
    OMP_NUM_THREADS: "2",
    OPENBLAS_NUM_THREADS: "2",
    MKL_NUM_THREADS: "2",
  });
  const env = threadEnvironment({ threads: 4, waitPolicy: "ACTIVE", blasCore: "Haswell" });
  assert.equal(env.OPENBLAS_CORETYPE, "Haswell");
  assert.equal(env.OMP_WAIT_POLICY, "ACTIVE");
  // An empty OPENBLAS_CORETYPE is not "unset" to OpenBLAS: it must never be written.
  assert.equal(
    "OPENBLAS_CORETYPE" in threadEnvironment({ threads: 1, waitPolicy: "PASSIVE", blasCore: "" }),
    false,
  );
});

Deno.test("a generic OpenBLAS core is replaced by the family the CPU flags allow, a real one is kept", () => {
  const flags = parseCpuFlags(
    "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl\n",
  );
  assert.equal(blasCoreForFlags(flags), "SkylakeX");
  assert.equal(blasCoreForFlags(new Set([...flags, "avx512_bf16"])), "Cooperlake");
  assert.equal(blasCoreForFlags(new Set(["avx2", "fma"])), "Haswell");
  assert.equal(blasCoreForFlags(new Set(["sse2", "avx"])), undefined);
  assert.equal(blasCoreOverride("Prescott", flags), "SkylakeX");
  assert.equal(blasCoreOverride("Zen", flags), undefined);
  assert.equal(blasCoreOverride("Prescott", new Set(["sse2"])), undefined);
});

Deno.test("the gather's model FLOPs per window token count attention, projections and all but the last FFN", () => {
  const shape = parseModelShape(
    '{"vocab_size": 256, "context": 256, "d_model": 192, "n_layers": 4, "n_heads": 6, "d_ff": 768}',
  );
  assert.deepEqual(shape, { nLayers: 4, dModel: 192, dFf: 768, vocab: 256 });
  // 4 × (8·192² + 4·256·192) + 3 × 4·192·768
  assert.equal(keyFlopsPerWindowToken(shape, 256), 4 * (294_912 + 196_608) + 3 * 589_824);
  assert.throws(
    () => parseModelShape('{"d_model": 0}', "m/config.json"),
    /m\/config\.json.*n_layers/,
  );
});

Deno.test("float32 matrices are written as .npy files the toolkit's reader parses back", () => {
  const values = gaussianMixture(5, 3, 2, 7);
  assert.deepEqual(values, gaussianMixture(5, 3, 2, 7));
  assert.notDeepEqual(values, gaussianMixture(5, 3, 2, 8));
  const bytes = encodeFloat32Npy(values, 5, 3);
  const h = parseNpyHeader(bytes);
  assert.equal(h.dtype, "<f4");
  assert.deepEqual(h.shape, [5, 3]);
  assert.equal(h.dataOffset % 64, 0);
  assert.deepEqual(new Float32Array(bytes.slice(h.dataOffset).buffer), values);
  assert.throws(() => encodeFloat32Npy(values, 4, 3), /15 values, expected 4 × 3/);
});

Deno.test("stage medians pair the toolkit's parallel training with the reference's training", () => {
  const stage = (wall: number, busy: number) => ({
    wall,
    user: wall,
    sys: 0.5,
    busiestThread: busy,
    activeThreads: 2,
  });
  const runs: StageRun[] = [0, 1, 2].flatMap((rep): StageRun[] => [
    {
      rep,
      side: "toolkit" as const,
      stages: {
        train: stage(10 + rep, 8),
        trainParallel: stage(6, 3 + rep),
        add: stage(2, 1),
        search: stage(1, 0.5),
      },
      trainedSha256: "a",
      trainedParallelSha256: "a",
      labelsSha256: "l",
      processWallSeconds: 20,
    },
    {
      rep,
      side: "reference" as const,
      stages: { train: stage(12, 8), add: stage(4, 2), search: stage(1, 0.5) },
      trainedSha256: "a",
      labelsSha256: "l",
      processWallSeconds: 20,
    },
  ]);
  const rows = summarizeStages(runs);
  const by = Object.fromEntries(rows.map((r) => [r.stage, r]));
  assert.equal(by.train.toolkit.wall, 11);
  assert.equal(by.train.reference.wall, 12);
  assert.equal(by.trainParallel.wallRatio, 0.5);
  assert.equal(by.trainParallel.busiestRatio, 4 / 8);
  assert.equal(by.add.cpuRatio, 2.5 / 4.5);
  assert.equal(by.search.wallRatio, 1);
});

Deno.test("the BLAS lines give the SGEMM rate, the forced core and the gather's share of it", () => {
  const probe = (core: string, gflops: number) => ({
    core,
    threads: 2,
    size: 2048,
    gflops,
    calls: 5,
  });
  const row = summarize([
    { rep: 0, side: "toolkit", values: { gatherGflops: 200 } },
    { rep: 0, side: "reference", values: { gatherGflops: 50 } },
  ]);
  const lines = blasReport(
    { detected: probe("Prescott", 60), used: probe("Cooperlake", 250), forcedCore: "Cooperlake" },
    row,
    2,
  );
  assert.match(lines[0], /250 GFLOP\/s with Cooperlake kernels/);
  assert.match(lines[0], /picked Prescott \(60 GFLOP\/s\).*OPENBLAS_CORETYPE=Cooperlake/);
  assert.match(lines[1], /200\.0 \(toolkit\) and 50\.0 \(reference\).*= 80 % and 20 %/);
  assert.deepEqual(blasReport(undefined, row, 2), []);
});
