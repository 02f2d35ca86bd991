/**
 * Figure 1: merge cost per edit. For each Synthea Patient, replica A (`hospital-1`) creates it and
 * then applies a series of clinician edits with `Replica.write`; replica B (`hospital-2`) applies
 * the same Yjs updates with `Replica.applyRemote`. Side by side, in the same loop, the cost of a
 * plain `JSON.parse` + `JSON.stringify` of the same Patient body, and of tidegate's lossless
 * `parseFhirJson` + `canonicalStringify`, as references.
 */
import { canonicalStringify, isJsonObject, parseFhirJson } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';
import { Replica } from '../merge/replica.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import type { MergePolicy } from '../merge/policy.ts';
import { MemoryStore } from '../store/store.ts';
import { ratio, summarize } from './stats.ts';
import type { Summary } from './stats.ts';

/** One clinician edit: a name and a pure function from the previous body to the next. */
export interface PatientEdit {
  name: string;
  apply: (body: FhirJsonObject, i: number) => FhirJsonObject;
}

/**
 * Deep copy of a FHIR resource through its canonical text (numbers stay LosslessNumber).
 * @param r - parsed FHIR JSON object.
 * @returns An independent copy.
 * @throws TypeError when `r` holds non-JSON values.
 */
export function cloneResource(r: FhirJsonObject): FhirJsonObject {
  return parseFhirJson(canonicalStringify(r)) as FhirJsonObject;
}

function arr(v: FhirJson | undefined): FhirJson[] {
  return Array.isArray(v) ? v : [];
}

/**
 * The edits applied, in order, to every Patient: change birthDate, add a telecom entry (email),
 * change the first address line, change the first given name, set maritalStatus.text, remove the
 * telecom entry added before. Each returns a new object; the input is not modified.
 */
export const PATIENT_EDITS: readonly PatientEdit[] = [
  {
    name: 'change birthDate',
    apply: (b, i) => ({ ...cloneResource(b), birthDate: `19${String(50 + (i % 40))}-0${1 + (i % 9)}-1${i % 10}` }),
  },
  {
    name: 'add telecom entry',
    apply: (b, i) => {
      const c = cloneResource(b);
      c.telecom = [...arr(c.telecom), { system: 'email', value: `bench.${i}@hospital-1.example.org`, use: 'home' }];
      return c;
    },
  },
  {
    name: 'change address line',
    apply: (b, i) => {
      const c = cloneResource(b);
      const addresses = arr(c.address);
      const first = addresses[0];
      const a: FhirJsonObject = isJsonObject(first) ? { ...first } : { use: 'home' };
      a.line = [`${i + 1} Bench Street`, ...arr(a.line).slice(1)];
      c.address = [a, ...addresses.slice(1)];
      return c;
    },
  },
  {
    name: 'change given name',
    apply: (b, i) => {
      const c = cloneResource(b);
      const names = arr(c.name);
      const first = names[0];
      const n: FhirJsonObject = isJsonObject(first) ? { ...first } : { use: 'official' };
      n.given = [`Bench${i}`, ...arr(n.given).slice(1)];
      c.name = [n, ...names.slice(1)];
      return c;
    },
  },
  {
    name: 'set maritalStatus.text',
    apply: (b, i) => {
      const c = cloneResource(b);
      const ms = isJsonObject(c.maritalStatus) ? c.maritalStatus : {};
      c.maritalStatus = { ...ms, text: `Updated by bench ${i}` };
      return c;
    },
  },
  {
    name: 'remove telecom entry',
    apply: (b) => {
      const c = cloneResource(b);
      c.telecom = arr(c.telecom).filter((t) => !(isJsonObject(t) && typeof t.value === 'string' && t.value.startsWith('bench.')));
      if ((c.telecom as FhirJson[]).length === 0) delete c.telecom;
      return c;
    },
  },
];

