/**
 * `trust proxy` and the public FHIR base (src/fhir/base-url.ts, node config `http.trustProxy`,
 * `http.publicBaseUrl`) over real HTTP: the FHIR app (fhirApp) on a real socket in front of a real
 * FhirService with a Medplum stand-in hospital for searches. X-Forwarded-Proto/-Host change links
 * (`Location`, Bundle `fullUrl`, paging links, the CapabilityStatement's `implementation.url`)
 * only when the connecting address is a trusted proxy; X-Forwarded-For changes the client address
 * the rate limit and the audit trail use only then; a fixed public base wins over any header.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import pino from 'pino';
import { fhirApp } from '../src/fhir/express.ts';
import type { ProxyOptions } from '../src/fhir/base-url.ts';
import { normalizePublicBaseUrl, normalizeTrustProxy } from '../src/fhir/base-url.ts';
import type { HardeningOptions } from '../src/fhir/hardening.ts';
import { hardeningFromConfig } from '../src/fhir/hardening.ts';
import { NodeConfigSchema } from '../src/config/config.ts';
import { AuditTrail, auditWiring } from '../src/audit/index.ts';
import type { AuditEvent } from '../src/audit/index.ts';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const SPOOF = { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example', 'x-forwarded-for': '203.0.113.66' };

/** Serves fhirApp with these settings on 127.0.0.1; returns its origin and a stop function. */
async function serve(h: Harness, opts: HardeningOptions & ProxyOptions, audit?: AuditTrail): Promise<{ origin: string; stop(): Promise<void> }> {
  const app = fhirApp(h.service, pino({ level: 'silent' }), undefined, undefined, undefined, audit ? auditWiring(audit, 'node-a', { open: true }) : undefined, opts);
  const server: Server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

let seq = 0;
/** PUTs a new Patient and returns its Location header. */
async function create(origin: string, headers: Record<string, string>): Promise<string> {
  const id = `px-${++seq}`;
  const res = await fetch(`${origin}/fhir/Patient/${id}`, { method: 'PUT', headers: { 'content-type': FHIR, ...headers }, body: JSON.stringify({ resourceType: 'Patient', id, name: [{ family: 'Proxyton' }] }) });
  assert.equal(res.status, 201);
  await res.arrayBuffer();
  return res.headers.get('location') ?? '';
}

/** A search's self link and first fullUrl, and the CapabilityStatement's implementation.url. */
async function links(origin: string, headers: Record<string, string>): Promise<{ self: string; fullUrl: string; implementation: string }> {
  const res = await fetch(`${origin}/fhir/Patient?family=Proxyton&_count=1`, { headers: { accept: FHIR, ...headers } });
  assert.equal(res.status, 200);
  const bundle = (await res.json()) as { link?: Array<{ relation: string; url: string }>; entry?: Array<{ fullUrl: string }> };
  const meta = (await (await fetch(`${origin}/fhir/metadata`, { headers })).json()) as { implementation?: { url?: string } };
  return { self: bundle.link?.find((l) => l.relation === 'self')?.url ?? '', fullUrl: bundle.entry?.[0]?.fullUrl ?? '', implementation: meta.implementation?.url ?? '' };
}

/** Statuses of `n` GETs with the given X-Forwarded-For. */
async function statuses(origin: string, xff: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const res = await fetch(`${origin}/fhir/Patient/none`, { headers: { 'x-forwarded-for': xff } });
    await res.arrayBuffer();
    out.push(res.status);
  }
  return out;
}

