/**
 * Small statistics helpers for the bench: percentiles over timing samples and formatting.
 * Every duration is in milliseconds (from `performance.now()`).
 */

/** Summary of a sample set. Durations in ms (or whatever unit the samples are in). */
export interface Summary {
  /** Number of samples. */
  n: number;
  /** Median (nearest-rank). */
  p50: number;
  /** 99th percentile (nearest-rank; with fewer than 100 samples this is the maximum). */
  p99: number;
  mean: number;
  min: number;
  max: number;
}

/**
 * Nearest-rank percentile of already sorted samples.
 * @param sorted - ascending samples, at least one.
 * @param p - percentile in (0, 100].
 * @throws RangeError when `sorted` is empty or `p` is out of range.
 */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) throw new RangeError('percentile of no samples');
  if (!(p > 0 && p <= 100)) throw new RangeError('p must be in (0, 100]');
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/**
 * Summarizes samples (not modified).
 * @param samples - at least one sample.
 * @returns n, p50, p99, mean, min, max, rounded to 4 significant decimals in ms.
 * @throws RangeError when `samples` is empty.
 */
export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new RangeError('summarize: no samples');
  const s = [...samples].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  return { n: s.length, p50: round(percentile(s, 50)), p99: round(percentile(s, 99)), mean: round(mean), min: round(s[0]!), max: round(s[s.length - 1]!) };
}

/** Rounds to 4 decimals (0.1 µs when the unit is ms). */
export function round(x: number, decimals = 4): number {
  const f = 10 ** decimals;
  return Math.round(x * f) / f;
}

/**
 * Ratio a / b rounded to 2 decimals, or null when b is 0.
 * @param a - numerator (e.g. a median in ms).
 * @param b - denominator.
 */
export function ratio(a: number, b: number): number | null {
  return b === 0 ? null : round(a / b, 2);
}

/**
 * Formats milliseconds for a table: µs below 1 ms, 3 significant digits otherwise.
 * @param ms - duration in ms.
 */
export function fmtMs(ms: number): string {
  if (ms < 1) return `${(ms * 1000).toFixed(ms < 0.01 ? 2 : 1)} µs`;
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(0)} ms`;
}

/**
 * Formats a byte count: bytes below 10 KiB, otherwise KiB or MiB with one decimal.
 * @param n - bytes.
 */
export function fmtBytes(n: number): string {
  if (n < 10 * 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

/** Resolves on the next turn of the event loop (lets I/O and timers run between samples). */
export function nextTurn(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}
