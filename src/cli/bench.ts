/**
 * `npm run bench` / `tidegate bench [--json] [--data DIR]`: merge cost per edit, seal/open per
 * envelope, replication latency between two hospitals and import throughput, printed as a table
 * (or one JSON object with `--json`) and written to docs/BENCHMARKS.md. See docs/BENCHMARKS.md
 * ("Method") and src/bench/.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { resolve } from 'node:path';
import pino from 'pino';
import type { FhirJsonObject } from '../fhir/json.ts';
import { importPlan } from '../import/index.ts';
import type { ImportPlan } from '../import/index.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { startNetwork } from '../node/network.ts';
import type { Network, NetworkOptions } from '../node/network.ts';
import { runEnvelopeBench } from '../bench/envelope.ts';
import { runImportBench } from '../bench/import.ts';
import { cloneResource, createUpdates, PATIENT_EDITS, runMergeBench } from '../bench/merge.ts';
import { PROFILE_NOTES } from '../bench/profile-notes.ts';
import { runReplicationBench } from '../bench/replication.ts';
import { formatTable, renderMarkdown } from '../bench/report.ts';
import type { BenchReport } from '../bench/report.ts';
import { loadSections, runSections } from '../bench/sections.ts';
import { resolveRedis } from './redis.ts';

/** Where the Markdown report is written. */
export const BENCHMARKS_MD = new URL('../../docs/BENCHMARKS.md', import.meta.url);

/** Target wall time of the core figures, ms; the import (with its drain) is time-boxed to what is left of it. */
const BUDGET_MS = 285_000;
/** Wall time shared by the bench sections (src/bench/sections.ts) after the core figures, ms. */
const SECTIONS_BUDGET_MS = 420_000;
/** Reserved at the end of the budget for stopping the network and writing the report, ms. */
const STOP_RESERVE_MS = 10_000;
/** Tide batch delay of the bench network (ms): small, so latency is not dominated by batching. */
const BATCH_DELAY_MS = 2;

/** Used for the replication figure when the Synthea sample is absent. */
const FALLBACK_PATIENT: FhirJsonObject = {
  resourceType: 'Patient',
  id: 'bench-latency',
  name: [{ use: 'official', family: 'Bench', given: ['Tide'] }],
  gender: 'unknown',
  birthDate: '1970-01-01',
  address: [{ line: ['1 Harbour Road'], city: 'Portsmouth', country: 'GB' }],
};

function machine(): BenchReport['machine'] {
  const c = cpus();
  return {
    cpus: c.length,
    cpuModel: c[0]?.model.trim() ?? 'unknown',
    nodeVersion: process.version,
    platform: process.platform,
    arch: process.arch,
    totalMemMiB: Math.round(totalmem() / 1024 / 1024),
    loadAvg1mAtStart: loadavg()[0] ?? 0,
    loadAvg1mAtEnd: null,
  };
}

function byteSize(u: { update: Uint8Array }): number {
  return u.update.length;
}

function medianBy<T>(xs: readonly T[], size: (t: T) => number): T {
  const s = [...xs].sort((a, b) => size(a) - size(b));
  const m = s[Math.floor((s.length - 1) / 2)];
  if (m === undefined) throw new Error('medianBy: empty');
  return m;
}

/** Payloads of figure 2: a median Patient create update, a median edit update and 200 creates spread over the sample. */
function envelopeInputs(plan: ImportPlan, patients: FhirJsonObject[]): Parameters<typeof runEnvelopeBench>[0] {
  const policy = loadMergePolicy();
  const creates = createUpdates(patients, policy);
  const edits: Array<{ key: string; update: Uint8Array }> = [];
  for (const [i, p] of patients.entries()) {
    let body = cloneResource(p);
    const key = `Patient/${String(p.id)}`;
    const all = createUpdates([body, ...PATIENT_EDITS.map((e) => (body = e.apply(body, i)))], policy);
    for (const u of all.slice(1)) edits.push({ key, update: u.update });
  }
  const n = Math.min(200, plan.resources.length);
  const stride = plan.resources.length / n;
  const sample = Array.from({ length: n }, (_, i) => plan.resources[Math.floor(i * stride)]!);
  const types = [...new Set(sample.map((r) => String(r.resourceType)))].length;
  return {
    patientCreate: medianBy(creates, byteSize),
    patientEdit: medianBy(edits, byteSize),
    batch: createUpdates(sample, policy),
    batchLabel: `batch of ${n} create updates (${types} Synthea types)`,
  };
}

/**
 * Runs the bench, prints it and writes docs/BENCHMARKS.md (overwritten).
 *
 * Figures 1, 2 and 4 need the Synthea sample at `o.data`; when it is absent they are skipped (and
 * listed as such) and figure 3 uses a small built-in Patient. A figure that throws is recorded as
 * failed in `skipped` and sets `process.exitCode = 1`; the other figures still run. The whole run
 * aims at under 5 minutes: the import and its drain are time-boxed to what is left of
 * {@link BUDGET_MS} (a subset is imported when the machine is slow, and the report says so). The
 * sections (Automerge comparison, HTTP overhead, Tide scale) then share {@link SECTIONS_BUDGET_MS}.
 *
 * @param o.json - print the {@link BenchReport} as one JSON object on stdout (progress on stderr);
 *   otherwise print a table on stdout.
 * @param o.data - Synthea FHIR Bulk Data ndjson folder (resolved against the working directory).
 * @param o.only - ids to run: `core` (figures 1–4) and/or section ids of src/bench/sections.ts;
 *   all when empty. A run limited this way does not rewrite docs/BENCHMARKS.md.
 * @param o.quick - smallest sizes in the sections (smoke run); docs/BENCHMARKS.md is not written.
 * @throws Error when no Redis can be found or started (see `resolveRedis`), or the report cannot be written.
 */
