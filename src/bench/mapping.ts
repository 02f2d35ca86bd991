/**
 * Bench section `mapping` (issue #8 "Benchmark"): what a mapping file costs per message, measured
 * side by side against no mapping in one run. Target: under 0.2 ms per resource for a typical rule
 * set (docs/mappings.md).
 *
 * Per resource, interleaved (the variants alternate within each round, and their order flips from
 * one resource and one round to the next, so machine noise hits both alike):
 *
 * - **none**: what a node does per message without a mapping file: parse the version read from the
 *   hospital (`parseFhirJson`) and compute the labels Tide filters on (`outboundLabelsOf(body)` and
 *   `ConsentGate.labels`, which the node asks even without a mapping file; no Consent is held).
 * - **mapped**: the same, with hospital A's example mapping (config/examples/hospital-a.mapping.json)
 *   plus a `research` peer with a typical redaction rule set ({@link RESEARCH_ROUTE}): inbound
 *   translation (`Mapping.translate`: ConceptMap + identifier systems with the MRN crosswalk), the
 *   routing labels for every routed peer (`outboundLabelsOf(body, mapping)`), and the redaction of the
 *   research peer's copy (`Mapping.redact`, src/mapping/redact.ts).
 * - **mapped + consent**: the same plus the Consent decision for every peer (src/mapping/consent.ts
 *   `ConsentGate.labels`), every Patient having one `patient-privacy` Consent that denies the research
 *   peer its Conditions ({@link consentFor}). Timed in the same run of **mapped**, right after it.
 *
 * Also timed in the same loop, counted in no variant: each step of **mapped** alone; hospital B's
 * outbound translation (config/examples/hospital-b.mapping.json) of the translated resource, the
 * receiving node's cost; and, for the resource types the research peer's rules name, writing the
 * redacted copy into that peer's projection document (src/mapping/projection.ts: `Replica.write`
 * on a projection replica, a create, as for a new resource), the step that delivers redaction.
 * Then a new version of that resource, side by side (alternating order), as the projection feed
 * handled it before and handles it now (src/mapping/projection.ts "Unchanged renders are not
 * written"): one where only a removed element changed (Patient telecom, Observation/Condition note:
 * **rewrite** = redact + label + `Replica.write`, which finds nothing to change; **skip** = redact +
 * label + `renderDigest`, equal to the remembered one: no write), and one where a kept element
 * changed (`language`: **write** vs **digest + write**).
 *
 * Resources: the Synthea sample "localized" as hospital A would hold it (lab Observations whose
 * LOINC code is a target of A's ConceptMap carry A's local code instead; every Patient carries an A
 * MRN in `urn:oid:1.2.3.4.5`, the first three known to the crosswalk), so translation has work to
 * do (synthea-10 has no Observation: there only the Patients change). Without the sample,
 * examples/data and config/examples/lab-observation.json.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { canonicalStringify, parseFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { loadMappingOrThrow } from '../mapping/load.ts';
import { renderDigest } from '../mapping/projection.ts';
import { withRedactedLabel } from '../mapping/redact.ts';
import type { Mapping } from '../mapping/load.ts';
import { ConsentGate } from '../mapping/consent.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { Replica } from '../merge/replica.ts';
import { MemoryStore } from '../store/store.ts';
import { outboundLabelsOf } from '../tide/peer-authz.ts';
import type { BenchContext, BenchSection, BenchSectionResult } from './section.ts';
import { fmtMs, ratio, round, summarize } from './stats.ts';
import type { Summary } from './stats.ts';

/** Target of issue #8: mapping overhead per resource, ms (median). */
export const TARGET_MS = 0.2;

const EXAMPLES = fileURLToPath(new URL('../../config/examples/', import.meta.url));
const EXAMPLE_DATA = fileURLToPath(new URL('../../examples/data/', import.meta.url));
const A_LAB = 'http://hospital-a.example.org/fhir/CodeSystem/lab-codes';
const A_MRN = 'urn:oid:1.2.3.4.5';
/** LOINC → hospital A's local code: the reverse of config/examples/hospital-a-lab-to-loinc.conceptmap.json. */
const LOINC_TO_LOCAL: Readonly<Record<string, string>> = { '2345-7': 'GLU', '718-7': 'HGB', '2823-3': 'K', '2160-0': 'CREA', '4548-4': 'HBA1C' };

