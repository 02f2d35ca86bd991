/**
 * The `security` section of a node configuration (zod): breach-detection thresholds, the alert
 * webhook and the automatic responses. Documented in docs/security.md, "Breach detection".
 */
import { z } from 'zod';
import { isLoopbackHost } from '../auth/config.ts';

/** Signals raised from Tide rejections (envelopes refused by the inbox worker). */
export const TIDE_SIGNALS = Object.freeze(['envelope-signature', 'unknown-sender', 'replay', 'decryption-failure', 'peer-not-allowed', 'clock-skew', 'forged-entry'] as const);
/** Signals raised from the FHIR HTTP surface. */
export const HTTP_SIGNALS = Object.freeze(['auth-failure-burst', 'patient-read-volume', 'scraping'] as const);
/** Every breach-detection signal (the `signal` label of `tidegate_security_alerts_total`). */
export const SECURITY_SIGNALS = Object.freeze([...TIDE_SIGNALS, ...HTTP_SIGNALS] as const);

/** A Tide signal id. */
export type TideSignal = (typeof TIDE_SIGNALS)[number];
/** An HTTP signal id. */
export type HttpSignal = (typeof HTTP_SIGNALS)[number];
/** Any signal id. */
export type SecuritySignal = (typeof SECURITY_SIGNALS)[number];

const Ms = z.number().int().min(1);
const Count = z.number().int().min(1);

const WebhookUrl = z.url().refine((u) => {
  const url = new URL(u);
  return url.protocol === 'https:' || (url.protocol === 'http:' && isLoopbackHost(url.hostname));
}, 'must be an https:// URL (http:// only on loopback)');

/** Schema of the `security` section. Every field has a default, so `{}` is a valid section. */
export const SecurityConfigSchema = z.strictObject({
  /** A signal for one subject (peer, client, token, IP) alerts at most once per this many ms; later hits are counted as suppressed. */
  cooldownMs: Ms.default(60_000),
  /** Bursts of 401/403 answers per client id and per IP address. */
  authFailures: z.strictObject({ threshold: Count.default(20), windowMs: Ms.default(60_000) }).prefault({}),
  /**
   * Distinct patients whose data one token received within the window: alert above `threshold`, or
   * above `baselineFactor` × the client's learned baseline once at least `baselineMin` were read.
   */
  patientReads: z
    .strictObject({
      threshold: Count.default(100),
      windowMs: Ms.default(300_000),
      baselineFactor: z.number().min(1).default(5),
      baselineMin: Count.default(20),
    })
    .prefault({}),
  /** Search and `_history` requests (pages) per token (or client, or IP) within the window. */
  scraping: z.strictObject({ threshold: Count.default(120), windowMs: Ms.default(60_000) }).prefault({}),
  /** Each Tide rejection alerts; with a threshold above 1, only the n-th within `windowMs` per claimed sender does. */
  tide: z.strictObject({ threshold: Count.default(1), windowMs: Ms.default(60_000) }).prefault({}),
  /** POST every alert as JSON to this URL (never blocks requests or the inbox). */
  webhook: z
    .strictObject({
      url: WebhookUrl,
      timeoutMs: Ms.max(60_000).default(2000),
      /** Most webhook POSTs in flight; alerts beyond are not posted (counted as dropped). */
      maxInFlight: Count.max(1000).default(16),
    })
    .optional(),
  /** Automatic responses. */
  responses: z
    .strictObject({
      /**
       * Tide signals that quarantine the (verified) sending peer until `POST /admin/peers/:id/release`.
       * A claimed, unverified sender is never quarantined (an attacker could name any peer).
       */
      quarantinePeer: z.array(z.enum(TIDE_SIGNALS)).default(['peer-not-allowed']),
      /** HTTP signals that revoke the offending token (by `jti`) until `DELETE /admin/revocations/:jti`. */
      revokeToken: z.array(z.enum(HTTP_SIGNALS)).default([]),
    })
    .prefault({}),
});

/** A validated `security` section (defaults filled in). */
export type SecurityConfig = z.infer<typeof SecurityConfigSchema>;

/** The defaults (`SecurityConfigSchema.parse({})`). */
export function defaultSecurityConfig(): SecurityConfig {
  return SecurityConfigSchema.parse({});
}
