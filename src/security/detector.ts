/**
 * The breach detector of one node (docs/security.md, "Breach detection"). It is fed
 * synchronously, so an alert is raised in the same tick as the event that crosses a threshold:
 *
 * - {@link BreachDetector.tideRejection} ← Tide's `onRejection` hook (src/tide): envelope signature
 *   failures, unknown senders, replays, decryption failures, messages outside peer authorization,
 *   updates refused by the skew check (src/merge/skew.ts: clock skew, forged log entries);
 * - {@link BreachDetector.httpRequest} ← the {@link securityMonitor} middleware (./monitor.ts) once
 *   per finished FHIR request: bursts of 401/403 per client and per IP, distinct patients read per
 *   token against a threshold and the client's learned baseline, search and `_history` paging rate.
 *
 * Each alert: a FHIR R4 AuditEvent through the `audit` sink (one function, so the node can send it
 * to its audit trail), the Prometheus counter `tidegate_security_alerts_total{signal}` (read from
 * {@link BreachDetector.alertCounts} by src/ops/metrics.ts), an optional webhook POST, one log line,
 * and the configured automatic responses (quarantine the verified peer; revoke the token by `jti`).
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { AuditEvent } from '../tide/audit.ts';
import { AuditLog } from '../tide/audit.ts';
import type { TideRejectionEvent } from '../tide/types.ts';
import { alertAuditEvent } from './alert.ts';
import type { AlertSubject, SecurityAlert } from './alert.ts';
import { SECURITY_SIGNALS, SecurityConfigSchema } from './config.ts';
import type { HttpSignal, SecurityConfig, SecuritySignal, TideSignal } from './config.ts';
import type { RevocationList } from './revocations.ts';
import { AlertWebhook } from './webhook.ts';
import { DistinctCounter, SlidingCounter } from './window.ts';

/** Tide reason codes → signal. Codes not listed (malformed input, apply failures, quarantined peer) raise none. */
export const TIDE_REASON_SIGNALS: Readonly<Record<string, TideSignal>> = Object.freeze({
  ERR_SIGNATURE_INVALID: 'envelope-signature',
  ERR_UNKNOWN_PEER: 'unknown-sender',
  ERR_REPLAY: 'replay',
  ERR_STALE: 'replay',
  // a captured envelope re-added under another job id
  ERR_MESSAGE_ID_MISMATCH: 'replay',
  ERR_DECRYPT_FAILED: 'decryption-failure',
  ERR_PEER_NOT_ALLOWED: 'peer-not-allowed',
  // remote updates refused before applying (src/merge/skew.ts)
  ERR_CLOCK_SKEW: 'clock-skew',
  ERR_FORGED_ENTRY: 'forged-entry',
});

/** What the monitor reports about one finished FHIR request (no bodies, no tokens). */
export interface HttpObservation {
  /** Final HTTP status. */
  status: number;
  method: string;
  /** `read`, `search`, `history` or `other` (writes, metadata, operations). */
  kind: 'read' | 'search' | 'history' | 'other';
  /** Client IP address (`req.ip`). */
  ip: string | undefined;
  /** The verified token's `jti`, `client_id`, `sub` and `exp` (ms), when a token verified. */
  jti: string | undefined;
  clientId: string | undefined;
  subject: string | undefined;
  expiresAtMs: number | undefined;
  /** Logical ids of the patients whose data the (2xx) response carried. */
  patients: readonly string[];
  /** When the request arrived, ms since the epoch (attack start for the first one counted). */
  startedAt: number;
}

/** Options of {@link BreachDetector}. */
export interface BreachDetectorOptions {
  /** This node's id (AuditEvent observer, webhook body). */
  nodeId: string;
  /** The `security` config section (validated or raw; defaults filled in). */
  config?: SecurityConfig | Record<string, unknown>;
  /** Where alert AuditEvents go. Default: the detector's own bounded {@link AuditLog}. */
  audit?: (event: AuditEvent) => void;
  /** Token revocation list for the `revokeToken` response. */
  revocations?: RevocationList;
  /** Quarantines a peer for the `quarantinePeer` response (`tide.quarantinePeer`). */
  quarantinePeer?: (peerId: string, reason: string) => Promise<unknown>;
  /** Logger; alerts are logged at `error` with `alert: 'security'`. */
  log?: Pick<Logger, 'error' | 'warn'>;
  /** Clock, ms since the epoch. Default `Date.now`. */
  now?: () => number;
  /** `fetch` for the webhook (tests). Default global `fetch`. */
  fetch?: typeof fetch;
  /** Alerts kept in memory for `GET /admin/security/alerts`. Default 500. */
  maxAlerts?: number;
}

