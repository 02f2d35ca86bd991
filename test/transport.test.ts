/**
 * Transport security (issue 7 "Transport", docs/security.md "Hardened deployment"): the FHIR API
 * over HTTPS when a certificate is configured (and mutual TLS with a client CA), the TLS key file's
 * mode, and peers' Redis over `rediss://` with the CA pinned, against a real TLS redis-server.
 * Certificates are made here with the `openssl` CLI (skipped with a message when it is absent).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import pino from 'pino';
import { TidegateNode } from '../src/node/node.ts';
import { MemoryStore } from '../src/store/store.ts';
import { createKeyStore, keyStoreToPublicJson, keyStoreToSecretKeys, publicKeysFromJson } from '../src/envelope/keys.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { readRedisTls, readServerTls, redisTlsOptions, TlsConfigError } from '../src/transport/tls.ts';
import { loadNodeConfig } from '../src/config/config.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const FHIR = 'application/fhir+json';

function hasBinary(name: string): boolean {
  try {
    execFileSync(name, ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    try {
      execFileSync(name, ['--version'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  }
}
const OPENSSL = hasBinary('openssl');
const REDIS_SERVER = hasBinary('redis-server');

/** A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA. */
function makePki(dir: string): Record<'ca' | 'caKey' | 'cert' | 'key' | 'clientCert' | 'clientKey' | 'otherCa', string> {
  const f = (n: string) => join(dir, n);
  const ossl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  for (const ca of ['ca', 'other-ca']) {
    ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f(`${ca}.key`), '-out', f(`${ca}.pem`), '-days', '2', '-subj', `/CN=tidegate test ${ca}`);
  }
  writeFileSync(f('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  writeFileSync(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const [name, ext] of [['server', 'server.ext'], ['client', 'client.ext']] as const) {
    ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${name === 'server' ? 'localhost' : 'hospital-system'}`);
    ossl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f(`${name}.pem`), '-days', '2', '-extfile', f(ext));
    chmodSync(f(`${name}.key`), 0o600);
  }
  return { ca: f('ca.pem'), caKey: f('ca.key'), cert: f('server.pem'), key: f('server.key'), clientCert: f('client.pem'), clientKey: f('client.key'), otherCa: f('other-ca.pem') };
}

/** GET over HTTPS with explicit trust; resolves status and headers, or rejects with the TLS error. */
function httpsGet(url: string, opts: { ca?: string; cert?: string; key?: string }): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ...opts, agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe('transport security', { skip: OPENSSL ? false : 'openssl CLI not found: cannot make test certificates' }, () => {
  let dir: string;
  let pki: ReturnType<typeof makePki>;
  let hospital: MedplumHospital;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tidegate-transport-'));
    pki = makePki(dir);
    hospital = await startMedplumHospital();
  });
  after(async () => {
    await hospital?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function makeNode(id: string, prefix: string, extra: Partial<ConstructorParameters<typeof TidegateNode>[0]>): TidegateNode {
    return new TidegateNode({
      secretKeys: keyStoreToSecretKeys(createKeyStore(id)),
      peers: [],
      redisUrl: REDIS_URL,
      queuePrefix: prefix,
      hospital: new HospitalClient({ baseUrl: hospital.url, timeoutMs: 5000 }),
      store: new MemoryStore(),
      logger: pino({ level: 'silent' }),
      antiEntropyIntervalMs: 0,
      batchDelayMs: 5,
      hospitalPollIntervalMs: 0,
      ...extra,
    });
  }

  test('HTTPS when a certificate is configured: served with TLS only, verified against the CA, HSTS set', async () => {
    const prefix = `transport-${randomBytes(4).toString('hex')}`;
    const node = makeNode('tA', prefix, { server: { tls: readServerTls({ certFile: pki.cert, keyFile: pki.key }) } });
    const base = await node.start();
    try {
      assert.match(base, /^https:\/\/127\.0\.0\.1:\d+\/fhir$/);
      const ok = await httpsGet(`${base}/metadata`, { ca: await readText(pki.ca) });
      assert.equal(ok.status, 200);
      assert.equal(JSON.parse(ok.body).resourceType, 'CapabilityStatement');
      assert.match(String(ok.headers['strict-transport-security']), /max-age=31536000/);
      // a client that does not trust the CA refuses the connection
      await assert.rejects(httpsGet(`${base}/metadata`, { ca: await readText(pki.otherCa) }), (err: NodeJS.ErrnoException) => /CERT|SIGNATURE|ISSUER/.test(String(err.code)));
      // plain HTTP on the TLS port gets no FHIR answer
      const port = Number(new URL(base).port);
      const plain = await new Promise<string>((resolve) => {
        const s = connect(port, '127.0.0.1', () => s.write('GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n\r\n'));
        let out = '';
        s.on('data', (d) => (out += d.toString('latin1')));
        s.on('error', () => resolve(out));
        s.on('close', () => resolve(out));
      });
      assert.doesNotMatch(plain, /CapabilityStatement/);
      // a write over HTTPS works end to end
      const put = await new Promise<number>((resolve, reject) => {
        const req = httpsRequest(`${base}/Patient/tls1`, { method: 'PUT', ca: readTextSync(pki.ca), headers: { 'content-type': FHIR }, agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
        req.end(JSON.stringify({ resourceType: 'Patient', id: 'tls1', gender: 'female' }));
      });
      assert.equal(put, 201);
    } finally {
      await node.stop();
      await cleanRedis(prefix);
    }
  });

  test('mutual TLS with caFile: a client without a certificate from that CA is refused', async () => {
    const prefix = `transport-${randomBytes(4).toString('hex')}`;
    const node = makeNode('tM', prefix, { server: { tls: readServerTls({ certFile: pki.cert, keyFile: pki.key, caFile: pki.ca }) } });
    const base = await node.start();
    try {
      const ca = await readText(pki.ca);
      const ok = await httpsGet(`${base}/metadata`, { ca, cert: await readText(pki.clientCert), key: await readText(pki.clientKey) });
      assert.equal(ok.status, 200);
      await assert.rejects(httpsGet(`${base}/metadata`, { ca }));
    } finally {
      await node.stop();
      await cleanRedis(prefix);
    }
  });

  test('a TLS key file readable by group or others is refused; unreadable files name the file, not its content', () => {
    const loose = join(dir, 'loose.key');
    writeFileSync(loose, readTextSync(pki.key));
    chmodSync(loose, 0o644);
    assert.throws(() => readServerTls({ certFile: pki.cert, keyFile: loose }), (err: TlsConfigError) => err.code === 'ERR_TLS_KEY_FILE_MODE' && err.message.includes('chmod 600'));
    chmodSync(loose, 0o600);
    assert.ok(readServerTls({ certFile: pki.cert, keyFile: loose }).key.includes('PRIVATE KEY'));
    assert.throws(() => readServerTls({ certFile: join(dir, 'missing.pem'), keyFile: loose }), (err: TlsConfigError) => err.code === 'ERR_TLS_FILE' && !err.message.includes('BEGIN'));
  });

  test('config: tls and redisTls paths are resolved against the config file; a pinned CA needs rediss://', () => {
    const cfgFile = join(dir, 'node.json');
    const base = { nodeId: 'cfg', hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: 'k.json', storeFile: ':memory:' };
    writeFileSync(cfgFile, JSON.stringify({ ...base, tls: { certFile: 'server.pem', keyFile: 'server.key' }, redisTls: { caFile: 'ca.pem' }, peers: [{ nodeId: 'p', redisUrl: 'rediss://peer:6380', publicKeyFile: 'p.json', redisTls: { caFile: 'other-ca.pem' } }] }));
    const cfg = loadNodeConfig(cfgFile, {});
    assert.equal(cfg.tls?.certFile, pki.cert);
    assert.equal(cfg.redisTls?.caFile, pki.ca);
    assert.equal(cfg.peers[0]!.redisTls?.caFile, pki.otherCa);
    assert.equal(cfg.http.headersTimeoutMs, 20_000);
    assert.deepEqual(cfg.http.rateLimit, { windowMs: 60_000, limit: 6_000, failedAuthLimit: 100 });
    writeFileSync(cfgFile, JSON.stringify({ ...base, peers: [{ nodeId: 'p', redisUrl: 'redis://peer:6379', publicKeyFile: 'p.json', redisTls: { caFile: 'ca.pem' } }] }));
    assert.throws(() => loadNodeConfig(cfgFile, {}), /needs a rediss:\/\/ redisUrl/);
    writeFileSync(cfgFile, JSON.stringify({ ...base, http: { headersTimeoutMs: 5000, requestTimeoutMs: 1000 } }));
    assert.throws(() => loadNodeConfig(cfgFile, {}), /headersTimeoutMs must not exceed requestTimeoutMs/);
    assert.throws(() => redisTlsOptions('redis://peer:6379', { ca: 'x' }), (err: TlsConfigError) => err.code === 'ERR_TLS_CA_WITHOUT_TLS');
    const o = redisTlsOptions('rediss://peer:6380', readRedisTls({ caFile: pki.ca }));
    assert.deepEqual(o.tls?.ca, [readTextSync(pki.ca)]);
    assert.equal(o.tls?.rejectUnauthorized, true);
  });

  describe('peers\u2019 Redis over rediss:// with the CA pinned (a real TLS redis-server)', { skip: REDIS_SERVER ? false : 'redis-server not found' }, () => {
    let proc: ChildProcess;
    let tlsUrl: string;
    before(async () => {
      const port = await freePort();
      proc = spawn('redis-server', ['--port', '0', '--tls-port', String(port), '--tls-cert-file', pki.cert, '--tls-key-file', pki.key, '--tls-ca-cert-file', pki.ca, '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
      tlsUrl = `rediss://127.0.0.1:${port}`;
      for (let i = 0; i < 100; i++) {
        const r = new Redis(tlsUrl, { ...redisTlsOptions(tlsUrl, readRedisTls({ caFile: pki.ca })), lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
        r.on('error', () => {});
        try {
          await r.connect();
          await r.ping();
          r.disconnect();
          return;
        } catch {
          r.disconnect();
          await sleep(100);
        }
      }
      throw new Error('TLS redis-server did not start');
    });
    after(() => {
      proc?.kill('SIGTERM');
    });

    test('the pinned CA connects; an unrelated CA and the system roots are refused', async () => {
      const pinned = new Redis(tlsUrl, { ...redisTlsOptions(tlsUrl, readRedisTls({ caFile: pki.ca })), maxRetriesPerRequest: 0 });
      assert.equal(await pinned.ping(), 'PONG');
      pinned.disconnect();
      for (const opts of [redisTlsOptions(tlsUrl, readRedisTls({ caFile: pki.otherCa })), {}]) {
        const r = new Redis(tlsUrl, { ...opts, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
        const errors: Array<NodeJS.ErrnoException> = [];
        r.on('error', (e: NodeJS.ErrnoException) => errors.push(e));
        await assert.rejects(r.connect());
        assert.ok(errors.some((e) => /CERT|SIGNATURE|ISSUER/.test(`${e.code} ${e.message}`)), `a certificate error: ${errors.map((e) => e.code ?? e.message).join(', ')}`);
        r.disconnect();
      }
    });

    test('gossip reaches a peer\u2019s inbox on its TLS Redis (peer config redisTls); with the wrong CA nothing is sent', async () => {
      const prefix = `transport-${randomBytes(4).toString('hex')}`;
      const peerKeys = publicKeysFromJson(keyStoreToPublicJson(createKeyStore('tPeer')));
      const inbox = new Queue('inbox-tPeer', { connection: { url: tlsUrl, ...redisTlsOptions(tlsUrl, readRedisTls({ caFile: pki.ca })) }, prefix });
      for (const [ca, expectJobs] of [[pki.otherCa, false], [pki.ca, true]] as const) {
        const node = makeNode('tG', prefix, { peers: [{ nodeId: 'tPeer', redisUrl: tlsUrl, publicKeys: peerKeys, redisTls: readRedisTls({ caFile: ca }) }] });
        const base = await node.start();
        try {
          const res = await fetch(`${base}/Patient/g-${expectJobs}`, { method: 'PUT', headers: { 'content-type': FHIR }, body: JSON.stringify({ resourceType: 'Patient', id: `g-${expectJobs}`, gender: 'male' }) });
          assert.equal(res.status, 201);
          let waiting = 0;
          // a generous deadline when the envelope must arrive; a fixed 4 s window when it must not
          for (let i = 0; i < (expectJobs ? 300 : 40); i++) {
            await sleep(100);
            const c = await inbox.getJobCounts('waiting', 'prioritized', 'delayed');
            waiting = (c.waiting ?? 0) + (c.prioritized ?? 0) + (c.delayed ?? 0);
            if (waiting > 0) break;
          }
          if (expectJobs) assert.ok(waiting > 0, 'an envelope arrived in the peer inbox over TLS');
          else assert.equal(waiting, 0, 'nothing sent to a Redis whose certificate is not from the pinned CA');
        } finally {
          await node.stop();
        }
      }
      await inbox.obliterate({ force: true });
      await inbox.close();
      await cleanRedis(prefix);
    });
  });
});

async function readText(path: string): Promise<string> {
  return readTextSync(path);
}
function readTextSync(path: string): string {
  return readFileSync(path, 'utf8');
}
async function cleanRedis(prefix: string): Promise<void> {
  const r = new Redis(REDIS_URL);
  const keys = await r.keys(`${prefix}:*`);
  if (keys.length) await r.del(...keys);
  await r.quit();
}
