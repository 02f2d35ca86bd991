/**
 * Alert webhook: POSTs each alert as JSON to a configured URL, fire-and-forget, bounded by a
 * timeout and a cap on requests in flight, so a slow or dead receiver never blocks a FHIR request
 * or the Tide inbox. Uses the global `fetch` (undici) with `AbortSignal.timeout`
 * (https://nodejs.org/api/globals.html#fetch).
 */
import type { SecurityAlert } from './alert.ts';

/** Options of {@link AlertWebhook}. */
export interface AlertWebhookOptions {
  /** Receiver URL (https://, or http:// on loopback; checked by the config schema). */
  url: string;
  /** Per-POST timeout, ms. */
  timeoutMs: number;
  /** Most POSTs in flight; alerts beyond are dropped (counted). */
  maxInFlight: number;
  /** `fetch` implementation (default the global one). */
  fetch?: typeof fetch;
  /** Called with a short error text when a POST fails or times out (no payload). */
  onError?: (message: string) => void;
}

/** Counters of a webhook. */
export interface WebhookStats {
  sent: number;
  failed: number;
  dropped: number;
}

/** See module doc. */
export class AlertWebhook {
  readonly #opts: AlertWebhookOptions;
  readonly #inflight = new Set<Promise<void>>();
  readonly #stats: WebhookStats = { sent: 0, failed: 0, dropped: 0 };

  /** @param opts - see {@link AlertWebhookOptions}. */
  constructor(opts: AlertWebhookOptions) {
    this.#opts = opts;
  }

  /**
   * Starts the POST of one alert (`Content-Type: application/json`, body `{ node, alert }`) and
   * returns at once. A non-2xx answer, a network error or the timeout counts as `failed`.
   * @param node - This node's id.
   * @param alert - The alert (no PHI by construction).
   */
  post(node: string, alert: SecurityAlert): void {
    if (this.#inflight.size >= this.#opts.maxInFlight) {
      this.#stats.dropped++;
      return;
    }
    const f = this.#opts.fetch ?? fetch;
    const p = (async () => {
      try {
        const res = await f(this.#opts.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ node, alert }),
          signal: AbortSignal.timeout(this.#opts.timeoutMs),
        });
        await res.body?.cancel().catch(() => {});
        if (res.ok) this.#stats.sent++;
        else {
          this.#stats.failed++;
          this.#opts.onError?.(`webhook answered ${res.status}`);
        }
      } catch (err) {
        this.#stats.failed++;
        this.#opts.onError?.(`webhook failed: ${(err as Error)?.name ?? 'Error'}`);
      }
    })();
    this.#inflight.add(p);
    void p.finally(() => this.#inflight.delete(p));
  }

  /** A copy of the counters. */
  stats(): WebhookStats {
    return { ...this.#stats };
  }

  /** Resolves once every POST in flight has finished (each is bounded by the timeout). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.#inflight]);
  }
}
