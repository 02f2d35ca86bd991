/**
 * The cheaper request path keeps every function (src/fhir/express.ts, src/auth/middleware.ts,
 * src/auth/request.ts): precomputed security headers are helmet's; the verified-token cache never
 * accepts what the verifier would refuse (revocation at once, expiry, age bound, refusals never
 * cached); the `_format`/`Accept` fast paths and the skipped body reader refuse what they refused.
 * Real HTTP, real tokens (ES256, jose), a real FhirService; no timing is asserted.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import type { RequestHandler } from 'express';
import pino from 'pino';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { fhirApp, fhirRouter, precomputedHeaders } from '../src/fhir/express.ts';
import { securityHeaders } from '../src/fhir/hardening.ts';
import { smartAuth } from '../src/auth/middleware.ts';
import { TokenVerifier } from '../src/auth/token.ts';
import { localKeySet } from '../src/auth/keys.ts';
import { createAuth } from '../src/auth/setup.ts';
import { classifyFhirRequest } from '../src/auth/request.ts';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const ISS = 'https://auth.perf.example';
const AUD = 'https://node.perf.example/fhir';
const log = pino({ level: 'silent' });

async function listen(app: express.Express): Promise<{ base: string; stop(): Promise<void> }> {
  const server: Server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

/** The response headers of one GET, lower-cased names, without the per-response ones. */
async function headersOf(url: string): Promise<Record<string, string>> {
  const res = await fetch(url);
  await res.arrayBuffer();
  const out: Record<string, string> = {};
  for (const [k, v] of res.headers) if (!['date', 'connection', 'keep-alive', 'content-length', 'content-type', 'etag', 'cache-control'].includes(k)) out[k] = v;
  return out;
}

