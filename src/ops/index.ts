/**
 * Operations surface of a tidegate node: Prometheus metrics, readiness, peer status and the
 * security audit trail (see src/ops/router.ts). Named exports only.
 */
export { opsRouter } from './router.ts';
export type { OpsRouterOptions } from './router.ts';
export { tideMetricsRegistry } from './metrics.ts';
export type { MetricsSource, SecurityMetricsSource } from './metrics.ts';
