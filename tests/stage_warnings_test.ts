import assert from "node:assert/strict";
import { join } from "node:path";
import { buildIndex, loadConfig } from "../mod.ts";
import type { PipelineEvent, Stage } from "../lib/datastore/mod.ts";

const TINY = new URL("./fixtures/tiny_lm.onnx", import.meta.url).pathname;

Deno.test("index planning warnings come once, from the train stage, not from gather or add", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_warnings_" });
  try {
    let s = 7;
    const text = Array.from({ length: 1500 }, () => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return String.fromCharCode(32 + ((s >>> 16) % 95));
    }).join("");
    await Deno.writeTextFile(join(dir, "corpus.txt"), text);
    const { config } = loadConfig({
      flags: {
        model: TINY,
        corpus: join(dir, "corpus.txt"),
        out: join(dir, "ds"),
        "seq-len": "32",
        stride: "16",
        threads: "1",
        "train-size": "100000", // more than the 1499 keys: planning clamps it and warns
      },
    });
    const warningsOf = async (stages?: Stage[]) => {
      const seen: string[] = [];
      await buildIndex(config, {
        stages,
        onEvent: (e: PipelineEvent) => e.type === "warning" && seen.push(e.message),
      });
      return seen;
    };
    assert.deepEqual(await warningsOf(["gather"]), [], "gather trains nothing");
    const train = await warningsOf(["train"]);
    assert.ok(train.some((w) => w.startsWith("trainSize 100000 > 1499 keys")), train.join("\n"));
    assert.deepEqual(await warningsOf(["add"]), [], "said already, by train");
    assert.deepEqual(await warningsOf(), [], "a complete build skips every stage silently");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
