/**
 * Bench section `merge-automerge` (issue 3, "Benchmark"): the same edit workload through tidegate's
 * merge engine and through Automerge (`@automerge/automerge`, a dev dependency loaded dynamically),
 * measured side by side in one run, reported as tidegate/Automerge ratios.
 *
 * 1. **Merge time per edit** on Synthea Patients ({@link PATIENT_EDITS}) and Encounters
 *    ({@link ENCOUNTER_EDITS}): replica A applies a client's new body, replica B applies A's change.
 *    tidegate: `Replica.write` (diff against the base version, Yjs update, render, canonical body and
 *    versionId) and `Replica.applyRemote`. Automerge: `Automerge.change` with the same body diff
 *    applied element by element (objects by key, arrays by index, whole arrays when their length
 *    changes) followed by `JSON.stringify` of the document (the body a FHIR server would answer with),
 *    and `Automerge.applyChanges` of `getLastLocalChange` on B, followed by the same serialization.
 *    For each edit the four steps run one after the other in one loop, so machine noise hits both.
 * 2. **Document size after 1,000 and 10,000 field edits** to one Patient (the rotating scalar
 *    edits of src/store/growth.ts): tidegate's stored document (Yjs V2, what the SQLite store keeps)
 *    vs `Automerge.save`.
 * 3. **Load time** of those documents: tidegate `loadDoc` of the V1 state + `render` (what a node
 *    does before its first write after a restart) vs `Automerge.load` + `JSON.stringify`.
 *
 * Decimals: Automerge has no lossless numbers, so its documents hold the plain-JSON form
 * (`toPlainJson`); tidegate keeps lexical forms. Run alone:
 *
 * ```sh
 * node -e "import('./src/bench/merge-automerge.ts').then(async (m) => { const r = await m.mergeCompareSection.run({ dataDir: '../shared/data/synthea-10', dataPresent: true, redisUrl: '', budgetMs: 600000, quick: false, log: (await import('pino')).default({ level: 'silent' }) }); console.log(r.text); })"
 * ```
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as Y from 'yjs';
import { canonicalStringify, isJsonObject, parseFhirJson, toPlainJson } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';
import { Replica } from '../merge/replica.ts';
import { HybridLogicalClock } from '../merge/hlc.ts';
import { loadDoc, render } from '../merge/doc.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { MemoryStore } from '../store/store.ts';
import { toV2 } from '../store/codec.ts';
import { ROTATING_SCALAR_EDITS } from '../store/growth.ts';
import { cloneResource, PATIENT_EDITS } from './merge.ts';
import type { PatientEdit } from './merge.ts';
import { fmtBytes, fmtMs, ratio, round, summarize } from './stats.ts';
import type { Summary } from './stats.ts';
import type { BenchContext, BenchSection, BenchSectionResult } from './section.ts';

type Automerge = typeof import('@automerge/automerge');
type AmDoc = Record<string, unknown>;

/** The edits applied, in order, to every Encounter (pure: the input is not modified). */
export const ENCOUNTER_EDITS: readonly PatientEdit[] = [
  { name: 'change status', apply: (b) => ({ ...cloneResource(b), status: b.status === 'finished' ? 'in-progress' : 'finished' }) },
  {
    name: 'set period.end',
    apply: (b, i) => {
      const c = cloneResource(b);
      c.period = { ...(isJsonObject(c.period) ? c.period : {}), end: `2020-0${1 + (i % 9)}-1${i % 10}T10:00:00Z` };
      return c;
    },
  },
  {
    name: 'add location',
    apply: (b, i) => {
      const c = cloneResource(b);
      c.location = [...(Array.isArray(c.location) ? c.location : []), { location: { display: `Bench ward ${i}` }, status: 'active' }];
      return c;
    },
  },
  {
    name: 'change serviceProvider display',
    apply: (b, i) => {
      const c = cloneResource(b);
      c.serviceProvider = { ...(isJsonObject(c.serviceProvider) ? c.serviceProvider : {}), display: `Bench hospital ${i}` };
      return c;
    },
  },
];

