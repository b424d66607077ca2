// examples/k8s/indexed-job.yaml cannot run here (no Kubernetes on this machine or in CI), so its
// shape is checked instead: four batch/v1 Jobs in stage order (gather → train → add → merge);
// gather and add are Indexed Jobs whose completions and parallelism equal the --shards N their
// command passes (each pod takes its shard from JOB_COMPLETION_INDEX); train and merge run once;
// every pod mounts one shared volume at the directory its command writes (--out).
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix
import { parseAllDocuments } from "npm:yaml@2.9.1";

const FILE = new URL("../examples/k8s/indexed-job.yaml", import.meta.url);

interface Job {
  apiVersion: string;
  kind: string;
  metadata: { name: string };
  spec: {
    completionMode?: string;
    completions?: number;
    parallelism?: number;
    template: {
      spec: {
        restartPolicy: string;
        containers: {
          command: string[];
          volumeMounts: { name: string; mountPath: string }[];
        }[];
        volumes: { name: string; persistentVolumeClaim?: { claimName: string } }[];
      };
    };
  };
}

function flag(command: string[], name: string): string | undefined {
  const i = command.indexOf(name);
  return i >= 0 ? command[i + 1] : undefined;
}

Deno.test("the Kubernetes example is four Jobs in stage order, Indexed over --shards N, on one shared volume", async () => {
  const docs = parseAllDocuments(await Deno.readTextFile(FILE));
  for (const d of docs) assert.deepEqual(d.errors, [], "valid YAML");
  const jobs = docs.map((d) => d.toJS() as Job);
  assert.deepEqual(jobs.map((j) => [j.apiVersion, j.kind]), Array(4).fill(["batch/v1", "Job"]));
  const commands = jobs.map((j) => j.spec.template.spec.containers[0].command);
  const stage = (c: string[]) => c[c.indexOf("knn") + 1];
  assert.deepEqual(commands.map(stage), ["gather", "train-index", "add", "merge"]);

  const shards = new Set<number>();
  const claims = new Set<string>();
  const outs = new Set<string>();
  for (const [i, job] of jobs.entries()) {
    const pod = job.spec.template.spec;
    const c = commands[i];
    const indexed = stage(c) === "gather" || stage(c) === "add";
    if (indexed) {
      assert.equal(job.spec.completionMode, "Indexed", job.metadata.name);
      const n = Number(flag(c, "--shards"));
      assert.ok(Number.isInteger(n) && n >= 1, `${job.metadata.name}: --shards N in ${c}`);
      assert.equal(job.spec.completions, n, `${job.metadata.name}: completions = --shards`);
      assert.equal(job.spec.parallelism, n, `${job.metadata.name}: parallelism = --shards`);
      shards.add(n);
    } else {
      assert.notEqual(job.spec.completionMode, "Indexed", job.metadata.name);
      assert.equal(job.spec.completions ?? 1, 1, `${job.metadata.name} runs once`);
    }
    assert.notEqual(pod.restartPolicy, "Always", "a Job's pods must be allowed to finish");
    const out = flag(c, "--out");
    assert.ok(out, `${job.metadata.name}: --out`);
    outs.add(out);
    const mount = pod.containers[0].volumeMounts.find((m) => out.startsWith(m.mountPath + "/"));
    assert.ok(mount, `${job.metadata.name}: --out ${out} is on a mounted volume`);
    const volume = pod.volumes.find((v) => v.name === mount.name);
    assert.ok(volume?.persistentVolumeClaim, `${job.metadata.name}: the volume is a claim`);
    claims.add(volume.persistentVolumeClaim.claimName);
  }
  assert.equal(shards.size, 1, "gather and add use one shard count");
  assert.equal(claims.size, 1, "every stage mounts the same claim");
  assert.equal(outs.size, 1, "every stage writes the same datastore directory");
});