/** Options of {@link runMergeBench}. */
export interface MergeBenchOptions {
  /** Rounds run and discarded first (JIT warm-up). Default 3. */
  warmupRounds?: number;
  /** Measured rounds; each round uses fresh replicas and writes every Patient. Default 15. */
  rounds?: number;
  policy?: MergePolicy;
}

/** Figure 1 results. Durations in ms, sizes in bytes. */
export interface MergeFigures {
  patients: number;
  editsPerPatient: number;
  rounds: number;
  /** `replica.write` of an edit on replica A. */
  localEdit: Summary;
  /** `replica.write` of the first version (create). */
  localCreate: Summary;
  /** `replica.applyRemote` of an edit's update on replica B. */
  remoteEdit: Summary;
  /** `replica.applyRemote` of the create update on replica B. */
  remoteCreate: Summary;
  /** `JSON.parse` + `JSON.stringify` of the edited Patient's text, timed next to each edit. */
  jsonRoundTrip: Summary;
  /** `parseFhirJson` + `canonicalStringify` (lossless, canonical) of the same text. */
  losslessRoundTrip: Summary;
  /** Median ratios: local edit / JSON round trip, remote edit / JSON round trip, local edit / lossless round trip. */
  ratios: { localEditVsJson: number | null; remoteEditVsJson: number | null; localEditVsLossless: number | null };
  /** Local edit time by edit kind. */
  byEdit: Array<{ edit: string; local: Summary; remote: Summary; updateBytesP50: number }>;
  /** Patient body sizes (canonical JSON bytes): median and max. */
  patientBytes: { p50: number; max: number };
  /** Yjs update sizes: create and edit, medians. */
  updateBytes: { createP50: number; editP50: number };
  /** Stored Yjs document state after all edits, median over Patients (bytes). */
  stateBytesAfterEditsP50: number;
  /** True when replica B rendered exactly the same final body as replica A for every Patient. */
  converged: boolean;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? 0;
}

/**
 * Runs figure 1 on the given Patients.
 * @param patients - FHIR Patients (at least one) with `id`.
 * @param opts - rounds; see {@link MergeBenchOptions}.
 * @returns {@link MergeFigures}.
 * @throws Error when no Patient is given or a write unexpectedly changes nothing.
 */