/** Applies `next` to the Automerge proxy `d` (which holds `prev`): objects by key, arrays by index. */
function applyDiff(d: Record<string, unknown>, prev: Record<string, unknown>, next: Record<string, unknown>): void {
  for (const k of Object.keys(prev)) if (!(k in next)) delete d[k];
  for (const [k, v] of Object.entries(next)) {
    const p = prev[k];
    if (JSON.stringify(p) === JSON.stringify(v)) continue;
    if (isPlainObject(p) && isPlainObject(v)) applyDiff(d[k] as Record<string, unknown>, p, v);
    else if (Array.isArray(p) && Array.isArray(v) && p.length === v.length) {
      const arr = d[k] as unknown[];
      v.forEach((item, i) => {
        if (JSON.stringify(p[i]) === JSON.stringify(item)) return;
        if (isPlainObject(p[i]) && isPlainObject(item)) applyDiff(arr[i] as Record<string, unknown>, p[i] as Record<string, unknown>, item);
        else arr[i] = item;
      });
    } else d[k] = v;
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Figures of one resource type: ms, bytes. */
export interface CompareFigures {
  resources: number;
  editsPerResource: number;
  rounds: number;
  tidegate: { local: Summary; remote: Summary };
  automerge: { local: Summary; remote: Summary };
  /** tidegate / Automerge, p50 and p99. */
  ratios: { localP50: number | null; localP99: number | null; remoteP50: number | null; remoteP99: number | null };
  converged: boolean;
}

/** Document size and load after N edits. */
export interface GrowthFigures {
  edits: number;
  tidegateBytes: number;
  automergeBytes: number;
  bytesRatio: number | null;
  tidegateLoad: Summary;
  automergeLoad: Summary;
  loadRatioP50: number | null;
}

function loadNdjson(dir: string, type: string, max: number): FhirJsonObject[] {
  const file = join(dir, `${type}.000.ndjson`);
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .slice(0, max)
    .map((l) => parseFhirJson(l) as FhirJsonObject);
}

/**
 * Merge time per edit, tidegate vs Automerge, side by side.
 * @param A - the Automerge module.
 * @param resources - resources with `id` (at least one).
 * @param edits - the edit series applied to each.
 * @param rounds - measured rounds (after one warm-up round), fresh replicas each.
 */
export function compareEdits(A: Automerge, resources: readonly FhirJsonObject[], edits: readonly PatientEdit[], rounds: number): CompareFigures {
  const policy = loadMergePolicy();
  const series = resources.map((r, ri) => {
    const bodies: FhirJsonObject[] = [cloneResource(r)];
    for (const e of edits) bodies.push(e.apply(bodies[bodies.length - 1]!, ri));
    return { key: `${String(r.resourceType)}/${String(r.id)}`, bodies, plain: bodies.map((b) => toPlainJson(b) as Record<string, unknown>) };
  });
  const tl: number[] = [];
  const tr: number[] = [];
  const al: number[] = [];
  const ar: number[] = [];
  let converged = true;
  let sink = 0;
  for (let round = 0; round < rounds + 1; round++) {
    const measure = round > 0;
    const a = new Replica({ nodeId: 'hospital-1', store: new MemoryStore(), policy });
    const b = new Replica({ nodeId: 'hospital-2', store: new MemoryStore(), policy });
    for (const s of series) {
      let da = A.from(structuredClone(s.plain[0]!)) as AmDoc;
      let db = A.load(A.save(da)) as AmDoc;
      const w0 = a.write(s.key, s.bodies[0]!);
      b.applyRemote(s.key, w0.update!);
      for (let k = 1; k < s.bodies.length; k++) {
        let t = performance.now();
        const w = a.write(s.key, s.bodies[k]!);
        const tLocal = performance.now() - t;
        t = performance.now();
        b.applyRemote(s.key, w.update!);
        const tRemote = performance.now() - t;
        t = performance.now();
        const prev = s.plain[k - 1]!;
        const next = s.plain[k]!;
        da = A.change(da, (d) => applyDiff(d, prev, next));
        sink += JSON.stringify(da).length;
        const aLocal = performance.now() - t;
        const change = A.getLastLocalChange(da)!;
        t = performance.now();
        [db] = A.applyChanges(db, [change]);
        sink += JSON.stringify(db).length;
        const aRemote = performance.now() - t;
        if (!measure) continue;
        tl.push(tLocal);
        tr.push(tRemote);
        al.push(aLocal);
        ar.push(aRemote);
      }
      if (measure && round === rounds) {
        if (a.current(s.key)?.body !== b.current(s.key)?.body) converged = false;
        if (JSON.stringify(da) !== JSON.stringify(db)) converged = false;
        if (JSON.stringify(toPlainJson(cloneResource(s.bodies[s.bodies.length - 1]!))) !== JSON.stringify(sortKeys(da))) converged = false;
      }
    }
  }
  if (sink < 0) throw new Error('unreachable');
  const t = { local: summarize(tl), remote: summarize(tr) };
  const m = { local: summarize(al), remote: summarize(ar) };
  return {
    resources: resources.length,
    editsPerResource: edits.length,
    rounds,
    tidegate: t,
    automerge: m,
    ratios: {
      localP50: ratio(t.local.p50, m.local.p50),
      localP99: ratio(t.local.p99, m.local.p99),
      remoteP50: ratio(t.remote.p50, m.remote.p50),
      remoteP99: ratio(t.remote.p99, m.remote.p99),
    },
    converged,
  };
}

/** Plain JSON with keys in tidegate's canonical order, for comparing Automerge's output. */
function sortKeys(v: unknown): unknown {
  return JSON.parse(canonicalStringify(JSON.parse(JSON.stringify(v)) as FhirJson));
}

/**
 * Document size and load time after `checkpoints` field edits to one Patient, both engines.
 * @param A - the Automerge module.
 * @param patient - the Patient (with `id`).
 * @param checkpoints - ascending edit counts, e.g. `[1000, 10000]`.
 * @param loadSamples - load-time samples per checkpoint.
 */
export function compareGrowth(A: Automerge, patient: FhirJsonObject, checkpoints: readonly number[], loadSamples = 11): GrowthFigures[] {
  const key = `Patient/${String(patient.id)}`;
  let wall = 1_700_000_000_000;
  const replica = new Replica({ nodeId: 'hospital-1', store: new MemoryStore(), policy: loadMergePolicy(), clock: new HybridLogicalClock(() => (wall += 7)), docCacheSize: 1 });
  let body = cloneResource(patient);
  replica.write(key, body);
  let am = A.from(toPlainJson(body) as AmDoc) as AmDoc;
  const out: GrowthFigures[] = [];
  let done = 0;
  for (const n of checkpoints) {
    for (; done < n; done++) {
      const prev = toPlainJson(body) as Record<string, unknown>;
      body = cloneResource(body);
      ROTATING_SCALAR_EDITS[done % ROTATING_SCALAR_EDITS.length]!(body, done);
      replica.write(key, body);
      const next = toPlainJson(body) as Record<string, unknown>;
      am = A.change(am, (d) => applyDiff(d, prev, next));
    }
    const state = replica.current(key)!.state;
    const saved = A.save(am);
    const tLoad: number[] = [];
    const aLoad: number[] = [];
    for (let i = 0; i < loadSamples + 1; i++) {
      let t = performance.now();
      const r = render(loadDoc(state, 'hospital-1'));
      const tl = performance.now() - t;
      t = performance.now();
      const d = A.load(saved);
      const s = JSON.stringify(d);
      const al = performance.now() - t;
      if (r.resource === null || s.length === 0) throw new Error('compareGrowth: nothing loaded');
      if (i > 0) {
        tLoad.push(tl);
        aLoad.push(al);
      }
    }
    const tidegateBytes = toV2(state).length;
    const tl = summarize(tLoad);
    const alS = summarize(aLoad);
    out.push({
      edits: n,
      tidegateBytes,
      automergeBytes: saved.length,
      bytesRatio: ratio(tidegateBytes, saved.length),
      tidegateLoad: tl,
      automergeLoad: alS,
      loadRatioP50: ratio(tl.p50, alS.p50),
    });
    if (Y.encodeStateVector(loadDoc(state, 'x')).length === 0) throw new Error('compareGrowth: empty document');
  }
  return out;
}

function fallbackPatient(): FhirJsonObject {
  return parseFhirJson(readFileSync(new URL('../../test/fixtures/merge/patient-base.json', import.meta.url), 'utf8')) as FhirJsonObject;
}

function cmpRow(label: string, f: CompareFigures): string {
  return `| ${label} | ${f.resources} × ${f.editsPerResource} × ${f.rounds} | ${fmtMs(f.tidegate.local.p50)} / ${fmtMs(f.tidegate.local.p99)} | ${fmtMs(f.automerge.local.p50)} / ${fmtMs(f.automerge.local.p99)} | ${f.ratios.localP50 ?? '–'}× / ${f.ratios.localP99 ?? '–'}× | ${fmtMs(f.tidegate.remote.p50)} / ${fmtMs(f.tidegate.remote.p99)} | ${fmtMs(f.automerge.remote.p50)} / ${fmtMs(f.automerge.remote.p99)} | ${f.ratios.remoteP50 ?? '–'}× / ${f.ratios.remoteP99 ?? '–'}× |`;
}

/**
 * The `merge-automerge` bench section (see module doc). Sizes scale with `ctx.quick` and
 * `ctx.budgetMs`: full = all Synthea Patients and 40 Encounters, 10 rounds, 1,000 and 10,000 edits.
 */
export const mergeCompareSection: BenchSection = {
  id: 'merge-automerge',
  weight: 0.15,
  async run(ctx: BenchContext): Promise<BenchSectionResult> {
    const A = (await import('@automerge/automerge')) as Automerge;
    const t0 = performance.now();
    const skipped: Record<string, string> = {};
    const quick = ctx.quick || ctx.budgetMs < 60_000;
    const rounds = quick ? 2 : 10;
    const patients = ctx.dataPresent ? loadNdjson(ctx.dataDir, 'Patient', quick ? 3 : 100) : [];
    const encounters = ctx.dataPresent ? loadNdjson(ctx.dataDir, 'Encounter', quick ? 5 : 40) : [];
    const patientSet = patients.length > 0 ? patients : [fallbackPatient()];
    if (patients.length === 0) skipped['Synthea Patients'] = `no Patient ndjson in ${ctx.dataDir}; used test/fixtures/merge/patient-base.json`;
    const pat = compareEdits(A, patientSet, PATIENT_EDITS, rounds);
    let enc: CompareFigures | undefined;
    if (encounters.length > 0) enc = compareEdits(A, encounters, ENCOUNTER_EDITS, rounds);
    else skipped['Synthea Encounters'] = `no Encounter ndjson in ${ctx.dataDir}`;
    const checkpoints = quick ? [100, 1000] : [1000, 10_000];
    const growth = compareGrowth(A, patientSet[0]!, checkpoints, quick ? 5 : 11);
    const wallMs = performance.now() - t0;

    const md: string[] = [];
    md.push(
      'Same edit workload through tidegate (`Replica`) and Automerge ' +
        `(\`@automerge/automerge\`), side by side in one loop; ratios are tidegate / Automerge (below 1 = tidegate faster or smaller). ` +
        'Local edit: tidegate `write` (diff, Yjs update, render, canonical body, versionId) vs `Automerge.change` applying the same body diff + `JSON.stringify`; remote: `applyRemote` vs `applyChanges` + `JSON.stringify`.',
      '',
      '| workload | resources × edits × rounds | tidegate local p50 / p99 | Automerge local p50 / p99 | ratio | tidegate remote p50 / p99 | Automerge remote p50 / p99 | ratio |',
      '|---|---:|---:|---:|---:|---:|---:|---:|',
      cmpRow('Synthea Patients', pat),
      ...(enc ? [cmpRow('Synthea Encounters', enc)] : []),
      '',
      `Target (issue 3): tidegate merge p50 < 0.5 ms and p99 < 2 ms per edit. Converged (both engines, both replicas, Automerge equal to the last body): ${pat.converged && (enc?.converged ?? true) ? 'yes' : 'NO'}.`,
      '',
      `Document after N field edits to one Patient (rotating \`birthDate\`, \`gender\`, \`maritalStatus.text\`, \`active\`); tidegate = stored Yjs V2 document, Automerge = \`save()\`; load = tidegate \`loadDoc\` + \`render\` vs \`Automerge.load\` + \`JSON.stringify\`:`,
      '',
      '| edits | tidegate size | Automerge size | ratio | tidegate load p50 / p99 | Automerge load p50 / p99 | ratio (p50) |',
      '|---:|---:|---:|---:|---:|---:|---:|',
      ...growth.map(
        (g) =>
          `| ${g.edits.toLocaleString('en-US')} | ${fmtBytes(g.tidegateBytes)} | ${fmtBytes(g.automergeBytes)} | ${g.bytesRatio ?? '–'}× | ${fmtMs(g.tidegateLoad.p50)} / ${fmtMs(g.tidegateLoad.p99)} | ${fmtMs(g.automergeLoad.p50)} / ${fmtMs(g.automergeLoad.p99)} | ${g.loadRatioP50 ?? '–'}× |`,
      ),
      '',
      'Targets (issue 3): after 10,000 field edits the stored document < 50 KB and loads < 5 ms.',
    );
    const text = [
      `merge vs Automerge (${(wallMs / 1000).toFixed(1)} s)`,
      `  Patients   local p50 ${fmtMs(pat.tidegate.local.p50)} vs ${fmtMs(pat.automerge.local.p50)} (${pat.ratios.localP50}×), p99 ${fmtMs(pat.tidegate.local.p99)} vs ${fmtMs(pat.automerge.local.p99)} (${pat.ratios.localP99}×); remote p50 ${pat.ratios.remoteP50}×`,
      ...(enc ? [`  Encounters local p50 ${fmtMs(enc.tidegate.local.p50)} vs ${fmtMs(enc.automerge.local.p50)} (${enc.ratios.localP50}×), p99 ${enc.ratios.localP99}×; remote p50 ${enc.ratios.remoteP50}×`] : []),
      ...growth.map((g) => `  ${g.edits} edits: ${fmtBytes(g.tidegateBytes)} vs ${fmtBytes(g.automergeBytes)} (${g.bytesRatio}×); load ${fmtMs(g.tidegateLoad.p50)} vs ${fmtMs(g.automergeLoad.p50)} (${g.loadRatioP50}×)`),
    ].join('\n');
    return {
      id: 'merge-automerge',
      title: 'Merge engine vs Automerge: time per edit, document size, load time',
      markdown: md.join('\n'),
      text,
      figures: { patients: pat, encounters: enc ?? null, growth, wallMs: round(wallMs, 1) },
      skipped,
    };
  },
};
