/**
 * Figure 3: replication latency between two hospitals of a running {@link Network}. Sequential
 * writes: each sample PUTs a new version of one Patient at hospital 1's gateway over HTTP, then
 * polls (every event-loop turn) until
 *  - node-to-node: hospital 2's node replica holds that version (`replica.current(key).versionId`);
 *  - node-to-hospital-server-2: hospital 2's FHIR server (its in-memory Medplum repository) holds
 *    the new content (the sample's unique birthDate).
 * Both are measured from just before the HTTP PUT is sent. The next sample starts once the network
 * is quiet.
 */
import { canonicalStringify } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { Network } from '../node/network.ts';
import { cloneResource } from './merge.ts';
import { nextTurn, summarize } from './stats.ts';
import type { Summary } from './stats.ts';

/** Options of {@link runReplicationBench}. */
export interface ReplicationBenchOptions {
  /** Samples run and discarded first. Default 10. */
  warmup?: number;
  /** Measured samples. Default 100. */
  samples?: number;
  /** Give up on one sample after this many ms. Default 10000. */
  sampleTimeoutMs?: number;
  /** The network's Tide `batchDelayMs`, for the report. */
  batchDelayMs: number;
  progress?: (msg: string) => void;
}

/** Figure 3 results, ms. */
export interface ReplicationFigures {
  samples: number;
  batchDelayMs: number;
  /** Patient body size (canonical JSON bytes). */
  bodyBytes: number;
  /** HTTP PUT at hospital 1's gateway until its response (local merge included). */
  putResponse: Summary;
  /** PUT sent → hospital 2's node holds the version. */
  nodeToNode: Summary;
  /** PUT sent → hospital 2's FHIR server holds the content. */
  nodeToHospitalServer2: Summary;
  /** Samples that timed out (not in the summaries). */
  timeouts: number;
}

function birthDateFor(i: number): string {
  return new Date(Date.UTC(1930, 0, 1) + i * 86_400_000).toISOString().slice(0, 10);
}

async function put(gateway: string, body: FhirJsonObject): Promise<{ status: number; etag: string | null }> {
  const res = await fetch(`${gateway}/Patient/${String(body.id)}`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/fhir+json' },
    body: canonicalStringify(body),
  });
  await res.arrayBuffer();
  return { status: res.status, etag: res.headers.get('etag') };
}

/**
 * Runs figure 3.
 * @param net - a running network of at least 2 hospitals.
 * @param patient - the Patient to write (copied; its id is replaced by `bench-latency`).
 * @param opts - see {@link ReplicationBenchOptions}.
 * @returns {@link ReplicationFigures}.
 * @throws Error when a PUT is refused, or the network has fewer than 2 members, or every sample timed out.
 */
export async function runReplicationBench(net: Network, patient: FhirJsonObject, opts: ReplicationBenchOptions): Promise<ReplicationFigures> {
  const [h1, h2] = net.members;
  if (!h1 || !h2) throw new Error('replication bench: needs 2 hospitals');
  const warmup = opts.warmup ?? 10;
  const samples = opts.samples ?? 100;
  const timeoutMs = opts.sampleTimeoutMs ?? 10_000;
  const id = 'bench-latency';
  const key = `Patient/${id}`;
  const body: FhirJsonObject = { ...cloneResource(patient), id };
  delete body.meta;
  const putT: number[] = [];
  const nodeT: number[] = [];
  const hospT: number[] = [];
  let timeouts = 0;
  for (let i = 0; i < warmup + samples; i++) {
    if (i === warmup) opts.progress?.(`  ${samples} sequential PUTs at ${h1.name}, waiting for ${h2.name}`);
    body.birthDate = birthDateFor(i);
    const t0 = performance.now();
    const res = await put(h1.gateway, body);
    const tPut = performance.now() - t0;
    if (res.status !== 200 && res.status !== 201) throw new Error(`replication bench: PUT ${key} answered ${res.status}`);
    const vid = /"([^"]+)"/.exec(res.etag ?? '')?.[1];
    if (!vid) throw new Error(`replication bench: PUT ${key} answered without an ETag`);
    const deadline = t0 + timeoutMs;
    let tNode: number | undefined;
    let tHosp: number | undefined;
    while (tNode === undefined && performance.now() < deadline) {
      if (h2.node.replica.current(key)?.versionId === vid) tNode = performance.now() - t0;
      else await nextTurn();
    }
    const hospitalId = ((await h2.client.idMap.toHospital(key)) ?? key).slice('Patient/'.length);
    while (tNode !== undefined && tHosp === undefined && performance.now() < deadline) {
      let held: { birthDate?: string } | undefined;
      try {
        held = (await h2.hospital.repo.readResource('Patient', hospitalId)) as { birthDate?: string };
      } catch {
        held = undefined; // not created yet
      }
      if (held?.birthDate === body.birthDate) tHosp = performance.now() - t0;
      else await nextTurn();
    }
    if (tNode === undefined || tHosp === undefined) {
      if (i >= warmup) timeouts++;
    } else if (i >= warmup) {
      putT.push(tPut);
      nodeT.push(tNode);
      hospT.push(tHosp);
    }
    await net.quiet();
  }
  if (nodeT.length === 0) throw new Error('replication bench: every sample timed out');
  return {
    samples: nodeT.length,
    batchDelayMs: opts.batchDelayMs,
    bodyBytes: Buffer.byteLength(canonicalStringify(body)),
    putResponse: summarize(putT),
    nodeToNode: summarize(nodeT),
    nodeToHospitalServer2: summarize(hospT),
    timeouts,
  };
}