describe('precomputed security headers', () => {
  test('an app with precomputedHeaders(securityHeaders()) sends exactly the headers of one with helmet itself', async () => {
    const plain = express();
    plain.disable('x-powered-by');
    plain.use(securityHeaders());
    plain.get('/x', (_req, res) => res.send('ok'));
    const fast = express();
    fast.disable('x-powered-by');
    fast.use(precomputedHeaders(securityHeaders()));
    fast.get('/x', (_req, res) => res.send('ok'));
    const [a, b] = [await listen(plain), await listen(fast)];
    try {
      const [ha, hb] = [await headersOf(`${a.base}/x`), await headersOf(`${b.base}/x`)];
      assert.ok(Object.keys(ha).length >= 10, `helmet set ${Object.keys(ha).join(', ')}`);
      assert.deepEqual(hb, ha);
      assert.equal(hb['content-security-policy'], "default-src 'none';frame-ancestors 'none'");
      assert.equal(hb['x-frame-options'], 'DENY');
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test('a middleware whose headers depend on the request, or that fails, is kept as it is', async () => {
    const dynamic: RequestHandler = (req, res, next) => {
      res.setHeader('X-Path', req.url);
      next();
    };
    assert.equal(precomputedHeaders(dynamic), dynamic);
    const failing: RequestHandler = (_req, _res, next) => next(new Error('no'));
    assert.equal(precomputedHeaders(failing), failing);
    const asynchronous: RequestHandler = (_req, res, next) => {
      setImmediate(() => {
        res.setHeader('X-Late', '1');
        next();
      });
    };
    assert.equal(precomputedHeaders(asynchronous), asynchronous);
    const app = express();
    app.use(precomputedHeaders(dynamic));
    app.get('/{*p}', (_req, res) => res.send('ok'));
    const s = await listen(app);
    try {
      assert.equal((await headersOf(`${s.base}/a/b`))['x-path'], '/a/b');
    } finally {
      await s.stop();
    }
  });

  test('the FHIR app sends the security headers and Cache-Control: no-store on FHIR answers and errors', async () => {
    const h = await makeHarness();
    const s = await listen(h.app);
    try {
      for (const path of ['/fhir/metadata', '/fhir/Patient/nope', '/nothing']) {
        const res = await fetch(`${s.base}${path}`);
        await res.arrayBuffer();
        assert.equal(res.headers.get('x-content-type-options'), 'nosniff', path);
        assert.equal(res.headers.get('strict-transport-security'), 'max-age=31536000; includeSubDomains', path);
        assert.equal(res.headers.get('x-powered-by'), null, path);
        if (path.startsWith('/fhir')) assert.equal(res.headers.get('cache-control'), 'no-store', path);
      }
    } finally {
      await s.stop();
      await h.close();
    }
  });
});

describe('verified-token cache (smartAuth tokenCache)', () => {
  let h: Harness;
  let key: CryptoKey;
  let jwk: JWK;
  let n = 0;
  const token = (o: { jti?: string; exp?: number; scope?: string; sign?: CryptoKey } = {}) => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ scope: o.scope ?? 'system/*.cruds', client_id: 'ehr' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer(ISS)
      .setAudience(AUD)
      .setSubject('u1')
      .setJti(o.jti ?? `j-${++n}`)
      .setIssuedAt(now)
      .setExpirationTime(o.exp ?? now + 600)
      .sign(o.sign ?? key);
  };
  before(async () => {
    const kp = await generateKeyPair('ES256', { extractable: true });
    key = kp.privateKey;
    jwk = { ...(await exportJWK(kp.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    h = await makeHarness();
  });
  after(async () => {
    await h?.close();
  });

  /** An app with smartAuth over a real TokenVerifier that counts its verifications. */
  async function appWith(revoked: Set<string>, clock: { ms: number }, cache: { maxAgeMs?: number } | false = {}) {
    const isRevoked = (jti: string | undefined) => jti !== undefined && revoked.has(jti);
    const verifier = new TokenVerifier({ issuer: ISS, audience: AUD, keys: localKeySet({ keys: [jwk] }), isRevoked, now: () => clock.ms, clockSkewSeconds: 0 });
    const counted = { calls: 0, verify: (t: string) => (counted.calls++, verifier.verify(t)) };
    const app = express();
    app.use('/fhir', smartAuth({ verifier: counted, log, tokenCache: cache === false ? false : { isRevoked, now: () => clock.ms, ...cache } }));
    app.use('/fhir', fhirRouter(h.service, log));
    return { server: await listen(app), counted };
  }
  const get = async (base: string, t: string) => {
    const res = await fetch(`${base}/fhir/Patient/none`, { headers: { authorization: `Bearer ${t}` } });
    const body = (await res.json()) as { issue?: Array<{ details?: { coding?: Array<{ code?: string }> } }> };
    return { status: res.status, www: res.headers.get('www-authenticate') ?? '', body };
  };

  test('a token is verified once, then reused; without the cache every request verifies', async () => {
    const clock = { ms: Date.now() };
    const t = await token();
    const on = await appWith(new Set(), clock);
    const off = await appWith(new Set(), clock, false);
    try {
      for (let i = 0; i < 4; i++) assert.equal((await get(on.server.base, t)).status, 404);
      assert.equal(on.counted.calls, 1);
      for (let i = 0; i < 4; i++) assert.equal((await get(off.server.base, t)).status, 404);
      assert.equal(off.counted.calls, 4);
    } finally {
      await on.server.stop();
      await off.server.stop();
    }
  });

  test('revocation takes effect on the next request of a cached token', async () => {
    const clock = { ms: Date.now() };
    const revoked = new Set<string>();
    const t = await token({ jti: 'to-revoke' });
    const a = await appWith(revoked, clock);
    try {
      assert.equal((await get(a.server.base, t)).status, 404);
      assert.equal((await get(a.server.base, t)).status, 404);
      revoked.add('to-revoke');
      const r = await get(a.server.base, t);
      assert.equal(r.status, 401);
      assert.match(r.www, /invalid_token/);
      assert.equal((await get(a.server.base, t)).status, 401, 'and stays refused');
    } finally {
      await a.server.stop();
    }
  });

  test('an expired token is not answered from the cache; a verification older than maxAgeMs is redone', async () => {
    const clock = { ms: Date.now() };
    const exp = Math.floor(clock.ms / 1000) + 30;
    const t = await token({ exp });
    const a = await appWith(new Set(), clock, { maxAgeMs: 10_000 });
    try {
      assert.equal((await get(a.server.base, t)).status, 404);
      clock.ms += 5_000;
      assert.equal((await get(a.server.base, t)).status, 404);
      assert.equal(a.counted.calls, 1);
      clock.ms += 6_000; // 11 s after the verification: older than maxAgeMs
      assert.equal((await get(a.server.base, t)).status, 404);
      assert.equal(a.counted.calls, 2);
      clock.ms = exp * 1000 + 1; // past exp (the verifier allows no skew here)
      assert.equal((await get(a.server.base, t)).status, 401);
      assert.equal(a.counted.calls, 3, 'the verifier decided, not the cache');
    } finally {
      await a.server.stop();
    }
  });

  test('refusals are never cached, and a token differing in one character is verified on its own', async () => {
    const clock = { ms: Date.now() };
    const other = (await generateKeyPair('ES256', { extractable: true })).privateKey;
    const forged = await token({ sign: other });
    const good = await token();
    const a = await appWith(new Set(), clock);
    try {
      for (let i = 0; i < 3; i++) assert.equal((await get(a.server.base, forged)).status, 401);
      assert.equal(a.counted.calls, 3);
      assert.equal((await get(a.server.base, good)).status, 404);
      // the second-to-last character of the signature is replaced by another one (comparing that
      // character: replacing an 'A' with 'A' would leave the token as it was, 1 time in 64)
      const tampered = `${good.slice(0, -2)}${good.at(-2) === 'A' ? 'B' : 'A'}${good.slice(-1)}`;
      assert.notEqual(tampered, good);
      assert.equal((await get(a.server.base, tampered)).status, 401);
      assert.equal(a.counted.calls, 5);
    } finally {
      await a.server.stop();
    }
  });

  test('createAuth turns the cache on with its revocation hook: a revoked jti is refused at once through fhirApp', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-http-perf-'));
    const revoked = new Set<string>();
    try {
      writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
      const auth = createAuth({ issuer: ISS, audience: AUD, jwksFile: join(dir, 'jwks.json') }, { log, isRevoked: (jti) => jti !== undefined && revoked.has(jti) });
      const s = await listen(fhirApp(h.service, log, undefined, undefined, auth));
      try {
        const t = await token({ jti: 'wired' });
        assert.equal((await get(s.base, t)).status, 404);
        assert.equal((await get(s.base, t)).status, 404);
        revoked.add('wired');
        assert.equal((await get(s.base, t)).status, 401);
      } finally {
        await s.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('invalid cache sizes are refused when the middleware is built', () => {
    const verifier = { verify: () => Promise.reject(new Error('unused')) };
    assert.throws(() => smartAuth({ verifier, tokenCache: { maxEntries: 0 } }), RangeError);
    assert.throws(() => smartAuth({ verifier, tokenCache: { maxAgeMs: -1 } }), RangeError);
  });
});

describe('fast paths refuse what they refused', () => {
  let h: Harness;
  let s: { base: string; stop(): Promise<void> };
  before(async () => {
    h = await makeHarness();
    s = await listen(h.app);
  });
  after(async () => {
    await s?.stop();
    await h?.close();
  });
  const status = async (path: string, headers: Record<string, string> = {}) => {
    const res = await fetch(`${s.base}/fhir${path}`, { headers });
    await res.arrayBuffer();
    return res.status;
  };

  test('_format is found however it is written; other parameters are not mistaken for it', async () => {
    assert.equal(await status('/metadata?_format=xml'), 406);
    assert.equal(await status('/metadata?%5Fformat=xml'), 406);
    assert.equal(await status('/metadata?_f%6Frmat=application/fhir%2Bxml'), 406);
    assert.equal(await status('/metadata?a=1&_format=xml'), 406);
    assert.equal(await status('/metadata?_format=json'), 200);
    assert.equal(await status('/metadata?_format=application/fhir+json'), 200);
    assert.equal(await status('/metadata?format=xml&name=_format'), 200);
  });

  test('Accept is negotiated the same on every request (answers remembered per value)', async () => {
    for (let i = 0; i < 3; i++) {
      assert.equal(await status('/metadata', { accept: 'application/fhir+xml' }), 406);
      assert.equal(await status('/metadata', { accept: 'application/fhir+json' }), 200);
      assert.equal(await status('/metadata', { accept: 'text/html, */*;q=0.1' }), 200);
      assert.equal(await status('/metadata', { accept: 'text/html, application/xml;q=0.9' }), 406);
    }
  });

  test('a GET without a body skips the body reader, but a non-UTF-8 charset is still 415', async () => {
    assert.equal(await status('/Patient/none'), 404);
    assert.equal(await status('/Patient/none', { 'content-type': 'application/fhir+json; charset=iso-8859-1' }), 415);
    assert.equal(await status('/Patient/none', { 'content-type': 'application/fhir+json; charset=utf-8' }), 404);
  });

  test('request classification without escapes matches the one with them', () => {
    for (const [plain, escaped] of [['/Patient/p1', '/Patient/p%31'], ['/Patient/p1/_history/2', '/Patient/p1/_history/%32'], ['/Observation/$lastn', '/Observation/%24lastn']]) {
      assert.deepEqual(classifyFhirRequest('GET', plain!, false, false), classifyFhirRequest('GET', escaped!, false, false));
    }
    assert.deepEqual(classifyFhirRequest('GET', '/Patient//p1', false, false), { kind: 'unknown', status: 404 });
    assert.deepEqual(classifyFhirRequest('GET', '/Patient/%2/x', false, false), { kind: 'unknown', status: 404 });
    assert.deepEqual(classifyFhirRequest('get', '/Patient/', false, false), classifyFhirRequest('GET', '/Patient', false, false));
  });

  test('a PUT still has its body read and checked', async () => {
    const res = await fetch(`${s.base}/fhir/Patient/b1`, { method: 'PUT', headers: { 'content-type': FHIR }, body: '{"resourceType":"Patient","id":"b1","id":"b2"}' });
    assert.equal(res.status, 400, 'duplicate member names refused by the body reader');
    const ok = await fetch(`${s.base}/fhir/Patient/b1`, { method: 'PUT', headers: { 'content-type': FHIR }, body: '{"resourceType":"Patient","id":"b1"}' });
    assert.equal(ok.status, 201);
  });
});
