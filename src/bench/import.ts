/**
 * Figure 4: import throughput. The import plan is PUT at hospital 1's gateway over HTTP, type by
 * type in import order (referenced types first), `concurrency` requests at a time within a type,
 * as `tidegate demo` does. Two rates: ingest (every PUT answered by hospital 1) and end-to-end
 * (additionally replicated to hospital 2 and written to both hospital FHIR servers, i.e. until
 * `Network.converge` reports all replicas equal and every node quiet).
 *
 * The import is time-boxed so that the import *and* the drain after it end by `budgetEnd`: once
 * `now + estimated drain + margin` reaches `budgetEnd` no new PUT is started, and the figures are
 * for the resources sent so far (`truncated: true`). The drain estimate is the replication lag
 * (resources accepted at hospital 1 but not yet held by hospital 2's replica) divided by the rate
 * at which hospital 2 has received resources so far, × 1.5 for safety. Convergence is awaited
 * until `budgetEnd` + `graceMs` (at least 15 s).
 */
import { canonicalStringify } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { Network } from '../node/network.ts';
import { round } from './stats.ts';

/** Options of {@link runImportBench}. */
export interface ImportBenchOptions {
  /** Concurrent PUTs within a type. Default 8. */
  concurrency?: number;
  /** `performance.now()` value by which the import and its drain should be over. */
  budgetEnd: number;
  /** Safety margin kept before `budgetEnd` when deciding to stop, ms. Default 10000. */
  marginMs?: number;
  /** How long past `budgetEnd` convergence may still be awaited, ms. Default 20000. */
  graceMs?: number;
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
  /** Resources hospital 2's replica held when the PUTs ended (of `accepted`). */
  replicatedAtIngestEnd: number;
  /** Resources hospital 2's replica held at the end (equals `accepted` when converged). */
  replicatedAtEnd: number;
  concurrency: number;
  /** Seconds until the last PUT was answered. */
  ingestSeconds: number;
  /** Seconds from the first PUT until converged (null when not converged by `budgetEnd`). */
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
  const h2 = net.members[1]!;
  const countH2 = (): number => {
    let n = 0;
    for (const _ of h2.node.replica.keys()) n++;
    return n;
  };
  const h2Before = countH2();
  let h2Now = 0; // resources of this import held by hospital 2, sampled every 500 ms
  const margin = opts.marginMs ?? 10_000;
  const before = net.members.map((m) => m.node.stats().tide);
  let accepted = 0;
  let rejected = 0;
  let sent = 0;
  let truncated = false;
  const byType: ImportTypeFigures[] = [];
  const t0 = performance.now();
  const sampler = setInterval(() => {
    h2Now = countH2() - h2Before;
  }, 500);
  /** True when starting another PUT would likely make the drain overrun the budget. */
  const outOfTime = (): boolean => {
    const now = performance.now();
    if (now + margin >= opts.budgetEnd) return true;
    const elapsed = (now - t0) / 1000;
    if (elapsed < 10) return false;
    const rate = Math.max(h2Now / elapsed, 1);
    // ×1.5: on a noisy machine the drain has run both faster and slower than the ingest-time rate.
    const drainMs = ((1.5 * Math.max(accepted - h2Now, 0)) / rate) * 1000;
    return now + drainMs + margin >= opts.budgetEnd;
  };
  try {
    for (const group of groups) {
      if (outOfTime()) {
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
            if (outOfTime()) {
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
  } finally {
    clearInterval(sampler);
  }
  const ingestMs = performance.now() - t0;
  const replicatedAtIngestEnd = countH2() - h2Before;
  opts.progress?.(`  ${accepted} accepted in ${(ingestMs / 1000).toFixed(1)} s (${replicatedAtIngestEnd} already at ${h2.name}); waiting for convergence…`);
  const convergeMs = await net.converge(Math.max(15_000, opts.budgetEnd + (opts.graceMs ?? 20_000) - performance.now()));
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
    replicatedAtIngestEnd,
    replicatedAtEnd: countH2() - h2Before,
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
