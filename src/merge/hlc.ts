/**
 * Hybrid logical clock (HLC): Kulkarni et al., "Logical Physical Clocks and Consistent Snapshots
 * in Globally Distributed Databases" (2014), https://cse.buffalo.edu/tech-reports/2014-04.pdf.
 *
 * A timestamp is the string `MMMMMMMMMMMMMMM.CCCCCC`: wall-clock milliseconds since the epoch,
 * zero-padded to 15 digits, a dot, and a logical counter zero-padded to 6 digits. The padding makes
 * string order equal time order, so timestamps compare with `<`. Ties between nodes are broken by
 * node id where they are compared (see `compareStamps` in doc.ts).
 */

/** An HLC timestamp string, see module doc. */
export type HlcStamp = string;

const STAMP = /^(\d{15})\.(\d{6})$/;
const MAX_COUNTER = 999_999;

/** Builds a stamp from wall ms and counter. */
export function formatStamp(ms: number, counter: number): HlcStamp {
  return `${String(ms).padStart(15, '0')}.${String(counter).padStart(6, '0')}`;
}

/**
 * Splits a stamp into its parts.
 * @param stamp - an {@link HlcStamp}.
 * @returns `{ ms, counter }`; ms are milliseconds since 1970-01-01T00:00:00Z.
 * @throws Error when the stamp is malformed.
 */
export function parseStamp(stamp: HlcStamp): { ms: number; counter: number } {
  const m = STAMP.exec(stamp);
  if (!m) throw new Error('Malformed HLC stamp');
  return { ms: Number(m[1]), counter: Number(m[2]) };
}

/** True when `s` is a well-formed {@link HlcStamp}. */
export function isStamp(s: unknown): s is HlcStamp {
  return typeof s === 'string' && STAMP.test(s);
}

/** Options of {@link HybridLogicalClock}. */
export interface HlcOptions {
  /**
   * Receive cap, ms: `observe` ignores a stamp whose physical part is more than this far ahead of
   * the wall clock, so a peer with a clock hours ahead (or a forged stamp) cannot drag this clock
   * into the future (docs/merge.md "Clock skew and forged entries"). Default: no cap.
   */
  maxAheadMs?: number;
}

/**
 * A hybrid logical clock. `now()` never goes backwards, even if the wall clock does, and after
 * `observe(remote)` of an accepted stamp every later `now()` is greater than `remote`.
 */
export class HybridLogicalClock {
  private lastMs = 0;
  private counter = 0;
  private readonly wallClock: () => number;
  private readonly maxAheadMs: number;

  /**
   * @param wallClock - source of wall time in ms (injectable for tests); defaults to Date.now.
   * @param opts - see {@link HlcOptions}.
   */
  constructor(wallClock: () => number = Date.now, opts: HlcOptions = {}) {
    this.wallClock = wallClock;
    this.maxAheadMs = opts.maxAheadMs ?? Infinity;
  }

  /** This clock's wall time, ms since the epoch (the injected source). */
  wallNow(): number {
    return this.wallClock();
  }

  /** Returns a new stamp, strictly greater than any stamp returned or observed before. */
  now(): HlcStamp {
    const wall = this.wallClock();
    if (wall > this.lastMs) {
      this.lastMs = wall;
      this.counter = 0;
    } else if (this.counter >= MAX_COUNTER) {
      // The counter has 6 digits: borrow the next millisecond rather than overflow.
      this.lastMs++;
      this.counter = 0;
    } else {
      this.counter++;
    }
    return formatStamp(this.lastMs, this.counter);
  }

  /**
   * Moves the clock past a stamp seen from another node (receive event of the HLC algorithm).
   * @param stamp - a remote {@link HlcStamp}; malformed stamps are ignored, and so are stamps more
   *   than `maxAheadMs` ahead of the wall clock (see {@link HlcOptions}).
   * @returns False when the stamp was ignored.
   */
  observe(stamp: HlcStamp): boolean {
    if (!isStamp(stamp)) return false;
    const { ms, counter } = parseStamp(stamp);
    if (ms > this.wallClock() + this.maxAheadMs) return false;
    if (ms > this.lastMs) {
      this.lastMs = ms;
      this.counter = counter;
    } else if (ms === this.lastMs && counter > this.counter) {
      this.counter = counter;
    }
    return true;
  }
}
