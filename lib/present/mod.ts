/**
 * Presentation for the CLI: progress bars with rate and ETA, spinners, number and duration
 * formatting, and the λ–perplexity SVG plot. Nothing below this layer prints.
 *
 * @module
 */

export {
  formatCount,
  formatDuration,
  ProgressBar,
  type ProgressOptions,
  Spinner,
} from "./progress.ts";
export { type LambdaPlotOptions, lambdaPlotSvg, type PlotSeries } from "./plot_svg.ts";
