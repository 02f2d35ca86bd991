/**
 * Operations endpoints of one tidegate node, as an express Router (mounted at the app root next to
 * `/fhir` and `/healthz`):
 *
 * | route | answer |
 * | --- | --- |
 * | `GET /metrics` | Prometheus text format (prom-client, this node's own Registry) |
 * | `GET /readyz` | 200 `{status:'ready',…}` / 503 `{status:'not-ready',…}`: own Redis answers PING, workers run, own queues and anti-entropy scheduler set up in Redis (`queues`; a Redis that lost its data is not ready until the node has set them up again) |
 * | `GET /admin/peers` | `{ node, peers: [...] }`: per peer status, last contact, backlog, lag, last error, quarantined |
 * | `GET /admin/audit` | FHIR R4 `searchset` Bundle of the quarantine AuditEvents, newest first (`?_count=N`) |
 * | `GET /admin/quarantine` | `{ node, key, entries: [...] }`: newest quarantine records from Redis (no envelopes) (`?_count=N`) |
 * | `POST /admin/reload` | `{ node, reloaded: { keys: { changed, unchanged }, mapping: { file, reloaded, warnings } } }`: the mapping file and the peers' public key files re-read, all or nothing (`reload`, src/mapping/live.ts `nodeReloader`; a part the node does not have is absent); 422 OperationOutcome when a file is invalid, one issue per problem (`file:line:column: …` for the mapping), nothing changed; 404 when not configured; any other method 405 (`Allow: POST`) |
 *
 * Nothing here returns plaintext, envelopes or resource keys. With `auth` configured, fhirApp puts
 * `/metrics` and `/admin/*` behind a `tidegate/admin` token (src/auth/admin.ts).
 */
import express from 'express';
import type { Request, Response, Router } from 'express';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Tide } from '../tide/index.ts';
import { tideMetricsRegistry } from './metrics.ts';
import { formatIssue, MappingConfigError } from '../mapping/load.ts';
import type { SecurityMetricsSource } from './metrics.ts';

/** Options of {@link opsRouter}. */
export interface OpsRouterOptions {
  /** The node's Tide (started or not: `/readyz` says 503 until it runs). */
  tide: Tide;
  /** This node's id (metrics default label `node`, response bodies). */
  nodeId: string;
  /** Registry to serve; default a new one from {@link tideMetricsRegistry} (one per node). */
  registry?: Registry;
  /** The breach detector, for `tidegate_security_alerts_total{signal}` in the default registry. */
  security?: SecurityMetricsSource;
  /** Bound of the readiness PING, ms. Default 1000. */
  readyTimeoutMs?: number;
  /**
   * Reloads the node's reloadable configuration for `POST /admin/reload` (src/mapping/live.ts
   * `nodeReloader`: mapping file and peers' public keys); it must change nothing when it throws.
   * Absent: the route answers 404.
   */
  reload?: () => Promise<unknown>;
  /**
   * The node log: a failed `POST /admin/reload` is logged at error as a failed SIGHUP is
   * (src/cli/serve.ts): one line per mapping issue with file, line and column, or the key-file
   * error; config text only, never resource content.
   */
  log?: Pick<Logger, 'error'>;
}

const MAX_COUNT = 1000;

function countParam(req: Request, dflt: number): number {
  const raw = req.query._count;
  const n = typeof raw === 'string' ? Number.parseInt(raw, 10) : Number.NaN;
  return Number.isSafeInteger(n) && n >= 0 ? Math.min(n, MAX_COUNT) : dflt;
}

/**
 * Logs a failed reload as serve's SIGHUP handler does: one error line per mapping issue (file,
 * line, column and the message), or the key-file error's message (file names, never key bytes).
 * @param log - the node log, or undefined (nothing logged).
 * @param err - what the reload threw.
 */
export function logReloadFailure(log: Pick<Logger, 'error'> | undefined, err: unknown): void {
  if (log === undefined) return;
  if (err instanceof MappingConfigError) for (const i of err.issues) log.error({ file: i.file, line: i.line, column: i.column }, `mapping NOT reloaded (nothing changed): ${formatIssue(i).split('\n')[0]}`);
  else log.error({ err: (err as Error).message }, 'peer public keys NOT reloaded (nothing changed, mapping included)');
}

