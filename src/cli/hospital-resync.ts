/**
 * `tidegate hospital resync --config node.json [--type Patient] [--node-url URL] [--wait]`: asks the
 * running node to resend its current version of every resource (or of the given types) to its
 * hospital (`POST /admin/hospital/resync`, src/hospital/resync.ts), and with `--wait` follows the
 * progress (`GET /admin/hospital/resync`) until the run is done.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { loadNodeConfig } from '../config/config.ts';

/** Options of {@link runHospitalResync}. */
export interface HospitalResyncCliOptions {
  /** Node configuration JSON; its `listen` (and `tls`) give the node URL unless `nodeUrl` is set. */
  config: string;
  /** Base URL of the running node, e.g. `http://127.0.0.1:8080`. */
  nodeUrl?: string;
  /** Resource types (none = all). */
  type?: string[];
  /** Wait until the run is done (polls every `pollMs`). */
  wait?: boolean;
  /** Poll period with `wait`, ms. Default 500. */
  pollMs?: number;
  /** Longest wait with `wait`, ms. Default 3 600 000 (1 h). */
  timeoutMs?: number;
  /** Environment (TIDEGATE_ADMIN_TOKEN, config overrides); tests only. */
  env?: NodeJS.ProcessEnv;
  /** Called with each progress status while waiting. */
  onProgress?: (status: Record<string, unknown>) => void;
}

/**
 * The node's base URL from its configuration: `http(s)://<listen.host>:<listen.port>` (a wildcard
 * host becomes 127.0.0.1).
 * @param config - path of the node configuration JSON.
 * @param env - environment (`PORT` overrides the port, as for `serve`).
 * @throws Error when the configuration cannot be read or is invalid.
 */
export function nodeUrlOfConfig(config: string, env: NodeJS.ProcessEnv = process.env): string {
  const cfg = loadNodeConfig(config, env);
  const host = cfg.listen.host === '0.0.0.0' || cfg.listen.host === '::' || cfg.listen.host === '' ? '127.0.0.1' : cfg.listen.host;
  return `${cfg.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${cfg.listen.port}`;
}

/**
 * Starts a hospital resync on the running node (and, with `wait`, waits for it).
 * @param o - see {@link HospitalResyncCliOptions}.
 * @returns The node's 202 answer (`{ status, total, types }`), or with `wait` the final status.
 * @throws Error when the node answers with an error (400 bad type, 409 a run is going on), is
 *   unreachable, or the run failed or did not finish within `timeoutMs`.
 */
export async function runHospitalResync(o: HospitalResyncCliOptions): Promise<Record<string, unknown>> {
  const env = o.env ?? process.env;
  const base = o.nodeUrl ?? nodeUrlOfConfig(o.config, env);
  // A node with `auth` wants an operator token (scope tidegate/admin): TIDEGATE_ADMIN_TOKEN.
  const token = env.TIDEGATE_ADMIN_TOKEN;
  const headers: Record<string, string> = token ? { Authorization: `Bearer ${token}` } : {};
  const url = new URL('/admin/hospital/resync', base);
  for (const t of o.type ?? []) url.searchParams.append('type', t);
  const res = await fetch(url, { method: 'POST', headers }).catch((err: unknown) => {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new Error(`Cannot reach the node at ${url.origin} (${cause?.code ?? cause?.message ?? (err as Error).message}): is it running? Give its address with --node-url`);
  });
  const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (res.status !== 202) throw new Error(`Node answered ${res.status}: ${JSON.stringify(body)}`);
  if (!o.wait) return body;
  const deadline = Date.now() + (o.timeoutMs ?? 3_600_000);
  for (;;) {
    const st = await fetch(new URL('/admin/hospital/resync', base), { headers });
    const status = (await st.json()) as Record<string, unknown>;
    if (!st.ok) throw new Error(`Node answered ${st.status}: ${JSON.stringify(status)}`);
    o.onProgress?.(status);
    if (status['state'] === 'done') return status;
    if (status['state'] === 'failed') throw new Error(`Hospital resync failed: ${String(status['error'])}`);
    if (Date.now() > deadline) throw new Error('Hospital resync did not finish in time (it keeps running on the node)');
    await sleep(o.pollMs ?? 500);
  }
}