/**
 * The route of the `research` peer added to hospital A's example mapping for this bench: a
 * de-identifying read-only feed of a few clinical types with a typical redaction rule set
 * (docs/mappings.md "Redaction").
 */
export const RESEARCH_ROUTE = {
  description: 'bench: research feed, de-identified',
  send: [{ resourceType: ['Patient', 'Encounter', 'Condition', 'Observation', 'Immunization'] }],
  consentActors: ['Organization/research'],
  redact: [
    { path: 'Patient.name', action: 'mask' },
    { path: 'Patient.telecom' },
    { path: 'Patient.address.line' },
    { path: 'Patient.contact' },
    { path: 'Patient.identifier' },
    { path: 'Observation.note' },
    { path: 'Condition.note' },
  ],
} as const;

/**
 * A typical opt-out Consent (https://hl7.org/fhir/R4/consent.html) of one patient: sharing permitted,
 * except Conditions with the research peer.
 * @param patientId - the Patient's id.
 */
export function consentFor(patientId: string): Record<string, unknown> {
  return {
    resourceType: 'Consent',
    id: `bench-consent-${patientId}`,
    status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
    patient: { reference: `Patient/${patientId}` },
    provision: {
      type: 'permit',
      provision: [{ type: 'deny', actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { reference: 'Organization/research' } }], class: [{ system: 'http://hl7.org/fhir/resource-types', code: 'Condition' }] }],
    },
  };
}

/** One resource to measure: its text as read from the hospital, and its type. */
interface Input {
  key: string;
  type: string;
  body: string;
  /** Canonical text of its inbound translation (what the node then holds), prepared untimed. */
  translatedBody: string;
  translated: FhirJsonObject;
  /** True when inbound translation changed it. */
  changed: boolean;
}

/** Figures of the section (also its `figures` in `--json`). Durations in ms. */
export interface MappingBenchFigures {
  resources: number;
  synthea: boolean;
  rounds: number;
  /** Routed peers of the mapping (routing labels are computed for each). */
  peers: string[];
  redaction: boolean;
  /** Resource types the research peer's redaction rules name (projected). */
  projectedTypes: string[];
  /**
   * New versions where only a removed element changed: how many, how many `Replica.write` found
   * nothing to change in (should be all), how many the digest skipped (should be all).
   */
  redactedOnlyChanges: { versions: number; writeNoUpdate: number; digestSkipped: number };
  /** Resources that inbound translation changed (a LOINC coding or a shared identifier added). */
  translated: number;
  none: Summary;
  mapped: Summary;
  mappedConsent: Summary;
  /** Consents held (one per Patient). */
  consents: number;
  /** mapped + consent p50 − none p50. */
  consentOverheadP50Ms: number;
  /** mapped p50 − none p50, and mapped p99 − none p99. */
  overheadP50Ms: number;
  overheadP99Ms: number;
  ratioP50: number | null;
  targetMs: number;
  targetMet: boolean;
  steps: Record<string, Summary>;
  /** By resource type; `consent*` is the Consent decision alone. */
  byType: Array<{ type: string; resources: number; noneP50: number; mappedP50: number; overheadP50: number; consentP50: number; consentP99: number }>;
}

/** Hospital A's example mapping with the research route, written to `dir` (paths made absolute). */
function benchMappingFile(dir: string): string {
  const cfg = JSON.parse(readFileSync(join(EXAMPLES, 'hospital-a.mapping.json'), 'utf8')) as {
    $schema?: string;
    conceptMaps: Array<{ file?: string }>;
    identifierSystems: Array<{ crosswalk?: string }>;
    routes: Record<string, unknown>;
  };
  delete cfg.$schema;
  for (const m of cfg.conceptMaps) if (m.file !== undefined) m.file = resolve(EXAMPLES, m.file);
  for (const s of cfg.identifierSystems) if (s.crosswalk !== undefined) s.crosswalk = resolve(EXAMPLES, s.crosswalk);
  cfg.routes['research'] = RESEARCH_ROUTE;
  const file = join(dir, 'hospital-a-bench.mapping.json');
  writeFileSync(file, JSON.stringify(cfg, null, 2));
  return file;
}

