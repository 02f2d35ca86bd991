/**
 * Client authorization over HTTP: the middleware of src/auth mounted in front of a real FHIR app
 * (src/fhir/express.ts `fhirApp`, a Medplum hospital behind it for search), without editing
 * express.ts: an outer express app serves discovery, runs `smartAuth`, then hands over to fhirApp.
 * Keys are generated here; a JWK Set is also served over HTTP to exercise the remote key cache.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import request from 'supertest';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, base64url } from 'jose';
import type { JWK } from 'jose';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';
import { currentFromService, localKeySet, remoteKeySet, smartAuth, smartConfigurationHandler, TokenVerifier } from '../src/auth/index.ts';
import type { AuthDecisionEvent } from '../src/auth/index.ts';

const ISS = 'https://auth.example.org';
const AUD = 'https://node-a.example.org/fhir';
type Key = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

let signingKey: Key;
let publicJwk: JWK;
let publicPem: string;
let otherKey: Key;

async function token(claims: Record<string, unknown>, opts: { key?: Key; kid?: string; alg?: string } = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const c: Record<string, unknown> = { iss: ISS, aud: AUD, sub: 'u1', client_id: 'app', iat: now - 5, exp: now + 300, jti: `j-${Math.random()}`, ...claims };
  for (const [k, v] of Object.entries(c)) if (v === undefined) delete c[k];
  return new SignJWT(c).setProtectedHeader({ alg: opts.alg ?? 'RS256', kid: opts.kid ?? 'k1' }).sign(opts.key ?? signingKey);
}

const OUTCOME_HEADERS = (res: request.Response) => {
  assert.match(res.headers['content-type'] ?? '', /^application\/fhir\+json/);
  assert.equal(res.body.resourceType, 'OperationOutcome');
  assert.ok(res.body.issue?.[0]?.diagnostics, 'diagnostics present');
};

function obs(id: string, patient: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ resourceType: 'Observation', id, status: 'final', code: { text: 'Hb' }, subject: { reference: `Patient/${patient}` }, ...extra });
}

describe('SMART authorization in front of the FHIR app', () => {
  let h: Harness;
  let app: express.Express;
  const decisions: AuthDecisionEvent[] = [];
  let admin: string;

  before(async () => {
    const kp = await generateKeyPair('RS256', { extractable: true });
    signingKey = kp.privateKey;
    publicJwk = { ...(await exportJWK(kp.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    publicPem = await exportSPKI(kp.publicKey);
    otherKey = (await generateKeyPair('RS256')).privateKey;
    h = await makeHarness({ hospital: true });
    const verifier = new TokenVerifier({ issuer: ISS, audience: AUD, keys: localKeySet({ keys: [publicJwk] }) });
    app = express();
    app.get('/fhir/.well-known/smart-configuration', smartConfigurationHandler({ issuer: ISS, jwksUri: `${ISS}/jwks`, tokenEndpoint: `${ISS}/token`, algorithms: ['RS256'] }));
    app.use('/fhir', smartAuth({ verifier, current: currentFromService(h.service), onDecision: (d) => decisions.push(d) }));
    app.use(h.app);

    admin = await token({ scope: 'system/*.cruds' });
    const put = (path: string, body: string) => request(app).put(path).set('Authorization', `Bearer ${admin}`).set('Content-Type', FHIR).send(body).expect(201);
    await put('/fhir/Patient/p1', '{"resourceType":"Patient","id":"p1","gender":"female"}');
    await put('/fhir/Patient/p2', '{"resourceType":"Patient","id":"p2","gender":"male"}');
    await put('/fhir/Practitioner/dr1', '{"resourceType":"Practitioner","id":"dr1","name":[{"family":"Doc"}]}');
    await put('/fhir/Observation/o-p1', obs('o-p1', 'p1', { performer: [{ reference: 'Practitioner/dr1' }] }));
    await put('/fhir/Observation/o-p2', obs('o-p2', 'p2', { identifier: [{ system: 'urn:test', value: 'o-p2' }] }));
    await put('/fhir/Encounter/e-p2', '{"resourceType":"Encounter","id":"e-p2","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p2"}}');
    await h.sync!.idle();
  });
  after(async () => {
    await h?.close();
  });

  test('without a token: 401, bare Bearer challenge, OperationOutcome; nothing reaches the FHIR app', async () => {
    const before = decisions.length;
    for (const [method, path] of [['get', '/fhir/Observation/o-p1'], ['get', '/fhir/Observation'], ['delete', '/fhir/Observation/o-p1'], ['get', '/fhir/nowhere/a/b/c/d']] as const) {
      const res = await request(app)[method](path).expect(401);
      assert.equal(res.headers['www-authenticate'], 'Bearer realm="tidegate"');
      OUTCOME_HEADERS(res);
      assert.equal(res.body.issue[0].code, 'login');
    }
    const res = await request(app).get('/fhir/Observation/o-p1').set('Authorization', 'Basic dXNlcjpwYXNz').expect(401);
    assert.equal(res.headers['www-authenticate'], 'Bearer realm="tidegate"');
    assert.equal(h.service.read('Observation', 'o-p1').status, 200, 'the delete did not happen');
    assert.ok(decisions.slice(before).every((d) => !d.allowed && d.reason === 'missing_token'));
  });

  test('invalid tokens: 401 invalid_token with an OperationOutcome', async () => {
    const now = Math.floor(Date.now() / 1000);
    const payload = base64url.encode(JSON.stringify({ iss: ISS, aud: AUD, exp: now + 300, scope: 'system/*.cruds' }));
    const good = await token({ scope: 'system/*.cruds' });
    const [gh, gp, gs] = good.split('.') as [string, string, string];
    const bad: Record<string, string> = {
      expired: await token({ scope: 'system/*.cruds', iat: now - 4000, exp: now - 3600 }),
      'not yet valid': await token({ scope: 'system/*.cruds', nbf: now + 3600 }),
      'wrong iss': await token({ scope: 'system/*.cruds', iss: 'https://evil.example.org' }),
      'wrong aud': await token({ scope: 'system/*.cruds', aud: 'https://elsewhere.example.org/fhir' }),
      'alg none': `${base64url.encode(JSON.stringify({ alg: 'none' }))}.${payload}.`,
      'HS256 keyed with the public key': await new SignJWT({ iss: ISS, aud: AUD, exp: now + 300, scope: 'system/*.cruds' }).setProtectedHeader({ alg: 'HS256', kid: 'k1' }).sign(new TextEncoder().encode(publicPem)),
      'unknown kid': await token({ scope: 'system/*.cruds' }, { kid: 'k9' }),
      'other key under the known kid': await token({ scope: 'system/*.cruds' }, { key: otherKey }),
      'tampered payload': `${gh}.${base64url.encode(JSON.stringify({ ...JSON.parse(new TextDecoder().decode(base64url.decode(gp))), sub: 'someone-else' }))}.${gs}`,
      'tampered signature': `${gh}.${gp}.${gs.slice(0, -4)}${gs.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`,
      garbage: 'not-a-jwt',
    };
    for (const [name, t] of Object.entries(bad)) {
      const res = await request(app).delete('/fhir/Observation/o-p2').set('Authorization', `Bearer ${t}`);
      assert.equal(res.status, 401, name);
      assert.match(res.headers['www-authenticate'] ?? '', /^Bearer realm="tidegate", error="invalid_token", error_description="[^"]+"$/, name);
      OUTCOME_HEADERS(res);
    }
    const expired = await request(app).get('/fhir/Observation/o-p1').set('Authorization', `Bearer ${bad.expired}`).expect(401);
    assert.equal(expired.body.issue[0].code, 'expired');
    assert.equal(h.service.read('Observation', 'o-p2').status, 200, 'no delete went through');
  });

  test('metadata and smart-configuration are public', async () => {
    const meta = await request(app).get('/fhir/metadata').expect(200);
    assert.equal(meta.body.resourceType, 'CapabilityStatement');
    const sc = await request(app).get('/fhir/.well-known/smart-configuration').expect(200);
    assert.match(sc.headers['content-type'] ?? '', /^application\/json/);
    assert.equal(sc.body.token_endpoint, `${ISS}/token`);
    assert.ok(sc.body.capabilities.includes('permission-v2'));
  });

  test('scope matrix over HTTP: 403 insufficient_scope with the scope that would do, and no write', async () => {
    const versionBefore = h.service.read('Observation', 'o-p1').headers.ETag;
    const cases: Array<[string, 'get' | 'put' | 'delete' | 'post', string, number]> = [
      ['user/Observation.rs', 'get', '/fhir/Observation/o-p1', 200],
      ['user/Observation.rs', 'put', '/fhir/Observation/o-p1', 403],
      ['user/Observation.rs', 'delete', '/fhir/Observation/o-p1', 403],
      ['user/Observation.rs', 'post', '/fhir/Observation', 403],
      ['user/Observation.rs', 'get', '/fhir/Patient/p1', 403],
      ['user/Observation.read', 'get', '/fhir/Observation/o-p1', 200],
      ['user/Observation.read', 'get', '/fhir/Observation/o-p1/_history', 200],
      ['user/Observation.read', 'put', '/fhir/Observation/o-p1', 403],
      ['user/Observation.s', 'get', '/fhir/Observation/o-p1', 403],
      ['user/Observation.cud', 'get', '/fhir/Observation/o-p1', 403],
      ['user/Observation.cud', 'get', '/fhir/Observation?status=final', 403],
      ['user/*.write', 'get', '/fhir/Observation/o-p1', 403],
      ['user/Observation.rs?category=laboratory', 'get', '/fhir/Observation/o-p1', 403],
      ['patient/Observation.rs', 'get', '/fhir/Observation/o-p1', 403],
      ['openid fhirUser', 'get', '/fhir/Observation/o-p1', 403],
    ];
    for (const [scope, method, path, status] of cases) {
      let req = request(app)[method](path).set('Authorization', `Bearer ${await token({ scope })}`);
      if (method === 'put') req = req.set('Content-Type', FHIR).send(obs('o-p1', 'p1', { status: 'amended' }));
      if (method === 'post') req = req.set('Content-Type', FHIR).send(obs('x', 'p1'));
      const res = await req;
      assert.equal(res.status, status, `${scope} ${method} ${path}`);
      if (status === 403) {
        OUTCOME_HEADERS(res);
        assert.equal(res.body.issue[0].code, 'forbidden');
        assert.match(res.headers['www-authenticate'] ?? '', /error="insufficient_scope".*scope="[^"]+"/, `${scope} ${method} ${path}`);
      }
    }
    assert.equal(h.service.read('Observation', 'o-p1').headers.ETag, versionBefore, 'no write went through');
    // The write scopes do write.
    const w = await token({ scope: 'user/Observation.cruds' });
    await request(app).put('/fhir/Observation/o-w').set('Authorization', `Bearer ${w}`).set('Content-Type', FHIR).send(obs('o-w', 'p1')).expect(201);
    await request(app).delete('/fhir/Observation/o-w').set('Authorization', `Bearer ${w}`).expect(204);
  });

  test('instance and type operations with any method reach the FHIR router: $resolve-conflict needs write scopes, unserved operations are 501', async () => {
    const body = JSON.stringify({ resourceType: 'Parameters', parameter: [{ name: 'path', valueString: 'status' }] });
    const writer = await token({ scope: 'system/*.cruds' });
    // o-p1 has no conflict record at `status`: the router's own answer (404 naming the path), not the classifier's bare 404
    const ok = await request(app).post('/fhir/Observation/o-p1/$resolve-conflict').set('Authorization', `Bearer ${writer}`).set('Content-Type', FHIR).send(body);
    assert.equal(ok.status, 404);
    assert.match(ok.body.issue[0].diagnostics, /no conflict record at status/);
    const reader = await token({ scope: 'user/Observation.rs' });
    const refused = await request(app).post('/fhir/Observation/o-p1/$resolve-conflict').set('Authorization', `Bearer ${reader}`).set('Content-Type', FHIR).send(body);
    assert.equal(refused.status, 403);
    for (const [method, path] of [['get', '/fhir/Patient/$everything'], ['delete', '/fhir/Patient/$foo'], ['put', '/fhir/Patient/p1/$foo']] as const) {
      const res = await request(app)[method](path).set('Authorization', `Bearer ${writer}`);
      assert.equal(res.status, 501, `${method} ${path}`);
    }
  });

  test('_include results need a scope for their own type', async () => {
    const t = await token({ scope: 'user/Observation.rs' });
    const res = await request(app).get('/fhir/Observation?_id=o-p1&_include=Observation:subject').set('Authorization', `Bearer ${t}`).expect(200);
    assert.deepEqual(res.body.entry.map((e: any) => `${e.resource.resourceType}/${e.resource.id}`), ['Observation/o-p1']);
    const t2 = await token({ scope: 'user/Observation.rs user/Patient.r' });
    const res2 = await request(app).get('/fhir/Observation?_id=o-p1&_include=Observation:subject').set('Authorization', `Bearer ${t2}`).expect(200);
    assert.deepEqual(res2.body.entry.map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort(), ['Observation/o-p1', 'Patient/p1']);
  });

  describe('a token with patient context p1', () => {
    let reader: string;
    let writer: string;
    before(async () => {
      reader = await token({ scope: 'launch/patient patient/*.rs', patient: 'p1' });
      writer = await token({ scope: 'launch/patient patient/*.cruds', patient: 'p1' });
    });

    test('reads its own compartment, not another patient\'s', async () => {
      await request(app).get('/fhir/Observation/o-p1').set('Authorization', `Bearer ${reader}`).expect(200);
      await request(app).get('/fhir/Patient/p1').set('Authorization', `Bearer ${reader}`).expect(200);
      for (const path of ['/fhir/Observation/o-p2', '/fhir/Patient/p2', '/fhir/Encounter/e-p2', '/fhir/Observation/o-p2/_history', '/fhir/Observation/o-p2/$conflicts']) {
        const res = await request(app).get(path).set('Authorization', `Bearer ${reader}`);
        assert.equal(res.status, 403, path);
        OUTCOME_HEADERS(res);
        assert.equal(res.headers.etag, undefined, `${path}: no ETag of the hidden resource`);
        assert.ok(!res.text.includes('"gender"') && !res.text.includes('Hb'), `${path}: no content leaks`);
      }
      const vid = h.service.read('Observation', 'o-p2').headers.ETag!.replace(/^W\/"|"$/g, '');
      await request(app).get(`/fhir/Observation/o-p2/_history/${vid}`).set('Authorization', `Bearer ${reader}`).expect(403);
      // Shared, non-patient types are readable; types outside the compartment are not.
      await request(app).get('/fhir/Practitioner/dr1').set('Authorization', `Bearer ${reader}`).expect(200);
      await request(app).get('/fhir/Binary/b1').set('Authorization', `Bearer ${reader}`).expect(403);
    });

    test('searches are constrained to the compartment, _include too', async () => {
      const all = await request(app).get('/fhir/Observation').set('Authorization', `Bearer ${reader}`).expect(200);
      assert.deepEqual(all.body.entry.map((e: any) => e.resource.id), ['o-p1']);
      assert.equal(all.body.total, 1);
      for (const l of all.body.link ?? []) assert.match(l.url, /subject=Patient%2Fp1|subject=Patient\/p1/, 'paging links keep the constraint');
      const other = await request(app).get('/fhir/Observation?subject=Patient/p2').set('Authorization', `Bearer ${reader}`).expect(200);
      assert.equal(other.body.entry, undefined, 'asking for another patient finds nothing');
      const pats = await request(app).get('/fhir/Patient').set('Authorization', `Bearer ${reader}`).expect(200);
      assert.deepEqual(pats.body.entry.map((e: any) => e.resource.id), ['p1']);
      const form = await request(app).post('/fhir/Encounter/_search').set('Authorization', `Bearer ${reader}`).set('Content-Type', 'application/x-www-form-urlencoded').send('subject=Patient/p2').expect(200);
      assert.equal(form.body.entry, undefined, 'POST _search is constrained too');
      const inc = await request(app).get('/fhir/Observation?_include=Observation:performer&_include=Observation:subject').set('Authorization', `Bearer ${reader}`).expect(200);
      assert.deepEqual(inc.body.entry.map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort(), ['Observation/o-p1', 'Patient/p1', 'Practitioner/dr1']);
      const rev = await request(app).get('/fhir/Patient?_revinclude=Observation:subject').set('Authorization', `Bearer ${reader}`).expect(200);
      assert.deepEqual(rev.body.entry.map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort(), ['Observation/o-p1', 'Patient/p1']);
      const sys = await request(app).get('/fhir?_type=Observation').set('Authorization', `Bearer ${reader}`).expect(403);
      OUTCOME_HEADERS(sys);
    });

    test('writes stay inside the compartment; refused writes change nothing', async () => {
      const updatesBefore = h.updates.length;
      const auth = { Authorization: `Bearer ${writer}`, 'Content-Type': FHIR };
      const refused: Array<[string, request.Test]> = [
        ['create for p2', request(app).post('/fhir/Observation').set(auth).send(obs('n', 'p2'))],
        ['take over o-p2', request(app).put('/fhir/Observation/o-p2').set(auth).send(obs('o-p2', 'p1'))],
        ['move o-p1 away', request(app).put('/fhir/Observation/o-p1').set(auth).send(obs('o-p1', 'p2'))],
        ['patch o-p1 away', request(app).patch('/fhir/Observation/o-p1').set({ Authorization: `Bearer ${writer}`, 'Content-Type': 'application/json-patch+json' }).send(JSON.stringify([{ op: 'replace', path: '/subject/reference', value: 'Patient/p2' }]))],
        ['delete o-p2', request(app).delete('/fhir/Observation/o-p2').set('Authorization', `Bearer ${writer}`)],
        ['write a Practitioner', request(app).put('/fhir/Practitioner/dr1').set(auth).send('{"resourceType":"Practitioner","id":"dr1"}')],
        ['conditional update', request(app).put('/fhir/Observation?identifier=urn:test|o-p2').set(auth).send(obs('o-p2', 'p1'))],
        ['conditional delete', request(app).delete('/fhir/Observation?identifier=urn:test|o-p2').set('Authorization', `Bearer ${writer}`)],
        ['conditional create answering p2\'s resource', request(app).post('/fhir/Observation').set(auth).set('If-None-Exist', 'identifier=urn:test|o-p2').send(obs('x', 'p1'))],
      ];
      for (const [name, req] of refused) {
        const res = await req;
        assert.equal(res.status, 403, name);
        OUTCOME_HEADERS(res);
        assert.ok(!res.text.includes('Hb') && !res.text.includes('urn:test'), `${name}: no resource content in the refusal`);
      }
      assert.equal(h.updates.length, updatesBefore, 'no update was produced');
      assert.match(String(h.service.read('Observation', 'o-p2').body), /Patient\/p2/);
      assert.match(String(h.service.read('Observation', 'o-p1').body), /Patient\/p1/);
      // Allowed writes in the compartment.
      await request(app).post('/fhir/Observation').set(auth).send(obs('ignored', 'p1')).expect(201);
      await request(app).put('/fhir/Observation/o-p1').set(auth).send(obs('o-p1', 'p1', { status: 'amended', performer: [{ reference: 'Practitioner/dr1' }] })).expect(200);
      await request(app).patch('/fhir/Observation/o-p1').set({ Authorization: `Bearer ${writer}`, 'Content-Type': 'application/json-patch+json' }).send(JSON.stringify([{ op: 'replace', path: '/status', value: 'final' }])).expect(200);
    });

    test('Bundle entries are checked one by one', async () => {
      const bundle = (entries: unknown[]) => JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry: entries });
      const auth = { Authorization: `Bearer ${writer}`, 'Content-Type': FHIR };
      const updatesBefore = h.updates.length;
      const res = await request(app).post('/fhir').set(auth).send(bundle([
        { resource: JSON.parse(obs('b1', 'p1')), request: { method: 'PUT', url: 'Observation/b1' } },
        { resource: JSON.parse(obs('b2', 'p2')), request: { method: 'PUT', url: 'Observation/b2' } },
      ]));
      assert.equal(res.status, 403);
      OUTCOME_HEADERS(res);
      assert.equal(h.updates.length, updatesBefore, 'nothing of the Bundle was written');
      // Batch entries are independent: a GET entry for another patient answers 403 in its place.
      const read = await request(app).post('/fhir').set(auth).send(bundle([
        { request: { method: 'GET', url: 'Observation/o-p2' } },
        { request: { method: 'GET', url: 'Observation/o-p1' } },
      ]));
      assert.equal(read.status, 200);
      assert.equal(read.body.type, 'batch-response');
      assert.equal(read.body.entry.length, 2, 'entries keep their positions');
      assert.match(read.body.entry[0].response.status, /^403/);
      assert.equal(read.body.entry[0].resource, undefined);
      assert.equal(read.body.entry[0].response.outcome.resourceType, 'OperationOutcome');
      assert.ok(!read.text.includes('Patient/p2'), 'nothing of the hidden resource leaks');
      assert.equal(read.body.entry[1].resource.id, 'o-p1');
      const bad = await request(app).post('/fhir').set(auth).send(bundle([{ request: { method: 'GET', url: 'Observation/a/b/c/d/e' } }]));
      assert.equal(bad.status, 400);
    });
  });

  test('a body over the limit is 413 with an OperationOutcome, before any handler', async () => {
    const small = express();
    small.use('/fhir', smartAuth({ verifier: new TokenVerifier({ issuer: ISS, audience: AUD, keys: localKeySet({ keys: [publicJwk] }) }), maxBodyBytes: 64 }));
    small.use(h.app);
    const res = await request(small).post('/fhir/Observation').set('Authorization', `Bearer ${admin}`).set('Content-Type', FHIR).send(obs('big', 'p1', { note: [{ text: 'x'.repeat(200) }] }));
    assert.equal(res.status, 413);
    OUTCOME_HEADERS(res);
  });
});

describe('remote JWK Set: fetched, cached, refetched on an unknown kid, 503 when unreachable', () => {
  let server: Server;
  let url: string;
  let served: JWK[] = [];
  let nextKey: JWK;
  let fetches = 0;
  let k1: Key;
  let k2: Key;

  before(async () => {
    const a = await generateKeyPair('ES256', { extractable: true });
    const b = await generateKeyPair('ES256', { extractable: true });
    k1 = a.privateKey;
    k2 = b.privateKey;
    served = [{ ...(await exportJWK(a.publicKey)), kid: 'r1', alg: 'ES256' }];
    nextKey = { ...(await exportJWK(b.publicKey)), kid: 'r2', alg: 'ES256' };
    server = createServer((_req, res) => {
      fetches++;
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ keys: served }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`;
  });
  after(async () => {
    await new Promise<void>((r) => server.close(() => r()));
  });

  test('rotation: a new kid is picked up; repeated tokens use the cache', async () => {
    const v = new TokenVerifier({ issuer: ISS, audience: AUD, keys: remoteKeySet(url, { cooldownMs: 0 }) });
    const t1 = await token({ scope: 'user/*.rs' }, { key: k1, kid: 'r1', alg: 'ES256' });
    await v.verify(t1);
    await v.verify(t1);
    assert.equal(fetches, 1, 'cached');
    served = [...served, nextKey];
    await v.verify(await token({ scope: 'user/*.rs' }, { key: k2, kid: 'r2', alg: 'ES256' }));
    assert.equal(fetches, 2, 'refetched once for the new kid');
    await assert.rejects(v.verify(await token({ scope: 'user/*.rs' }, { key: k2, kid: 'r3', alg: 'ES256' })), (e: any) => e.reason === 'unknown_kid');
  });

  test('an unreachable key server answers 503 with an OperationOutcome (not 401)', async () => {
    const dead = createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const port = (dead.address() as AddressInfo).port;
    await new Promise<void>((r) => dead.close(() => r()));
    const v = new TokenVerifier({ issuer: ISS, audience: AUD, keys: remoteKeySet(`http://127.0.0.1:${port}/jwks`, { timeoutMs: 2000 }) });
    const a = express();
    a.use('/fhir', smartAuth({ verifier: v }));
    a.use((_req, res) => res.status(200).send('reached'));
    const res = await request(a).get('/fhir/Observation/x').set('Authorization', `Bearer ${await token({ scope: 'user/*.rs' }, { key: k1, kid: 'r1', alg: 'ES256' })}`);
    assert.equal(res.status, 503);
    assert.equal(res.headers['retry-after'], '30');
    assert.equal(res.body.resourceType, 'OperationOutcome');
    assert.equal(res.body.issue[0].code, 'transient');
  });
});

describe('SMART Backend Services: the node\'s own token endpoint (private_key_jwt)', () => {
  const TOKEN_URL = 'https://node-a.example.org/auth/token';
  let h: Harness;
  let app: express.Express;
  let clientKey: Key;
  let strangerKey: Key;
  let dir: string;

  async function assertion(claims: Record<string, unknown> = {}, opts: { key?: Key; alg?: string; kid?: string } = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    const c: Record<string, unknown> = { iss: 'lab-system', sub: 'lab-system', aud: TOKEN_URL, exp: now + 240, jti: `a-${Math.random()}`, ...claims };
    for (const [k, v] of Object.entries(c)) if (v === undefined) delete c[k];
    return new SignJWT(c).setProtectedHeader({ alg: opts.alg ?? 'RS384', kid: opts.kid ?? 'lab-1' }).sign(opts.key ?? clientKey);
  }
  const ask = (fields: Record<string, string>) => request(app).post('/auth/token').type('form').send(new URLSearchParams(fields).toString());
  const grant = (clientAssertion: string, scope = 'system/Observation.rs') => ask({ grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: clientAssertion, scope });

  before(async () => {
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { createAuth, AuthConfigSchema } = await import('../src/auth/index.ts');
    dir = mkdtempSync(join(tmpdir(), 'tidegate-auth-'));
    const node = await generateKeyPair('ES384', { extractable: true });
    writeFileSync(join(dir, 'node-signing.json'), JSON.stringify({ ...(await exportJWK(node.privateKey)), alg: 'ES384', kid: 'node-1' }), { mode: 0o600 });
    const client = await generateKeyPair('RS384', { extractable: true });
    clientKey = client.privateKey;
    strangerKey = (await generateKeyPair('RS384')).privateKey;
    writeFileSync(join(dir, 'lab.jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(client.publicKey)), alg: 'RS384', kid: 'lab-1' }] }));
    const cfg = AuthConfigSchema.parse({
      audience: AUD,
      algorithms: ['RS384', 'ES384'],
      backendServices: {
        issuer: 'https://node-a.example.org/auth',
        tokenUrl: TOKEN_URL,
        signingKeyFile: join(dir, 'node-signing.json'),
        clients: [{ clientId: 'lab-system', jwksFile: join(dir, 'lab.jwks.json'), scope: 'system/Observation.rs system/Patient.r' }],
      },
    });
    const auth = createAuth(cfg);
    h = await makeHarness();
    for (const body of ['{"resourceType":"Patient","id":"bp1"}', obs('bo1', 'bp1')]) {
      const r = JSON.parse(body);
      h.service.update({ type: r.resourceType, id: r.id, text: body, contentType: FHIR });
    }
    app = express();
    app.post('/auth/token', ...auth.tokenEndpoint!);
    app.get('/fhir/.well-known/smart-configuration', auth.discovery);
    app.use('/fhir', auth.middleware({ current: currentFromService(h.service) }));
    app.use(h.app);
  });
  after(async () => {
    await h?.close();
    const { rmSync } = await import('node:fs');
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a registered client gets a short-lived token with the scopes it may have, and uses it', async () => {
    const res = await grant(await assertion(), 'system/Observation.rs system/Patient.cruds').expect(200);
    assert.equal(res.headers['cache-control'], 'no-store');
    assert.equal(res.body.token_type, 'bearer');
    assert.equal(res.body.expires_in, 300);
    assert.equal(res.body.scope, 'system/Observation.rs', 'Patient.cruds is beyond what the client is registered for');
    const header = JSON.parse(new TextDecoder().decode(base64url.decode(res.body.access_token.split('.')[0])));
    const claims = JSON.parse(new TextDecoder().decode(base64url.decode(res.body.access_token.split('.')[1])));
    assert.deepEqual([header.alg, header.kid, header.typ], ['ES384', 'node-1', 'at+jwt']);
    assert.equal(claims.iss, 'https://node-a.example.org/auth');
    assert.equal(claims.aud, AUD);
    assert.equal(claims.client_id, 'lab-system');
    assert.equal(claims.exp - claims.iat, 300);
    const bearer = `Bearer ${res.body.access_token}`;
    await request(app).get('/fhir/Observation/bo1').set('Authorization', bearer).expect(200);
    const del = await request(app).delete('/fhir/Observation/bo1').set('Authorization', bearer).expect(403);
    assert.match(del.headers['www-authenticate'] ?? '', /insufficient_scope/);
    await request(app).get('/fhir/Patient/bp1').set('Authorization', bearer).expect(403);
    const sc = await request(app).get('/fhir/.well-known/smart-configuration').expect(200);
    assert.equal(sc.body.token_endpoint, TOKEN_URL);
    assert.ok(sc.body.capabilities.includes('client-confidential-asymmetric'));
  });

  test('bad assertions and requests are refused with RFC 6749 errors', async () => {
    const now = Math.floor(Date.now() / 1000);
    const used = await assertion();
    await grant(used).expect(200);
    const cases: Array<[string, request.Test, number, string]> = [
      ['replayed jti', grant(used), 401, 'invalid_client'],
      ['wrong aud', grant(await assertion({ aud: 'https://elsewhere.example.org/token' })), 401, 'invalid_client'],
      ['expired', grant(await assertion({ exp: now - 600 })), 401, 'invalid_client'],
      ['exp too far ahead', grant(await assertion({ exp: now + 3600 })), 401, 'invalid_client'],
      ['sub differs from iss', grant(await assertion({ sub: 'someone' })), 401, 'invalid_client'],
      ['no jti', grant(await assertion({ jti: undefined })), 401, 'invalid_client'],
      ['unknown client', grant(await assertion({ iss: 'intruder', sub: 'intruder' })), 401, 'invalid_client'],
      ['signed by another key', grant(await assertion({}, { key: strangerKey })), 401, 'invalid_client'],
      ['HS256 assertion', grant(await new SignJWT({ iss: 'lab-system', sub: 'lab-system', aud: TOKEN_URL, exp: now + 60, jti: 'h' }).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode('x'.repeat(32)))), 401, 'invalid_client'],
      ['garbage assertion', grant('abc'), 401, 'invalid_client'],
      ['scope not allowed', grant(await assertion(), 'system/Encounter.rs'), 400, 'invalid_scope'],
      ['patient/ scope', grant(await assertion(), 'patient/Observation.rs'), 400, 'invalid_scope'],
      ['wrong grant type', ask({ grant_type: 'password', client_assertion: 'x', client_assertion_type: 'y', scope: 's' }), 400, 'unsupported_grant_type'],
      ['wrong assertion type', ask({ grant_type: 'client_credentials', client_assertion: 'x', client_assertion_type: 'y', scope: 's' }), 400, 'invalid_request'],
      ['JSON instead of a form', request(app).post('/auth/token').send({ grant_type: 'client_credentials' }), 400, 'unsupported_grant_type'],
    ];
    for (const [name, req, status, error] of cases) {
      const res = await req;
      assert.equal(res.status, status, name);
      assert.equal(res.body.error, error, name);
      assert.equal(res.body.access_token, undefined, name);
    }
  });
});
