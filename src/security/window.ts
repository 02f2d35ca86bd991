/**
 * Sliding-window counters of the breach detector, bounded in memory: per subject a list of event
 * times (count in the last `windowMs`), or a map of distinct items to their last time seen.
 * Subjects are kept in LRU order and the least recently used are dropped past `maxSubjects`.
 */

/** Per-subject event times; `hit` answers how many fell within the window. */
export class SlidingCounter {
  readonly #windowMs: number;
  readonly #maxSubjects: number;
  readonly #maxEvents: number;
  readonly #subjects = new Map<string, number[]>();

  /**
   * @param windowMs - Window length, ms (≥ 1).
   * @param maxEvents - Most times kept per subject (counts saturate there). Default 10,000.
   * @param maxSubjects - Most subjects tracked. Default 10,000.
   */
  constructor(windowMs: number, maxEvents = 10_000, maxSubjects = 10_000) {
    this.#windowMs = windowMs;
    this.#maxEvents = maxEvents;
    this.#maxSubjects = maxSubjects;
  }

  /**
   * Records one event of `subject` at `now` (ms).
   * @returns The count within `(now − windowMs, now]` including this one, and the time of the oldest of them.
   */
  hit(subject: string, now: number): { count: number; firstAt: number } {
    let times = this.#subjects.get(subject);
    if (times) this.#subjects.delete(subject);
    else times = [];
    this.#subjects.set(subject, times);
    if (this.#subjects.size > this.#maxSubjects) this.#subjects.delete(this.#subjects.keys().next().value as string);
    const from = now - this.#windowMs;
    let drop = 0;
    while (drop < times.length && (times[drop] as number) <= from) drop++;
    if (drop > 0) times.splice(0, drop);
    times.push(now);
    if (times.length > this.#maxEvents) times.splice(0, times.length - this.#maxEvents);
    return { count: times.length, firstAt: times[0] as number };
  }

  /** Forgets a subject (after an alert, so the next alert needs a fresh burst). */
  reset(subject: string): void {
    this.#subjects.delete(subject);
  }
}

/** Per-subject distinct items with their last time seen; `add` answers how many are within the window. */
export class DistinctCounter {
  readonly #windowMs: number;
  readonly #maxSubjects: number;
  readonly #maxItems: number;
  readonly #subjects = new Map<string, { items: Map<string, number>; firstAt: number }>();

  /**
   * @param windowMs - Window length, ms.
   * @param maxItems - Most items kept per subject (counts saturate there). Default 10,000.
   * @param maxSubjects - Most subjects tracked. Default 10,000.
   */
  constructor(windowMs: number, maxItems = 10_000, maxSubjects = 10_000) {
    this.#windowMs = windowMs;
    this.#maxItems = maxItems;
    this.#maxSubjects = maxSubjects;
  }

  /**
   * Records that `subject` touched `items` at `now` (ms).
   * @returns Distinct items seen within the window, and the last-seen time of the oldest item still counted (ms).
   */
  add(subject: string, items: Iterable<string>, now: number): { count: number; firstAt: number } {
    let s = this.#subjects.get(subject);
    if (s) this.#subjects.delete(subject);
    else s = { items: new Map(), firstAt: now };
    this.#subjects.set(subject, s);
    if (this.#subjects.size > this.#maxSubjects) this.#subjects.delete(this.#subjects.keys().next().value as string);
    const from = now - this.#windowMs;
    for (const [k, t] of s.items) {
      if (t > from) break; // Map keeps insertion order; re-seen items are moved to the end
      s.items.delete(k);
    }
    for (const it of items) {
      s.items.delete(it);
      s.items.set(it, now);
      if (s.items.size > this.#maxItems) s.items.delete(s.items.keys().next().value as string);
    }
    const oldest = s.items.values().next().value;
    return { count: s.items.size, firstAt: oldest ?? now };
  }

  /** Forgets a subject. */
  reset(subject: string): void {
    this.#subjects.delete(subject);
  }
}
