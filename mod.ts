/**
 * knnlm: build and query kNN-LM datastores (Khandelwal et al., ICLR 2020) from Deno.
 *
 * FAISS indexes come through a small C++ shim loaded with `Deno.dlopen` (run
 * `deno task setup` once, or let the first use compile it). Vectors are `Float32Array`s
 * (passed without copying), raw float16 bits, or raw pointers into memory-mapped files.
 *
 * @example Build, search and save an IVFPQ index
 * ```ts
 * import { FaissIndex } from "./mod.ts";
 *
 * const d = 16;
 * const keys = new Float32Array(4_000 * d).map(() => Math.random()); // [n, d]
 * using index = FaissIndex.ivfpq({ d, nlist: 16, m: 4, nbits: 8 });
 * await index.trainAsync(keys);
 * await index.addWithIdsAsync(keys, BigInt64Array.from({ length: 4_000 }, (_, i) => BigInt(i)));
 * index.nprobe = 8;
 * const { labels, distances } = await index.searchAsync(keys.subarray(0, d), 4);
 * console.log(labels, distances); // labels[0] === 0n: a stored key finds itself
 * index.write("/tmp/keys.index"); // plain faiss.write_index format
 * ```
 *
 * @module
 */

// FAISS through Deno FFI: FaissIndex, thread control, shim build helpers, smoke check.
export * from "./lib/faiss/mod.ts";