/** Rewrites a resource as hospital A would hold it (see module doc); returns the input when nothing applies. */
function localize(r: Record<string, any>, patientIndex: number): Record<string, any> {
  if (r.resourceType === 'Patient') {
    return { ...r, identifier: [...(r.identifier ?? []), { system: A_MRN, value: `A${String(patientIndex + 1).padStart(5, '0')}` }] };
  }
  if (r.resourceType === 'Observation' && Array.isArray(r.code?.coding)) {
    const coding = r.code.coding.map((c: any) => (c.system === 'http://loinc.org' && LOINC_TO_LOCAL[c.code] ? { system: A_LAB, code: LOINC_TO_LOCAL[c.code], display: c.display } : c));
    return { ...r, code: { ...r.code, coding } };
  }
  return r;
}

/** Reads up to `perFile` resources of each ndjson file as plain JSON: the Synthea sample, else the example data. */
function readResources(ctx: BenchContext, perFile: number): Array<Record<string, any>> {
  const dir = ctx.dataPresent ? ctx.dataDir : EXAMPLE_DATA;
  const out: Array<Record<string, any>> = [];
  const files = readdirSync(dir).filter((f) => f.endsWith('.ndjson') && !f.startsWith('log')).sort();
  for (const f of files) {
    let n = 0;
    for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
      if (n >= perFile) break;
      if (!line.trim()) continue;
      const r = JSON.parse(line) as Record<string, any>;
      if (typeof r.resourceType === 'string') {
        out.push(r);
        n++;
      }
    }
  }
  if (!ctx.dataPresent && existsSync(join(EXAMPLES, 'lab-observation.json'))) out.push(JSON.parse(readFileSync(join(EXAMPLES, 'lab-observation.json'), 'utf8')) as Record<string, any>);
  return out;
}

/**
 * Runs the measurement (see module doc).
 * @param ctx - bench context; `quick` and `budgetMs` size the run.
 * @returns The figures, and why a figure was skipped.
 * @throws MappingConfigError when the example mapping files do not load; Error when there is no resource.
 */