const iso = (ms: number | undefined): string | undefined => (ms === undefined ? undefined : new Date(ms).toISOString());

/**
 * Builds the operations Router of one node (routes in the module doc).
 * @param opts - See {@link OpsRouterOptions}.
 * @returns An express Router; it has no error-prone global state, so several nodes in one process
 *   each get their own (with their own prom-client Registry).
 */
export function opsRouter(opts: OpsRouterOptions): Router {
  const { tide, nodeId } = opts;
  const registry = opts.registry ?? tideMetricsRegistry(tide, nodeId, opts.security);
  const r = express.Router();

  r.get('/metrics', async (_req: Request, res: Response) => {
    try {
      const text = await registry.metrics();
      res.setHeader('Content-Type', registry.contentType);
      res.send(text);
    } catch {
      res.status(500).type('text/plain').send('metrics collection failed\n');
    }
  });

  r.get('/readyz', async (_req: Request, res: Response) => {
    const h = await tide.health(opts.readyTimeoutMs ?? 1000);
    res.status(h.ready ? 200 : 503).json({ status: h.ready ? 'ready' : 'not-ready', node: nodeId, ...h });
  });

  // The /admin routes sit in one sub-router: every other request (all of /fhir) passes them with
  // one path test instead of one per route.
  const admin = express.Router();
  r.use('/admin', admin);

  admin.get('/peers', (_req: Request, res: Response) => {
    const peers = tide.peers().map((p) => ({
      ...p,
      lastContactAt: iso(p.lastContactAt),
      lastSentAt: iso(p.lastSentAt),
      lastReceivedAt: iso(p.lastReceivedAt),
      lastDigestAt: iso(p.lastDigestAt),
      lastError: p.lastError ? { at: iso(p.lastError.at), message: p.lastError.message } : undefined,
      policy: { ...p.policy, reportedAt: iso(p.policy.reportedAt) },
    }));
    res.json({ node: nodeId, peers });
  });

  admin.get('/audit', (req: Request, res: Response) => {
    res.setHeader('Content-Type', 'application/fhir+json; charset=utf-8');
    res.send(JSON.stringify(tide.auditLog.bundle(countParam(req, 100))));
  });

  admin.get('/quarantine', async (req: Request, res: Response) => {
    try {
      const entries = await tide.quarantined(countParam(req, 100), false);
      res.json({
        node: nodeId,
        key: tide.quarantineKey,
        entries: entries.map((e) => ({ ...e, receivedAt: iso(e.receivedAt), quarantinedAt: iso(e.quarantinedAt) })),
      });
    } catch {
      res.status(503).json({ node: nodeId, error: 'quarantine unavailable (Redis)' });
    }
  });

  admin.post('/reload', async (_req: Request, res: Response) => {
    const outcome = (status: number, code: string, diagnostics: string): void => {
      res.status(status).type('application/fhir+json').send(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] }));
    };
    if (opts.reload === undefined) return outcome(404, 'not-supported', 'reload is not configured on this node');
    try {
      res.json({ node: nodeId, reloaded: await opts.reload() });
    } catch (err) {
      logReloadFailure(opts.log, err);
      if (err instanceof MappingConfigError) {
        // one issue per problem, compiler style (file:line:column: severity: message, hint); config text only, no PHI
        const issue = err.issues.map((i) => ({ severity: i.severity, code: 'invalid', diagnostics: `mapping not reloaded (nothing changed): ${formatIssue(i).replace('\n  hint: ', ' — hint: ')}` }));
        res.status(422).type('application/fhir+json').send(JSON.stringify({ resourceType: 'OperationOutcome', issue }));
        return;
      }
      // key-file errors name the file and the problem, never key bytes; nothing was changed
      outcome(422, 'invalid', `peer keys not reloaded (nothing changed, mapping included): ${(err as Error).message}`);
    }
  });
  // Any other method: 405 with Allow, as /fhir/metadata answers (src/fhir/express.ts)
  admin.all('/reload', (req: Request, res: Response) => {
    res.status(405).setHeader('Allow', 'POST');
    res.type('application/fhir+json').send(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-supported', diagnostics: `${req.method} is not allowed on /admin/reload: use POST /admin/reload to re-read the mapping file and the peers' public key files` }] }));
  });

  return r;
}
