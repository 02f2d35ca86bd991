/**
 * `npm run demo` / `tidegate demo`: N hospitals in one process, the first two with the example
 * mappings of config/examples (hospital-a: local lab codes → LOINC, MRN crosswalk, a route for
 * hospital-b; hospital-b: LOINC on its server, its own MRN), an ndjson import through hospital-a,
 * concurrent clinician edits at hospitals a and b, convergence, checks that the example mappings
 * work end to end, and a comparison of every hospital FHIR server with its node's resources
 * (through its outbound translation). See README.md ("The demo").
 */
import { resolve, join } from 'node:path';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import cliProgress from 'cli-progress';
import pino from 'pino';
import type { Logger } from 'pino';
import { canonicalStringify, parseFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { comparableForm } from '../hospital/index.ts';
import { importPlan } from '../import/index.ts';
import { loadMappingOrThrow } from '../mapping/index.ts';
import type { Mapping } from '../mapping/index.ts';
import { Network, startNetwork } from '../node/network.ts';
import type { Member } from '../node/network.ts';
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
  /** The example mappings at work, end to end (see {@link mappingChecks}); each must pass. */
  mappingChecks: MappingCheck[];
}

/** One end-to-end check of the example mappings: what was checked and what was found (example values only). */
export interface MappingCheck {
  name: string;
  ok: boolean;
  detail: string;
}

/** Default data: the project's own small example set. */
export const EXAMPLES_DIR = new URL('../../examples/data/', import.meta.url).pathname;

/** The example mappings (config/examples): `hospital-a.mapping.json`, `hospital-b.mapping.json` and the files they name. */
export const EXAMPLE_MAPPINGS_DIR = fileURLToPath(new URL('../../config/examples/', import.meta.url));

const LOCAL_LAB = 'http://hospital-a.example.org/fhir/CodeSystem/lab-codes';
const LOINC = 'http://loinc.org';
/** Hospital A's MRN system and hospital B's, as in the example mappings and crosswalks. */
const A_MRN = 'urn:oid:1.2.3.4.5';
const B_MRN = 'urn:oid:2.16.840.1.113883.19.5';

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
 * Member names: `hospital-a`, `hospital-b`, … (the example mappings name `hospital-b` in their
 * routes), then `hospital-27` … past `z`.
 * @param n - number of hospitals.
 */
function hospitalNames(n: number): string[] {
  return Array.from({ length: n }, (_, i) => (i < 26 ? `hospital-${String.fromCharCode(97 + i)}` : `hospital-${i + 1}`));
}

/**
 * The mapping of each member: hospital-a and hospital-b load the example files
 * (`loadMappingOrThrow`); every further hospital gets hospital-a's route for hospital-b only (the
 * network agrees on what hospital-b may hold; without it, they would relay what hospital-a withholds).
 * @param names - member names, from {@link hospitalNames}.
 * @param dir - temporary directory for the generated files.
 * @param log - told about warnings of the mapping files.
 * @throws MappingConfigError when an example file does not load.
 */
function demoMappings(names: readonly string[], dir: string, log: Logger): Mapping[] {
  const peersOf = (name: string): string[] => names.filter((n) => n !== name);
  const load = (file: string, name: string): Mapping => loadMappingOrThrow(file, { peers: peersOf(name), logger: log });
  const routeB = (JSON.parse(readFileSync(join(EXAMPLE_MAPPINGS_DIR, 'hospital-a.mapping.json'), 'utf8')) as { routes: Record<string, unknown> }).routes['hospital-b'];
  return names.map((name, i) => {
    if (i < 2) return load(join(EXAMPLE_MAPPINGS_DIR, `${name}.mapping.json`), name);
    const file = join(dir, `${name}.mapping.json`);
    writeFileSync(file, JSON.stringify({ description: `${name}: hospital-a's route for hospital-b`, routes: { 'hospital-b': routeB } }));
    return load(file, name);
  });
}

/**
 * Who may hold what: a member must not hold a resource that some other member's route refuses it
 * (judged on the current version held by the first member that has the resource).
 */
class Holdings {
  readonly #net: Network;
  readonly #mappings: readonly Mapping[];
  constructor(net: Network, mappings: readonly Mapping[]) {
    this.#net = net;
    this.#mappings = mappings;
  }

