/**
 * knnlm command line: parses arguments, calls library functions, prints results.
 * No pipeline logic lives here.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { runFaissSmoke, type SmokeResult } from "./lib/faiss/smoke.ts";

const USAGE = `Usage: knnlm <command> [options]

Commands:
  smoke        Build a small random IVFPQ index with FAISS, search it, print the neighbours
               (alias: faiss-smoke)

Options for smoke (defaults in brackets):
  --d N        vector dimension [32]
  --n N        stored vectors, also the training set [10000]
  --queries N  stored vectors searched for [5]
  --k N        neighbours per query [5]
  --nlist N    IVF lists [32]
  --m N        PQ sub-quantizers [8]
  --nbits N    bits per PQ code [8]
  --nprobe N   lists probed per query [8]
  --seed N     seed of the random vectors [1]
  --threads N  OpenMP threads [FAISS default]

Global options:
  --json       print the result as JSON
  --verbose    print stack traces on errors
  -h, --help   show this help
`;

const NUMERIC = ["d", "n", "queries", "k", "nlist", "m", "nbits", "nprobe", "seed", "threads"];

class UsageError extends Error {}

const OPTIONS = {
  ...Object.fromEntries(NUMERIC.map((name) => [name, { type: "string" as const }])),
  json: { type: "boolean" },
  verbose: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

function parse(args: string[]) {
  try {
    return parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e));
  }
}

function numbers(values: Record<string, unknown>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const name of NUMERIC) {
    const raw = values[name];
    if (raw === undefined) continue;
    const v = Number(raw);
    if (!Number.isInteger(v) || v < 0) {
      throw new UsageError(`--${name} must be a non-negative integer, got '${raw}'`);
    }
    out[name] = v;
  }
  return out;
}

function printSmoke(r: SmokeResult): void {
  const s = r.seconds;
  console.log(`FAISS ${r.faissVersion} via ${r.library}`);
  console.log(
    `${r.index.type}: d=${r.index.d} nlist=${r.index.nlist} m=${r.index.m} ` +
      `nbits=${r.index.nbits}, ${r.index.ntotal} vectors, nprobe=${r.nprobe}`,
  );
  console.log(
    `train ${s.train.toFixed(3)} s, add ${s.add.toFixed(3)} s, search ${s.search.toFixed(3)} s`,
  );
  for (const q of r.queries) {
    const hits = q.ids.map((id, i) => `${id} (${q.distances[i].toFixed(4)})`).join(", ");
    console.log(`query = stored id ${q.row + 1000}: ${hits}`);
  }
  console.log(`${r.selfFound}/${r.queries.length} queries found their own vector first`);
}

async function main(args: string[]): Promise<number> {
  const { values, positionals } = parse(args);
  if (values.help || positionals.length === 0) {
    console.log(USAGE);
    return values.help ? 0 : 2;
  }
  const [command, ...rest] = positionals;
  if (rest.length > 0) throw new UsageError(`unexpected argument '${rest[0]}'`);
  switch (command) {
    case "smoke":
    case "faiss-smoke": {
      const result = await runFaissSmoke(numbers(values));
      if (values.json) console.log(JSON.stringify(result, null, 2));
      else printSmoke(result);
      return result.selfFound === result.queries.length ? 0 : 1;
    }
    default:
      throw new UsageError(`unknown command '${command}'`);
  }
}

if (import.meta.main) {
  const verbose = Deno.args.includes("--verbose");
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    console.error(`error: ${msg}`);
    if (e instanceof UsageError) console.error("hint: run `knnlm --help` for usage");
    else if (verbose) console.error(e);
    else console.error("hint: re-run with --verbose for details");
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
}
