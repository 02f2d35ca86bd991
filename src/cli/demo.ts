/**
 * `npm run demo` / `tidegate demo`: N hospitals in one process, an ndjson import through hospital 1,
 * concurrent clinician edits at hospitals 1 and 2, convergence, and a byte-for-byte comparison of
 * every hospital FHIR server. See README.md ("The demo").
 */
import { resolve } from 'node:path';
import { existsSync } from 'node:fs';
import cliProgress from 'cli-progress';
import pino from 'pino';
import { canonicalStringify } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { importPlan } from '../import/index.ts';
import { startNetwork } from '../node/network.ts';
import type { Network } from '../node/network.ts';
import { resolveRedis } from './redis.ts';
import { assertAuthOrInsecureDev } from '../auth/config.ts';

/** Options of {@link runDemo}. */
export interface DemoOptions {
  hospitals: number;
  data: string;
  json: boolean;
  serve: boolean;
  /** Patients edited concurrently. */
  editPatients: number;
  /** Concurrent HTTP writes during the import. */
  concurrency: number;
  /** Give up waiting for convergence after this many ms. */
  timeoutMs: number;
}

/** The demo's report; `--json` prints exactly this object. */
export interface DemoReport {
  ok: boolean;
  hospitals: number;
  redis: string;
  data: string;
  resources: number;
  importProblems: Array<{ file: string; line: number; message: string }>;
  /** Conditional references that matched no (or several) imported resources; they fail the run. */
  unresolvedReferences: Array<{ resource: string; path: string; message: string }>;
  rejected: Array<{ resource: string; status: number; diagnostics: string }>;
  importMs: number;
  updates: number;
  messages: number;
  bytesOnWire: number;
  edits: number;
  conflictsRecorded: number;
  lostEdits: number;
  lostEditDetails: string[];
  convergenceMs: number | null;
  converged: boolean;
  hospitalResourcesCompared: number;
  hospitalMismatches: string[];
  hospitalWriteFailures: number;
  envelopeRejections: Record<string, number>;
}

/** Default data: the project's own small example set. */
export const EXAMPLES_DIR = new URL('../../examples/data/', import.meta.url).pathname;

const FHIR_HEADERS = { 'Content-Type': 'application/fhir+json' };

async function putResource(base: string, r: FhirJsonObject, author?: string): Promise<{ status: number; body: string }> {
  const url = typeof r.id === 'string' ? `${base}/${String(r.resourceType)}/${r.id}` : `${base}/${String(r.resourceType)}`;
  const res = await fetch(url, {
    method: typeof r.id === 'string' ? 'PUT' : 'POST',
    headers: { ...FHIR_HEADERS, ...(author ? { 'X-Tidegate-Author': author } : {}) },
    body: canonicalStringify(r),
  });
  return { status: res.status, body: await res.text() };
}