describe('trust proxy and public base URL over HTTP', () => {
  let h: Harness;
  let dir: string;
  before(async () => {
    h = await makeHarness({ hospital: true });
    dir = mkdtempSync(join(tmpdir(), 'tidegate-http-proxy-'));
    // one Patient the searches find, written directly so that every search has an entry
    const s = await serve(h, {});
    try {
      await create(s.origin, {});
      await h.sync!.idle();
    } finally {
      await s.stop();
    }
  });
  after(async () => {
    await h?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('default (no proxy trusted): spoofed X-Forwarded-* change no link and no client address', async () => {
    const s = await serve(h, {});
    try {
      const loc = await create(s.origin, SPOOF);
      assert.ok(loc.startsWith(`${s.origin}/fhir/Patient/px-`), loc);
      const l = await links(s.origin, SPOOF);
      assert.ok(l.self.startsWith(`${s.origin}/fhir/Patient?`), l.self);
      assert.ok(l.fullUrl.startsWith(`${s.origin}/fhir/Patient/`), l.fullUrl);
      assert.equal(l.implementation, `${s.origin}/fhir`);
    } finally {
      await s.stop();
    }
    const r = await serve(h, { rateLimit: { windowMs: 60_000, limit: 2 } });
    try {
      assert.deepEqual(await statuses(r.origin, '198.51.100.1', 2), [404, 404]);
      assert.deepEqual(await statuses(r.origin, '198.51.100.2', 1), [429], 'another X-Forwarded-For is the same client');
    } finally {
      await r.stop();
    }
  });

  test('trusted proxy (loopback): X-Forwarded-Proto/-Host give the links, X-Forwarded-For the client of the rate limit and the audit trail', async () => {
    const trail = await AuditTrail.open(join(dir, 'trusted.audit.jsonl'), { nodeId: 'node-a', flushIntervalMs: 5 });
    const s = await serve(h, { trustProxy: ['loopback'], rateLimit: { windowMs: 60_000, limit: 2 } }, trail);
    try {
      const fwd = { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'gw.example.org', 'x-forwarded-for': '198.51.100.10' };
      const loc = await create(s.origin, fwd);
      assert.ok(loc.startsWith('https://gw.example.org/fhir/Patient/px-'), loc);
      assert.match(loc, /\/_history\/[^/]+$/);
      const l = await links(s.origin, { ...fwd, 'x-forwarded-for': '198.51.100.11' });
      assert.ok(l.self.startsWith('https://gw.example.org/fhir/Patient?'), l.self);
      assert.ok(l.fullUrl.startsWith('https://gw.example.org/fhir/Patient/'), l.fullUrl);
      assert.equal(l.implementation, 'https://gw.example.org/fhir');
      // the rate limit counts per forwarded client: .20 is refused on its 3rd request, .21 still served
      assert.deepEqual(await statuses(s.origin, '198.51.100.20', 3), [404, 404, 429]);
      assert.deepEqual(await statuses(s.origin, '198.51.100.21', 1), [404]);
      await trail.flush();
      const events: AuditEvent[] = [];
      for await (const { event } of trail.newestFirst()) events.push(event);
      const addresses = new Set(events.flatMap((e) => e.agent.flatMap((a) => (a.network?.address ? [a.network.address] : []))));
      assert.ok(addresses.has('198.51.100.10'), `audit addresses ${[...addresses].join(', ')}`);
      assert.ok(addresses.has('198.51.100.20'));
      assert.ok(!addresses.has('127.0.0.1'), 'the proxy is not recorded as the client');
    } finally {
      await s.stop();
      await trail.close();
    }
  });

  test('a proxy list that does not include the connecting address: its X-Forwarded-* are spoofed and ignored', async () => {
    const s = await serve(h, { trustProxy: ['10.0.0.0/8', 'fd00::/8'] });
    try {
      const loc = await create(s.origin, SPOOF);
      assert.ok(loc.startsWith(`${s.origin}/fhir/`), loc);
      const l = await links(s.origin, SPOOF);
      assert.ok(l.fullUrl.startsWith(`${s.origin}/fhir/`), l.fullUrl);
      assert.equal(l.implementation, `${s.origin}/fhir`);
    } finally {
      await s.stop();
    }
    const r = await serve(h, { trustProxy: ['10.0.0.0/8'], rateLimit: { windowMs: 60_000, limit: 2 } });
    try {
      assert.deepEqual(await statuses(r.origin, '198.51.100.30', 2), [404, 404]);
      assert.deepEqual(await statuses(r.origin, '198.51.100.31', 1), [429], 'X-Forwarded-For from an untrusted address does not buy a new budget');
    } finally {
      await r.stop();
    }
  });

  test('hop count 1: the nearest X-Forwarded-For entry is the client, entries further left are the client\'s to write', async () => {
    const s = await serve(h, { trustProxy: 1, rateLimit: { windowMs: 60_000, limit: 2 } });
    try {
      assert.deepEqual(await statuses(s.origin, '1.1.1.1, 198.51.100.40', 1), [404]);
      assert.deepEqual(await statuses(s.origin, '2.2.2.2, 198.51.100.40', 1), [404]);
      assert.deepEqual(await statuses(s.origin, '3.3.3.3, 198.51.100.40', 1), [429], 'a new leftmost entry does not evade the limit');
      assert.deepEqual(await statuses(s.origin, '1.1.1.1, 198.51.100.41', 1), [404]);
    } finally {
      await s.stop();
    }
  });

  test('publicBaseUrl: every link starts with it, whatever the headers (trusted or not) say', async () => {
    const s = await serve(h, { publicBaseUrl: 'https://fhir.example.org/tidegate/fhir/', trustProxy: ['loopback'] });
    try {
      const loc = await create(s.origin, SPOOF);
      assert.ok(loc.startsWith('https://fhir.example.org/tidegate/fhir/Patient/px-'), loc);
      const l = await links(s.origin, SPOOF);
      assert.ok(l.self.startsWith('https://fhir.example.org/tidegate/fhir/Patient?'), l.self);
      assert.ok(l.fullUrl.startsWith('https://fhir.example.org/tidegate/fhir/Patient/'), l.fullUrl);
      assert.equal(l.implementation, 'https://fhir.example.org/tidegate/fhir');
    } finally {
      await s.stop();
    }
  });

  test('a Host that is not an RFC 3986 authority never reaches a link (localhost instead)', async () => {
    const s = await serve(h, { trustProxy: ['loopback'] });
    try {
      const port = Number(new URL(s.origin).port);
      const implementationFor = (headers: Record<string, string>) =>
        new Promise<string>((resolve, reject) => {
          const req = httpRequest({ host: '127.0.0.1', port, path: '/fhir/metadata', headers }, (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (c: string) => (text += c));
            res.on('end', () => resolve((JSON.parse(text) as { implementation: { url: string } }).implementation.url));
          });
          req.on('error', reject);
          req.end();
        });
      assert.equal(await implementationFor({ host: 'evil.example/x?y=' }), 'http://localhost/fhir');
      assert.equal(await implementationFor({ host: `127.0.0.1:${port}`, 'x-forwarded-host': 'user@evil.example' }), 'http://localhost/fhir');
      assert.equal(await implementationFor({ host: `127.0.0.1:${port}`, 'x-forwarded-host': '[::1]:8443', 'x-forwarded-proto': 'https' }), 'https://[::1]:8443/fhir');
      assert.equal(await implementationFor({ host: `127.0.0.1:${port}`, 'x-forwarded-host': 'h.example', 'x-forwarded-proto': 'gopher' }), 'http://h.example/fhir', 'a scheme other than http/https is not used');
      assert.equal(await implementationFor({ host: `127.0.0.1:${port}`, 'x-forwarded-host': 'h.example:99999' }), 'http://localhost/fhir', 'a port above 65535 is no authority');
    } finally {
      await s.stop();
    }
  });

  test('invalid settings are refused before the app serves anything', () => {
    const log = pino({ level: 'silent' });
    for (const bad of [{ trustProxy: ['not-an-address'] }, { trustProxy: ['10.0.0.0/33'] }, { trustProxy: 0 }, { trustProxy: 1.5 }, { trustProxy: [] }, { publicBaseUrl: 'https://x.example/fhir?a=1' }, { publicBaseUrl: 'ftp://x.example/fhir' }, { publicBaseUrl: 'fhir' }, { publicBaseUrl: 'https://u:p@x.example/fhir' }] as ProxyOptions[]) {
      assert.throws(() => fhirApp(h.service, log, undefined, undefined, undefined, undefined, bad), RangeError, JSON.stringify(bad));
    }
    assert.deepEqual(normalizeTrustProxy(['loopback', '192.168.0.0/16', '::1', '2001:db8::/32']), ['loopback', '192.168.0.0/16', '::1', '2001:db8::/32']);
    assert.equal(normalizePublicBaseUrl('https://FHIR.example.org:443/a/fhir//'), 'https://fhir.example.org/a/fhir');
  });

  test('node config: http.trustProxy and http.publicBaseUrl are validated and reach fhirApp', async () => {
    const base = { nodeId: 'node-a', hospitalFhirUrl: 'http://127.0.0.1:8201/fhir', secretKeyFile: 'k.json', peers: [] };
    const parse = (http: unknown) => NodeConfigSchema.safeParse({ ...base, http });
    assert.equal(parse({}).success, true);
    assert.equal(parse({}).data?.http.trustProxy, false, 'no proxy trusted by default');
    for (const ok of [true, 2, ['loopback', '10.0.0.0/8', '::1', 'fc00::/7', '192.0.2.4']]) assert.equal(parse({ trustProxy: ok }).success, true, JSON.stringify(ok));
    for (const bad of [0, 'yes', ['10.0.0.0/40'], ['proxy.example'], []]) assert.equal(parse({ trustProxy: bad }).success, false, JSON.stringify(bad));
    assert.equal(parse({ publicBaseUrl: 'https://fhir.example.org/fhir' }).success, true);
    for (const bad of ['fhir.example.org/fhir', 'https://fhir.example.org/fhir?x=1', 'ftp://fhir.example.org/fhir', 'https://u:p@fhir.example.org/fhir', 'https://u@fhir.example.org/fhir']) assert.equal(parse({ publicBaseUrl: bad }).success, false, bad);
    const cfg = parse({ trustProxy: ['loopback'], publicBaseUrl: 'https://cfg.example.org/fhir', rateLimit: false });
    assert.ok(cfg.success);
    const s = await serve(h, hardeningFromConfig(cfg.data.http).hardening);
    try {
      assert.equal((await links(s.origin, {})).implementation, 'https://cfg.example.org/fhir');
    } finally {
      await s.stop();
    }
  });
});