  /** Every key any node holds. */
  keys(): string[] {
    const keys = new Set<string>();
    for (const m of this.#net.members) for (const k of m.node.replica.keys()) keys.add(k);
    return [...keys].sort();
  }

  /** The current version of `key` at the first member that holds it. */
  current(key: string): { versionId: string; body: string | null } | undefined {
    for (const m of this.#net.members) {
      const v = m.node.replica.current(key);
      if (v) return { versionId: v.versionId, body: v.body ?? null };
    }
    return undefined;
  }

  /** Names of the members that may not hold `key` (a route of another member refuses it). */
  excluded(key: string): Set<string> {
    const out = new Set<string>();
    const v = this.current(key);
    if (!v?.body) return out;
    const resource = JSON.parse(v.body) as unknown;
    this.#net.members.forEach((m, i) => {
      for (const peer of this.#mappings[i]!.peers) if (peer !== m.name && !this.#mappings[i]!.routeAllows(peer, resource)) out.add(peer);
    });
    return out;
  }

  /** Keys some member lacks (or holds in another version) although no route keeps them from it. */
  divergent(): string[] {
    const out: string[] = [];
    for (const key of this.keys()) {
      const excluded = this.excluded(key);
      const held = this.#net.members.filter((m) => !excluded.has(m.name)).map((m) => {
        const v = m.node.replica.current(key);
        return v ? `${v.versionId}|${v.body ?? 'deleted'}` : undefined;
      });
      if (held.some((b) => b === undefined || b !== held[0])) out.push(key);
    }
    return out;
  }

  /**
   * `member key` pairs where a member holds what a route keeps from it.
   * @param keys - the keys to look at: those written elsewhere (a member may hold what it wrote
   *   itself, e.g. the Provenance of a merge it made).
   */
  leaked(keys: Iterable<string>): string[] {
    const out: string[] = [];
    for (const key of keys) for (const name of this.excluded(key)) if (this.#net.members.find((m) => m.name === name)?.node.replica.current(key)) out.push(`${name} ${key}`);
    return out;
  }
}

/**
 * `Network.converge` with routing: waits until every node holds the same version of every resource
 * its peers' routes let it have, and all are quiet (anti-entropy every 2 s while quiet but divergent).
 * @returns ms taken, or undefined after `timeoutMs`.
 */
