/**
 * The audit trail over HTTP: the FHIR app wired as fhirApp wires it (SMART auth with the audit
 * `onDecision` hook → audit middleware → `GET /fhir/AuditEvent` router → FHIR router), a real
 * FhirService, real JWTs. Every interaction gets exactly one AuditEvent with its BALP subtype,
 * outcome, caller and entities; refusals get theirs from the auth hook; the AuditEvent search
 * answers only to an audit scope and filters by date, patient, entity, agent, type, subtype,
 * outcome, with paging.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import express from 'express';
import pino from 'pino';
import request from 'supertest';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { fhirRouter } from '../src/fhir/express.ts';
import { createAuth } from '../src/auth/setup.ts';
import { AuthConfigSchema } from '../src/auth/config.ts';
import { currentFromService } from '../src/auth/middleware.ts';
import { AuditTrail, auditWiring, verifyTrail } from '../src/audit/index.ts';
import type { AuditEvent } from '../src/audit/index.ts';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const ISS = 'https://auth.example.org';
const AUD = 'https://node-a.example.org/fhir';

describe('audit trail over HTTP', () => {
  let h: Harness;
  let dir: string;
  let trail: AuditTrail;
  let app: express.Express;
  let sign: (scope: string, extra?: Record<string, unknown>) => Promise<string>;
  let writer: string;
  let auditor: string;
  let requests = 0;

  const all = async (): Promise<AuditEvent[]> => {
    await trail.flush();
    const out: AuditEvent[] = [];
    for await (const { event } of trail.newestFirst()) out.push(event);
    return out.reverse();
  };
  const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
  const sub = (e: AuditEvent) => e.subtype?.map((s) => s.code);
  const refs = (e: AuditEvent) => (e.entity ?? []).flatMap((x) => (x.what?.reference ? [x.what.reference] : []));
  const detail = (e: AuditEvent, type: string) => (e.entity ?? []).flatMap((x) => x.detail ?? []).find((d) => d.type === type)?.valueString;

  before(async () => {
    const kp = await generateKeyPair('ES256', { extractable: true });
    dir = mkdtempSync(join(tmpdir(), 'tidegate-audit-http-'));
    const jwksFile = join(dir, 'jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(kp.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    let n = 0;
    sign = (scope, extra = {}) => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ scope, client_id: 'ehr', ...extra }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(ISS).setAudience(AUD).setSubject('clinician-7').setJti(`jti-${++n}`).setIssuedAt(now).setExpirationTime(now + 300).sign(kp.privateKey);
    };
    writer = await sign('system/*.cruds');
    auditor = await sign('system/AuditEvent.rs');
    // Searches go to the hospital FHIR server (a Medplum stand-in over HTTP).
    h = await makeHarness({ hospital: true });
    const log = pino({ level: 'silent' });
    trail = await AuditTrail.open(join(dir, 'node-a.audit.jsonl'), { nodeId: 'node-a', flushIntervalMs: 5 });
    const auth = createAuth(AuthConfigSchema.parse({ issuer: ISS, audience: AUD, jwksFile }), { log });
    const audit = auditWiring(trail, 'node-a', { log });
    // The lines src/fhir/express.ts `fhirApp` adds for the audit trail (see docs/security.md).
    app = express();
    app.use('/fhir', auth.middleware({ current: currentFromService(h.service), log, onDecision: audit.onDecision }));
    app.use('/fhir', audit.middleware, audit.router);
    app.use('/fhir', fhirRouter(h.service, log));
  });
  after(async () => {
    await trail?.close();
    await h?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  let obsId = '';

  test('one AuditEvent per interaction, BALP coded, with caller, resource and patient', async () => {
    const go = async (r: request.Test, status: number) => {
      requests++;
      return r.expect(status);
    };
    const put1 = await go(request(app).put('/fhir/Patient/p1').set(bearer(writer)).set('Content-Type', FHIR).send('{"resourceType":"Patient","id":"p1","gender":"female"}'), 201);
    const vid = String(put1.body.meta.versionId);
    await go(request(app).get('/fhir/Patient/p1').set(bearer(writer)), 200);
    const created = await go(request(app).post('/fhir/Observation').set(bearer(writer)).set('Content-Type', FHIR).send('{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}'), 201);
    obsId = String(created.body.id);
    await go(request(app).get('/fhir/Observation?subject=Patient/p1&code=secret-code-value').set(bearer(writer)), 200);
    await go(request(app).get('/fhir/Patient/p1/_history').set(bearer(writer)), 200);
    await go(request(app).get(`/fhir/Patient/p1/_history/${vid}`).set(bearer(writer)), 200);
    await go(request(app).patch(`/fhir/Observation/${obsId}`).set(bearer(writer)).set('Content-Type', 'application/json-patch+json').send('[{"op":"replace","path":"/status","value":"amended"}]'), 200);
    await go(request(app).post('/fhir').set(bearer(writer)).set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [
      { resource: { resourceType: 'Patient', id: 'p2' }, request: { method: 'PUT', url: 'Patient/p2' } },
      { resource: { resourceType: 'Observation', id: 'o2', status: 'final', code: { text: 'y' }, subject: { reference: 'Patient/p2' } }, request: { method: 'PUT', url: 'Observation/o2' } },
    ] })), 200);
    await go(request(app).post('/fhir/Patient/$validate').set(bearer(writer)).set('Content-Type', FHIR).send('{"resourceType":"Patient"}'), 200);
    await go(request(app).get('/fhir/Patient/no-such-patient').set(bearer(writer)), 404);
    await go(request(app).delete(`/fhir/Observation/${obsId}`).set(bearer(writer)), 204);
    await go(request(app).get('/fhir/Patient/p1'), 401);
    await go(request(app).get('/fhir/Patient/p1').set(bearer(await sign('system/Observation.rs'))), 403);

    const events = await all();
    assert.equal(events.length, requests, 'exactly one event per request');
    const [put, read, create, search, hist, vread, patch, txn, validate, missing, del, unauth, forbidden] = events as [AuditEvent, ...AuditEvent[]];

    assert.deepEqual(sub(put!), ['update']);
    assert.equal(put!.type.code, 'rest');
    assert.equal(put!.action, 'U');
    assert.equal(put!.outcome, '0');
    assert.deepEqual(refs(put!), ['Patient/p1']);
    assert.equal(put!.entity?.[0]?.role?.code, '1', 'the patient entity (object-role 1)');
    const user = put!.agent.find((a) => a.requestor);
    assert.equal(user?.who?.identifier?.value, 'clinician-7');
    assert.equal(user?.who?.identifier?.system, ISS);
    assert.match(user?.policy?.[0] ?? '', /^jti-/);
    const client = put!.agent.find((a) => a.type?.coding[0]?.code === '110153');
    assert.equal(client?.who?.identifier?.value, 'ehr');
    assert.ok(client?.network?.address, 'client IP address');
    assert.equal(put!.agent.find((a) => a.type?.coding[0]?.code === '110152')?.who?.identifier?.value, 'node-a');

    assert.deepEqual(sub(read!), ['read']);
    assert.equal(read!.action, 'R');
    assert.deepEqual(sub(create!), ['create']);
    assert.deepEqual(refs(create!).sort(), [`Observation/${obsId}`, 'Patient/p1'].sort(), 'the created id (from Location) and the subject');
    assert.deepEqual(sub(search!), ['search-type']);
    assert.deepEqual(refs(search!), ['Patient/p1']);
    assert.equal(detail(search!, 'parameters'), 'code,subject');
    assert.ok(!JSON.stringify(search).includes('secret-code-value'), 'search values are never recorded');
    assert.deepEqual(sub(hist!), ['history-instance']);
    assert.deepEqual(sub(vread!), ['vread']);
    assert.ok(refs(vread!).includes('Patient/p1'));
    assert.deepEqual(sub(patch!), ['patch']);
    assert.ok(refs(patch!).includes(`Observation/${obsId}`));
    assert.deepEqual(sub(txn!), ['transaction']);
    assert.equal(detail(txn!, 'entries'), '2');
    assert.deepEqual(refs(txn!).sort(), ['Observation/o2', 'Patient/p2'].sort());
    assert.deepEqual(sub(validate!), ['operation']);
    assert.equal(detail(validate!, 'operation'), '$validate');
    assert.equal(missing!.outcome, '4');
    assert.equal(detail(missing!, 'httpStatus'), '404');
    assert.ok(!JSON.stringify(missing).includes('no-such-patient'), 'ids the server never accepted are not recorded');
    assert.deepEqual(sub(del!), ['delete']);
    assert.equal(del!.action, 'D');
    assert.equal(unauth!.type.code, '110114', 'a 401 is a failed User Authentication');
    assert.deepEqual(sub(unauth!), ['110122', 'missing_token']);
    assert.equal(unauth!.outcome, '4');
    assert.equal(forbidden!.type.code, 'rest');
    assert.deepEqual(sub(forbidden!), ['read', 'insufficient_scope']);
    assert.ok(!JSON.stringify(forbidden).includes('p1'), 'a refused request keeps no id');
    assert.equal(detail(forbidden!, 'resourceType'), 'Patient');
    assert.equal(forbidden!.agent.find((a) => a.type?.coding[0]?.code === '110153')?.who?.identifier?.value, 'ehr');
    assert.equal((await verifyTrail(trail.path)).ok, true);
  });

  test('GET /fhir/AuditEvent searches the trail: patient, subtype, outcome, type, agent, entity, date', async () => {
    const q = async (query: string) => {
      const res = await request(app).get(`/fhir/AuditEvent?${query}`).set(bearer(auditor)).expect(200);
      assert.equal(res.body.resourceType, 'Bundle');
      assert.equal(res.body.type, 'searchset');
      return (res.body.entry as Array<{ resource: AuditEvent }>).map((e) => e.resource);
    };
    const p1 = await q('patient=Patient/p1');
    assert.ok(p1.length >= 6);
    for (const e of p1) assert.ok(refs(e).some((r) => r === 'Patient/p1' || r.startsWith('Patient/p1/_history')));
    assert.deepEqual((await q('patient=p1&subtype=read')).map(sub), [['read']]);
    const reads = await q('subtype=http://hl7.org/fhir/restful-interaction|read');
    assert.ok(reads.length >= 2 && reads.every((e) => sub(e)?.includes('read')));
    const failures = await q('outcome=4');
    assert.ok(failures.some((e) => e.type.code === '110114'));
    assert.ok(failures.every((e) => e.outcome === '4'));
    assert.equal((await q('type=http://dicom.nema.org/resources/ontology/DCM|110114')).length, 1);
    assert.ok((await q('agent:identifier=urn:tidegate:oauth:client-id|ehr')).length >= 13);
    assert.equal((await q('agent:identifier=urn:tidegate:oauth:client-id|other')).length, 0);
    const obs = await q(`entity=Observation/${obsId}`);
    assert.deepEqual(obs.map(sub).flat().sort(), ['create', 'delete', 'patch']);
    assert.ok((await q(`date=ge${new Date(Date.now() - 3_600_000).toISOString()}`)).length >= 13);
    assert.equal((await q('date=lt2000-01-01')).length, 0);
    assert.equal((await q('date=2000')).length, 0);
  });

  test('paging with _count follows the next link without overlap; read by id', async () => {
    const first = await request(app).get('/fhir/AuditEvent?_count=3&outcome=0').set(bearer(auditor)).expect(200);
    assert.equal(first.body.entry.length, 3);
    const next = (first.body.link as Array<{ relation: string; url: string }>).find((l) => l.relation === 'next');
    assert.ok(next, 'a next link');
    const url = new URL(next.url);
    const second = await request(app).get(`${url.pathname}${url.search}`).set(bearer(auditor)).expect(200);
    const a = (first.body.entry as Array<{ resource: AuditEvent }>).map((e) => e.resource.id);
    const b = (second.body.entry as Array<{ resource: AuditEvent }>).map((e) => e.resource.id);
    assert.ok(b.length > 0);
    assert.equal(a.filter((x) => b.includes(x)).length, 0);
    const one = await request(app).get(`/fhir/AuditEvent/${a[0]}`).set(bearer(auditor)).expect(200);
    assert.equal(one.body.id, a[0]);
    await request(app).get('/fhir/AuditEvent/does-not-exist').set(bearer(auditor)).expect(404);
  });

  test('only an audit scope reads the trail; it cannot be written through the API; unknown parameters are refused', async () => {
    await request(app).get('/fhir/AuditEvent').expect(401);
    const wildcard = await request(app).get('/fhir/AuditEvent').set(bearer(await sign('system/*.rs'))).expect(403);
    assert.equal(wildcard.body.resourceType, 'OperationOutcome');
    assert.match(wildcard.headers['www-authenticate'] ?? '', /insufficient_scope/);
    await request(app).get('/fhir/AuditEvent').set(bearer(await sign('user/AuditEvent.rs', { patient: 'p1' }))).expect(403);
    await request(app).get('/fhir/AuditEvent').set(bearer(await sign('user/AuditEvent.read'))).expect(200);
    const before = readFileSync(trail.path, 'utf8');
    const post = await request(app).post('/fhir/AuditEvent').set(bearer(await sign('system/*.cruds system/AuditEvent.cruds'))).set('Content-Type', FHIR).send('{"resourceType":"AuditEvent","id":"forged"}').expect(405);
    assert.equal(post.body.resourceType, 'OperationOutcome');
    await trail.flush();
    assert.ok(!readFileSync(trail.path, 'utf8').slice(before.length).includes('"forged"'));
    assert.throws(() => h.service.read('AuditEvent', 'forged'), { status: 404 });
    const bad = await request(app).get('/fhir/AuditEvent?name=Smith').set(bearer(auditor)).expect(400);
    assert.equal(bad.body.resourceType, 'OperationOutcome');
  });
});
