/**
 * Terminal progress for long work: a bar with rate and ETA for counted work, a spinner with
 * elapsed time for a single long call. Drawn on stderr when it is a terminal; otherwise a
 * plain line now and then, so logs show progress without control characters.
 *
 * @module
 */

const enc = new TextEncoder();

function write(s: string) {
  Deno.stderr.writeSync(enc.encode(s));
}

/** Seconds as `1h02m`, `3m05s` or `12.3s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(r).padStart(2, "0")}s`;
}

/** A count as `950`, `12.3k`, `4.56M`. */
export function formatCount(n: number): string {
  if (n < 1e3) return `${Math.round(n)}`;
  if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 2 : 1)}k`;
  return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)}M`;
}

/** Options of {@link ProgressBar}. */
export interface ProgressOptions {
  /** Unit shown with the rate, e.g. "tok". */
  unit?: string;
  /** Draw nothing at all (e.g. with `--json`). */
  silent?: boolean;
  /** Count already done when the bar starts (resume): excluded from the rate. */
  initial?: number;
}

/** A progress bar with rate and ETA. */
export class ProgressBar {
  #label: string;
  #total: number;
  #unit: string;
  #silent: boolean;
  #tty: boolean;
  #t0 = performance.now();
  #initial: number;
  #lastDraw = 0;
  #lastLogPct = -1;
  #done: number;

  /** A bar for `total` units of work, labelled `label`, drawn on stderr. */
  constructor(label: string, total: number, opts: ProgressOptions = {}) {
    this.#label = label;
    this.#total = total;
    this.#unit = opts.unit ?? "";
    this.#silent = opts.silent ?? false;
    this.#tty = Deno.stderr.isTerminal();
    this.#initial = opts.initial ?? 0;
    this.#done = this.#initial;
  }

  /** Sets the count done so far. */
  update(done: number): void {
    this.#done = done;
    if (this.#silent) return;
    const now = performance.now();
    if (this.#tty) {
      if (now - this.#lastDraw < 100 && done < this.#total) return;
      this.#lastDraw = now;
      write(`\r\x1b[2K${this.line()}`);
    } else {
      const pct = Math.floor((100 * done) / Math.max(1, this.#total) / 10) * 10;
      if (pct > this.#lastLogPct) {
        this.#lastLogPct = pct;
        write(`${this.line()}\n`);
      }
    }
  }

  /** The current status line. */
  line(): string {
    const elapsed = (performance.now() - this.#t0) / 1000;
    const fresh = this.#done - this.#initial;
    const rate = elapsed > 0 ? fresh / elapsed : 0;
    const eta = rate > 0 ? (this.#total - this.#done) / rate : Infinity;
    const frac = Math.min(1, this.#done / Math.max(1, this.#total));
    const width = 24;
    const full = Math.round(frac * width);
    const bar = "█".repeat(full) + "░".repeat(width - full);
    const unit = this.#unit ? ` ${this.#unit}` : "";
    return `${this.#label} ${bar} ${(frac * 100).toFixed(1).padStart(5)}% ` +
      `${formatCount(this.#done)}/${formatCount(this.#total)}${unit} ` +
      `${formatCount(rate)}${unit}/s ETA ${formatDuration(eta)} (${formatDuration(elapsed)})`;
  }

  /** Ends the bar's line. */
  finish(): void {
    if (this.#silent) return;
    if (this.#tty) write(`\r\x1b[2K${this.line()}\n`);
    else if (this.#lastLogPct < 100) write(`${this.line()}\n`);
  }
}

/** A spinner with elapsed time, for one long call whose progress cannot be counted. */
export class Spinner {
  #label: string;
  #t0 = performance.now();
  #timer?: ReturnType<typeof setInterval>;
  #frame = 0;
  #silent: boolean;

  /** A spinner labelled `label`, drawn on stderr (nothing when `silent`). */
  constructor(label: string, opts: { silent?: boolean } = {}) {
    this.#label = label;
    this.#silent = opts.silent ?? false;
    if (this.#silent) return;
    if (Deno.stderr.isTerminal()) {
      const frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";
      this.#timer = setInterval(() => {
        const f = frames[this.#frame++ % frames.length];
        write(`\r\x1b[2K${f} ${this.#label} ${formatDuration(this.elapsed())}`);
      }, 100);
    } else {
      write(`${this.#label} …\n`);
    }
  }

  /** Seconds since the spinner started. */
  elapsed(): number {
    return (performance.now() - this.#t0) / 1000;
  }

  /** Stops the spinner and prints the final line. */
  finish(message = "done"): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#silent) return;
    const tty = Deno.stderr.isTerminal();
    write(
      `${tty ? "\r\x1b[2K" : ""}✓ ${this.#label} ${message} (${formatDuration(this.elapsed())})\n`,
    );
  }
}
