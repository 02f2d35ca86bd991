/**
 * Bench section `store-sealing`: what encryption at rest costs the SQLite store
 * (docs/storage.md "Encryption at rest"), measured side by side in one run:
 *
 * - write: `Replica.write` + `SqliteStore.set` per resource, sealed vs unsealed store, both with
 *   `synchronous=NORMAL` so the fsync (identical for both) does not hide the crypto;
 * - cold read: reopen the file, then read every resource's current body (unwrap key + open records);
 * - re-wrap after a rotation (all content keys), and the crypto-shred of one patient's compartment.
 *
 * Resources: the Synthea sample when present (every resource, or fewer in quick mode / small budget),
 * else a generated set of Patients and Observations.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { Replica } from '../merge/replica.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { createKeyStore, keyStoreToSecretKeys, rotateKeyStore } from '../envelope/keys.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { shredPatient } from '../store/shred.ts';
import type { BenchContext, BenchSection, BenchSectionResult } from './section.ts';
import { fmtMs, ratio, round, summarize } from './stats.ts';

type Res = FhirJsonObject & { resourceType: string; id: string };

function loadResources(ctx: BenchContext, max: number): Res[] {
  const out: Res[] = [];
  if (ctx.dataPresent) {
    const files = readdirSync(ctx.dataDir).filter((f) => f.endsWith('.ndjson') && !f.startsWith('log'));
    // Referenced types first does not matter for the store; Patients first so a compartment exists.
    files.sort((a, b) => (a.startsWith('Patient') ? -1 : b.startsWith('Patient') ? 1 : a.localeCompare(b)));
    for (const f of files) {
      for (const line of readFileSync(join(ctx.dataDir, f), 'utf8').split('\n')) {
        if (!line) continue;
        out.push(parseFhirJson(line) as Res);
        if (out.length >= max) return out;
      }
    }
    return out;
  }
  for (let i = 0; out.length < max; i++) {
    out.push(parseFhirJson(JSON.stringify({ resourceType: 'Patient', id: `p${i}`, name: [{ family: `Family${i}`, given: ['Given'] }], birthDate: '1970-01-01' })) as Res);
    for (let j = 0; j < 9 && out.length < max; j++) {
      out.push(parseFhirJson(JSON.stringify({ resourceType: 'Observation', id: `o${i}-${j}`, status: 'final', code: { text: 'glucose' }, subject: { reference: `Patient/p${i}` }, valueQuantity: { value: 5.5 + j, unit: 'mmol/L' } })) as Res);
    }
  }
  return out;
}

function writeAll(file: string, resources: Res[], sealed: ReturnType<typeof keyStoreToSecretKeys> | undefined): number[] {
  const store = new SqliteStore(file, { synchronous: 'NORMAL', compaction: 'manual', ...(sealed ? { secretKeys: sealed } : {}) });
  const replica = new Replica({ nodeId: 'bench', store, policy: loadMergePolicy() });
  const samples: number[] = [];
  try {
    for (const r of resources) {
      const t0 = performance.now();
      replica.write(`${r.resourceType}/${r.id}`, r);
      samples.push(performance.now() - t0);
    }
  } finally {
    store.close();
  }
  return samples;
}

function coldRead(file: string, sealed: ReturnType<typeof keyStoreToSecretKeys> | undefined): { openMs: number; readMs: number; n: number } {
  const t0 = performance.now();
  const store = new SqliteStore(file, { compaction: 'manual', ...(sealed ? { secretKeys: sealed } : {}) });
  const t1 = performance.now();
  let n = 0;
  for (const key of store.keys()) {
    if (store.get(key)?.versions.at(-1)?.body) n++;
  }
  const t2 = performance.now();
  store.close();
  return { openMs: t1 - t0, readMs: t2 - t1, n };
}

/** See module doc. */
export const storeSealingSection: BenchSection = {
  id: 'store-sealing',
  weight: 0.05,
  async run(ctx: BenchContext): Promise<BenchSectionResult> {
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-bench-sealed-'));
    const skipped: Record<string, string> = {};
    try {
      const max = ctx.quick ? 300 : ctx.budgetMs < 60_000 ? 2000 : 10_000;
      const resources = loadResources(ctx, max);
      const ks = createKeyStore('bench');
      const keys = keyStoreToSecretKeys(ks);
      const plainFile = join(dir, 'plain.sqlite');
      const sealedFile = join(dir, 'sealed.sqlite');
      // Alternate the order of the two runs' halves would need two files each; one warm-up instead.
      writeAll(join(dir, 'warmup.sqlite'), resources.slice(0, 50), keys);
      const plain = summarize(writeAll(plainFile, resources, undefined));
      const sealed = summarize(writeAll(sealedFile, resources, keys));
      const readPlain = coldRead(plainFile, undefined);
      const readSealed = coldRead(sealedFile, keys);
      const rotated = keyStoreToSecretKeys(rotateKeyStore(ks));
      const s = new SqliteStore(sealedFile, { compaction: 'manual', secretKeys: rotated, autoRewrap: false });
      const t0 = performance.now();
      const rewrap = s.rewrap();
      const rewrapMs = performance.now() - t0;
      const patient = resources.find((r) => r.resourceType === 'Patient');
      let shred: { ms: number; resources: number } | undefined;
      if (patient) {
        const t1 = performance.now();
        const report = await shredPatient(`Patient/${patient.id}`, { store: s, nodeId: 'bench' });
        shred = { ms: performance.now() - t1, resources: report.shredded.length };
      } else skipped['shredMs'] = 'no Patient among the resources';
      s.close();
      const figures = {
        resources: resources.length,
        synthea: ctx.dataPresent,
        writeUnsealed: plain,
        writeSealed: sealed,
        writeSealedOverPlainP50: ratio(sealed.p50, plain.p50),
        writeAddedP50Ms: round(sealed.p50 - plain.p50),
        coldOpenMs: { unsealed: round(readPlain.openMs), sealed: round(readSealed.openMs) },
        coldReadAllMs: { unsealed: round(readPlain.readMs), sealed: round(readSealed.readMs), bodies: readSealed.n },
        rewrapMs: round(rewrapMs),
        rewrapKeys: rewrap.keys,
        ...(shred ? { shredMs: round(shred.ms), shredResources: shred.resources } : {}),
      };
      const rows = [
        `| write (Replica.write + set, synchronous=NORMAL) p50 / p99 | ${fmtMs(plain.p50)} / ${fmtMs(plain.p99)} | ${fmtMs(sealed.p50)} / ${fmtMs(sealed.p99)} |`,
        `| open the store (sealed: one X-Wing decapsulation) | ${fmtMs(readPlain.openMs)} | ${fmtMs(readSealed.openMs)} |`,
        `| cold read of every current body (${readSealed.n}) | ${fmtMs(readPlain.readMs)} | ${fmtMs(readSealed.readMs)} |`,
      ];
      const markdown = [
        `${resources.length} ${ctx.dataPresent ? 'Synthea' : 'generated'} resources, one write each, unsealed vs sealed SQLite store (same run; fsync excluded: \`synchronous=NORMAL\`).`,
        '',
        '| | unsealed | sealed |',
        '|---|---:|---:|',
        ...rows,
        '',
        `Re-wrap after a rotation: ${rewrap.keys} keys in ${fmtMs(rewrapMs)} (payloads untouched).` +
          (shred ? ` Crypto-shred of one patient (${shred.resources} resources in its compartment, whole store scanned): ${fmtMs(shred.ms)}.` : ''),
      ].join('\n');
      const text = [
        `store sealing: write p50 ${fmtMs(plain.p50)} → ${fmtMs(sealed.p50)} (×${figures.writeSealedOverPlainP50}), cold read ${fmtMs(readPlain.readMs)} → ${fmtMs(readSealed.readMs)}`,
        `  rewrap ${rewrap.keys} keys ${fmtMs(rewrapMs)}${shred ? `, shred ${shred.resources} resources ${fmtMs(shred.ms)}` : ''}`,
      ].join('\n');
      return { id: 'store-sealing', title: 'Encryption at rest: sealed vs unsealed SQLite store', markdown, text, figures, skipped };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
