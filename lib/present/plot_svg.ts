/**
 * A small, dependency-free SVG line plot: perplexity against λ, one line per distance mode,
 * with the base LM as a dashed reference line and each line's best λ marked.
 *
 * @module
 */

/** One line of the plot. */
export interface PlotSeries {
  /** Legend text. */
  name: string;
  /** y values, one per x. */
  y: number[];
  /** The best point, when it was found off the plotted x values (e.g. on a finer grid). */
  best?: { x: number; y: number };
}

/** Options of {@link lambdaPlotSvg}. */
export interface LambdaPlotOptions {
  /** Title above the plot. */
  title: string;
  /** λ values (x axis). */
  lambdas: number[];
  /** Perplexity lines. */
  series: PlotSeries[];
  /** Base LM perplexity (λ = 0), drawn dashed. */
  baseline: number;
  /** Pixel size. Default 720×440. */
  width?: number;
  /** Pixel height. */
  height?: number;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

function esc(s: string): string {
  return s.replace(
    /[&<>"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!,
  );
}

/** Round "nice" tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/** Renders perplexity-versus-λ as a standalone SVG document. */
export function lambdaPlotSvg(opts: LambdaPlotOptions): string {
  const W = opts.width ?? 960;
  const H = opts.height ?? 480;
  const pad = { l: 70, r: 300, t: 48, b: 56 };
  const xs = opts.lambdas;
  const ys = [opts.baseline, ...opts.series.flatMap((s) => s.y)].filter(Number.isFinite);
  const xMin = Math.min(0, ...xs);
  const xMax = Math.max(...xs);
  let yMin = Math.min(...ys);
  let yMax = Math.max(...ys);
  const span = yMax - yMin || Math.abs(yMax) * 0.05 || 1;
  yMin -= span * 0.08;
  yMax += span * 0.08;
  const px = (x: number) => pad.l + ((x - xMin) / (xMax - xMin || 1)) * (W - pad.l - pad.r);
  const py = (y: number) => H - pad.b - ((y - yMin) / (yMax - yMin)) * (H - pad.t - pad.b);
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="sans-serif" font-size="13">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2 - pad.r / 2}" y="26" text-anchor="middle" font-size="16">${
      esc(opts.title)
    }</text>`,
  );
  for (const t of niceTicks(yMin, yMax)) {
    const y = py(t).toFixed(1);
    parts.push(
      `<line x1="${pad.l}" x2="${W - pad.r}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`,
      `<text x="${pad.l - 8}" y="${y}" text-anchor="end" dominant-baseline="middle">${t}</text>`,
    );
  }
  for (const t of niceTicks(xMin, xMax)) {
    const x = px(t).toFixed(1);
    parts.push(
      `<line x1="${x}" x2="${x}" y1="${pad.t}" y2="${H - pad.b}" stroke="#f0f0f0"/>`,
      `<text x="${x}" y="${H - pad.b + 18}" text-anchor="middle">${t}</text>`,
    );
  }
  parts.push(
    `<rect x="${pad.l}" y="${pad.t}" width="${W - pad.l - pad.r}" height="${H - pad.t - pad.b}" ` +
      `fill="none" stroke="#333"/>`,
    `<text x="${(pad.l + W - pad.r) / 2}" y="${
      H - 14
    }" text-anchor="middle">λ (weight of p_kNN)</text>`,
    `<text transform="translate(18 ${(pad.t + H - pad.b) / 2}) rotate(-90)" text-anchor="middle">` +
      `perplexity</text>`,
  );
  const by = py(opts.baseline).toFixed(1);
  parts.push(
    `<line x1="${pad.l}" x2="${W - pad.r}" y1="${by}" y2="${by}" stroke="#555" ` +
      `stroke-dasharray="6 4"/>`,
  );
  const legend: string[] = [
    `<line x1="0" x2="24" y1="0" y2="0" stroke="#555" stroke-dasharray="6 4"/>` +
    `<text x="30" y="0" dominant-baseline="middle">base LM ${opts.baseline.toFixed(3)}</text>`,
  ];
  opts.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = xs.map((x, j) => `${px(x).toFixed(1)},${py(s.y[j]).toFixed(1)}`).join(" ");
    parts.push(`<polyline points="${pts}" fill="none" stroke="${color}" stroke-width="2"/>`);
    xs.forEach((x, j) =>
      parts.push(
        `<circle cx="${px(x).toFixed(1)}" cy="${py(s.y[j]).toFixed(1)}" r="3" fill="${color}"/>`,
      )
    );
    let bi = 0;
    s.y.forEach((v, j) => (v < s.y[bi] ? (bi = j) : 0));
    const best = s.best ?? { x: xs[bi], y: s.y[bi] };
    if (best.x >= xMin && best.x <= xMax) {
      parts.push(
        `<circle cx="${px(best.x).toFixed(1)}" cy="${py(best.y).toFixed(1)}" r="7" fill="none" ` +
          `stroke="${color}" stroke-width="2"/>`,
      );
    }
    legend.push(
      `<line x1="0" x2="24" y1="0" y2="0" stroke="${color}" stroke-width="2"/>` +
        `<text x="30" y="0" dominant-baseline="middle">${esc(s.name)}: best ${
          best.y.toFixed(3)
        } at λ=${best.x}</text>`,
    );
  });
  legend.forEach((l, i) =>
    parts.push(`<g transform="translate(${W - pad.r + 12} ${pad.t + 12 + i * 22})">${l}</g>`)
  );
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
