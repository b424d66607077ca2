/** Typo suggestions for error messages ("did you mean …?"). */

/** Levenshtein distance, case-insensitive. */
export function editDistance(a: string, b: string): number {
  a = a.toLowerCase();
  b = b.toLowerCase();
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/** The closest of `candidates` to `name`, if it is close enough to be a plausible typo. */
export function closest(name: string, candidates: Iterable<string>): string | undefined {
  return nearest(name, candidates, 1)[0];
}

/**
 * Up to `count` candidates nearest to `name` by edit distance (ties keep input order),
 * keeping only those within a typo-sized distance unless `anyDistance` is set.
 */
export function nearest(
  name: string,
  candidates: Iterable<string>,
  count: number,
  anyDistance = false,
): string[] {
  const limit = Math.max(2, Math.floor(name.length / 3));
  return [...new Set(candidates)]
    .map((c, i) => ({ c, i, d: editDistance(name, c) }))
    .filter((x) => anyDistance || x.d <= limit)
    .sort((a, b) => a.d - b.d || a.i - b.i)
    .slice(0, count)
    .map((x) => x.c);
}