export async function runBench(o: { json: boolean; data: string; only?: string[]; quick?: boolean }): Promise<void> {
  const started = performance.now();
  const cpu0 = process.cpuUsage();
  const date = new Date().toISOString();
  const info = (s: string): void => void process.stderr.write(`${s}\n`);
  const dataDir = resolve(o.data);
  const present = existsSync(dataDir);
  const skipped: Record<string, string> = {};
  const fail = (fig: string, err: unknown): void => {
    skipped[fig] = `FAILED: ${(err as Error).message}`;
    info(`${fig} failed: ${(err as Error).stack ?? String(err)}`);
    process.exitCode = 1;
  };
  const report: BenchReport = {
    date,
    machine: machine(),
    redis: '',
    data: { dir: dataDir, present, resources: null, patients: null },
    durationSeconds: 0,
    processCpuSeconds: 0,
    merge: null,
    envelope: null,
    replication: null,
    import: null,
    sections: [],
    skipped,
  };
  const only = o.only ?? [];
  const core = only.length === 0 || only.includes('core');

  let plan: ImportPlan | undefined;
  let patients: FhirJsonObject[] = [];
  if (present) {
    info(`tidegate bench: loading ${dataDir}`);
    plan = await importPlan(dataDir);
    patients = plan.resources.filter((r) => r.resourceType === 'Patient' && typeof r.id === 'string');
    report.data.resources = plan.resources.length;
    report.data.patients = patients.length;
  } else {
    const why = `Synthea sample not found at ${dataDir} (pass --data DIR)`;
    info(`tidegate bench: ${why}; skipping figures 1, 2 and 4`);
    skipped['1. merge'] = why;
    skipped['2. envelope'] = why;
    skipped['4. import'] = why;
  }

  if (!core) {
    skipped['1-4. core figures'] = `not selected (--only ${only.join(',')})`;
  } else if (plan && patients.length > 0) {
    info('1. merge time per edit…');
    try {
      report.merge = runMergeBench(patients);
    } catch (err) {
      fail('1. merge', err);
    }
    info('2. seal/open…');
    try {
      report.envelope = await runEnvelopeBench(envelopeInputs(plan, patients), { progress: info });
    } catch (err) {
      fail('2. envelope', err);
    }
  } else if (plan) {
    skipped['1. merge'] = skipped['2. envelope'] = `no Patient in ${dataDir}`;
  }
  if (!core) {
    plan = undefined;
    patients = [];
  }

  const redis = await resolveRedis();
  report.redis = redis.source === 'spawned' ? `spawned redis-server (${redis.url})` : redis.source === 'default' ? 'redis://127.0.0.1:6379' : 'REDIS_URL';
  const log = pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination(2));
  let net: Network | undefined;
  try {
    if (core) {
      info('3. replication latency: starting 2 hospitals…');
      // The hospital `_history` poller (inbound edits made directly at a hospital) is off: it is not on
      // the measured path, and with it on a resource written more often than about every 0.3 s has
      // its own older versions merged back as hospital edits (reported bug), stalling samples.
      const netOpts: NetworkOptions & { hospitalPollIntervalMs?: number } = {
        hospitals: 2,
        redisUrl: redis.url,
        logger: log,
        antiEntropyIntervalMs: 0,
        batchDelayMs: BATCH_DELAY_MS,
        hospitalPollIntervalMs: 0,
      };
      net = await startNetwork(netOpts);
      try {
        const patient = patients.length > 0 ? medianBy(patients, (p) => JSON.stringify(p).length) : FALLBACK_PATIENT;
        report.replication = await runReplicationBench(net, patient, { batchDelayMs: BATCH_DELAY_MS, progress: info });
      } catch (err) {
        fail('3. replication', err);
      }
      if (plan) {
        const budgetEnd = Math.max(started + BUDGET_MS - STOP_RESERVE_MS, performance.now() + 60_000);
        info(`4. import through hospital-1 (time box for import and drain ${((budgetEnd - performance.now()) / 1000).toFixed(0)} s)…`);
        try {
          report.import = await runImportBench(net, plan.resources, { budgetEnd, progress: info });
        } catch (err) {
          fail('4. import', err);
        }
      }
      await net.stop();
      net = undefined;
    }
    const { sections, missing } = await loadSections(only.filter((id) => id !== 'core'));
    for (const [id, why] of Object.entries(missing)) skipped[`section ${id}`] = why;
    const { results, failed } = await runSections(
      sections,
      { dataDir, dataPresent: present, redisUrl: redis.url, quick: o.quick === true, log },
      SECTIONS_BUDGET_MS,
    );
    report.sections = results;
    for (const [id, err] of Object.entries(failed)) fail(`section ${id}`, new Error(err));
  } finally {
    info('stopping the network…');
    await net?.stop();
    await redis.stop();
  }

  report.durationSeconds = Math.round((performance.now() - started) / 100) / 10;
  report.machine.loadAvg1mAtEnd = loadavg()[0] ?? null;
  const cpu = process.cpuUsage(cpu0);
  report.processCpuSeconds = Math.round((cpu.user + cpu.system) / 1e5) / 10;
  // A partial run (no Synthea sample, or a failed figure) must not replace the committed figures.
  if (Object.keys(skipped).length === 0 && o.quick !== true) {
    await writeFile(BENCHMARKS_MD, renderMarkdown(report, PROFILE_NOTES));
    info(`wrote ${BENCHMARKS_MD.pathname}`);
  } else {
    info(`docs/BENCHMARKS.md left unchanged: figures skipped (${Object.keys(skipped).join(', ')})`);
  }
  if (o.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  else process.stdout.write(`${formatTable(report)}\n`);
}
