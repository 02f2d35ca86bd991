/**
 * Breach detection and responses (docs/security.md, "Breach detection"). Named exports only.
 */
export { ALERT_ID_SYSTEM, CLIENT_ID_SYSTEM, IP_SYSTEM, SECURITY_SIGNAL_SYSTEM, TOKEN_ID_SYSTEM, alertAuditEvent } from './alert.ts';
export type { AlertSubject, SecurityAlert } from './alert.ts';
export { HTTP_SIGNALS, SECURITY_SIGNALS, SecurityConfigSchema, TIDE_SIGNALS, defaultSecurityConfig } from './config.ts';
export type { HttpSignal, SecurityConfig, SecuritySignal, TideSignal } from './config.ts';
export { BreachDetector, TIDE_REASON_SIGNALS } from './detector.ts';
export type { BreachDetectorOptions, HttpObservation } from './detector.ts';
export { classifyForMonitor, patientsInResponse, securityMonitor } from './monitor.ts';
export { RevocationList } from './revocations.ts';
export type { Revocation, RevocationListOptions } from './revocations.ts';
export { securityRouter } from './router.ts';
export type { PeerQuarantineControl, SecurityRouterOptions } from './router.ts';
export { AlertWebhook } from './webhook.ts';
export type { AlertWebhookOptions, WebhookStats } from './webhook.ts';
export { DistinctCounter, SlidingCounter } from './window.ts';
