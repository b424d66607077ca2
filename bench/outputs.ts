/**
 * Reading what each side prints: the JSON document on stdout, and the metric values in it
 * (toolkit: `build-index --json` prints datastore.json, `eval --json` the EvalResult;
 * reference: one JSON object per `bench/reference.py` run).
 *
 * @module
 */

/** The number at a path of keys in parsed JSON, or `undefined`. */
export function numberAt(obj: unknown, path: readonly (string | number)[]): number | undefined {
  let cur: unknown = obj;
  for (const key of path) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<string | number, unknown>)[key];
  }
  return typeof cur === "number" ? cur : undefined;
}

/**
 * The JSON document a `--json` command printed on stdout: the whole output, or else the last
 * block that starts with `{` at the beginning of a line (anything printed before it ignored).
 */
export function parseJsonOutput(stdout: string): unknown {
  const text = stdout.trim();
  try {
    return JSON.parse(text);
  } catch {
    const starts = [...text.matchAll(/^\{/gm)].map((m) => m.index!);
    for (const at of starts.reverse()) {
      try {
        return JSON.parse(text.slice(at));
      } catch { /* try an earlier start */ }
    }
    throw new Error(`no JSON document in the output: ${JSON.stringify(text.slice(-200))}`);
  }
}

/** Metric values from the toolkit's `build-index --json` (datastore.json) and `eval --json`. */
export function toolkitValues(build: unknown, ev: unknown): Record<string, number | undefined> {
  const gatherSeconds = numberAt(build, ["gather", "seconds"]);
  const trainSeconds = numberAt(build, ["trained", "seconds"]);
  const addSeconds = numberAt(build, ["index", "seconds"]);
  return {
    gatherTokensPerSecond: numberAt(build, ["gather", "tokensPerSecond"]),
    gatherSeconds,
    trainSeconds,
    addSeconds,
    stagesSeconds: sum(gatherSeconds, trainSeconds, addSeconds),
    evalTokensPerSecond: numberAt(ev, ["tokensPerSecond"]),
    evalSeconds: numberAt(ev, ["seconds"]),
    lmPerplexity: numberAt(ev, ["lmPerplexity"]),
    knnPerplexity: numberAt(ev, ["modes", "faiss", "perplexities", 0]),
  };
}

/** Metric values from `bench/reference.py build` and `eval`. */
export function referenceValues(
  build: unknown,
  ev: unknown,
  lambda: number,
): Record<string, number | undefined> {
  const gatherSeconds = numberAt(build, ["gather", "seconds"]);
  const trainSeconds = numberAt(build, ["train", "seconds"]);
  const addSeconds = numberAt(build, ["add", "seconds"]);
  return {
    gatherTokensPerSecond: numberAt(build, ["gather", "tokensPerSecond"]),
    gatherSeconds,
    trainSeconds,
    addSeconds,
    stagesSeconds: sum(gatherSeconds, trainSeconds, addSeconds),
    evalTokensPerSecond: numberAt(ev, ["eval", "tokensPerSecond"]),
    evalSeconds: numberAt(ev, ["eval", "seconds"]),
    lmPerplexity: numberAt(ev, ["eval", "lmPerplexity"]),
    // Python writes the λ key with repr(float), which matches String(number) for these.
    knnPerplexity: numberAt(ev, ["eval", "perplexity", String(lambda)]),
  };
}

function sum(...xs: (number | undefined)[]): number | undefined {
  return xs.some((x) => x === undefined) ? undefined : xs.reduce((a, b) => a! + b!, 0);
}
