/**
 * No PHI and no secrets in the logs or the audit trail (issue 7, "No PHI or secrets in logs"):
 * Synthea patients (and their Conditions) are written, read and searched for by name, birth date
 * and identifier through the FHIR app with SMART auth and the audit trail wired in, with a pino
 * logger capturing every line at `trace` level; refused requests carry PHI in their URLs; key
 * operations, node start, a Tide quarantine and a node-level notice go to the trail too. Then the
 * captured logs and the trail's text are searched for every patient's names, birth date,
 * identifier values, telecom and address lines, and for the key material (base64url, base64 and
 * hex of the secret seeds). None may appear.
 *
 * Resource ids are recorded by design (docs/security.md "Audit trail"). Synthea gives its first two
 * identifiers (the Synthea id and the MRN) the resource id as value, so those two values are the
 * resource id and are not searched for; every other identifier value (SSN, driver's licence,
 * passport) is.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import express from 'express';
import pino from 'pino';
import request from 'supertest';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { fhirRouter } from '../src/fhir/express.ts';
import { createAuth } from '../src/auth/setup.ts';
import { AuthConfigSchema } from '../src/auth/config.ts';
import { currentFromService } from '../src/auth/middleware.ts';
import { createKeyStore, listKeys, rotateKeyStore } from '../src/envelope/index.ts';
import { AuditLog, quarantineAuditEvent } from '../src/tide/index.ts';
import { AuditTrail, auditWiring, bridgeAuditLog, keyOperationFromStore, lifecycleEvent, mergeEvent, verifyTrail } from '../src/audit/index.ts';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const ISS = 'https://auth.example.org';
const AUD = 'https://node-a.example.org/fhir';
const PATIENTS = 3;

interface SyntheaPatient {
  id: string;
  name?: Array<{ family?: string; given?: string[]; prefix?: string[] }>;
  birthDate?: string;
  identifier?: Array<{ system?: string; value?: string }>;
  telecom?: Array<{ value?: string }>;
  address?: Array<{ line?: string[]; city?: string; postalCode?: string }>;
  extension?: Array<{ url: string; valueString?: string }>;
}

/** The PHI strings of a patient: names (each part), birth date (and its compact form), identifier values other than the id, telecom, address lines and postal code, mother's maiden name. */
function phiOf(p: SyntheaPatient): string[] {
  const out = new Set<string>();
  for (const n of p.name ?? []) for (const part of [n.family, ...(n.given ?? [])]) if (part) out.add(part);
  if (p.birthDate) {
    out.add(p.birthDate);
    out.add(p.birthDate.replaceAll('-', ''));
  }
  for (const i of p.identifier ?? []) if (i.value && i.value !== p.id) out.add(i.value);
  for (const t of p.telecom ?? []) if (t.value) out.add(t.value);
  for (const a of p.address ?? []) {
    for (const l of a.line ?? []) out.add(l);
    if (a.postalCode) out.add(a.postalCode);
  }
  for (const e of p.extension ?? []) if (e.url.endsWith('patient-mothersMaidenName') && e.valueString) for (const part of e.valueString.split(' ')) out.add(part);
  return [...out].filter((s) => s.length >= 4);
}

