/**
 * The hospital client's search transport (src/hospital/client.ts `HospitalClient.search`: one GET
 * over node:http with a keep-alive agent, parsed once with the lossless parser) against a real
 * HTTP server playing a misbehaving hospital: every failure maps to the status the FHIR edge
 * answers (src/fhir/search.ts `hospitalFailure`: 4xx kept, 5xx/unparseable 502, unreachable or
 * timeout 503), no response body reaches an error message, decimals keep their lexical form, and
 * connections are reused.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { HospitalClient } from '../src/hospital/client.ts';
import { canonicalStringify } from '../src/fhir/json.ts';
import { hospitalFailure } from '../src/fhir/search.ts';

const SECRET = 'secret-name Smith';
const OUTCOME = JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: SECRET }] });
const BUNDLE =
  '{"resourceType":"Bundle","type":"searchset","total":1,"entry":[{"fullUrl":"http://h/fhir/Observation/o1","resource":{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"},"valueQuantity":{"value":1.50,"unit":"mg"}},"search":{"mode":"match"}}]}';

describe('hospital search transport', () => {
  let server: http.Server;
  let base: string;
  const sockets = new Set<unknown>();

  before(async () => {
    server = http.createServer((req, res) => {
      const mode = new URL(req.url!, 'http://x').searchParams.get('mode');
      if (mode === '500' || mode === '400') {
        res.writeHead(Number(mode), { 'content-type': 'application/fhir+json' });
        res.end(OUTCOME);
      } else if (mode === '503') {
        res.writeHead(503);
        res.end(`busy ${SECRET}`);
      } else if (mode === 'text') {
        res.writeHead(200);
        res.end(`<html>${SECRET}</html>`);
      } else if (mode === 'notbundle') {
        res.writeHead(200);
        res.end(OUTCOME);
      } else if (mode === 'hang') {
        // never answers
      } else if (mode === 'cut') {
        res.writeHead(200, { 'content-length': '1000' });
        res.write('{"resourceType":"Bun');
        setTimeout(() => res.destroy(), 20);
      } else {
        res.writeHead(200, { 'content-type': 'application/fhir+json' });
        res.end(BUNDLE);
      }
    });
    server.on('connection', (s) => sockets.add(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}/fhir`;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });

  test('a searchset is parsed once, decimals keep their lexical form, and connections are reused', async () => {
    const c = new HospitalClient({ baseUrl: base, timeoutMs: 2000 });
    const bundle = await c.search('Observation', {});
    assert.match(canonicalStringify(bundle), /"value":1\.50/);
    const before = sockets.size;
    for (let i = 0; i < 50; i++) await c.search('Observation', {});
    assert.ok(sockets.size - before <= 1, `50 sequential searches opened ${sockets.size - before} connections`);
  });

  test('every failure maps to the FHIR edge status, with no response body in the message', async () => {
    // Only 'hang' is meant to run into the timeout: the answering modes get a generous one, since
    // on a loaded machine an answer can take over 300 ms, and a timeout (503) would replace the
    // status under test (e.g. 502 for a 500).
    const c = new HospitalClient({ baseUrl: base, timeoutMs: 10_000 });
    const short = new HospitalClient({ baseUrl: base, timeoutMs: 300 });
    const expected: Record<string, number> = { '500': 502, '400': 400, '503': 503, text: 502, notbundle: 502, hang: 503, cut: 503 };
    for (const [mode, status] of Object.entries(expected)) {
      const err = await (mode === 'hang' ? short : c).search('Observation', { mode }).then(
        () => assert.fail(`${mode}: resolved`),
        (e: unknown) => e as Error,
      );
      assert.ok(!err.message.includes('Smith'), `${mode}: body in the message: ${err.message}`);
      assert.equal((hospitalFailure(err, 'search') as { status?: number }).status, status, `${mode}: ${err.message}`);
    }
  });

  test('a hospital that refuses connections is 503', async () => {
    const probe = http.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const c = new HospitalClient({ baseUrl: `http://127.0.0.1:${port}/fhir`, timeoutMs: 300 });
    const err = await c.search('Patient', { name: 'x' }).then(
      () => assert.fail('resolved'),
      (e: unknown) => e as Error & { code?: string },
    );
    assert.match(err.message, /ECONNREFUSED/);
    assert.equal((hospitalFailure(err, 'search') as { status?: number }).status, 503);
  });
});