async function convergeRouted(net: Network, holdings: Holdings, timeoutMs: number): Promise<number | undefined> {
  const t0 = performance.now();
  let lastAe = t0;
  for (;;) {
    const quiet = await net.quiet();
    if (quiet && holdings.divergent().length === 0) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) return undefined;
    if (quiet && performance.now() - lastAe > 2000) {
      await net.antiEntropy();
      lastAe = performance.now();
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * `Network.compareHospitals` with mappings: every hospital FHIR server must hold exactly what its
 * node holds (after {@link convergeRouted}: the same version on every node the routes let have it),
 * as the node's outbound translation writes it (`Mapping.translate(…, 'outbound')`), and nothing
 * its node does not hold. Comparable canonical form (server-managed meta removed, numbers normalized).
 * @returns Keys compared and `member key` pairs that differ.
 */
async function compareHospitalsMapped(net: Network, mappings: readonly Mapping[], holdings: Holdings): Promise<{ compared: number; mismatched: string[] }> {
  const keys = holdings.keys();
  const types = [...new Set(keys.map((k) => k.slice(0, k.indexOf('/'))))].sort();
  const copies = await Promise.all(net.members.map((m) => m.client.readAll(types)));
  const maps = copies.map((list) => new Map(list.map((r) => [`${String(r.resourceType)}/${String(r.id)}`, comparableForm(r, { normalizeNumbers: true })])));
  const mismatched: string[] = [];
  for (const key of keys) {
    net.members.forEach((m, i) => {
      const body = m.node.replica.current(key)?.body;
      const expected = body ? comparableForm(mappings[i]!.translate(parseFhirJson(body) as FhirJsonObject, 'outbound').resource, { normalizeNumbers: true }) : undefined;
      if (maps[i]!.get(key) !== expected) mismatched.push(`${m.name} ${key}`);
    });
  }
  return { compared: keys.length, mismatched };
}

/** GET `path` (e.g. `Patient/x`) from a member's hospital FHIR server: the parsed body on 200, else undefined. */
async function hospitalRead(m: Member, path: string): Promise<any> {
  const res = await fetch(`${m.fhirServer}/${path}`, { headers: { accept: 'application/fhir+json' } });
  return res.status === 200 ? res.json() : undefined;
}

/**
 * PUT a resource directly on a member's hospital FHIR server (as the hospital's own systems would).
 * @throws Error when the server does not answer 200/201.
 */
async function hospitalWrite(m: Member, r: FhirJsonObject): Promise<void> {
  const res = await putResource(m.fhirServer, r);
  if (res.status !== 200 && res.status !== 201) throw new Error(`PUT ${String(r.resourceType)}/${String(r.id)} at ${m.name}'s FHIR server answered ${res.status}`);
}

/**
 * The example mappings end to end: hospital-a's own systems register a Patient (MRN A00001), a lab
 * result with the local code GLU and a Condition its route keeps from hospital-b, directly on
 * hospital-a's FHIR server; hospital-a's node reads them (`_history` poller: inbound translation),
 * the network converges, then hospital-b's FHIR server is read.
 * @returns One check per claim, in order.
 */
async function mappingChecks(net: Network, holdings: Holdings, writtenAtA: ReadonlySet<string>, timeoutMs: number): Promise<MappingCheck[]> {
  const [a, b] = net.members as [Member, Member];
  const patient = { resourceType: 'Patient', id: 'demo-map-patient', identifier: [{ system: A_MRN, value: 'A00001' }], name: [{ family: 'Ostrander', given: ['Wilma'] }], gender: 'female', birthDate: '1964-09-17' };
  const subject = { reference: 'Patient/demo-map-patient' };
  const glucose = {
    resourceType: 'Observation',
    id: 'demo-map-glucose',
    status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
    code: { coding: [{ system: LOCAL_LAB, code: 'GLU', display: 'Glucose, serum' }], text: 'Glucose' },
    subject,
    effectiveDateTime: '2024-03-01T08:30:00Z',
    valueQuantity: { value: 5.4, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' },
  };
  const sensitive = { resourceType: 'Condition', id: 'demo-map-sensitive', clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] }, code: { coding: [{ system: 'http://snomed.info/sct', code: '361055000', display: 'Misuses drugs (finding)' }] }, subject };
  for (const r of [patient, glucose, sensitive]) await hospitalWrite(a, r as FhirJsonObject);
  await a.node.hospitalPoller?.pollNow();
  await convergeRouted(net, holdings, timeoutMs);
  const obsAtB = await hospitalRead(b, 'Observation/demo-map-glucose');
  const patAtB = await hospitalRead(b, 'Patient/demo-map-patient');
  const codings: string[] = (obsAtB?.code?.coding ?? []).map((c: any) => `${c.system}|${c.code}`);
  const ids: string[] = (patAtB?.identifier ?? []).map((i: any) => `${i.system}|${i.value}`);
  const fromA = [...writtenAtA, 'Patient/demo-map-patient', 'Observation/demo-map-glucose', 'Condition/demo-map-sensitive'];
  const leaked = holdings.leaked(fromA);
  const withheldKeys = fromA.filter((k) => holdings.excluded(k).has(b.name));
  const sensitiveAtA = a.node.replica.current('Condition/demo-map-sensitive') !== undefined;
  const sensitiveAtB = b.node.replica.current('Condition/demo-map-sensitive') !== undefined || (await hospitalRead(b, 'Condition/demo-map-sensitive')) !== undefined;
  return [
    {
      name: `lab Observation written at ${a.name} with local code GLU is LOINC 2345-7 at ${b.name}'s FHIR server, GLU kept`,
      ok: codings[0] === `${LOCAL_LAB}|GLU` && codings.includes(`${LOINC}|2345-7`),
      detail: obsAtB === undefined ? `Observation/demo-map-glucose not at ${b.name}'s FHIR server` : `codings at ${b.name}: ${codings.map((c) => c.slice(c.lastIndexOf('/') + 1)).join(', ')}`,
    },
    {
      name: `Patient registered at ${a.name} with MRN A00001 has ${b.name}'s MRN B00001 at ${b.name}'s FHIR server (crosswalks via the enterprise id)`,
      ok: ids.includes(`${A_MRN}|A00001`) && ids.includes(`${B_MRN}|B00001`),
      detail: patAtB === undefined ? `Patient/demo-map-patient not at ${b.name}'s FHIR server` : `${ids.length} identifiers at ${b.name}, ${ids.includes(`${B_MRN}|B00001`) ? 'with' : 'WITHOUT'} ${B_MRN}|B00001`,
    },
    {
      name: `a Condition ${a.name}'s route withholds (routes.hospital-b.withhold[0]) is at ${a.name}, not at ${b.name}`,
      ok: sensitiveAtA && !sensitiveAtB && leaked.length === 0,
      detail: `${withheldKeys.length} resources written at ${a.name} routed away from ${b.name}, ${leaked.length} of them found there${leaked.length > 0 ? ` (${leaked.slice(0, 3).join(', ')})` : ''}${sensitiveAtA ? '' : `; Condition/demo-map-sensitive missing at ${a.name}`}`,
    },
  ];
}

/**
 * Runs the demo.
 * @returns The report; `report.ok` is true only when every replica and hospital converged with no
 *   lost edit, no rejected resource, no hospital mismatch and every mapping check passed.
 * @throws Error when Redis cannot be found or started, or the data folder is missing or holds no `.ndjson` file;
 *   MappingConfigError when an example mapping file of config/examples does not load.
 */
export async function runDemo(opts: DemoOptions, out: { info: (s: string) => void } = { info: (s) => process.stderr.write(`${s}\n`) }): Promise<DemoReport> {
  const dataDir = resolve(opts.data);
  if (!existsSync(dataDir)) throw new Error(`Data folder ${dataDir} does not exist`);
  if (!statSync(dataDir).isDirectory()) throw new Error(`--data ${dataDir} is not a folder: give a FHIR Bulk Data export folder (Type.NNN.ndjson files)`);
  // the importer reads only `*.ndjson` files (src/import/ndjson.ts): an empty import would "converge" on nothing
  if (!readdirSync(dataDir).some((n) => n.endsWith('.ndjson'))) throw new Error(`no .ndjson files found in ${dataDir}: give --data a FHIR Bulk Data export folder (one Type.NNN.ndjson file per resource type, e.g. Patient.000.ndjson)`);
  if (opts.hospitals < 2) throw new Error('--hospitals must be at least 2');
  const redis = await resolveRedis();
  const log = pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination(2));
  let net: Network | undefined;
  const tmp = mkdtempSync(join(tmpdir(), 'tidegate-demo-'));
  try {
    out.info(`tidegate demo: ${opts.hospitals} hospitals, Redis ${redis.source === 'spawned' ? `spawned at ${redis.url}` : redis.url}`);
    // The demo's nodes have no auth section and listen on 127.0.0.1 (startNetwork): the same rule as `serve --insecure-dev`.
    assertAuthOrInsecureDev({}, '127.0.0.1', true);
    out.info('tidegate demo: INSECURE DEV MODE (as `serve --insecure-dev`): no client authorization, gateways bound to 127.0.0.1 only');
    const names = hospitalNames(opts.hospitals);
    const mappings = demoMappings(names, tmp, log);
    out.info(`tidegate demo: ${names[0]} and ${names[1]} load config/examples/${names[0]}.mapping.json and ${names[1]}.mapping.json${names.length > 2 ? `; ${names.slice(2).join(', ')} apply ${names[0]}'s route for ${names[1]}` : ''}`);
    // A bulk import favours throughput: a 250 ms batching window seals ~100× fewer envelopes.
    net = await startNetwork({ hospitals: names.length, names, mappings, redisUrl: redis.url, logger: log, antiEntropyIntervalMs: opts.serve ? 30_000 : 0, batchDelayMs: 250 });
    const holdings = new Holdings(net, mappings);
    const plan = await importPlan(dataDir);
    for (const p of plan.problems) out.info(`skipped ${p.file}:${p.line}: ${p.message}`);
    for (const u of plan.unresolved) out.info(`unresolved conditional reference in ${u.resource} at ${u.path}: ${u.message}`);

    const h1 = net.members[0]!;
    const bar = new cliProgress.SingleBar({ stream: process.stderr, format: `import via ${h1.name} [{bar}] {value}/{total} resources  {eta}s left`, hideCursor: true }, cliProgress.Presets.shades_classic);
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
    const importConverged = await convergeRouted(net, holdings, opts.timeoutMs);
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
    const convergedWithin = await convergeRouted(net, holdings, opts.timeoutMs);
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
    const importedKeys = new Set(plan.resources.map((r) => `${String(r.resourceType)}/${String(r.id)}`));
    const checks = opts.serve ? [] : await mappingChecks(net, holdings, importedKeys, opts.timeoutMs);
    for (const c of checks) out.info(`${c.ok ? '✓' : '✗'} ${c.name}: ${c.detail}`);
    const cmp = await compareHospitalsMapped(net, mappings, holdings);
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
      mappingChecks: checks,
    };
    report.ok = converged && report.lostEdits === 0 && rejected.length === 0 && plan.unresolved.length === 0 && cmp.mismatched.length === 0 && report.hospitalWriteFailures === 0 && checks.every((c) => c.ok);
    return report;
  } finally {
    await net?.stop();
    await redis.stop();
    rmSync(tmp, { recursive: true, force: true });
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
    ...(r.mappingChecks.length > 0 ? [`  example mappings          ${r.mappingChecks.filter((c) => c.ok).length} of ${r.mappingChecks.length} checks passed`] : []),
    ...r.mappingChecks.map((c) => `    ${c.ok ? '✓' : '✗'} ${c.name}${c.ok ? '' : ` — ${c.detail}`}`),
    ...r.rejected.slice(0, 10).map((x) => `  rejected ${x.resource}: HTTP ${x.status} ${x.diagnostics}`),
    ...r.lostEditDetails.slice(0, 10).map((x) => `  LOST ${x}`),
    ...r.hospitalMismatches.slice(0, 10).map((x) => `  MISMATCH ${x}`),
  ].join('\n');
}
