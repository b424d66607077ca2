// The example Slurm scripts on a real Slurm: a one-node cluster on localhost
// (tests/slurm/local_cluster.sh: munged, slurmctld and slurmd with their state in a temporary
// directory, on free ports), `examples/slurm/submit.sh --wait` for a 4-shard build — a gather
// array of 4, train, an add array of 4 and merge, chained with --dependency=afterok — and the
// merged datastore checked against a one-process build (byte-identical keys, values and lists,
// the same search results with nprobe = nlist) and by `knn verify`.
//
// Needs root (the cluster runs as SlurmUser=root) and Debian's slurm-wlm and munge, which
// `deno task setup-test` (run by `deno task test`) installs where apt-get may run.
import assert from "node:assert/strict";
import { join } from "node:path";
import { corpusText, knn, TINY } from "./_child.ts";
import { assertSameDatastore } from "./_equivalent.ts";
import { tempDir } from "./_tmp.ts";

const REPO = new URL("..", import.meta.url).pathname;
const CLUSTER = join(REPO, "tests/slurm/local_cluster.sh");
const SUBMIT = join(REPO, "examples/slurm/submit.sh");
const isRoot = Deno.uid() === 0;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, { args, env, stdin: "null" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The end of every log file under `dir`, for a failure message. */
async function logs(dir: string): Promise<string> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const text = await Deno.readTextFile(join(dir, e.name)).catch(() => "");
      out.push(`== ${e.name}\n${text.split("\n").slice(-8).join("\n")}`);
    }
  } catch { /* no logs */ }
  return out.join("\n");
}

Deno.test({
  name:
    "a 4-shard build submitted to Slurm with sbatch --array and afterok equals the one-process build",
  ignore: !isRoot,
  fn: async () => {
    for (const c of ["slurmctld", "slurmd", "sbatch", "munged"]) {
      const r = await run("sh", ["-c", `command -v ${c}`]);
      assert.equal(
        r.code,
        0,
        `${c} is missing: run deno task setup-test (apt-get install slurm-wlm munge)`,
      );
    }
    using tmp = tempDir("knnlm_slurm_");
    const cluster = join(tmp.path, "cluster");
    const corpus = join(tmp.path, "corpus.txt");
    await Deno.writeTextFile(corpus, corpusText(24_000));
    const settings = [
      `--model ${TINY} --corpus ${corpus} --seq-len 32 --stride 16 --batch-size 4 --threads 1`,
      "--nlist 8 --m 8 --nbits 6 --nprobe 8 --add-chunk 1000",
    ].join(" ");
    const ports = {
      SLURM_TEST_CTLD_PORT: String(freePort()),
      SLURM_TEST_SLURMD_PORT: String(freePort()),
    };
    const start = await run("bash", [CLUSTER, "start", cluster], ports);
    try {
      assert.equal(start.code, 0, start.stdout + start.stderr);
      const conf = /export SLURM_CONF=(\S+)/.exec(start.stdout)?.[1];
      assert.ok(conf, start.stdout);
      const out = join(tmp.path, "ds");
      const submit = await run(SUBMIT, ["--wait"], {
        SLURM_CONF: conf,
        KNN_OUT: out,
        SHARDS: "4",
        KNN: `${Deno.execPath()} run --allow-all ${join(REPO, "cli.ts")}`,
        KNN_ARGS: settings,
        NO_COLOR: "1",
      });
      assert.equal(
        submit.code,
        0,
        `${submit.stdout}${submit.stderr}\n${await logs(join(out, "slurm-logs"))}`,
      );
      // Every stage ran as the scripts say: 4 gather and 4 add array tasks, one train, one merge.
      const names = [...Deno.readDirSync(join(out, "slurm-logs"))].map((e) =>
        e.name.replace(/-\d+(_\d)?\.out$/, "$1")
      ).sort();
      assert.deepEqual(names, [
        "knn-add_0",
        "knn-add_1",
        "knn-add_2",
        "knn-add_3",
        "knn-gather_0",
        "knn-gather_1",
        "knn-gather_2",
        "knn-gather_3",
        "knn-merge",
        "knn-train",
      ]);
      const gather0 = await Deno.readTextFile(
        join(
          out,
          "slurm-logs",
          [...Deno.readDirSync(join(out, "slurm-logs"))]
            .find((e) => /^knn-gather-\d+_0\.out$/.test(e.name))!.name,
        ),
      );
      assert.match(gather0, /shard 0\/4 of .*: gather done/);

      const ref = join(tmp.path, "ref");
      const one = await knn("build-index", "--out", ref, "--shards", "1", ...settings.split(" "));
      assert.equal(one.code, 0, one.stderr);
      await assertSameDatastore(out, ref);
      const m = JSON.parse(await Deno.readTextFile(join(out, "datastore.json")));
      assert.equal(m.shards.count, 4);
      const v = await knn("verify", out, "--json");
      assert.equal(v.code, 0, v.stdout + v.stderr);
      assert.equal(JSON.parse(v.stdout).ok, true);
    } finally {
      const stop = await run("bash", [CLUSTER, "stop", cluster]);
      assert.equal(stop.code, 0, stop.stderr);
    }
  },
});