export function runMergeBench(patients: readonly FhirJsonObject[], opts: MergeBenchOptions = {}): MergeFigures {
  if (patients.length === 0) throw new Error('merge bench: no Patients');
  const policy = opts.policy ?? loadMergePolicy();
  const warmup = opts.warmupRounds ?? 3;
  const rounds = opts.rounds ?? 15;
  const localEdit: number[] = [];
  const localCreate: number[] = [];
  const remoteEdit: number[] = [];
  const remoteCreate: number[] = [];
  const json: number[] = [];
  const lossless: number[] = [];
  const byEditLocal = PATIENT_EDITS.map(() => [] as number[]);
  const byEditRemote = PATIENT_EDITS.map(() => [] as number[]);
  const byEditBytes = PATIENT_EDITS.map(() => [] as number[]);
  const createBytes: number[] = [];
  const stateBytes: number[] = [];
  let converged = true;
  // Bodies are prepared once, outside the timed regions.
  const versions = patients.map((p, pi) => {
    const out: FhirJsonObject[] = [cloneResource(p)];
    for (const e of PATIENT_EDITS) out.push(e.apply(out[out.length - 1]!, pi));
    return { key: `Patient/${String(p.id)}`, bodies: out, texts: out.map((b) => canonicalStringify(b)) };
  });
  let sink = 0;
  for (let round = 0; round < warmup + rounds; round++) {
    const measure = round >= warmup;
    const a = new Replica({ nodeId: 'hospital-1', store: new MemoryStore(), policy });
    const b = new Replica({ nodeId: 'hospital-2', store: new MemoryStore(), policy });
    for (const v of versions) {
      for (let k = 0; k < v.bodies.length; k++) {
        const text = v.texts[k]!;
        // Reference 1: plain JSON.
        let t = performance.now();
        sink += JSON.stringify(JSON.parse(text)).length;
        const tJson = performance.now() - t;
        // The merge write.
        t = performance.now();
        const res = a.write(v.key, v.bodies[k]!);
        const tWrite = performance.now() - t;
        if (!res.update) throw new Error(`merge bench: edit ${k} of ${v.key} changed nothing`);
        // Reference 2: lossless JSON, tidegate's canonical form.
        t = performance.now();
        sink += canonicalStringify(parseFhirJson(text)).length;
        const tLossless = performance.now() - t;
        // The same update applied on the other replica.
        t = performance.now();
        b.applyRemote(v.key, res.update);
        const tRemote = performance.now() - t;
        if (!measure) continue;
        json.push(tJson);
        lossless.push(tLossless);
        if (k === 0) {
          localCreate.push(tWrite);
          remoteCreate.push(tRemote);
          createBytes.push(res.update.length);
        } else {
          localEdit.push(tWrite);
          remoteEdit.push(tRemote);
          byEditLocal[k - 1]!.push(tWrite);
          byEditRemote[k - 1]!.push(tRemote);
          byEditBytes[k - 1]!.push(res.update.length);
        }
      }
      if (measure && round === warmup + rounds - 1) {
        const ca = a.current(v.key);
        const cb = b.current(v.key);
        stateBytes.push(ca?.state.length ?? 0);
        if (!ca || !cb || ca.body !== cb.body || ca.versionId !== cb.versionId) converged = false;
      }
    }
  }
  if (sink < 0) throw new Error('unreachable');
  const s = {
    localEdit: summarize(localEdit),
    localCreate: summarize(localCreate),
    remoteEdit: summarize(remoteEdit),
    remoteCreate: summarize(remoteCreate),
    jsonRoundTrip: summarize(json),
    losslessRoundTrip: summarize(lossless),
  };
  const sizes = versions.map((v) => Buffer.byteLength(v.texts[0]!));
  return {
    patients: patients.length,
    editsPerPatient: PATIENT_EDITS.length,
    rounds,
    ...s,
    ratios: {
      localEditVsJson: ratio(s.localEdit.p50, s.jsonRoundTrip.p50),
      remoteEditVsJson: ratio(s.remoteEdit.p50, s.jsonRoundTrip.p50),
      localEditVsLossless: ratio(s.localEdit.p50, s.losslessRoundTrip.p50),
    },
    byEdit: PATIENT_EDITS.map((e, i) => ({ edit: e.name, local: summarize(byEditLocal[i]!), remote: summarize(byEditRemote[i]!), updateBytesP50: median(byEditBytes[i]!) })),
    patientBytes: { p50: median(sizes), max: Math.max(...sizes) },
    updateBytes: { createP50: median(createBytes), editP50: median(byEditBytes.flat()) },
    stateBytesAfterEditsP50: median(stateBytes),
    converged,
  };
}

/**
 * Yjs create updates of resources, as a node would gossip them after a local write (fresh
 * replica per call, `hospital-1`).
 * @param resources - resources with `resourceType` and `id`.
 * @param policy - merge policy (default `profiles/merge-policy.json`).
 * @returns One `{ key, update }` per resource, in order (`update` is Yjs v1 bytes; a later
 *   resource with the same key yields an edit update, or empty bytes when it changes nothing).
 * @throws Error when a resource has no id.
 */
export function createUpdates(resources: readonly FhirJsonObject[], policy: MergePolicy = loadMergePolicy()): Array<{ key: string; update: Uint8Array }> {
  const r = new Replica({ nodeId: 'hospital-1', store: new MemoryStore(), policy });
  return resources.map((res) => {
    if (typeof res.id !== 'string') throw new Error('createUpdates: resource without id');
    const key = `${String(res.resourceType)}/${res.id}`;
    const w = r.write(key, res);
    return { key, update: w.update ?? new Uint8Array() };
  });
}
