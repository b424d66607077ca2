/**
 * The thread and BLAS environment both sides of a benchmark run under, set explicitly so that
 * neither side's own defaulting (the toolkit's loader sets `OMP_WAIT_POLICY=PASSIVE` when it is
 * unset; OpenMP's default spins) decides a comparison. Also: which OpenBLAS kernels a CPU should
 * get when OpenBLAS's own detection falls back to a generic core, and the model FLOPs behind
 * the gather's achieved GFLOP/s.
 *
 * @module
 */

/** Thread settings of a benchmark (the same for both sides). */
export interface ThreadSettings {
  /** Threads for each side: OpenMP, OpenBLAS, MKL, and the sides' own thread options. */
  threads: number;
  /** `OMP_WAIT_POLICY` for both sides: `PASSIVE` (threads sleep) or `ACTIVE` (they spin). */
  waitPolicy: "PASSIVE" | "ACTIVE";
  /** `OPENBLAS_CORETYPE` for both sides, or `undefined` for OpenBLAS's own detection. */
  blasCore?: string;
}

/**
 * The environment variables both sides get. Every thread pool either side links is pinned:
 * OpenMP (FAISS, PyTorch), OpenBLAS (its own pthreads), MKL (if a side has it).
 */
export function threadEnvironment(s: ThreadSettings): Record<string, string> {
  const n = String(s.threads);
  const env: Record<string, string> = {
    OMP_WAIT_POLICY: s.waitPolicy,
    OMP_NUM_THREADS: n,
    OPENBLAS_NUM_THREADS: n,
    MKL_NUM_THREADS: n,
  };
  if (s.blasCore) env.OPENBLAS_CORETYPE = s.blasCore;
  return env;
}

/** The `flags` line of a `/proc/cpuinfo` text, as a set. */
export function parseCpuFlags(cpuinfo: string): Set<string> {
  const line = /^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "";
  return new Set(line.split(/\s+/).filter((f) => f));
}

/**
 * The OpenBLAS kernel family (an `OPENBLAS_CORETYPE` value) that a CPU with these flags can
 * run: `Cooperlake` (AVX-512 with BF16), `SkylakeX` (AVX-512 F/CD/BW/DQ/VL), `Haswell`
 * (AVX2 + FMA), else `undefined` (leave OpenBLAS's choice).
 */
export function blasCoreForFlags(flags: Set<string>): string | undefined {
  const has = (...f: string[]) => f.every((x) => flags.has(x));
  const avx512 = has("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl");
  if (avx512 && has("avx512_bf16")) return "Cooperlake";
  if (avx512) return "SkylakeX";
  if (has("avx2", "fma")) return "Haswell";
  return undefined;
}

/**
 * OpenBLAS's generic fallbacks: the cores a DYNAMIC_ARCH build picks when it does not know the
 * CPU model (OpenBLAS 0.3.21 falls back to Prescott, SSE3 kernels, on CPUs newer than it).
 */
export const GENERIC_BLAS_CORES: ReadonlySet<string> = new Set([
  "Prescott",
  "Katmai",
  "Coppermine",
  "Northwood",
  "Banias",
  "Core2",
  "Penryn",
  "Dunnington",
  "Nehalem",
  "Atom",
  "Generic",
]);

/**
 * The core to force for both sides: `undefined` when OpenBLAS's own choice (`detected`) is a
 * real kernel family for this CPU, else the family the CPU flags allow (if better).
 */
export function blasCoreOverride(detected: string, flags: Set<string>): string | undefined {
  if (!GENERIC_BLAS_CORES.has(detected)) return undefined;
  const better = blasCoreForFlags(flags);
  return better && better !== detected ? better : undefined;
}

/** The architecture of a GPT-style model, from its `config.json`. */
export interface ModelShape {
  /** Transformer blocks. */
  nLayers: number;
  /** Model width. */
  dModel: number;
  /** Feed-forward width. */
  dFf: number;
  /** Vocabulary size. */
  vocab: number;
}

/** Reads `{ n_layers, d_model, d_ff, vocab_size }` from a config.json text; throws on a gap. */
export function parseModelShape(text: string, path = "config.json"): ModelShape {
  const c = JSON.parse(text) as Record<string, unknown>;
  const get = (k: string) => {
    const v = c[k];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      throw new Error(`${path}: expected a positive integer '${k}', found ${JSON.stringify(v)}`);
    }
    return v;
  };
  return {
    nLayers: get("n_layers"),
    dModel: get("d_model"),
    dFf: get("d_ff"),
    vocab: get("vocab_size"),
  };
}

/**
 * FLOPs (multiply + add = 2) of the forward pass per window token that producing keys needs:
 * every block's attention (QKV and output projections, 8·d² per token, and the dense `L × L`
 * score and value products, 4·L·d per token, as ONNX Runtime computes them before the causal
 * mask) and the feed-forward of every block but the last (4·d·d_ff; the key is the last block's
 * feed-forward input); no LM head. A key costs `windows × L / keys` of these (overlap).
 */
export function keyFlopsPerWindowToken(m: ModelShape, seqLen: number): number {
  const d = m.dModel;
  return m.nLayers * (8 * d * d + 4 * seqLen * d) + (m.nLayers - 1) * 4 * d * m.dFf;
}