/** Per-client learned baseline of distinct patients per window (EWMA over closed windows without alerts). */
interface Baseline {
  value: number | undefined;
  windowStart: number;
  peak: number;
  alerted: boolean;
}

const EWMA_WEIGHT = 0.3;

/** See module doc. */
export class BreachDetector {
  readonly nodeId: string;
  readonly config: SecurityConfig;
  /** Alert AuditEvents when no `audit` sink was given. */
  readonly auditLog = new AuditLog(500);
  readonly #audit: (event: AuditEvent) => void;
  readonly #revocations: RevocationList | undefined;
  readonly #quarantinePeer: BreachDetectorOptions['quarantinePeer'];
  readonly #log: BreachDetectorOptions['log'];
  readonly #now: () => number;
  readonly #webhook: AlertWebhook | undefined;
  readonly #alerts: SecurityAlert[] = [];
  readonly #maxAlerts: number;
  readonly #counts: Record<SecuritySignal, number>;
  readonly #suppressed = new Map<string, { last: number; suppressed: number }>();
  readonly #listeners = new Set<(alert: SecurityAlert) => void>();
  readonly #tide: SlidingCounter;
  readonly #authFailures: SlidingCounter;
  readonly #scraping: SlidingCounter;
  readonly #patients: DistinctCounter;
  readonly #baselines = new Map<string, Baseline>();