async function getJson(url: string): Promise<any> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url} answered ${res.status}`);
  return res.json();
}

interface Edit {
  key: string;
  hospital: string;
  path: string;
  /** JSON text of the value written at `path`. */
  value: string;
  /** True when the edit is visible in the merged resource. */
  present: (merged: any) => boolean;
}

/**
 * Concurrent clinician edits on up to `count` patients: at hospitals 1 and 2, different fields and
 * the same field (birthDate), then a stale write at hospital 1 based on the version before.
 */
async function clinicianEdits(net: Network, keys: string[]): Promise<Edit[]> {
  const [h1, h2] = net.members as [Network['members'][0], Network['members'][0]];
  const edits: Edit[] = [];
  await Promise.all(
    keys.map(async (key, i) => {
      const [v1, v2] = await Promise.all([getJson(`${h1.gateway}/${key}`), getJson(`${h2.gateway}/${key}`)]);
      const email = `clinician.${i}@${h1.name}.example.org`;
      const marital = `Updated at ${h2.name}`;
      const d1 = `19${50 + (i % 40)}-01-01`;
      const d2 = `19${50 + (i % 40)}-02-02`;
      const a = { ...v1, birthDate: d1, telecom: [...(v1.telecom ?? []), { system: 'email', value: email }] };
      const b = { ...v2, birthDate: d2, maritalStatus: { ...(v2.maritalStatus ?? {}), text: marital } };
      const [ra, rb] = await Promise.all([putResource(h1.gateway, a, 'Practitioner/clinician-1'), putResource(h2.gateway, b, 'Practitioner/clinician-2')]);
      if (ra.status !== 200 || rb.status !== 200) throw new Error(`Concurrent edit of ${key} answered ${ra.status}/${rb.status}`);
      edits.push(
        { key, hospital: h1.name, path: 'telecom', value: JSON.stringify(email), present: (m) => (m.telecom ?? []).some((t: any) => t.value === email) },
        { key, hospital: h1.name, path: 'birthDate', value: JSON.stringify(d1), present: (m) => m.birthDate === d1 },
        { key, hospital: h2.name, path: 'birthDate', value: JSON.stringify(d2), present: (m) => m.birthDate === d2 },
        { key, hospital: h2.name, path: 'maritalStatus/text', value: JSON.stringify(marital), present: (m) => m.maritalStatus?.text === marital },
      );
      // A second clinician at hospital 1 still holds v1 (named by meta.versionId) and sets `active`.
      const stale = { ...v1, active: true };
      const rs = await putResource(h1.gateway, stale, 'Practitioner/clinician-3');
      if (rs.status !== 200) throw new Error(`Stale edit of ${key} answered ${rs.status}`);
      edits.push({ key, hospital: h1.name, path: 'active', value: 'true', present: (m) => m.active === true });
    }),
  );
  return edits;
}

/**
 * Runs the demo.
 * @returns The report; `report.ok` is true only when every replica and hospital converged with no
 *   lost edit, no rejected resource and no hospital mismatch.
 * @throws Error when Redis cannot be found or started, or the data folder is missing.
 */
export async function runDemo(opts: DemoOptions, out: { info: (s: string) => void } = { info: (s) => process.stderr.write(`${s}\n`) }): Promise<DemoReport> {
  const dataDir = resolve(opts.data);
  if (!existsSync(dataDir)) throw new Error(`Data folder ${dataDir} does not exist`);
  if (opts.hospitals < 2) throw new Error('--hospitals must be at least 2');
  const redis = await resolveRedis();
  const log = pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination(2));
  let net: Network | undefined;
  try {
    out.info(`tidegate demo: ${opts.hospitals} hospitals, Redis ${redis.source === 'spawned' ? `spawned at ${redis.url}` : redis.url}`);
    // The demo's nodes have no auth section and listen on 127.0.0.1 (startNetwork): the same rule as `serve --insecure-dev`.
    assertAuthOrInsecureDev({}, '127.0.0.1', true);
    out.info('tidegate demo: INSECURE DEV MODE (as `serve --insecure-dev`): no client authorization, gateways bound to 127.0.0.1 only');
    // A bulk import favours throughput: a 250 ms batching window seals ~100× fewer envelopes.
    net = await startNetwork({ hospitals: opts.hospitals, redisUrl: redis.url, logger: log, antiEntropyIntervalMs: opts.serve ? 30_000 : 0, batchDelayMs: 250 });
    const plan = await importPlan(dataDir);
    for (const p of plan.problems) out.info(`skipped ${p.file}:${p.line}: ${p.message}`);
    for (const u of plan.unresolved) out.info(`unresolved conditional reference in ${u.resource} at ${u.path}: ${u.message}`);

    const h1 = net.members[0]!;
    const bar = new cliProgress.SingleBar({ stream: process.stderr, format: 'import via hospital-1 [{bar}] {value}/{total} resources  {eta}s left', hideCursor: true }, cliProgress.Presets.shades_classic);
    bar.start(plan.resources.length, 0);
    const rejected: DemoReport['rejected'] = [];
    const t0 = performance.now();
    let next = 0;
    // Resources are imported in type order (referenced types first); within a type, concurrently.
    const byType: FhirJsonObject[][] = [];
    for (const r of plan.resources) {
      const last = byType[byType.length - 1];
      if (last && last[0]!.resourceType === r.resourceType) last.push(r);
      else byType.push([r]);
    }
    for (const group of byType) {
      next = 0;
      await Promise.all(
        Array.from({ length: Math.min(opts.concurrency, group.length) }, async () => {
          while (next < group.length) {
            const r = group[next++]!;
            const res = await putResource(h1.gateway, r);
            if (res.status !== 200 && res.status !== 201) {
              let diagnostics = '';
              try {
                diagnostics = (JSON.parse(res.body).issue ?? []).map((i: any) => `${i.diagnostics ?? i.code}${i.expression ? ` at ${i.expression.join(',')}` : ''}`).join('; ');
              } catch {
                diagnostics = 'no OperationOutcome';
              }
              rejected.push({ resource: `${String(r.resourceType)}/${String(r.id)}`, status: res.status, diagnostics });
            }
            bar.increment();
          }
        }),
      );
    }
    bar.stop();
    const importMs = performance.now() - t0;
    out.info(`imported ${plan.resources.length - rejected.length} resources in ${(importMs / 1000).toFixed(1)} s; waiting for every hospital to converge…`);
    const importConverged = await net.converge(opts.timeoutMs);
    if (importConverged === undefined) out.info('import did not converge in time');

    if (opts.serve) {
      process.stdout.write(`${JSON.stringify({ hospitals: net.members.map((m) => ({ name: m.name, gateway: m.gateway, fhirServer: m.fhirServer })) })}\n`);
      await new Promise<void>((resolveSignal) => {
        process.once('SIGINT', () => resolveSignal());
        process.once('SIGTERM', () => resolveSignal());
      });
      out.info('stopping…');
    }

    // In --serve mode the network was driven by hand; the scripted edits are for the plain demo.
    const patients = opts.serve
      ? []
      : [...h1.node.replica.keys()].filter((k) => k.startsWith('Patient/') && !h1.node.replica.current(k)?.deleted).sort().slice(0, opts.editPatients);
    if (patients.length > 0) out.info(`concurrent edits at ${net.members[0]!.name} and ${net.members[1]!.name} on ${patients.length} patients…`);
    const t1 = performance.now();
    const edits = await clinicianEdits(net, patients);
    // Convergence time: from the first concurrent edit until every replica and hospital agrees.
    const convergedWithin = await net.converge(opts.timeoutMs);
    const convergenceMs = convergedWithin === undefined ? undefined : performance.now() - t1;
    const converged = convergenceMs !== undefined && importConverged !== undefined;
    if (convergenceMs !== undefined) out.info(`converged ${convergenceMs.toFixed(0)} ms after the first edit`);

    // Every edit must be in the merged resource or in a conflict record, on every node.
    const lostEditDetails: string[] = [];
    let conflictsRecorded = 0;
    for (const key of patients) {
      conflictsRecorded += h1.node.replica.conflicts(key).length;
    }
    for (const e of edits) {
      for (const m of net.members) {
        const merged = JSON.parse(m.node.replica.current(e.key)?.body ?? '{}');
        if (e.present(merged)) continue;
        const kept = m.node.replica.conflicts(e.key).some((c) => c.path === e.path && c.loser.v === e.value);
        if (!kept) lostEditDetails.push(`${e.key} ${e.path} by ${e.hospital} missing at ${m.name}`);
      }
    }
    const cmp = await net.compareHospitals();
    const stats = net.members.map((m) => m.node.stats());
    const envelopeRejections: Record<string, number> = {};
    for (const s of stats) for (const [k, v] of Object.entries(s.tide.rejected)) envelopeRejections[k] = (envelopeRejections[k] ?? 0) + v;
    const report: DemoReport = {
      ok: false,
      hospitals: opts.hospitals,
      redis: redis.source,
      data: dataDir,
      resources: plan.resources.length - rejected.length,
      importProblems: plan.problems,
      unresolvedReferences: plan.unresolved.map((u) => ({ resource: u.resource, path: u.path, message: u.message })),
      rejected,
      importMs: Math.round(importMs),
      updates: stats.reduce((n, s) => n + s.localUpdates, 0),
      messages: stats.reduce((n, s) => n + s.tide.messagesSent, 0),
      bytesOnWire: stats.reduce((n, s) => n + s.tide.bytesSent, 0),
      edits: edits.length,
      conflictsRecorded,
      lostEdits: lostEditDetails.length,
      lostEditDetails,
      convergenceMs: convergenceMs === undefined ? null : Math.round(convergenceMs),
      converged,
      hospitalResourcesCompared: cmp.compared,
      hospitalMismatches: cmp.mismatched,
      hospitalWriteFailures: stats.reduce((n, s) => n + s.hospitalFailures, 0),
      envelopeRejections,
    };
    report.ok = converged && report.lostEdits === 0 && rejected.length === 0 && plan.unresolved.length === 0 && cmp.mismatched.length === 0 && report.hospitalWriteFailures === 0;
    return report;
  } finally {
    await net?.stop();
    await redis.stop();
  }
}

/** Renders the report as text lines. */
export function formatReport(r: DemoReport): string {
  const mb = (n: number) => `${(n / 1024 / 1024).toFixed(2)} MiB`;
  return [
    '',
    `tidegate demo — ${r.ok ? 'CONVERGED, nothing lost' : 'FAILED'}`,
    `  hospitals                 ${r.hospitals}`,
    `  resources imported        ${r.resources} (${r.importProblems.length} line${r.importProblems.length === 1 ? '' : 's'} skipped, ${r.rejected.length} rejected, ${r.unresolvedReferences.length} unresolved references) in ${(r.importMs / 1000).toFixed(1)} s`,
    `  updates (local writes)    ${r.updates}`,
    `  messages sent             ${r.messages} sealed envelopes`,
    `  bytes on the wire         ${mb(r.bytesOnWire)}`,
    `  concurrent edits          ${r.edits}`,
    `  conflicts recorded        ${r.conflictsRecorded}`,
    `  lost edits                ${r.lostEdits}`,
    `  convergence time          ${r.convergenceMs === null ? 'did not converge' : `${r.convergenceMs} ms`}`,
    `  hospital servers compared ${r.hospitalResourcesCompared} resources × ${r.hospitals}, ${r.hospitalMismatches.length} mismatches`,
    ...r.rejected.slice(0, 10).map((x) => `  rejected ${x.resource}: HTTP ${x.status} ${x.diagnostics}`),
    ...r.lostEditDetails.slice(0, 10).map((x) => `  LOST ${x}`),
    ...r.hospitalMismatches.slice(0, 10).map((x) => `  MISMATCH ${x}`),
  ].join('\n');
}
