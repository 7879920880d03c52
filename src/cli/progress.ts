/**
 * Progress of a bench run, on stderr. On a terminal: one cli-progress bar (units done of the units
 * planned, elapsed time, what runs now) with notes printed above it. When stderr is not a terminal (a
 * log, CI): no bar, one line per step and note, so a log still says where a run was.
 */
import cliProgress from 'cli-progress';

export interface Progress {
  /** Add units of work to the total: the caller plans the whole run before its first step, so the total never grows under a bar that has reached it. */
  plan(units: number): void;
  /** What runs now. */
  step(label: string): void;
  /** A line worth keeping (a failed validation, an out-of-memory). */
  note(line: string): void;
  /** `units` of work done. */
  done(units: number): void;
  stop(): void;
}

/** Progress that shows nothing (for tests). */
export const silentProgress: Progress = { plan() {}, step() {}, note() {}, done() {}, stop() {} };

class LineProgress implements Progress {
  constructor(private readonly out: NodeJS.WritableStream) {}
  plan(): void {}
  step(label: string): void {
    this.out.write(`${label} ...\n`);
  }
  note(line: string): void {
    this.out.write(`${line}\n`);
  }
  done(): void {}
  stop(): void {}
}

/** The bar's fixed part: "{bar} {value}/{total} | {duration} | " is about this many columns besides the bar. */
const BAR_SIZE = 20;
const FIXED_COLUMNS = BAR_SIZE + 24;

/**
 * A label in `width` columns: whole where it fits, else its start and "…" (steps put what they run first:
 * the algorithm, N and D, then the rest).
 */
export function fitLabel(label: string, width: number): string {
  return label.length <= width ? label : `${label.slice(0, width - 1)}…`;
}

/** Columns left for the label on a terminal `columns` wide (at least 40: a narrow terminal wraps rather than hide N and D). */
export function labelWidth(columns: number | undefined): number {
  return Math.max(40, (columns ?? 100) - FIXED_COLUMNS - 1);
}

class BarProgress implements Progress {
  private readonly bar: cliProgress.SingleBar;
  private total = 0;
  private value = 0;
  private started = false;

  constructor(private readonly out: NodeJS.WriteStream) {
    this.bar = new cliProgress.SingleBar(
      { stream: out, format: '{bar} {value}/{total} | {duration_formatted} | {label}', barsize: BAR_SIZE, hideCursor: true, clearOnComplete: true, fps: 5 },
      cliProgress.Presets.shades_classic,
    );
  }

  plan(units: number): void {
    this.total += units;
    if (!this.started) {
      this.bar.start(this.total, this.value, { label: '' });
      this.started = true;
    } else this.bar.setTotal(this.total);
  }

  step(label: string): void {
    this.bar.update({ label: fitLabel(label, labelWidth(this.out.columns)) });
  }

  note(line: string): void {
    this.out.write(`\r\x1b[K${line}\n`);
    if (this.started) this.bar.render();
  }

  done(units: number): void {
    this.value += units;
    this.bar.update(this.value);
  }

  stop(): void {
    if (this.started) this.bar.stop();
    this.started = false;
  }
}

/** A bar when `stream` is a terminal, else plain lines. */
export function progressOn(stream: NodeJS.WriteStream): Progress {
  return stream.isTTY ? new BarProgress(stream) : new LineProgress(stream);
}
