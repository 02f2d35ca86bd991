/**
 * Breach detection (docs/security.md "Breach detection"): every signal raises an alert within 1 s
 * (AuditEvent, Prometheus counter, webhook), through the real paths — crafted envelopes on real
 * Redis into a real Tide, real HTTP requests to a real fhirApp with SMART authorization — and the
 * automatic responses (peer quarantine, token revocation) hold until an administrator clears them.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import express from 'express';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import pino from 'pino';
import request from 'supertest';
import { createAuth } from '../src/auth/setup.ts';
import { AuthConfigSchema } from '../src/auth/config.ts';
import { generateNodeKeys } from '../src/envelope/index.ts';
import { fhirApp } from '../src/fhir/express.ts';
import { tideMetricsRegistry } from '../src/ops/metrics.ts';
import { BreachDetector, RevocationList, SECURITY_SIGNALS, securityMonitor, securityRouter, patientsInResponse, classifyForMonitor } from '../src/security/index.ts';
import type { SecurityAlert } from '../src/security/index.ts';
import { Tide, inboxQueueName } from '../src/tide/index.ts';
import { measureTideSignals, oneUpdate, sealUpdates } from '../src/bench/detection.ts';
import { DocReplica, REDIS_BASE, waitFor } from './fixtures/tide/harness.ts';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const REDIS_URL = `${REDIS_BASE}/9`;

describe('breach detection: Tide signals (real Redis, real envelopes)', () => {
  test('each Tide signal alerts within 1 s of the crafted envelope entering the inbox', async (t) => {
    // Two rounds; the bound applies to the second. The first message after start() also pays for
    // starting the node's envelope worker threads (1.8 s seen on a loaded 2-core machine), which
    // is start-up, not detection.
    const times = await measureTideSignals(REDIS_URL, 2);
    t.diagnostic(JSON.stringify(times));
    for (const signal of ['envelope-signature', 'unknown-sender', 'replay', 'decryption-failure', 'peer-not-allowed']) {
      const xs = times[signal] ?? [];
      assert.equal(xs.length, 2, signal);
      assert.ok((xs[1] as number) < 1000, `${signal}: ${xs[1]} ms`);
    }
  });

  test('response: a verified peer sending what it may not is quarantined until POST /admin/peers/:id/release', async () => {
    const prefix = `sectest-${randomUUID().slice(0, 8)}`;
    const A = generateNodeKeys('victim');
    const B = generateNodeKeys('peer');
    const alerts: SecurityAlert[] = [];
    let tide: Tide | undefined;
    const detector = new BreachDetector({ nodeId: 'victim', quarantinePeer: (id, reason) => tide!.quarantinePeer(id, reason) });
    detector.onAlert((a) => alerts.push(a));
    const replica = new DocReplica('victim');
    tide = new Tide({
      self: A.secretKeys,
      redisUrl: REDIS_URL,
      prefix,
      peers: [{ nodeId: 'peer', redisUrl: REDIS_URL, publicKeys: B.publicKeys, maySend: ['Observation'] }],
      replica,
      antiEntropyIntervalMs: 0,
      logger: { info() {}, warn() {}, error() {} },
      onRejection: (e) => detector.tideRejection(e),
    });
    await tide.start();
    const inbox = new Queue(inboxQueueName('victim'), { connection: { url: REDIS_URL }, prefix, skipMetasUpdate: true });
    const app = express().use(securityRouter({ nodeId: 'victim', detector, tide, revocations: new RevocationList() }));
    try {
      const bad = sealUpdates(B.secretKeys, A.publicKeys, [oneUpdate('Patient/x')]);
      await inbox.add('updates', { env: bad.env }, { jobId: bad.messageId, attempts: 1 });
      await waitFor('quarantined', () => tide!.peerQuarantine('peer') !== undefined);
      assert.equal(alerts[0]?.signal, 'peer-not-allowed');
      assert.deepEqual(alerts[0]?.responses, ['quarantine-peer']);
      assert.equal(tide.auditLog.list().length, 1, 'the message quarantine AuditEvent (the alert one went to the detector log)');
      assert.equal(detector.auditLog.list(1)[0]?.subtype[0]?.code, 'peer-not-allowed');
      // while quarantined, even an allowed message is refused
      const ok = sealUpdates(B.secretKeys, A.publicKeys, [oneUpdate('Observation/o')]);
      await inbox.add('updates', { env: ok.env }, { jobId: ok.messageId, attempts: 1 });
      await waitFor('refused', async () => (await tide!.quarantined(5)).some((e) => e.reason === 'ERR_PEER_QUARANTINED'));
      assert.equal(replica.json('Observation/o'), undefined);
      await request(app).post('/admin/peers/nope/release').expect(404);
      const rel = await request(app).post('/admin/peers/peer/release').expect(200);
      assert.equal(rel.body.released, true);
      const ok2 = sealUpdates(B.secretKeys, A.publicKeys, [oneUpdate('Observation/o2')]);
      await inbox.add('updates', { env: ok2.env }, { jobId: ok2.messageId, attempts: 1 });
      await waitFor('applied after release', () => replica.json('Observation/o2') !== undefined);
      const listed = await request(app).get('/admin/security/alerts').expect(200);
      assert.equal(listed.body.counts['peer-not-allowed'], 1);
    } finally {
      await inbox.close();
      await tide.stop();
      const r = new Redis(REDIS_URL);
      const keys = await r.keys(`${prefix}:*`);
      if (keys.length > 0) await r.del(...keys);
      await r.quit();
    }
  });

  test('an unverified claimed sender is never quarantined (an attacker could name any peer)', () => {
    const quarantined: string[] = [];
    const d = new BreachDetector({ nodeId: 'n', config: { responses: { quarantinePeer: ['envelope-signature', 'peer-not-allowed'] } }, quarantinePeer: async (id) => quarantined.push(id) });
    d.tideRejection({ node: 'n', reason: 'ERR_SIGNATURE_INVALID', sender: 'peer', senderVerified: false, kind: 'updates', messageId: 'm', receivedAt: Date.now(), quarantinedAt: Date.now() });
    assert.equal(d.alertCounts()['envelope-signature'], 1);
    assert.deepEqual(quarantined, []);
    d.tideRejection({ node: 'n', reason: 'ERR_UPDATE_MALFORMED', sender: 'peer', senderVerified: true, kind: 'updates', messageId: 'm2', receivedAt: Date.now(), quarantinedAt: Date.now() });
    assert.equal(Object.values(d.alertCounts()).reduce((a, b) => a + b, 0), 1, 'codes without a signal raise nothing');
  });
});

describe('breach detection: HTTP signals (real fhirApp with SMART authorization)', () => {
  let h: Harness;
  let dir: string;
  let app: ReturnType<typeof fhirApp>;
  let sign: (scope: string, jti?: string) => Promise<string>;
  let detector: BreachDetector;
  let revocations: RevocationList;
  const alerts: SecurityAlert[] = [];
  const hook: { body: unknown; at: number }[] = [];
  let hookServer: ReturnType<typeof createServer>;

  before(async () => {
    hookServer = createServer((req, res) => {
      let text = '';
      req.on('data', (c) => (text += c));
      req.on('end', () => {
        hook.push({ body: JSON.parse(text), at: Date.now() });
        res.end('ok');
      });
    });
    await new Promise<void>((r) => hookServer.listen(0, '127.0.0.1', () => r()));
    const kp = await generateKeyPair('ES256', { extractable: true });
    dir = mkdtempSync(join(tmpdir(), 'tidegate-sec-'));
    const jwksFile = join(dir, 'jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(kp.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    const ISS = 'https://auth.example.org';
    const AUD = 'https://node-a.example.org/fhir';
    sign = (scope, jti = randomUUID()) => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ scope, client_id: 'ehr' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(ISS).setAudience(AUD).setSubject('ehr').setJti(jti).setIssuedAt(now).setExpirationTime(now + 300).sign(kp.privateKey);
    };
    h = await makeHarness();
    for (let i = 0; i < 12; i++) h.service.update({ type: 'Patient', id: `p${i}`, text: JSON.stringify({ resourceType: 'Patient', id: `p${i}` }), contentType: FHIR });
    h.service.update({ type: 'Observation', id: 'o1', text: JSON.stringify({ resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p11' } }), contentType: FHIR });
    revocations = new RevocationList({ redisUrl: REDIS_URL, key: `sectest-revoked-${randomUUID()}` });
    await revocations.load();
    detector = new BreachDetector({
      nodeId: 'node-a',
      config: {
        authFailures: { threshold: 5, windowMs: 10_000 },
        patientReads: { threshold: 8, windowMs: 60_000 },
        scraping: { threshold: 6, windowMs: 10_000 },
        webhook: { url: `http://127.0.0.1:${(hookServer.address() as AddressInfo).port}/alerts`, timeoutMs: 1000 },
        responses: { revokeToken: ['patient-read-volume', 'scraping'] },
      },
      revocations,
    });
    detector.onAlert((a) => alerts.push(a));
    const auth = createAuth(AuthConfigSchema.parse({ issuer: ISS, audience: AUD, jwksFile }), { log: pino({ level: 'silent' }), isRevoked: revocations.isRevoked });
    const extra = express.Router();
    extra.use('/fhir', securityMonitor(detector));
    extra.use(securityRouter({ nodeId: 'node-a', detector, tide: { quarantinePeer: async () => false, releasePeer: async () => false }, revocations }));
    app = fhirApp(h.service, pino({ level: 'silent' }), () => ({}), extra, auth);
  });
  after(async () => {
    await detector?.idle();
    await h?.close();
    await new Promise<void>((r) => hookServer.close(() => r()));
    for (const r of revocations.list()) await revocations.release(r.jti);
    await revocations?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('monitor helpers: request kinds and the patients a response carried', () => {
    assert.equal(classifyForMonitor('GET', '/Patient/1'), 'read');
    assert.equal(classifyForMonitor('GET', '/Patient'), 'search');
    assert.equal(classifyForMonitor('POST', '/Observation/_search'), 'search');
    assert.equal(classifyForMonitor('GET', '/Patient/1/_history/2'), 'history');
    assert.equal(classifyForMonitor('PUT', '/Patient/1'), 'other');
    assert.equal(classifyForMonitor('GET', '/metadata'), 'other');
    assert.deepEqual(patientsInResponse('/Patient/a', '{"id":"a"}'), ['a']);
    assert.deepEqual(patientsInResponse('/Observation', '{"entry":[{"fullUrl":"http://x/fhir/Patient/b"},{"resource":{"subject":{"reference":"Patient/c"}}}],"x":"Patient/c/_history/1"}').sort(), ['b', 'c']);
  });

  test('a burst of 401s from one IP alerts within 1 s of the threshold, with AuditEvent, metric and webhook', async () => {
    for (let i = 0; i < 4; i++) await request(app).get('/fhir/Patient/p0').set('Authorization', 'Bearer not-a-token').expect(401);
    assert.equal(alerts.find((x) => x.signal === 'auth-failure-burst'), undefined, '4 failures are below the threshold');
    // measured from the request that reaches the threshold (not from the first of the burst)
    const t0 = Date.now();
    await request(app).get('/fhir/Patient/p0').set('Authorization', 'Bearer not-a-token').expect(401);
    const a = alerts.find((x) => x.signal === 'auth-failure-burst');
    assert.ok(a, 'alerted');
    assert.ok(a.at - t0 < 1000);
    assert.equal(a.subject.kind, 'ip');
    const event = detector.auditLog.list().find((e) => e.id === a.id);
    assert.equal(event?.type.code, '110113');
    assert.equal(event?.subtype[0]?.code, 'auth-failure-burst');
    const metrics = await tideMetricsRegistry({ stats: () => ({}) as never, peers: () => [], pending: async () => 0 }, 'node-a', detector).getSingleMetricAsString('tidegate_security_alerts_total');
    assert.match(metrics, /tidegate_security_alerts_total\{signal="auth-failure-burst",node="node-a"\} 1/);
    for (const s of SECURITY_SIGNALS) assert.ok(metrics.includes(`signal="${s}"`), s);
    await waitFor('webhook', () => hook.length >= 1, 10_000);
    assert.ok((hook[0]?.at as number) - a.at < 1000);
    assert.equal((hook[0]?.body as { alert: { id: string } }).alert.id, a.id);
  });

  test('one token reading many patients alerts and is revoked until DELETE /admin/revocations/:jti', async () => {
    const jti = randomUUID();
    const token = await sign('system/*.read', jti);
    const t0 = Date.now();
    for (let i = 0; i < 8; i++) await request(app).get(`/fhir/Patient/p${i}`).set('Authorization', `Bearer ${token}`).expect(200);
    assert.equal(alerts.filter((x) => x.signal === 'patient-read-volume').length, 0, '8 patients are within the threshold');
    // the ninth patient arrives through an Observation's subject reference
    await request(app).get('/fhir/Observation/o1').set('Authorization', `Bearer ${token}`).expect(200);
    const a = alerts.find((x) => x.signal === 'patient-read-volume');
    assert.ok(a);
    assert.ok(a.at - t0 < 1000 + 9 * 200);
    assert.deepEqual(a.responses, ['revoke-token']);
    assert.equal(a.subject.value, jti);
    assert.ok(!JSON.stringify(detector.auditLog.list()).includes('"p1"'), 'no patient ids in the AuditEvent');
    assert.equal(revocations.has(jti), true);
    await request(app).get('/fhir/Patient/p0').set('Authorization', `Bearer ${token}`).expect(401);
    // the operations endpoints need an operator's token (src/auth/admin.ts)
    await request(app).get('/admin/revocations').expect(401);
    const operator = `Bearer ${await sign('tidegate/admin', 'operator-jti')}`;
    const list = await request(app).get('/admin/revocations').set('Authorization', operator).expect(200);
    assert.equal(list.body.revocations[0].jti, jti);
    await request(app).delete(`/admin/revocations/${jti}`).set('Authorization', operator).expect(200);
    await request(app).delete(`/admin/revocations/${jti}`).set('Authorization', operator).expect(404);
    await request(app).get('/fhir/Patient/p0').set('Authorization', `Bearer ${token}`).expect(200);
  });

  test('_history scraping by one token alerts and revokes it', async () => {
    const jti = randomUUID();
    const token = await sign('system/Patient.read', jti);
    for (let i = 0; i < 6; i++) await request(app).get(`/fhir/Patient/p0/_history`).set('Authorization', `Bearer ${token}`).expect(200);
    const a = alerts.find((x) => x.signal === 'scraping');
    assert.ok(a);
    assert.equal(a.count, 6);
    assert.equal(revocations.has(jti), true);
    await request(app).get('/fhir/Patient/p0/_history').set('Authorization', `Bearer ${token}`).expect(401);
  });

  test('baseline: a client far above its learned baseline alerts below the absolute threshold', () => {
    let now = 1_000_000;
    const d = new BreachDetector({ nodeId: 'n', now: () => now, config: { patientReads: { threshold: 1000, windowMs: 1000, baselineFactor: 3, baselineMin: 5 } } });
    const obs = (jti: string, patients: string[]) => d.httpRequest({ status: 200, method: 'GET', kind: 'read', ip: '10.0.0.1', jti, clientId: 'app', subject: 'app', expiresAtMs: undefined, patients, startedAt: now });
    // three windows of normal use: 2 patients per window
    for (let w = 0; w < 3; w++) {
      obs(`t${w}`, ['a', 'b']);
      now += 1001;
    }
    obs('t9', ['a']);
    for (let i = 0; i < 6; i++) obs('t9', [`x${i}`]);
    assert.equal(d.alertCounts()['patient-read-volume'], 1);
    assert.match(d.alerts(1)[0]?.summary ?? '', /baseline 2\.0/);
  });

  test('cooldown: a repeated signal for one subject alerts once and counts the rest as suppressed; a dead webhook never blocks', async () => {
    const d = new BreachDetector({ nodeId: 'n', config: { cooldownMs: 60_000, authFailures: { threshold: 2 }, webhook: { url: 'http://127.0.0.1:1/x', timeoutMs: 200 } } });
    for (let i = 0; i < 10; i++) d.httpRequest({ status: 403, method: 'GET', kind: 'read', ip: '10.1.1.1', jti: undefined, clientId: undefined, subject: undefined, expiresAtMs: undefined, patients: [], startedAt: Date.now() });
    // feeding returned before the webhook call ended (not a wall-clock bound, which can miss on a
    // loaded machine): the failure is only counted once the connection is refused
    assert.deepEqual(d.webhookStats(), { sent: 0, failed: 0, dropped: 0 }, 'feeding never waits for the webhook');
    assert.equal(d.alertCounts()['auth-failure-burst'], 1);
    await d.idle();
    assert.equal(d.webhookStats()?.failed, 1);
  });
});

describe('configuration: peer authorization and the security section', () => {
  test('peers[].maySend / withheldLabels and security are validated; bad labels are refused with the field path', async () => {
    const { loadNodeConfig } = await import('../src/config/config.ts');
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-seccfg-'));
    try {
      const base = { nodeId: 'a', hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: 'a.secret.json', storeFile: ':memory:' };
      const peer = { nodeId: 'b', redisUrl: 'redis://127.0.0.1:6379', publicKeyFile: 'b.public.json' };
      const file = join(dir, 'node.json');
      writeFileSync(file, JSON.stringify({ ...base, peers: [{ ...peer, maySend: ['Observation'], withheldLabels: ['R', 'http://terminology.hl7.org/CodeSystem/v3-ActCode|HIV'] }], security: { responses: { revokeToken: ['scraping'] } } }));
      const cfg = loadNodeConfig(file, {});
      assert.deepEqual(cfg.peers[0]?.maySend, ['Observation']);
      assert.equal(cfg.peers[0]?.withheldLabels?.length, 2);
      assert.deepEqual(cfg.security.responses.revokeToken, ['scraping']);
      assert.equal(cfg.security.authFailures.threshold, 20);
      writeFileSync(file, JSON.stringify({ ...base, peers: [{ ...peer, withheldLabels: ['a|b|c'] }] }));
      assert.throws(() => loadNodeConfig(file, {}), /peers\.0\.withheldLabels\.0/);
      writeFileSync(file, JSON.stringify({ ...base, security: { webhook: { url: 'http://siem.example/x' } } }));
      assert.throws(() => loadNodeConfig(file, {}), /security\.webhook\.url/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
