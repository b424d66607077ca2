/**
 * Synthetic keys for `deno task bench-scale`, written straight into a sharded datastore's
 * layout (`DIR/shards/I/{keys.npy, vals.npy, checksums.json, shard.json}`, as `knn gather
 * --shard I/N` leaves it), so the gather stage — the model — is bypassed and any number of keys
 * can be made on a small machine.
 *
 * The keys come from a fixed Gaussian mixture: `components` centres drawn N(0, 1) per
 * coordinate from `seed`; row r belongs to component (hash(seed, r) mod components) and is its
 * centre plus `sigma` times noise drawn from a fixed table of 65,536 seeded N(0, 1) samples
 * (Box–Muller), indexed by a per-row xorshift stream. Every row is a function of (seed, r)
 * alone, so a datastore of n keys is the first n rows of a larger one, whatever the shards.
 * Values (the "next token") are the component numbers. Keys are stored as float16.
 *
 * Run as a child: `deno run -A bench/scale_keys.ts JSON` with a {@link ShardJob}.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { MappedArray } from "../lib/storage/mmap.ts";
import { f32ArrayToF16 } from "../lib/storage/half.ts";
import { sha256File } from "../lib/core/_hash.ts";
import { versions } from "../lib/core/version.ts";
import { CHECKSUM_BLOCK_ROWS, type GatherChecksums } from "../lib/datastore/gather.ts";
import {
  type GatherFingerprint,
  shardDir,
  shardRange,
  type ShardSpec,
  writeShardRecord,
} from "../lib/datastore/mod.ts";

/** The mixture and the datastore's shape. */
export interface Mixture {
  /** Rows (keys). */
  n: number;
  /** Key width. */
  d: number;
  /** Mixture components (also the vocabulary of the values). */
  components: number;
  /** Noise scale around each centre. */
  sigma: number;
  /** Seed of everything. */
  seed: number;
}

/** One shard to write. */
export interface ShardJob {
  /** Datastore directory. */
  dir: string;
  /** The mixture. */
  mixture: Mixture;
  /** Which shard. */
  shard: ShardSpec;
  /** The "model" file the fingerprint names: the mixture's description (see `generatorFile`). */
  generator: string;
}

/**
 * The fingerprint of a synthetic datastore: windows of 2 tokens, stride 2, batches of 1024
 * windows (shards are then whole multiples of 2048 rows), `nTokens` = n + 1; the "model" is the
 * generator file, so `knn train-index/add/merge --model FILE` accept the shards.
 */
export function syntheticFingerprint(m: Mixture, generatorSha256: string): GatherFingerprint {
  return {
    modelSha256: generatorSha256,
    keyTensor: "synthetic",
    corpusIdentity: `gaussian-mixture:d=${m.d},k=${m.components},sigma=${m.sigma},seed=${m.seed}`,
    nTokens: m.n + 1,
    seqLen: 2,
    stride: 2,
    batchSize: 1024,
    keyDtype: "float16",
  };
}

/** Writes the generator's description (the "model" of the synthetic datastore) to `path`. */
export async function writeGeneratorFile(path: string, m: Mixture): Promise<void> {
  const { n: _, ...mixture } = m;
  await Deno.writeTextFile(
    path,
    JSON.stringify({ generator: "knnlm bench/scale_keys.ts gaussian mixture", ...mixture }) + "\n",
  );
}

function splitmix(x: number): number {
  x = (x + 0x9e3779b9) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b) >>> 0;
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** `count` N(0, 1) samples from `seed` (Box–Muller). */
function normals(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let s = seed >>> 0;
  const u = () => ((s = splitmix(s)) + 0.5) / 4294967296;
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u())), t = 2 * Math.PI * u();
    out[i] = r * Math.cos(t);
    if (i + 1 < count) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

/** Writes one shard's files and its `shard.json`. */
export async function writeShard(job: ShardJob): Promise<void> {
  const { mixture: m, shard } = job;
  const sha = await sha256File(job.generator);
  const fp = syntheticFingerprint(m, sha);
  const range = shardRange(fp, shard);
  const [r0, r1] = range.rows;
  const rows = r1 - r0;
  const sd = shardDir(job.dir, shard.index);
  await Deno.mkdir(sd, { recursive: true });
  const centres = normals(m.components * m.d, m.seed);
  const table = normals(65536, splitmix(m.seed ^ 0x5bd1e995));
  using keys = MappedArray.create(join(sd, "keys.npy.tmp"), {
    dtype: "<f2",
    shape: [rows, m.d],
    allocate: true,
  });
  using vals = MappedArray.create(join(sd, "vals.npy.tmp"), {
    dtype: "<i4",
    shape: [rows],
    allocate: true,
  });
  const v = vals.view() as Int32Array;
  const B = CHECKSUM_BLOCK_ROWS;
  const sums: GatherChecksums = { algorithm: "sha256", blockRows: B, rows, keys: [], vals: [] };
  const buf = new Float32Array(B * m.d);
  for (let b0 = 0; b0 < rows; b0 += B) {
    const b1 = Math.min(rows, b0 + B);
    for (let i = b0; i < b1; i++) {
      const r = r0 + i;
      let s = splitmix((m.seed ^ Math.imul(r, 0x27d4eb2d)) >>> 0) || 1;
      const c = s % m.components;
      v[i] = c;
      const base = (i - b0) * m.d, cb = c * m.d;
      for (let j = 0; j < m.d; j++) {
        // xorshift32: the row's noise stream.
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        buf[base + j] = centres[cb + j] + m.sigma * table[(s >>> 16) & 0xffff];
      }
    }
    const dst = keys.view(b0, b1) as Uint16Array;
    f32ArrayToF16(buf.subarray(0, (b1 - b0) * m.d), dst);
    const kv = keys.view(b0, b1), vv = vals.view(b0, b1);
    sums.keys.push(
      createHash("sha256").update(new Uint8Array(kv.buffer, kv.byteOffset, kv.byteLength)).digest(
        "hex",
      ),
    );
    sums.vals.push(
      createHash("sha256").update(new Uint8Array(vv.buffer, vv.byteOffset, vv.byteLength)).digest(
        "hex",
      ),
    );
    keys.flush(b0, b1);
    keys.advise("dontneed", b0, b1);
  }
  vals.flush();
  keys.close();
  vals.close();
  await Deno.writeTextFile(join(sd, "checksums.json"), JSON.stringify(sums));
  await Deno.rename(join(sd, "keys.npy.tmp"), join(sd, "keys.npy"));
  await Deno.rename(join(sd, "vals.npy.tmp"), join(sd, "vals.npy"));
  await writeShardRecord(sd, {
    shard: { ...shard, ...range },
    config: { synthetic: m },
    model: {
      path: job.generator,
      sha256: sha,
      keyTensor: "synthetic",
      logitsOutput: "none",
      dModel: m.d,
      vocabSize: m.components,
    },
    corpus: {
      spec: fp.corpusIdentity,
      name: "synthetic",
      identity: fp.corpusIdentity,
      nTokens: m.n + 1,
      totalTokens: m.n + 1,
      firstToken: 0,
    },
    keys: { file: "keys.npy", dtype: "<f2", shape: [rows, m.d] },
    vals: { file: "vals.npy", dtype: "<i4", shape: [rows] },
    gather: { ...fp, windows: range.windows[1] - range.windows[0], seconds: 0, tokensPerSecond: 0 },
    checksums: { file: "checksums.json", algorithm: "sha256", blockRows: B },
    versions: versions(),
  });
}

if (import.meta.main) await writeShard(JSON.parse(Deno.args[0]) as ShardJob);
