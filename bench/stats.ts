/**
 * Small numeric helpers for the benchmark report: medians, toolkit/reference ratios and the
 * words that say which side is ahead.
 *
 * @module
 */

/** Median of the finite values; `undefined` when there are none. */
export function median(values: readonly (number | undefined)[]): number | undefined {
  const xs = values.filter((v): v is number => typeof v === "number" && Number.isFinite(v))
    .sort((a, b) => a - b);
  if (xs.length === 0) return undefined;
  const mid = xs.length >> 1;
  return xs.length % 2 === 1 ? xs[mid] : (xs[mid - 1] + xs[mid]) / 2;
}

/** `toolkit / reference`, or `undefined` when either is missing or the reference is 0. */
export function ratio(
  toolkit: number | undefined,
  reference: number | undefined,
): number | undefined {
  if (toolkit === undefined || reference === undefined) return undefined;
  if (!Number.isFinite(toolkit) || !Number.isFinite(reference) || reference === 0) {
    return undefined;
  }
  return toolkit / reference;
}

/** A ratio as `1.23×` (three significant digits below 10), or `—` when unknown. */
export function formatRatio(r: number | undefined): string {
  if (r === undefined || !Number.isFinite(r)) return "—";
  return `${r >= 10 ? r.toFixed(1) : r.toPrecision(3)}×`;
}

/** What a metric measures, which decides the words for a ratio. */
export type MetricKind = "throughput" | "time" | "memory" | "cpu";

/**
 * Says how the toolkit compares, from the toolkit/reference ratio of a metric:
 * `1.50× faster`, `2.00× slower`, `1.25× less memory`, `1.10× more CPU`, `about the same`
 * (within 2 %).
 */
export function describeRatio(r: number | undefined, kind: MetricKind): string {
  if (r === undefined || !Number.isFinite(r) || r <= 0) return "—";
  if (Math.abs(r - 1) < 0.02) return "about the same";
  // For a throughput a ratio above 1 is better; for time and memory, below 1.
  const better = kind === "throughput" ? r > 1 : r < 1;
  const factor = r >= 1 ? r : 1 / r;
  const f = formatRatio(factor);
  if (kind === "memory") return `${f} ${better ? "less" : "more"} memory`;
  if (kind === "cpu") return `${f} ${better ? "less" : "more"} CPU`;
  return `${f} ${better ? "faster" : "slower"}`;
}

/** A number for a table: thousands separated, `digits` decimals below 1000, `—` if unknown. */
export function formatNumber(x: number | undefined, digits = 2): string {
  if (x === undefined || !Number.isFinite(x)) return "—";
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en-US");
  return x.toFixed(digits);
}

/** Bytes as MiB with one decimal, or `—`. */
export function formatMiB(bytes: number | undefined): string {
  if (bytes === undefined || !Number.isFinite(bytes)) return "—";
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
