/**
 * A bounded load run against a `knn serve` API: a fixed list of requests sent by a fixed
 * number of concurrent clients, each timing its own requests. Reports latency percentiles
 * and every error; it measures, it does not judge (no pass/fail threshold).
 *
 * @module
 */

/** One request of a load run. */
export interface LoadRequest {
  /** Path under the server's URL, e.g. `v1/next`. */
  path: string;
  /** JSON body (POST), or undefined for a GET. */
  body?: unknown;
}

/** What one request took and how it ended. */
export interface LoadSample {
  /** The request's path. */
  path: string;
  /** Milliseconds from sending to the whole body read. */
  ms: number;
  /** HTTP status, or 0 when the request failed without one. */
  status: number;
  /** Why it failed, for a non-200 status or a network error. */
  error?: string;
}

/** Latency summary of a set of samples, in milliseconds. */
export interface LatencySummary {
  /** Requests. */
  count: number;
  /** Requests that did not end in 200. */
  errors: number;
  /** Median latency. */
  p50: number;
  /** 90th percentile. */
  p90: number;
  /** 99th percentile. */
  p99: number;
  /** Slowest. */
  max: number;
  /** Mean latency. */
  mean: number;
}

/** The nearest-rank `p`-th percentile (0 < p ≤ 100) of `values`; NaN when there are none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Summarises samples (all of them, or those of one path). */
export function summarise(samples: readonly LoadSample[]): LatencySummary {
  const ms = samples.map((s) => s.ms);
  return {
    count: samples.length,
    errors: samples.filter((s) => s.status !== 200).length,
    p50: percentile(ms, 50),
    p90: percentile(ms, 90),
    p99: percentile(ms, 99),
    max: ms.length ? Math.max(...ms) : NaN,
    mean: ms.length ? ms.reduce((a, b) => a + b, 0) / ms.length : NaN,
  };
}

/**
 * Sends `requests` to `baseUrl` from `concurrency` clients: each client takes the next
 * request not yet sent until none is left, so at most `concurrency` are in flight.
 * Returns the samples in request order and the wall time of the whole run.
 */
export async function runLoad(
  baseUrl: string,
  requests: readonly LoadRequest[],
  concurrency: number,
): Promise<{ samples: LoadSample[]; seconds: number }> {
  const samples: LoadSample[] = new Array(requests.length);
  let next = 0;
  const client = async () => {
    while (next < requests.length) {
      const i = next++;
      const r = requests[i];
      const t0 = performance.now();
      let status = 0;
      let error: string | undefined;
      try {
        const res = await fetch(new URL(r.path, baseUrl), {
          method: r.body === undefined ? "GET" : "POST",
          headers: r.body === undefined ? {} : { "content-type": "application/json" },
          body: r.body === undefined ? undefined : JSON.stringify(r.body),
        });
        const text = await res.text();
        status = res.status;
        if (status !== 200) error = text.slice(0, 200);
      } catch (e) {
        error = e instanceof Error ? e.message : String(e);
      }
      samples[i] = { path: r.path, ms: performance.now() - t0, status, error };
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(concurrency, requests.length) }, client));
  return { samples, seconds: (performance.now() - t0) / 1000 };
}