export async function runMappingBench(ctx: BenchContext): Promise<{ figures: MappingBenchFigures; skipped: Record<string, string> }> {
  const setupStarted = performance.now();
  const skipped: Record<string, string> = {};
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-bench-mapping-'));
  try {
    const peers = ['hospital-b', 'research'];
    const mappingA = loadMappingOrThrow(benchMappingFile(dir), { peers });
    const mappingB = loadMappingOrThrow(join(EXAMPLES, 'hospital-b.mapping.json'), { peers: ['hospital-a'] });
    const redaction = mappingA.redactionFor('research') !== undefined;
    if (!redaction) skipped['redaction'] = 'the research route has no redaction rules: measured without redaction';

    const perFile = ctx.quick ? 20 : Number.POSITIVE_INFINITY;
    let patients = 0;
    const inputs: Input[] = readResources(ctx, perFile).map((r) => {
      const local = localize(r, r.resourceType === 'Patient' ? patients++ : 0);
      const body = canonicalStringify(local);
      const parsed = parseFhirJson(body) as FhirJsonObject;
      const translated = mappingA.translate(parsed, 'inbound').resource;
      return { key: `${String(local.resourceType)}/${String(local.id)}`, type: String(local.resourceType), body, translated, translatedBody: canonicalStringify(translated), changed: translated !== parsed };
    });
    if (inputs.length === 0) throw new Error('no resources to measure');
    // One Consent per Patient, as the node's replica would hold them.
    const consents = new Map<string, { deleted: boolean; body: string }>();
    for (const x of inputs) {
      if (x.type !== 'Patient') continue;
      const c = consentFor(x.key.slice('Patient/'.length));
      consents.set(`Consent/${String(c['id'])}`, { deleted: false, body: JSON.stringify(c) });
    }
    const gate = new ConsentGate({ peers, mapping: () => mappingA, replica: { keys: () => consents.keys(), current: (k) => consents.get(k) } });
    const noConsents = new ConsentGate({ peers, mapping: () => undefined, replica: { keys: () => [], current: () => undefined } });
    const projected = mappingA.redactedTypes('research');
    const policy = loadMergePolicy();
    const projectionReplica = (): Replica => new Replica({ nodeId: 'hospital-a~redacted~research~bench', store: new MemoryStore(), policy });
    let projection = projectionReplica();

    const none: number[] = [];
    const mapped: number[] = [];
    const mappedConsent: number[] = [];
    const steps: Record<string, number[]> = {
      parse: [],
      translateInbound: [],
      routingLabels: [],
      redaction: [],
      consent: [],
      projectionWrite: [],
      projectionRedactedChangeRewrite: [],
      projectionRedactedChangeSkip: [],
      projectionKeptChangeWrite: [],
      projectionKeptChangeDigestWrite: [],
      outboundAtB: [],
    };
    const redactedOnly = { versions: 0, writeNoUpdate: 0, digestSkipped: 0 };
    const byType = new Map<string, { none: number[]; mapped: number[]; consent: number[] }>();
    const runNone = (x: Input): number => {
      const t0 = performance.now();
      parseFhirJson(x.body);
      outboundLabelsOf(x.body, undefined);
      noConsents.labels(x.key, x.body);
      return performance.now() - t0;
    };
    /** Times "mapped" and, right after it, the consent decision; records the steps when `record`. */
    const runMapped = (x: Input, record: boolean): [number, number] => {
      const t0 = performance.now();
      const parsed = parseFhirJson(x.body) as FhirJsonObject;
      const t1 = performance.now();
      mappingA.translate(parsed, 'inbound');
      const t2 = performance.now();
      outboundLabelsOf(x.translatedBody, mappingA);
      const t3 = performance.now();
      if (redaction) mappingA.redact('research', x.translated);
      const t4 = performance.now();
      gate.labels(x.key, x.translatedBody);
      const t5 = performance.now();
      if (record) {
        steps['parse']!.push(t1 - t0);
        steps['translateInbound']!.push(t2 - t1);
        steps['routingLabels']!.push(t3 - t2);
        if (redaction) steps['redaction']!.push(t4 - t3);
        steps['consent']!.push(t5 - t4);
      }
      return [t4 - t0, t5 - t0];
    };
    /** The projection write of a redacted type's copy (a create in this round's projection replica); undefined for other types. */
    const runProjection = (x: Input): number | undefined => {
      if (!projected.has(x.type)) return undefined;
      // as the projection feed writes it: redacted and labelled
      const redacted = withRedactedLabel(mappingA.redact('research', x.translated).resource);
      const t0 = performance.now();
      projection.write(x.key, redacted);
      return performance.now() - t0;
    };
    /**
     * A new version of a projected resource, before (write) and after (digest, skip or write), side
     * by side: `projection` holds the created render (runProjection), `after` a copy of it.
     */
    const runProjectionUpdates = (x: Input, i: number, after: Replica): void => {
      const original = withRedactedLabel(mappingA.redact('research', x.translated).resource);
      after.write(x.key, original);
      const remembered = renderDigest(original);
      const redactedChange = redactedOnlyChange(x.translated, i);
      const keptChange = { ...x.translated, language: x.translated['language'] === 'en' ? 'de' : 'en' };
      const rewrite = (): void => {
        const t0 = performance.now();
        const w = projection.write(x.key, withRedactedLabel(mappingA.redact('research', redactedChange).resource));
        steps['projectionRedactedChangeRewrite']!.push(performance.now() - t0);
        if (w.update === undefined) redactedOnly.writeNoUpdate++;
      };
      const skip = (): void => {
        const t0 = performance.now();
        const same = renderDigest(withRedactedLabel(mappingA.redact('research', redactedChange).resource)) === remembered;
        steps['projectionRedactedChangeSkip']!.push(performance.now() - t0);
        if (same) redactedOnly.digestSkipped++;
      };
      const write = (): void => {
        const t0 = performance.now();
        projection.write(x.key, withRedactedLabel(mappingA.redact('research', keptChange).resource));
        steps['projectionKeptChangeWrite']!.push(performance.now() - t0);
      };
      const digestWrite = (): void => {
        const t0 = performance.now();
        const next = withRedactedLabel(mappingA.redact('research', keptChange).resource);
        if (renderDigest(next) !== remembered) after.write(x.key, next);
        steps['projectionKeptChangeDigestWrite']!.push(performance.now() - t0);
      };
      redactedOnly.versions++;
      if (i % 2 === 0) {
        rewrite();
        skip();
        write();
        digestWrite();
      } else {
        skip();
        rewrite();
        digestWrite();
        write();
      }
    };
    const runOutboundB = (x: Input): number => {
      const t0 = performance.now();
      mappingB.translate(x.translated, 'outbound');
      return performance.now() - t0;
    };

    // Warm-up: one pass over up to 1000 resources, discarded.
    for (const x of inputs.slice(0, 1000)) {
      runNone(x);
      runMapped(x, false);
      runProjection(x);
      runOutboundB(x);
    }
    // Rounds go on while the budget (less setup and a margin) lasts; at least 2 (1 in quick mode).
    const started = performance.now();
    const timeBox = ctx.quick ? 0 : Math.min(ctx.budgetMs * 0.8 - (started - setupStarted), 60_000);
    const minRounds = ctx.quick ? 1 : 2;
    const maxRounds = ctx.quick ? 1 : 30;
    let rounds = 0;
    while (rounds < minRounds || (rounds < maxRounds && performance.now() - started < timeBox)) {
      projection = projectionReplica();
      const after = projectionReplica();
      inputs.forEach((x, i) => {
        let a: number;
        let b: [number, number];
        if ((i + rounds) % 2 === 0) {
          a = runNone(x);
          b = runMapped(x, true);
        } else {
          b = runMapped(x, true);
          a = runNone(x);
        }
        none.push(a);
        mapped.push(b[0]);
        mappedConsent.push(b[1]);
        steps['outboundAtB']!.push(runOutboundB(x));
        const pw = runProjection(x);
        if (pw !== undefined) {
          steps['projectionWrite']!.push(pw);
          if (redaction) runProjectionUpdates(x, i + rounds, after);
        }
        let t = byType.get(x.type);
        if (!t) byType.set(x.type, (t = { none: [], mapped: [], consent: [] }));
        t.none.push(a);
        t.mapped.push(b[0]);
        t.consent.push(b[1] - b[0]);
      });
      rounds++;
    }

    const sNone = summarize(none);
    const sMapped = summarize(mapped);
    const sConsent = summarize(mappedConsent);
    const overheadP50Ms = round(sMapped.p50 - sNone.p50);
    const stepSummaries: Record<string, Summary> = {};
    for (const [k, v] of Object.entries(steps)) if (v.length > 0) stepSummaries[k] = summarize(v);
    const figures: MappingBenchFigures = {
      resources: inputs.length,
      synthea: ctx.dataPresent,
      rounds,
      peers: mappingA.peers,
      redaction,
      projectedTypes: [...projected].sort(),
      redactedOnlyChanges: redactedOnly,
      translated: inputs.filter((x) => x.changed).length,
      none: sNone,
      mapped: sMapped,
      mappedConsent: sConsent,
      consents: consents.size,
      consentOverheadP50Ms: round(sConsent.p50 - sNone.p50),
      overheadP50Ms,
      overheadP99Ms: round(sMapped.p99 - sNone.p99),
      ratioP50: ratio(sMapped.p50, sNone.p50),
      targetMs: TARGET_MS,
      targetMet: overheadP50Ms < TARGET_MS,
      steps: stepSummaries,
      byType: [...byType.entries()]
        .map(([type, t]) => {
          const n = summarize(t.none).p50;
          const m = summarize(t.mapped).p50;
          const c = summarize(t.consent);
          return { type, resources: t.none.length / rounds, noneP50: n, mappedP50: m, overheadP50: round(m - n), consentP50: c.p50, consentP99: c.p99 };
        })
        .sort((a, b) => b.resources - a.resources),
    };
    return { figures, skipped };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const STEP_LABELS: Readonly<Record<string, string>> = {
  parse: '`parseFhirJson` (in every variant)',
  translateInbound: '`Mapping.translate(…, "inbound")`: ConceptMap + identifier systems (crosswalk)',
  routingLabels: '`outboundLabelsOf(body, mapping)`: routes of every routed peer (FHIRPath)',
  redaction: '`Mapping.redact("research", …)` (src/mapping/redact.ts)',
  consent: '`ConsentGate.labels`: Consent decision for every peer (only in "mapped + consent")',
  projectionWrite: 'research projection document write, redacted types only (`Replica.write`, create; in no variant)',
  projectionRedactedChangeRewrite: 'new version, only a removed element changed: redact + label + `Replica.write` (before; finds nothing to change)',
  projectionRedactedChangeSkip: 'new version, only a removed element changed: redact + label + `renderDigest` (now; equal: no write)',
  projectionKeptChangeWrite: 'new version, a kept element (`language`) changed: redact + label + `Replica.write` (before)',
  projectionKeptChangeDigestWrite: 'new version, a kept element (`language`) changed: redact + label + `renderDigest` + `Replica.write` (now)',
  outboundAtB: 'receiving node: hospital B `Mapping.translate(…, "outbound")` (in no variant)',
};

/**
 * A new version of `r` (a projected type) in which only an element the research rules remove
 * changed: Patient telecom, Observation or Condition note ({@link RESEARCH_ROUTE}).
 * @param r - the resource as the node holds it.
 * @param i - varies the new value.
 */
function redactedOnlyChange(r: FhirJsonObject, i: number): FhirJsonObject {
  if (r.resourceType === 'Patient') return { ...r, telecom: [{ system: 'phone', value: `555-01${String(i % 100).padStart(2, '0')}`, use: 'mobile' }] };
  return { ...r, note: [{ text: `bench note ${i}` }] };
}

/** The before/after lines of a new version of a projected resource (see module doc). */
function projectionUpdateLines(f: MappingBenchFigures): string[] {
  const s = f.steps;
  const rw = s['projectionRedactedChangeRewrite'];
  const sk = s['projectionRedactedChangeSkip'];
  const kw = s['projectionKeptChangeWrite'];
  const kd = s['projectionKeptChangeDigestWrite'];
  if (!rw || !sk || !kw || !kd) return [];
  const c = f.redactedOnlyChanges;
  return [
    '',
    'A new version of a projected resource, as the projection feed handled it before and handles it now (side by side, p50):',
    '',
    '| new version | before | now | now / before |',
    '|---|---:|---:|---:|',
    `| only a removed element changed (${c.versions}: \`Replica.write\` found nothing to change in ${c.writeNoUpdate}, the digest skipped ${c.digestSkipped}) | ${fmtMs(rw.p50)} | ${fmtMs(sk.p50)} | ${ratio(sk.p50, rw.p50) ?? 'n/a'}× |`,
    `| a kept element changed | ${fmtMs(kw.p50)} | ${fmtMs(kd.p50)} | ${ratio(kd.p50, kw.p50) ?? 'n/a'}× |`,
  ];
}

/** Renders the figures as the section's Markdown body and terminal text. */
function render(f: MappingBenchFigures): { markdown: string; text: string } {
  const pq = (s: Summary): string => `${fmtMs(s.p50)} / ${fmtMs(s.p99)}`;
  const verdict = f.targetMet ? `**met** (${fmtMs(f.overheadP50Ms)} < ${fmtMs(f.targetMs)})` : `**not met** (${fmtMs(f.overheadP50Ms)} ≥ ${fmtMs(f.targetMs)})`;
  const mappedWhat = `inbound translation + routing labels for ${f.peers.length} peers (${f.peers.join(', ')})${f.redaction ? ' + redaction for `research`' : ' — **without redaction**'}`;
  const types = new Set(f.byType.map((t) => t.type));
  const pw = f.steps['projectionWrite'];
  const markdown = [
    `${f.resources} ${f.synthea ? 'Synthea' : 'example (`examples/data`, Synthea sample absent)'} resources as hospital A would hold them (lab Observations with A's local codes instead of LOINC, Patients with an A MRN), ${f.translated} of them changed by inbound translation${types.has('Observation') ? '' : ' (the sample has no Observation, so the ConceptMap finds no local code: Patients carry the translation)'}; ${f.rounds} rounds; in each round every resource runs both variants back to back, in alternating order. Mapping: \`config/examples/hospital-a.mapping.json\` plus a \`research\` peer with ${RESEARCH_ROUTE.redact.length} redaction rules and \`consentActors\` (\`src/bench/mapping.ts\` \`RESEARCH_ROUTE\`); ${f.consents} Consents, one per Patient (\`consentFor\`).`,
    '',
    '| per resource | p50 | p99 | mean | overhead vs none (p50) |',
    '|---|---:|---:|---:|---:|',
    `| none: parse + \`outboundLabelsOf(body)\` + \`ConsentGate.labels\` (no Consent held) | ${fmtMs(f.none.p50)} | ${fmtMs(f.none.p99)} | ${fmtMs(f.none.mean)} | |`,
    `| mapped: parse + ${mappedWhat} | ${fmtMs(f.mapped.p50)} | ${fmtMs(f.mapped.p99)} | ${fmtMs(f.mapped.mean)} | **${fmtMs(f.overheadP50Ms)}** (${f.ratioP50 ?? 'n/a'}×) |`,
    `| mapped + consent: also the Consent decision for every peer | ${fmtMs(f.mappedConsent.p50)} | ${fmtMs(f.mappedConsent.p99)} | ${fmtMs(f.mappedConsent.mean)} | ${fmtMs(f.consentOverheadP50Ms)} (${ratio(f.mappedConsent.p50, f.none.p50) ?? 'n/a'}×) |`,
    '',
    `Target: mapping overhead (mapped − none, p50) under ${fmtMs(f.targetMs)} per resource: ${verdict}. The p99 difference is ${fmtMs(Math.abs(f.overheadP99Ms))}${f.overheadP99Ms < 0 ? ' in favour of mapped (noise)' : ''}.`,
    '',
    'Steps, timed inside the same loop:',
    '',
    '| step | n | p50 | p99 |',
    '|---|---:|---:|---:|',
    ...Object.entries(f.steps).map(([k, s]) => `| ${STEP_LABELS[k] ?? k} | ${s.n} | ${fmtMs(s.p50)} | ${fmtMs(s.p99)} |`),
    ...(f.redaction ? [] : ['| redaction | | not measured | |']),
    ...projectionUpdateLines(f),
    ...(pw ? ['', `Redaction reaches the research peer as its own projection document (src/mapping/projection.ts): for a resource of the redacted types (${f.projectedTypes.join(', ')}), writing the redacted copy into it costs ${fmtMs(pw.p50)} at the median (${fmtMs(pw.p99)} p99), ${pw.p50 < f.targetMs ? 'below' : '**above**'} the ${fmtMs(f.targetMs)} target on its own. It is a merge write (\`Replica.write\`, see figure 1), not counted in "mapped".`] : []),
    '',
    'By resource type (p50):',
    '',
    '| type | resources | none | mapped | overhead | consent decision p50 / p99 |',
    '|---|---:|---:|---:|---:|---:|',
    ...f.byType.map((t) => `| ${t.type} | ${t.resources} | ${fmtMs(t.noneP50)} | ${fmtMs(t.mappedP50)} | ${fmtMs(t.overheadP50)} | ${fmtMs(t.consentP50)} / ${fmtMs(t.consentP99)} |`),
  ].join('\n');
  const text = [
    `  per resource p50 / p99: none ${pq(f.none)}, mapped ${pq(f.mapped)}, + consent ${pq(f.mappedConsent)}`,
    `  overhead p50 ${fmtMs(f.overheadP50Ms)} (${f.ratioP50 ?? 'n/a'}×; with consent ${fmtMs(f.consentOverheadP50Ms)}), target < ${fmtMs(f.targetMs)}: ${f.targetMet ? 'met' : 'NOT MET'}${f.redaction ? '' : ' (without redaction)'}`,
    `  steps p50: ${Object.entries(f.steps).map(([k, s]) => `${k} ${fmtMs(s.p50)}`).join(', ')}`,
  ].join('\n');
  return { markdown, text };
}

/** The bench section (see module doc). */
export const mappingSection: BenchSection = {
  id: 'mapping',
  weight: 0.04,
  async run(ctx: BenchContext): Promise<BenchSectionResult> {
    const { figures, skipped } = await runMappingBench(ctx);
    const { markdown, text } = render(figures);
    return { id: 'mapping', title: 'Mapping cost per message: with vs without a mapping file', markdown, text, figures: figures as unknown as Record<string, unknown>, skipped };
  },
};
