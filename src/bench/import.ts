/**
 * Figure 4: import throughput. The import plan is PUT at hospital 1's gateway over HTTP, type by
 * type in import order (referenced types first), `concurrency` requests at a time within a type,
 * as `tidegate demo` does. Two rates: ingest (every PUT answered by hospital 1) and end-to-end
 * (additionally replicated to hospital 2 and written to both hospital FHIR servers, i.e. until
 * `Network.converge` reports all replicas equal and every node quiet).
 *
 * The import is time-boxed: once `deadline` passes no new PUT is started, and the figures are
 * for the resources sent so far (`truncated: true`).
 */
import { canonicalStringify } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { Network } from '../node/network.ts';
import { round } from './stats.ts';

/** Options of {@link runImportBench}. */
export interface ImportBenchOptions {
  /** Concurrent PUTs within a type. Default 8. */
  concurrency?: number;
  /** `performance.now()` value after which no new PUT is started. */
  deadline: number;
  /** Max wait for convergence after the last PUT, ms. Default 120000. */
  convergeTimeoutMs?: number;
  progress?: (msg: string) => void;
}

/** Ingest figures of one resource type. */
export interface ImportTypeFigures {
  type: string;
  resources: number;
  seconds: number;
  perSecond: number;
  /** Median canonical JSON size (bytes). */
  bodyBytesP50: number;
}

/** Figure 4 results. */
export interface ImportFigures {
  /** Resources in the plan. */
  planned: number;
  /** Resources PUT (accepted + rejected). */
  sent: number;
  accepted: number;
  rejected: number;
  /** True when the time box stopped the import before the end of the plan. */
  truncated: boolean;
  concurrency: number;
  /** Seconds until the last PUT was answered. */
  ingestSeconds: number;
  /** Seconds from the first PUT until converged (null on timeout). */
  endToEndSeconds: number | null;
  /** Accepted resources / ingest seconds. */
  ingestPerSecond: number;
  /** Accepted resources / end-to-end seconds. */
  endToEndPerSecond: number | null;
  /** Extra wait after the last PUT answered until convergence, seconds. */
  drainSeconds: number | null;
  /** Sealed envelopes sent (both directions) during the import, and their total bytes. */
  messages: number;
  bytesOnWire: number;
  /** Updates per envelope, mean. */
  updatesPerMessage: number | null;
  byType: ImportTypeFigures[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? 0;
}

/**
 * Runs figure 4.
 * @param net - a running network of at least 2 hospitals.
 * @param resources - resources in import order (`importPlan(dir).resources`).
 * @param opts - see {@link ImportBenchOptions}.
 * @returns {@link ImportFigures}.
 * @throws Error when the network has fewer than 2 members.
 */
export async function runImportBench(net: Network, resources: readonly FhirJsonObject[], opts: ImportBenchOptions): Promise<ImportFigures> {
  const h1 = net.members[0];
  if (!h1 || net.members.length < 2) throw new Error('import bench: needs 2 hospitals');
  const concurrency = opts.concurrency ?? 8;
  const groups: FhirJsonObject[][] = [];
  for (const r of resources) {
    const last = groups[groups.length - 1];
    if (last && last[0]!.resourceType === r.resourceType) last.push(r);
    else groups.push([r]);
  }
  const before = net.members.map((m) => m.node.stats().tide);
  let accepted = 0;
  let rejected = 0;
  let sent = 0;
  let truncated = false;
  const byType: ImportTypeFigures[] = [];
  const t0 = performance.now();
  for (const group of groups) {
    if (performance.now() >= opts.deadline) {
      truncated = true;
      break;
    }
    const type = String(group[0]!.resourceType);
    const texts = group.map((r) => canonicalStringify(r));
    let next = 0;
    let done = 0;
    const tg = performance.now();
    await Promise.all(
      Array.from({ length: Math.min(concurrency, group.length) }, async () => {
        while (next < group.length) {
          if (performance.now() >= opts.deadline) {
            truncated = true;
            return;
          }
          const i = next++;
          const r = group[i]!;
          sent++;
          const res = await fetch(`${h1.gateway}/${type}/${String(r.id)}`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: texts[i]! });
          await res.arrayBuffer();
          if (res.status === 200 || res.status === 201) accepted++;
          else rejected++;
          done++;
        }
      }),
    );
    const seconds = (performance.now() - tg) / 1000;
    byType.push({ type, resources: done, seconds: round(seconds, 2), perSecond: round(done / seconds, 1), bodyBytesP50: median(texts.slice(0, done).map((t) => Buffer.byteLength(t))) });
    opts.progress?.(`  ${type}: ${done} in ${seconds.toFixed(1)} s (${(done / seconds).toFixed(1)}/s)`);
  }
  const ingestMs = performance.now() - t0;
  opts.progress?.(`  ${accepted} accepted in ${(ingestMs / 1000).toFixed(1)} s; waiting for convergence…`);
  const convergeMs = await net.converge(opts.convergeTimeoutMs ?? 120_000);
  const endMs = convergeMs === undefined ? undefined : ingestMs + convergeMs;
  const after = net.members.map((m) => m.node.stats().tide);
  const messages = after.reduce((n, s, i) => n + s.messagesSent - before[i]!.messagesSent, 0);
  const updates = after.reduce((n, s, i) => n + s.updatesSent - before[i]!.updatesSent, 0);
  return {
    planned: resources.length,
    sent,
    accepted,
    rejected,
    truncated,
    concurrency,
    ingestSeconds: round(ingestMs / 1000, 2),
    endToEndSeconds: endMs === undefined ? null : round(endMs / 1000, 2),
    ingestPerSecond: round(accepted / (ingestMs / 1000), 1),
    endToEndPerSecond: endMs === undefined ? null : round(accepted / (endMs / 1000), 1),
    drainSeconds: convergeMs === undefined ? null : round(convergeMs / 1000, 2),
    messages,
    bytesOnWire: after.reduce((n, s, i) => n + s.bytesSent - before[i]!.bytesSent, 0),
    updatesPerMessage: messages === 0 ? null : round(updates / messages, 1),
    byType,
  };
}
