/**
 * Document-growth measurement of the durable store: N field edits to one Patient through the merge
 * engine (`Replica`) and a {@link SqliteStore} file, then the stored document's size and load time,
 * and what the version history costs. Used by test/store-growth.test.ts at a bounded size and
 * runnable for the full figure:
 *
 * ```sh
 * node src/store/growth.ts 10000            # JSON on stdout; Synthea's first Patient when present
 * ```
 *
 * Issue 3 target: after 10,000 field edits the stored document stays under 50 KB and loads in
 * under 5 ms. Figures and their explanation: docs/storage.md.
 */
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as Y from 'yjs';
import { canonicalStringify, isJsonObject, parseFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { Replica } from '../merge/replica.ts';
import { HybridLogicalClock } from '../merge/hlc.ts';
import { loadDoc } from '../merge/doc.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { SqliteStore } from './sqlite-store.ts';
import { toV1 } from './codec.ts';

/** One field edit: sets a top-level (or nested, non-repeating) element of the body in place. */
export type FieldEdit = (body: FhirJsonObject, i: number) => void;

/**
 * The default edit cycle: four scalar elements of a Patient, one per edit, in rotation
 * (`birthDate`, `gender`, `maritalStatus.text`, `active`), each edit a new value.
 */
export const ROTATING_SCALAR_EDITS: readonly FieldEdit[] = [
  (b, i) => {
    b.birthDate = `19${String(10 + (i % 90))}-0${1 + (i % 9)}-1${i % 10}`;
  },
  (b, i) => {
    b.gender = ['male', 'female', 'other', 'unknown'][Math.floor(i / 4) % 4]!;
  },
  (b, i) => {
    const ms = isJsonObject(b.maritalStatus) ? b.maritalStatus : {};
    b.maritalStatus = { ...ms, text: `status ${i}` };
  },
  (b, i) => {
    b.active = i % 8 >= 4;
  },
];

/** Options of {@link measureDocumentGrowth}. */
export interface GrowthOptions {
  /** Number of field edits (each one PUT-equivalent `Replica.write`). */
  edits: number;
  /** The Patient to edit (must have `resourceType` Patient and an `id`). */
  patient: FhirJsonObject;
  /** Edit cycle; edit i applies `edits[i % length]`. Default {@link ROTATING_SCALAR_EDITS}. */
  cycle?: readonly FieldEdit[];
  /** SQLite `synchronous` for the run. Default `NORMAL` (fsync cost is not what is measured here). */
  synchronous?: 'FULL' | 'NORMAL';
  /** Load-time samples. Default 21. */
  loadSamples?: number;
}

/** Figures of one run; bytes and ms. */
export interface GrowthResult {
  edits: number;
  /** Versions stored (edits + the create). */
  versions: number;
  /** The stored current document (Yjs V2), bytes. */
  storedDocumentBytes: number;
  /** The same document in the V1 encoding (what the merge engine loads), bytes. */
  v1DocumentBytes: number;
  /** Yjs structs in the loaded document, and how many of them are deleted (overwritten values). */
  structs: number;
  deletedStructs: number;
  /** Cold load: V2 bytes → V1 → `loadDoc` (what a Replica does after a restart), ms. */
  loadMs: { p50: number; max: number };
  /** `Y.applyUpdateV2` straight into a document (what a V2-native engine would do), ms. */
  loadV2Ms: { p50: number; max: number };
  /** Write latency (Replica.write + SqliteStore.set), ms. */
  writeMs: { p50: number; p99: number };
  /** Version history as stored, after compaction. */
  history: {
    stateBytes: number;
    keyframes: number;
    bodyBytes: number;
    /** (stateBytes + bodyBytes) / versions. */
    bytesPerVersion: number;
    /** What one version costs when it keeps a whole V1 document and a plain body (MemoryStore), averaged. */
    fullCopyBytesPerVersion: number;
  };
  /** Database file after compaction, bytes. */
  fileBytes: number;
  /** Time of the compaction pass, ms. */
  compactMs: number;
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0;
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

/**
 * Runs the edits through a Replica over a SqliteStore in a temporary folder (under `os.tmpdir()`,
 * removed afterwards), compacts, reopens the file and measures the stored document.
 * @param opts - see {@link GrowthOptions}.
 * @returns The figures ({@link GrowthResult}).
 * @throws Error when the patient has no id, or an edit produces an invalid resource.
 */
export function measureDocumentGrowth(opts: GrowthOptions): GrowthResult {
  const id = opts.patient.id;
  if (typeof id !== 'string') throw new Error('measureDocumentGrowth: the patient needs an id');
  const key = `Patient/${id}`;
  const cycle = opts.cycle ?? ROTATING_SCALAR_EDITS;
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-growth-'));
  const file = join(dir, 'growth.sqlite');
  const policy = loadMergePolicy();
  let wall = 1_700_000_000_000;
  try {
    const store = new SqliteStore(file, { compaction: 'manual', synchronous: opts.synchronous ?? 'NORMAL' });
    const replica = new Replica({ nodeId: 'hospital-1', store, policy, clock: new HybridLogicalClock(() => (wall += 7)) });
    let body = parseFhirJson(canonicalStringify(opts.patient)) as FhirJsonObject;
    replica.write(key, body);
    const writes: number[] = [];
    let fullCopy = 0;
    for (let i = 0; i < opts.edits; i++) {
      body = parseFhirJson(canonicalStringify(body)) as FhirJsonObject;
      cycle[i % cycle.length]!(body, i);
      const t = performance.now();
      const res = replica.write(key, body);
      writes.push(performance.now() - t);
      fullCopy += res.version.state.length + Buffer.byteLength(res.version.body ?? '');
    }
    let t = performance.now();
    store.compact();
    const compactMs = performance.now() - t;
    const sizes = store.sizes(key);
    const fileBytes = store.sizes().fileBytes;
    store.close();

    // Cold: a new store on the file, as after a restart.
    const reopened = new SqliteStore(file, { compaction: 'manual' });
    const storedV2 = reopened.storedState(key);
    reopened.close();
    if (!storedV2) throw new Error(`measureDocumentGrowth: ${key} was not stored`);
    const samples = opts.loadSamples ?? 21;
    const loads: number[] = [];
    const loadsV2: number[] = [];
    let doc: Y.Doc | undefined;
    for (let i = 0; i < samples + 2; i++) {
      t = performance.now();
      doc = loadDoc(toV1(storedV2), 'hospital-1');
      const a = performance.now() - t;
      t = performance.now();
      const d2 = new Y.Doc({ gc: true, guid: 'growth' });
      Y.applyUpdateV2(d2, storedV2);
      const b = performance.now() - t;
      if (i >= 2) {
        loads.push(a);
        loadsV2.push(b);
      }
    }
    let structs = 0;
    let deleted = 0;
    for (const list of doc!.store.clients.values()) {
      for (const s of list) {
        structs++;
        if (s.deleted) deleted++;
      }
    }
    loads.sort((a, b) => a - b);
    loadsV2.sort((a, b) => a - b);
    writes.sort((a, b) => a - b);
    const bodyBytes = sizes.plainBodyBytes + sizes.compressedBodyBytes;
    return {
      edits: opts.edits,
      versions: sizes.versions,
      storedDocumentBytes: storedV2.length,
      v1DocumentBytes: toV1(storedV2).length,
      structs,
      deletedStructs: deleted,
      loadMs: { p50: round(pct(loads, 0.5)), max: round(loads[loads.length - 1] ?? 0) },
      loadV2Ms: { p50: round(pct(loadsV2, 0.5)), max: round(loadsV2[loadsV2.length - 1] ?? 0) },
      writeMs: { p50: round(pct(writes, 0.5)), p99: round(pct(writes, 0.99)) },
      history: {
        stateBytes: sizes.historyStateBytes,
        keyframes: sizes.keyframes,
        bodyBytes,
        bytesPerVersion: Math.round((sizes.historyStateBytes + bodyBytes) / Math.max(1, sizes.versions)),
        fullCopyBytesPerVersion: Math.round(fullCopy / Math.max(1, opts.edits)),
      },
      fileBytes,
      compactMs: round(compactMs),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The Patient used by the CLI: Synthea's first Patient when the sample is present, else the merge test fixture. */
function defaultPatient(): FhirJsonObject {
  const synthea = new URL('../../../shared/data/synthea-10/Patient.000.ndjson', import.meta.url);
  const text = existsSync(synthea)
    ? readFileSync(synthea, 'utf8').split('\n')[0]!
    : readFileSync(new URL('../../test/fixtures/merge/patient-base.json', import.meta.url), 'utf8');
  return parseFhirJson(text) as FhirJsonObject;
}

if (import.meta.main) {
  const edits = Number(process.argv[2] ?? 10000);
  const result = measureDocumentGrowth({ edits, patient: defaultPatient() });
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}