  /**
   * @param opts - see {@link BreachDetectorOptions}.
   * @throws ZodError when `config` is invalid.
   */
  constructor(opts: BreachDetectorOptions) {
    this.nodeId = opts.nodeId;
    this.config = SecurityConfigSchema.parse(opts.config ?? {});
    this.#audit = opts.audit ?? ((e) => this.auditLog.add(e));
    this.#revocations = opts.revocations;
    this.#quarantinePeer = opts.quarantinePeer;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    this.#maxAlerts = opts.maxAlerts ?? 500;
    this.#counts = Object.fromEntries(SECURITY_SIGNALS.map((s) => [s, 0])) as Record<SecuritySignal, number>;
    const c = this.config;
    this.#tide = new SlidingCounter(c.tide.windowMs);
    this.#authFailures = new SlidingCounter(c.authFailures.windowMs);
    this.#scraping = new SlidingCounter(c.scraping.windowMs);
    this.#patients = new DistinctCounter(c.patientReads.windowMs, Math.max(10_000, c.patientReads.threshold + 1));
    if (c.webhook) {
      this.#webhook = new AlertWebhook({
        url: c.webhook.url,
        timeoutMs: c.webhook.timeoutMs,
        maxInFlight: c.webhook.maxInFlight,
        ...(opts.fetch ? { fetch: opts.fetch } : {}),
        onError: (message) => this.#log?.warn({ alert: 'security-webhook', message }, 'security alert webhook failed'),
      });
    }
  }

  /** Alerts raised since construction, per signal (every signal present, 0 when none). */
  alertCounts(): Record<SecuritySignal, number> {
    return { ...this.#counts };
  }

  /** The newest alerts, newest first. */
  alerts(limit = this.#maxAlerts): SecurityAlert[] {
    return this.#alerts.slice(0, Math.max(0, limit));
  }

  /** Webhook counters (undefined without a webhook). */
  webhookStats(): { sent: number; failed: number; dropped: number } | undefined {
    return this.#webhook?.stats();
  }

  /**
   * Subscribes to alerts (called synchronously when raised; a throwing listener is ignored).
   * @returns The unsubscribe function.
   */
  onAlert(listener: (alert: SecurityAlert) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Resolves once webhook POSTs in flight have finished. */
  async idle(): Promise<void> {
    await this.#webhook?.idle();
  }

  /**
   * Feeds one quarantined Tide message (the `onRejection` hook). Codes of {@link TIDE_REASON_SIGNALS}
   * count per (signal, claimed sender); the `tide.threshold`-th within `tide.windowMs` alerts.
   * @param ev - The rejection (no plaintext).
   */
  tideRejection(ev: TideRejectionEvent): void {
    const signal = TIDE_REASON_SIGNALS[ev.reason];
    if (signal === undefined) return;
    const sender = ev.sender ?? 'unknown';
    const key = `${signal}|${sender}`;
    const now = this.#now();
    const { count, firstAt } = this.#tide.hit(key, now);
    const t = this.config.tide;
    if (count < t.threshold) return;
    this.#tide.reset(key);
    const subject: AlertSubject = { kind: 'peer', value: sender, verified: ev.senderVerified };
    this.#raise(signal, subject, {
      count,
      threshold: t.threshold,
      windowMs: t.windowMs,
      firstSeenAt: Math.min(firstAt, ev.receivedAt),
      summary: `Tide message from ${ev.senderVerified ? '' : 'claimed sender '}${sender} refused: ${ev.reason}`,
      details: { reason: ev.reason, kind: ev.kind ?? 'unknown', messageId: ev.messageId ?? 'unknown' },
      peer: ev.senderVerified && ev.sender !== undefined ? ev.sender : undefined,
    });
  }

  /**
   * Feeds one finished FHIR request (the {@link securityMonitor} middleware).
   * @param ev - What was observed (no bodies, no tokens, patient ids only in memory).
   */
  httpRequest(ev: HttpObservation): void {
    const now = this.#now();
    const c = this.config;
    if (ev.status === 401 || ev.status === 403) {
      const subjects: AlertSubject[] = [];
      if (ev.clientId !== undefined) subjects.push({ kind: 'client', value: ev.clientId });
      if (ev.ip !== undefined) subjects.push({ kind: 'ip', value: ev.ip });
      for (const s of subjects) {
        const key = `${s.kind}:${s.value}`;
        const { count, firstAt } = this.#authFailures.hit(key, now);
        if (count < c.authFailures.threshold) continue;
        this.#authFailures.reset(key);
        this.#raise('auth-failure-burst', s, {
          count,
          threshold: c.authFailures.threshold,
          windowMs: c.authFailures.windowMs,
          firstSeenAt: Math.min(firstAt, ev.startedAt),
          summary: `${count} requests refused with 401/403 for ${s.kind} ${s.value} within ${c.authFailures.windowMs} ms`,
          details: { lastStatus: ev.status },
          token: ev.jti !== undefined ? { jti: ev.jti, expiresAtMs: ev.expiresAtMs } : undefined,
        });
        break; // one alert per request
      }
      return;
    }
    if (ev.status < 200 || ev.status >= 300) return;
    const who: AlertSubject | undefined =
      ev.jti !== undefined ? { kind: 'token', value: ev.jti } : ev.clientId !== undefined ? { kind: 'client', value: ev.clientId } : ev.ip !== undefined ? { kind: 'ip', value: ev.ip } : undefined;
    if (!who) return;
    const key = `${who.kind}:${who.value}`;
    const token = ev.jti !== undefined ? { jti: ev.jti, expiresAtMs: ev.expiresAtMs } : undefined;
    const clientDetail: Record<string, string | number> = ev.clientId !== undefined ? { clientId: ev.clientId } : {};
    if (ev.kind === 'search' || ev.kind === 'history') {
      const { count, firstAt } = this.#scraping.hit(key, now);
      if (count >= c.scraping.threshold) {
        this.#scraping.reset(key);
        this.#raise('scraping', who, {
          count,
          threshold: c.scraping.threshold,
          windowMs: c.scraping.windowMs,
          firstSeenAt: Math.min(firstAt, ev.startedAt),
          summary: `${count} search/_history pages for ${who.kind} ${who.value} within ${c.scraping.windowMs} ms`,
          details: { ...clientDetail, lastKind: ev.kind },
          token,
        });
      }
    }
    if (ev.patients.length > 0) {
      const { count, firstAt } = this.#patients.add(key, ev.patients, now);
      const base = this.#baseline(ev.clientId ?? key, count, now);
      const pr = c.patientReads;
      const overBaseline = base.value !== undefined && count >= pr.baselineMin && count > pr.baselineFactor * Math.max(1, base.value);
      if (count > pr.threshold || overBaseline) {
        base.alerted = true;
        this.#patients.reset(key);
        const limit = overBaseline && count <= pr.threshold ? Math.floor(pr.baselineFactor * Math.max(1, base.value ?? 0)) : pr.threshold;
        this.#raise('patient-read-volume', who, {
          count,
          threshold: limit,
          windowMs: pr.windowMs,
          firstSeenAt: Math.min(firstAt, ev.startedAt),
          summary: `${count} distinct patients read by ${who.kind} ${who.value} within ${pr.windowMs} ms (limit ${limit}${base.value !== undefined ? `, baseline ${base.value.toFixed(1)}` : ''})`,
          details: { ...clientDetail, ...(base.value !== undefined ? { baseline: Number(base.value.toFixed(2)) } : {}) },
          token,
        });
      }
    }
  }

  /** The client's baseline, folding the closed tumbling window (without alerts) into the EWMA. */
  #baseline(client: string, count: number, now: number): Baseline {
    const windowMs = this.config.patientReads.windowMs;
    let b = this.#baselines.get(client);
    if (!b) {
      if (this.#baselines.size >= 10_000) this.#baselines.delete(this.#baselines.keys().next().value as string);
      b = { value: undefined, windowStart: now, peak: 0, alerted: false };
      this.#baselines.set(client, b);
    }
    if (now - b.windowStart >= windowMs) {
      if (!b.alerted) b.value = b.value === undefined ? b.peak : (1 - EWMA_WEIGHT) * b.value + EWMA_WEIGHT * b.peak;
      b.windowStart = now;
      b.peak = 0;
      b.alerted = false;
    }
    b.peak = Math.max(b.peak, count);
    return b;
  }

  /** Raises one alert (unless within the cooldown of the same signal and subject) and runs the responses. */
  #raise(
    signal: SecuritySignal,
    subject: AlertSubject,
    a: {
      count: number;
      threshold: number;
      windowMs: number;
      firstSeenAt: number;
      summary: string;
      details: Record<string, string | number>;
      peer?: string | undefined;
      token?: { jti: string; expiresAtMs: number | undefined } | undefined;
    },
  ): void {
    const now = this.#now();
    const key = `${signal}|${subject.kind}:${subject.value}`;
    const prev = this.#suppressed.get(key);
    if (prev && now - prev.last < this.config.cooldownMs) {
      prev.suppressed++;
      return;
    }
    if (this.#suppressed.size >= 10_000) this.#suppressed.delete(this.#suppressed.keys().next().value as string);
    this.#suppressed.delete(key);
    this.#suppressed.set(key, { last: now, suppressed: 0 });
    const responses: string[] = [];
    const r = this.config.responses;
    if (a.peer !== undefined && this.#quarantinePeer && (r.quarantinePeer as readonly string[]).includes(signal)) {
      responses.push('quarantine-peer');
      const peer = a.peer;
      this.#quarantinePeer(peer, signal).catch((err: unknown) =>
        this.#log?.error({ alert: 'security', peer, err: (err as Error)?.message }, 'security response: peer quarantine not persisted'),
      );
    }
    if (a.token !== undefined && this.#revocations && (r.revokeToken as readonly string[]).includes(signal as HttpSignal)) {
      responses.push('revoke-token');
      const jti = a.token.jti;
      try {
        this.#revocations.revoke(jti, signal, a.token.expiresAtMs).catch((err: unknown) =>
          this.#log?.error({ alert: 'security', err: (err as Error)?.message }, 'security response: token revocation not persisted'),
        );
      } catch {
        responses[responses.length - 1] = 'revoke-token-failed';
      }
    }
    const alert: SecurityAlert = {
      id: randomUUID(),
      signal,
      subject,
      at: now,
      firstSeenAt: a.firstSeenAt,
      count: a.count,
      threshold: a.threshold,
      windowMs: a.windowMs,
      suppressed: prev?.suppressed ?? 0,
      summary: a.summary,
      details: a.details,
      responses,
    };
    this.#counts[signal]++;
    this.#alerts.unshift(alert);
    if (this.#alerts.length > this.#maxAlerts) this.#alerts.length = this.#maxAlerts;
    try {
      this.#audit(alertAuditEvent(alert, this.nodeId));
    } catch (err) {
      this.#log?.error({ alert: 'security', err: (err as Error)?.message }, 'security alert: AuditEvent not written');
    }
    this.#log?.error({ alert: 'security', signal, subject: subject.kind, id: alert.id, count: a.count, responses }, `security alert: ${a.summary}`);
    this.#webhook?.post(this.nodeId, alert);
    for (const l of this.#listeners) {
      try {
        l(alert);
      } catch {
        // listeners must not break detection
      }
    }
  }
}
