/**
 * A small real datastore for the serve tests: the tiny test model (tests/fixtures/
 * tiny_lm.onnx, byte-level, d = 32) run over a few thousand bytes of generated text, with an
 * exact (`Flat`) index so neighbours can be checked against brute force.
 *
 * @module
 */

import { join } from "node:path";
import { buildIndex, loadConfig } from "../mod.ts";

/** The tiny byte-level model every serve test uses. */
export const TINY_MODEL: string = new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname;

/**
 * Deterministic text with structure a datastore can exploit (a small vocabulary of words)
 * but no long exact repeats; `seed` picks the sequence.
 */
export function wordText(n: number, seed: number): string {
  const words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away"];
  let s = seed;
  let out = "";
  while (out.length < n) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out += words[(s >>> 16) % words.length] + ((s >>> 8) % 7 === 0 ? ". " : " ");
  }
  return out.slice(0, n);
}

/** What {@linkcode buildTinyDatastore} made. */
export interface TinyDatastore {
  /** The datastore directory. */
  dir: string;
  /** The corpus text it was built from (ASCII: token i = byte i). */
  corpus: string;
}

/** Builds a datastore over `bytes` bytes of {@linkcode wordText} in `root`/ds. */
export async function buildTinyDatastore(root: string, bytes = 3000): Promise<TinyDatastore> {
  const corpus = wordText(bytes, 1);
  const file = join(root, "train.txt");
  await Deno.writeTextFile(file, corpus);
  const { config } = loadConfig({
    flags: {
      model: TINY_MODEL,
      corpus: file,
      out: join(root, "ds"),
      "seq-len": "32",
      stride: "16",
      "batch-size": "4",
      threads: "1",
      factory: "Flat",
    },
  });
  await buildIndex(config);
  return { dir: config.out, corpus };
}
