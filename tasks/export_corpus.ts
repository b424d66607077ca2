/**
 * Writes the Brown splits as plain UTF-8 text (`brown.train.txt`, `brown.valid.txt`,
 * `brown.test.txt`) so Python training reads exactly the text the toolkit produces.
 *
 *   deno run --allow-read --allow-write tasks/export_corpus.ts [out_dir]   (default data/brown)
 */
import { BROWN_SPLITS, brownSplitFiles, loadBrownText } from "../lib/corpus/brown.ts";
import { join } from "node:path";

const outDir = Deno.args[0] ?? "data/brown";
await Deno.mkdir(outDir, { recursive: true });
for (const split of BROWN_SPLITS) {
  const text = await loadBrownText(split);
  const path = join(outDir, `brown.${split}.txt`);
  await Deno.writeTextFile(path + ".tmp", text);
  await Deno.rename(path + ".tmp", path);
  const files = (await brownSplitFiles(split)).length;
  const bytes = new TextEncoder().encode(text).length;
  console.log(`${path}: ${files} files, ${bytes} bytes`);
}