describe('no PHI or secrets in logs and the audit trail', { skip: SYNTHEA_SKIP }, () => {
  let h: Harness;
  let dir: string;
  let trail: AuditTrail;
  let app: express.Express;
  const logLines: string[] = [];
  let patients: SyntheaPatient[] = [];
  let conditions: Array<{ id: string; subject?: { reference?: string } }> = [];
  let sign: (scope: string, extra?: Record<string, unknown>) => Promise<string>;
  const seeds = { kem: new Uint8Array(32), sig: new Uint8Array(32) };

  before(async () => {
    patients = (readSynthea('Patient') as SyntheaPatient[]).slice(0, PATIENTS);
    const ids = new Set(patients.map((p) => `Patient/${p.id}`));
    conditions = (readSynthea('Condition') as typeof conditions).filter((c) => ids.has(String(c.subject?.reference).replace('urn:uuid:', 'Patient/'))).slice(0, 8);
    dir = mkdtempSync(join(tmpdir(), 'tidegate-audit-phi-'));
    const kp = await generateKeyPair('ES256', { extractable: true });
    const jwksFile = join(dir, 'jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(kp.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    sign = (scope, extra = {}) => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ scope, client_id: 'ehr', ...extra }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(ISS).setAudience(AUD).setSubject('clinician-7').setJti(`j-${now}-${Math.random()}`).setIssuedAt(now).setExpirationTime(now + 300).sign(kp.privateKey);
    };
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logLines.push(chunk.toString('utf8'));
        cb();
      },
    });
    const log = pino({ level: 'trace' }, sink);
    h = await makeHarness({ hospital: true });
    trail = await AuditTrail.open(join(dir, 'node-a.audit.jsonl'), { nodeId: 'node-a', flushIntervalMs: 5, log });
    const auth = createAuth(AuthConfigSchema.parse({ issuer: ISS, audience: AUD, jwksFile }), { log });
    const audit = auditWiring(trail, 'node-a', { log });
    app = express();
    app.use('/fhir', auth.middleware({ current: currentFromService(h.service), log, onDecision: audit.onDecision }));
    app.use('/fhir', audit.middleware, audit.router);
    app.use('/fhir', fhirRouter(h.service, log));
    crypto.getRandomValues(seeds.kem);
    crypto.getRandomValues(seeds.sig);
  });
  after(async () => {
    await trail?.close();
    await h?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('Synthea patients through the FHIR app: nothing identifying reaches the logs or the trail', async () => {
    assert.equal(patients.length, PATIENTS);
    const writer = await sign('system/*.cruds');
    const reader = await sign('system/*.rs');
    const auth = (t: string) => ({ Authorization: `Bearer ${t}` });
    for (const p of patients) {
      await request(app).put(`/fhir/Patient/${p.id}`).set(auth(writer)).set('Content-Type', FHIR).send(JSON.stringify(p)).expect((r) => assert.ok(r.status === 201 || r.status === 200, `PUT Patient ${r.status}`));
    }
    for (const c of conditions) {
      const body = { ...c, subject: { reference: String(c.subject?.reference).replace('urn:uuid:', 'Patient/') } } as Record<string, unknown>;
      delete body['encounter'];
      await request(app).put(`/fhir/Condition/${c.id}`).set(auth(writer)).set('Content-Type', FHIR).send(JSON.stringify(body)).expect((r) => assert.ok(r.status < 300, `PUT Condition ${r.status}`));
    }
    for (const p of patients) {
      const family = p.name?.[0]?.family ?? 'x';
      const ssn = p.identifier?.find((i) => i.system === 'http://hl7.org/fhir/sid/us-ssn')?.value ?? 'x';
      await request(app).get(`/fhir/Patient/${p.id}`).set(auth(reader)).expect(200);
      await request(app).get(`/fhir/Patient?name=${encodeURIComponent(family)}&birthdate=${p.birthDate}`).set(auth(reader));
      await request(app).get(`/fhir/Patient?identifier=${encodeURIComponent(`http://hl7.org/fhir/sid/us-ssn|${ssn}`)}`).set(auth(reader));
      await request(app).post('/fhir/Patient/_search').set(auth(reader)).set('Content-Type', 'application/x-www-form-urlencoded').send(`family=${encodeURIComponent(family)}`);
      await request(app).get(`/fhir/Condition?patient=Patient/${p.id}`).set(auth(reader));
      // PHI where an id belongs: refused or unknown, so never recorded.
      await request(app).get(`/fhir/Patient/${ssn}`).set(auth(reader)).expect(404);
      await request(app).get(`/fhir/Patient/${encodeURIComponent(family)}`).expect(401);
      await request(app).get(`/fhir/Patient/${ssn}`).set(auth(await sign('system/Observation.rs'))).expect(403);
      await request(app).put(`/fhir/Patient/${ssn}`).set(auth(reader)).set('Content-Type', FHIR).send(JSON.stringify({ ...p, id: ssn })).expect(403);
      // An invalid write whose body is full of PHI: refused by validation, body never echoed to logs/trail.
      await request(app).post('/fhir/Patient').set(auth(writer)).set('Content-Type', FHIR).send(JSON.stringify({ ...p, id: undefined, birthDate: `${p.birthDate}-not-a-date` }));
    }
    // Key operations, node start, a merge, and a Tide quarantine, bridged as the node does.
    let store = createKeyStore('node-a', { seeds });
    trail.record(keyOperationFromStore('node-a', 'generate', listKeys(store)));
    store = rotateKeyStore(store);
    trail.record(keyOperationFromStore('node-a', 'rotate', listKeys(store)));
    trail.record(lifecycleEvent({ nodeId: 'node-a', what: 'start', at: new Date(), keys: listKeys(store) }));
    trail.record(mergeEvent({ nodeId: 'node-a', fromNode: 'node-b', keys: patients.map((p) => `Patient/${p.id}`), at: new Date() }));
    const tideLog = new AuditLog();
    bridgeAuditLog(tideLog, trail);
    tideLog.add(quarantineAuditEvent({ reason: 'ERR_DECRYPT_FAILED', messageId: 'm-1', sender: 'node-b', senderVerified: true, kind: 'updates', receivedAt: Date.now(), quarantinedAt: Date.now(), attempts: 1, envelopeBytes: 1234 }, 'node-a'));
    await trail.flush();

    const trailText = readFileSync(trail.path, 'utf8');
    const logs = logLines.join('');
    const events = trailText.split('\n').filter((l) => l !== '').length;
    assert.ok(events >= PATIENTS * 11 + conditions.length + 5, `the trail recorded the traffic (${events} events)`);
    assert.ok(trailText.includes(`Patient/${patients[0]!.id}`), 'resource ids are recorded (so the PHI search below is not vacuous)');
    assert.ok(logs.includes('request refused by authorization'), 'the logger captured the node’s lines');

    const secrets: string[] = [];
    for (const seed of [seeds.kem, seeds.sig]) {
      const b = Buffer.from(seed);
      secrets.push(b.toString('base64url'), b.toString('base64').replace(/=+$/, ''), b.toString('hex'));
    }
    for (const k of store.keys) if (k.priv) secrets.push(Buffer.from(k.priv).toString('base64url'), Buffer.from(k.priv).toString('hex'));
    const phi = patients.flatMap(phiOf);
    assert.ok(phi.length >= PATIENTS * 6, `PHI strings collected (${phi.length})`);
    for (const [what, text] of [['audit trail', trailText], ['logs', logs]] as const) {
      for (const s of phi) assert.ok(!text.includes(s), `${what} contains PHI "${s}"`);
      for (const s of secrets) assert.ok(!text.includes(s), `${what} contains key material`);
    }
    assert.equal((await verifyTrail(trail.path)).ok, true);
  });
});
