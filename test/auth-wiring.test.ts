/**
 * The FHIR app as the node builds it (src/fhir/express.ts `fhirApp(…, auth)`, the wiring
 * src/node/node.ts uses when the config has an `auth` section): createAuth from a config with a
 * local JWK Set file, then no token → 401, a token without the scope → 403, a good token → the
 * interaction, and discovery public. The middleware's own matrix is in test/auth-http.test.ts.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import request from 'supertest';
import express from 'express';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { fhirApp } from '../src/fhir/express.ts';
import { capabilityStatement } from '../src/fhir/capability.ts';
import { createAuth } from '../src/auth/setup.ts';
import { AuthConfigSchema } from '../src/auth/config.ts';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const ISS = 'https://auth.example.org';
const AUD = 'https://node-a.example.org/fhir';

describe('fhirApp with auth: the wiring the node uses', () => {
  let h: Harness;
  let dir: string;
  let app: ReturnType<typeof fhirApp>;
  let sign: (scope: string) => Promise<string>;

  before(async () => {
    const kp = await generateKeyPair('ES256', { extractable: true });
    dir = mkdtempSync(join(tmpdir(), 'tidegate-auth-'));
    const jwksFile = join(dir, 'jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(kp.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    sign = (scope) => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ scope, client_id: 'ehr' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(ISS).setAudience(AUD).setSubject('ehr').setIssuedAt(now).setExpirationTime(now + 300).sign(kp.privateKey);
    };
    h = await makeHarness();
    const auth = createAuth(AuthConfigSchema.parse({ issuer: ISS, audience: AUD, jwksFile }), { log: pino({ level: 'silent' }) });
    const ops = express.Router();
    ops.get('/admin/ping', (_req, res) => void res.json({ ok: true }));
    ops.get('/metrics', (_req, res) => void res.type('text/plain').send('x 1\n'));
    ops.get('/readyz', (_req, res) => void res.json({ ready: true }));
    app = fhirApp(h.service, pino({ level: 'silent' }), () => ({}), ops, auth);
  });
  after(async () => {
    await h?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('no token → 401 with WWW-Authenticate and an OperationOutcome; nothing written', async () => {
    const res = await request(app).put('/fhir/Patient/w1').set('Content-Type', FHIR).send('{"resourceType":"Patient","id":"w1"}').expect(401);
    assert.match(res.headers['www-authenticate'] ?? '', /^Bearer/);
    assert.equal(res.body.resourceType, 'OperationOutcome');
    assert.throws(() => h.service.read('Patient', 'w1'), { status: 404 }, 'nothing was written');
  });

  test('a read-only token cannot write (403), a write token can (201), and reads need read scope', async () => {
    const readOnly = await sign('system/Patient.read');
    const res = await request(app).put('/fhir/Patient/w1').set('Authorization', `Bearer ${readOnly}`).set('Content-Type', FHIR).send('{"resourceType":"Patient","id":"w1"}').expect(403);
    assert.equal(res.body.resourceType, 'OperationOutcome');
    assert.throws(() => h.service.read('Patient', 'w1'), { status: 404 }, 'nothing was written');
    const writer = await sign('system/Patient.cruds');
    await request(app).put('/fhir/Patient/w1').set('Authorization', `Bearer ${writer}`).set('Content-Type', FHIR).send('{"resourceType":"Patient","id":"w1","gender":"other"}').expect(201);
    const got = await request(app).get('/fhir/Patient/w1').set('Authorization', `Bearer ${readOnly}`).expect(200);
    assert.equal(got.body.gender, 'other');
    await request(app).get('/fhir/Observation/x').set('Authorization', `Bearer ${readOnly}`).expect(403);
  });

  test('discovery and the CapabilityStatement stay public; /healthz too', async () => {
    const d = await request(app).get('/fhir/.well-known/smart-configuration').expect(200);
    assert.ok(Array.isArray(d.body.grant_types_supported) || typeof d.body.issuer === 'string' || typeof d.body.token_endpoint === 'string');
    await request(app).get('/fhir/metadata').expect(200);
    await request(app).get('/healthz').expect(200);
  });

  test('operations endpoints need a token with the tidegate/admin scope; probes stay open', async () => {
    for (const path of ['/admin/ping', '/metrics']) {
      const none = await request(app).get(path).expect(401);
      assert.match(none.headers['www-authenticate'] ?? '', /^Bearer/);
      assert.equal(none.body.resourceType, 'OperationOutcome');
      const clinical = await sign('system/*.cruds');
      await request(app).get(path).set('Authorization', `Bearer ${clinical}`).expect(403);
      const admin = await sign('tidegate/admin');
      await request(app).get(path).set('Authorization', `Bearer ${admin}`).expect(200);
    }
    await request(app).get('/readyz').expect(200);
    await request(app).get('/healthz').expect(200);
  });

  test('the CapabilityStatement advertises SMART (rest.security, oauth-uris) only when auth is on', () => {
    const on = capabilityStatement('https://node-a.example.org/fhir', 'node-a', { search: false, smart: { token: 'https://node-a.example.org/auth/token' } });
    const sec = on.rest?.[0]?.security;
    assert.equal(sec?.service?.[0]?.coding?.[0]?.code, 'SMART-on-FHIR');
    const uris = sec?.extension?.find((e) => e.url === 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris');
    assert.equal(uris?.extension?.find((e) => e.url === 'token')?.valueUri, 'https://node-a.example.org/auth/token');
    const off = capabilityStatement('https://node-a.example.org/fhir', 'node-a', { search: false });
    assert.equal(off.rest?.[0]?.security, undefined);
  });
});
