/**
 * Client authorization, pure parts: token verification (jose keys generated here), SMART scopes
 * v1/v2, the Patient compartment (also over the Synthea sample), request classification, the
 * authorization decision, the WWW-Authenticate challenge and the open-mode rule.
 */
import { describe, test, before } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, base64url } from 'jose';
import type { JWK } from 'jose';
import {
  AuthError,
  assertAuthOrInsecureDev,
  AuthConfigSchema,
  authorizeInteraction,
  bearerToken,
  checkPublicKeySet,
  checkScope,
  classifyFhirRequest,
  compartmentSearchParams,
  constrainSearchToPatient,
  filterBundleEntries,
  inPatientCompartment,
  isLoopbackHost,
  localKeySet,
  parseScope,
  parseScopes,
  patientCompartmentParams,
  smartConfiguration,
  TokenVerifier,
  wwwAuthenticate,
} from '../src/auth/index.ts';
import type { AccessContext, InteractionInfo, Permission } from '../src/auth/index.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const ISS = 'https://auth.example.org';
const AUD = 'https://node-a.example.org/fhir';
const NOW = Date.UTC(2026, 0, 15, 12, 0, 0);
const sec = (ms: number) => Math.floor(ms / 1000);

type Key = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

interface Keys {
  rsa: Key;
  rsa512: Key;
  rsaPublicJwk: JWK;
  rsaPublicPem: string;
  ec: Key;
  other: Key;
  verifier: TokenVerifier;
}

async function makeKeys(): Promise<Keys> {
  const rsa = await generateKeyPair('RS256', { extractable: true });
  const ec = await generateKeyPair('ES256', { extractable: true });
  const other = await generateKeyPair('RS256', { extractable: true });
  const rsa512 = await generateKeyPair('RS512');
  const rsaPublicJwk = { ...(await exportJWK(rsa.publicKey)), kid: 'rsa-1', alg: 'RS256', use: 'sig' };
  const ecPublicJwk = { ...(await exportJWK(ec.publicKey)), kid: 'ec-1', alg: 'ES256', use: 'sig' };
  const verifier = new TokenVerifier({ issuer: ISS, audience: AUD, keys: localKeySet({ keys: [rsaPublicJwk, ecPublicJwk] }), now: () => NOW });
  return { rsa: rsa.privateKey, rsa512: rsa512.privateKey, rsaPublicJwk, rsaPublicPem: await exportSPKI(rsa.publicKey), ec: ec.privateKey, other: other.privateKey, verifier };
}

/** A signed token; `claims` override the valid defaults (undefined removes a claim). */
async function token(key: Key, opts: { alg?: string; kid?: string; claims?: Record<string, unknown> } = {}): Promise<string> {
  const claims: Record<string, unknown> = { iss: ISS, aud: AUD, sub: 'user-1', client_id: 'app-1', iat: sec(NOW) - 10, exp: sec(NOW) + 300, jti: 'j-1', scope: 'user/*.cruds', ...opts.claims };
  for (const [k, v] of Object.entries(claims)) if (v === undefined) delete claims[k];
  return new SignJWT(claims).setProtectedHeader({ alg: opts.alg ?? 'RS256', kid: opts.kid ?? 'rsa-1', typ: 'at+jwt' }).sign(key);
}

async function reasonOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof AuthError, `expected AuthError, got ${String(err)}`);
    return err.reason;
  }
  return 'accepted';
}

describe('TokenVerifier', () => {
  let k: Keys;
  before(async () => {
    k = await makeKeys();
  });

  test('a valid RS256 token passes and yields subject, client, scopes and patient context', async () => {
    const ctx = await k.verifier.verify(await token(k.rsa, { claims: { scope: 'launch/patient patient/Observation.rs openid', patient: 'p1', fhirUser: 'Patient/p1' } }));
    assert.equal(ctx.subject, 'user-1');
    assert.equal(ctx.clientId, 'app-1');
    assert.equal(ctx.jti, 'j-1');
    assert.equal(ctx.patient, 'p1');
    assert.equal(ctx.fhirUser, 'Patient/p1');
    assert.equal(ctx.expiresAtMs, (sec(NOW) + 300) * 1000);
    assert.deepEqual(ctx.scopes.clinical.map((s) => s.raw), ['patient/Observation.rs']);
    assert.deepEqual(ctx.scopes.other, ['launch/patient', 'openid']);
  });

  test('a valid ES256 token with the second key passes', async () => {
    assert.equal((await k.verifier.verify(await token(k.ec, { alg: 'ES256', kid: 'ec-1' }))).subject, 'user-1');
  });

  test('launch context in `context.patient` is a patient context too; `Patient/x` is read as x', async () => {
    assert.equal((await k.verifier.verify(await token(k.rsa, { claims: { context: { patient: 'Patient/p9' } } }))).patient, 'p9');
    assert.equal(await reasonOf(k.verifier.verify(await token(k.rsa, { claims: { patient: '../../etc' } }))), 'malformed_token');
  });

  test('each invalid token is refused with its precise reason', async () => {
    const cases: Array<[string, Promise<string>, string]> = [
      ['expired', token(k.rsa, { claims: { exp: sec(NOW) - 120 } }), 'expired'],
      ['not yet valid (nbf)', token(k.rsa, { claims: { nbf: sec(NOW) + 120 } }), 'not_yet_valid'],
      ['issued in the future (iat)', token(k.rsa, { claims: { iat: sec(NOW) + 600 } }), 'not_yet_valid'],
      ['wrong iss', token(k.rsa, { claims: { iss: 'https://evil.example.org' } }), 'wrong_issuer'],
      ['wrong aud', token(k.rsa, { claims: { aud: 'https://other-node.example.org/fhir' } }), 'wrong_audience'],
      ['no exp', token(k.rsa, { claims: { exp: undefined } }), 'missing_claim'],
      ['unknown kid', token(k.rsa, { kid: 'rsa-2' }), 'unknown_kid'],
      ['signed by an unknown key under a known kid', token(k.other, { kid: 'rsa-1' }), 'bad_signature'],
      ['alg outside the allowlist (RS512)', token(k.rsa512, { alg: 'RS512' }), 'alg_not_allowed'],
    ];
    for (const [name, t, reason] of cases) assert.equal(await reasonOf(k.verifier.verify(await t)), reason, name);
  });

  test('alg none is refused (even with a valid-looking payload)', async () => {
    const header = base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }));
    const payload = base64url.encode(JSON.stringify({ iss: ISS, aud: AUD, exp: sec(NOW) + 300, scope: 'system/*.*' }));
    assert.equal(await reasonOf(k.verifier.verify(`${header}.${payload}.`)), 'alg_none');
    const none2 = `${base64url.encode(JSON.stringify({ alg: 'NONE' }))}.${payload}.`;
    assert.equal(await reasonOf(k.verifier.verify(none2)), 'alg_none');
  });

  test('HS256 keyed with the public key (algorithm confusion) is refused', async () => {
    for (const secret of [new TextEncoder().encode(k.rsaPublicPem), new TextEncoder().encode(JSON.stringify(k.rsaPublicJwk))]) {
      const forged = await new SignJWT({ iss: ISS, aud: AUD, exp: sec(NOW) + 300, scope: 'system/*.*' }).setProtectedHeader({ alg: 'HS256', kid: 'rsa-1' }).sign(secret);
      assert.equal(await reasonOf(k.verifier.verify(forged)), 'alg_symmetric');
    }
  });

  test('a tampered payload or signature fails the signature check', async () => {
    const good = await token(k.rsa, { claims: { scope: 'patient/Observation.rs', patient: 'p1' } });
    const [h, p, s] = good.split('.') as [string, string, string];
    const escalated = base64url.encode(JSON.stringify({ ...JSON.parse(new TextDecoder().decode(base64url.decode(p))), scope: 'system/*.cruds' }));
    assert.equal(await reasonOf(k.verifier.verify(`${h}.${escalated}.${s}`)), 'bad_signature');
    const flipped = s.slice(0, 10) + (s[10] === 'A' ? 'B' : 'A') + s.slice(11);
    assert.equal(await reasonOf(k.verifier.verify(`${h}.${p}.${flipped}`)), 'bad_signature');
  });

  test('garbage is malformed, never an exception other than AuthError', async () => {
    for (const t of ['', 'abc', 'a.b', 'a.b.c.d', '!!.??.**', `${'a'.repeat(20000)}.b.c`, 'eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln']) {
      const r = await reasonOf(k.verifier.verify(t));
      assert.ok(['malformed_token', 'bad_signature', 'unknown_kid'].includes(r), `${t.slice(0, 20)}: ${r}`);
    }
  });

  test('clock skew: 30 s past exp passes with the default 60 s skew, fails with 0', async () => {
    const t = await token(k.rsa, { claims: { exp: sec(NOW) - 30 } });
    assert.equal((await k.verifier.verify(t)).subject, 'user-1');
    const strict = new TokenVerifier({ issuer: ISS, audience: AUD, keys: localKeySet({ keys: [k.rsaPublicJwk] }), now: () => NOW, clockSkewSeconds: 0 });
    assert.equal(await reasonOf(strict.verify(t)), 'expired');
  });

  test('a revoked jti is refused', async () => {
    const v = new TokenVerifier({ issuer: ISS, audience: AUD, keys: localKeySet({ keys: [k.rsaPublicJwk] }), now: () => NOW, isRevoked: (jti) => jti === 'j-bad' });
    assert.equal(await reasonOf(v.verify(await token(k.rsa, { claims: { jti: 'j-bad' } }))), 'revoked');
    assert.equal((await v.verify(await token(k.rsa))).jti, 'j-1');
  });

  test('the verifier refuses to be configured with none or HS*; key sets refuse private and symmetric keys', async () => {
    assert.throws(() => new TokenVerifier({ issuer: ISS, audience: AUD, keys: localKeySet({ keys: [k.rsaPublicJwk] }), algorithms: ['RS256', 'HS256'] }), /HS256 cannot be allowed/);
    assert.throws(() => new TokenVerifier({ issuer: ISS, audience: AUD, keys: localKeySet({ keys: [k.rsaPublicJwk] }), algorithms: ['none'] }), /none cannot be allowed/);
    const priv = await exportJWK(k.rsa);
    assert.throws(() => checkPublicKeySet({ keys: [priv] }, 'test set'), /private key material/);
    assert.throws(() => checkPublicKeySet({ keys: [{ kty: 'oct', k: 'c2VjcmV0' }] }, 'test set'), /symmetric/);
    assert.throws(() => checkPublicKeySet({ keys: [] }, 'test set'), /no keys/);
    assert.throws(() => checkPublicKeySet({ nope: 1 }, 'test set'), /not a JWK Set/);
  });

  test('config schema: HS256 and none cannot be configured; exactly one key source', () => {
    const base = { issuer: ISS, audience: AUD, jwksUri: 'https://auth.example.org/jwks' };
    assert.ok(AuthConfigSchema.safeParse(base).success);
    assert.ok(!AuthConfigSchema.safeParse({ ...base, algorithms: ['HS256'] }).success);
    assert.ok(!AuthConfigSchema.safeParse({ ...base, algorithms: ['none'] }).success);
    assert.ok(!AuthConfigSchema.safeParse({ ...base, jwksFile: 'k.json' }).success, 'both sources');
    assert.ok(!AuthConfigSchema.safeParse({ issuer: ISS, audience: AUD }).success, 'no source');
    assert.ok(!AuthConfigSchema.safeParse({ ...base, jwksUri: 'http://auth.example.org/jwks' }).success, 'http off loopback');
    assert.ok(AuthConfigSchema.safeParse({ ...base, jwksUri: 'http://127.0.0.1:9/jwks' }).success, 'http on loopback');
    assert.ok(!AuthConfigSchema.safeParse({ ...base, clockSkewSeconds: 3600 }).success);
    const bs = { issuer: 'https://node-a.example.org/auth', tokenUrl: 'https://node-a.example.org/auth/token', signingKeyFile: 'k.json', clients: [{ clientId: 'lab', jwksFile: 'lab.json', scope: 'system/Observation.rs' }] };
    assert.ok(AuthConfigSchema.safeParse({ audience: AUD, backendServices: bs }).success, 'own token endpoint only');
    assert.ok(AuthConfigSchema.safeParse({ ...base, backendServices: bs }).success, 'both');
    assert.ok(!AuthConfigSchema.safeParse({ audience: AUD }).success, 'no issuer at all');
    assert.ok(!AuthConfigSchema.safeParse({ audience: AUD, jwksUri: 'https://auth.example.org/jwks' }).success, 'keys without issuer');
    assert.ok(!AuthConfigSchema.safeParse({ ...base, backendServices: { ...bs, issuer: ISS } }).success, 'same issuer twice');
    assert.ok(!AuthConfigSchema.safeParse({ audience: AUD, backendServices: { ...bs, clients: [{ ...bs.clients[0], scope: 'patient/*.rs' }] } }).success, 'client scopes are system/');
    assert.ok(!AuthConfigSchema.safeParse({ ...base, extra: 1 }).success, 'unknown keys are refused');
  });
});

describe('Authorization header (RFC 6750 §2.1)', () => {
  test('Bearer credentials are extracted; anything else is missing or malformed', () => {
    assert.equal(bearerToken('Bearer abc.def.ghi'), 'abc.def.ghi');
    assert.equal(bearerToken('bearer   abc.def.ghi  '), 'abc.def.ghi');
    for (const h of [undefined, '', 'Basic dXNlcjpwYXNz', 'Token abc']) assert.equal((() => { try { bearerToken(h); return 'ok'; } catch (e) { return (e as AuthError).reason; } })(), 'missing_token', String(h));
    assert.equal((() => { try { bearerToken('Bearer'); return 'ok'; } catch (e) { return (e as AuthError).reason; } })(), 'malformed_token');
  });

  test('WWW-Authenticate challenges: bare for no token, with error codes otherwise', () => {
    assert.equal(wwwAuthenticate(new AuthError('missing_token', 'x'), 'tidegate'), 'Bearer realm="tidegate"');
    assert.equal(wwwAuthenticate(new AuthError('expired', 'The access token has expired'), 'tidegate'), 'Bearer realm="tidegate", error="invalid_token", error_description="The access token has expired"');
    assert.equal(wwwAuthenticate(new AuthError('insufficient_scope', 'needs "more"', 'user/Observation.r'), 'r'), 'Bearer realm="r", error="insufficient_scope", error_description="needs ?more?", scope="user/Observation.r"');
    const e = new AuthError('bad_signature', 'The access token is invalid');
    assert.equal(e.status, 401);
    assert.equal(e.outcome.issue?.[0]?.code, 'security');
    assert.equal(new AuthError('outside_compartment', 'x').status, 403);
    assert.equal(new AuthError('missing_token', 'x').outcome.issue?.[0]?.code, 'login');
  });
});

describe('SMART scopes', () => {
  const grants = (scope: string, p: Permission, type: string, ctx = false) => checkScope(parseScopes(scope), p, type, ctx).granted;

  test('parsing v1, v2, granular, invalid and other scopes', () => {
    const s = parseScope('patient/Observation.rs');
    assert.ok(typeof s === 'object' && s.version === 2 && s.context === 'patient' && [...s.permissions].join('') === 'rs');
    const v1 = parseScope('user/*.write');
    assert.ok(typeof v1 === 'object' && v1.version === 1 && [...v1.permissions].sort().join('') === 'cdu');
    const g = parseScope('patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory');
    assert.ok(typeof g === 'object');
    assert.deepEqual(g.restrictions, [['category', 'http://terminology.hl7.org/CodeSystem/observation-category|laboratory']]);
    for (const bad of ['patient/Observation.sr', 'patient/Observation.', 'patient/observation.rs', 'user/*.readwrite', 'system/*.rs?', 'system/*.rs?=x', 'patient/Observation.read?x=1']) assert.equal(parseScope(bad), 'invalid', bad);
    for (const other of ['openid', 'fhirUser', 'launch', 'launch/patient', 'offline_access']) assert.equal(parseScope(other), 'other', other);
    const set = parseScopes(['openid patient/Observation.rs', 'bogus/x.y  user/*.*']);
    assert.equal(set.clinical.length, 2);
    assert.deepEqual(set.other, ['openid', 'bogus/x.y']);
  });

  test('v1 matrix: read = r+s, write = c+u+d, * = all; type and wildcard', () => {
    const table: Array<[string, Permission, string, boolean]> = [
      ['user/Observation.read', 'r', 'Observation', true],
      ['user/Observation.read', 's', 'Observation', true],
      ['user/Observation.read', 'c', 'Observation', false],
      ['user/Observation.read', 'r', 'Patient', false],
      ['user/*.write', 'c', 'Encounter', true],
      ['user/*.write', 'u', 'Encounter', true],
      ['user/*.write', 'd', 'Encounter', true],
      ['user/*.write', 'r', 'Encounter', false],
      ['user/*.write', 's', 'Encounter', false],
      ['system/*.*', 'c', 'Condition', true],
      ['system/*.*', 's', 'Condition', true],
    ];
    for (const [scope, p, type, want] of table) assert.equal(grants(scope, p, type), want, `${scope} ${p} ${type}`);
  });

  test('v2 matrix: each letter grants only itself', () => {
    const letters: Permission[] = ['c', 'r', 'u', 'd', 's'];
    for (const scope of ['system/Observation.rs', 'system/*.cruds', 'user/Observation.cud', 'user/Observation.r', 'user/Observation.s', 'user/Observation.d']) {
      const held = scope.split('.')[1]!;
      for (const p of letters) assert.equal(grants(scope, p, 'Observation'), held.includes(p), `${scope} ${p}`);
      assert.equal(grants(scope, 'r', 'Patient'), scope.includes('*') && held.includes('r'), `${scope} on Patient`);
    }
  });

  test('patient/ scopes need a patient context; granular scopes are refused as unsupported', () => {
    assert.equal(grants('patient/Observation.rs', 'r', 'Observation', true), true);
    const d = checkScope(parseScopes('patient/Observation.rs'), 'r', 'Observation', false);
    assert.ok(!d.granted && d.reason === 'patient_context_required');
    const g = checkScope(parseScopes('user/Observation.rs?category=laboratory'), 'r', 'Observation', false);
    assert.ok(!g.granted && g.reason === 'unsupported_granular_scope');
    assert.equal(grants('user/Observation.rs?category=laboratory user/Observation.r', 'r', 'Observation'), true, 'a plain scope still grants');
    const none = checkScope(parseScopes('user/Patient.rs'), 'c', 'Patient', false);
    assert.ok(!none.granted && none.reason === 'insufficient_scope' && none.needed.includes('user/Patient.c'));
  });
});

describe('Patient compartment', () => {
  test('R4 CompartmentDefinition parameters', () => {
    assert.deepEqual(patientCompartmentParams('Observation'), ['subject', 'performer']);
    assert.deepEqual(patientCompartmentParams('Practitioner'), []);
    assert.deepEqual(compartmentSearchParams('Patient', 'p1'), [['_id', 'p1'], ['link', 'Patient/p1']]);
    assert.deepEqual(compartmentSearchParams('Observation', 'p1')[0], ['subject', 'Patient/p1']);
    assert.deepEqual(constrainSearchToPatient('Observation', [['code', 'x']], 'p1'), [['code', 'x'], ['subject', 'Patient/p1']]);
    assert.deepEqual(constrainSearchToPatient('Practitioner', [['name', 'x']], 'p1'), [['name', 'x']]);
    assert.throws(() => constrainSearchToPatient('Binary', [], 'p1'), /outside the Patient compartment/);
  });

  test('membership: subject, performer, Patient itself, versioned and absolute references, other patients', () => {
    const obs = { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p1' } };
    assert.equal(inPatientCompartment(obs, 'p1'), true);
    assert.equal(inPatientCompartment(obs, 'p10'), false);
    assert.equal(inPatientCompartment(obs, 'p'), false);
    assert.equal(inPatientCompartment({ ...obs, subject: { reference: 'Patient/p2' }, performer: [{ reference: 'Patient/p1' }] }, 'p1'), true, 'performer');
    assert.equal(inPatientCompartment({ ...obs, subject: { reference: 'Group/p1' } }, 'p1'), false, 'same id, other type');
    assert.equal(inPatientCompartment({ ...obs, subject: { reference: 'Patient/p1/_history/3' } }, 'p1'), true, 'versioned');
    assert.equal(inPatientCompartment({ ...obs, subject: { reference: 'https://other.example.org/fhir/Patient/p1' } }, 'p1'), false, 'another server');
    assert.equal(inPatientCompartment({ ...obs, subject: { reference: 'https://node-a.example.org/fhir/Patient/p1' } }, 'p1', { baseUrls: ['https://node-a.example.org/fhir'] }), true, 'own base');
    assert.equal(inPatientCompartment({ resourceType: 'Patient', id: 'p1' }, 'p1'), true);
    assert.equal(inPatientCompartment({ resourceType: 'Patient', id: 'p2' }, 'p1'), false);
    assert.equal(inPatientCompartment({ resourceType: 'Patient', id: 'p2', link: [{ other: { reference: 'Patient/p1' }, type: 'seealso' }] }, 'p1'), true, 'link');
    assert.equal(inPatientCompartment({ resourceType: 'Encounter', status: 'finished', subject: { reference: 'Patient/p1' } }, 'p1'), true);
    assert.equal(inPatientCompartment({ resourceType: 'Provenance', target: [{ reference: 'Patient/p1' }] }, 'p1'), true, 'resolve() is Patient');
    assert.equal(inPatientCompartment({ resourceType: 'Provenance', target: [{ reference: 'Observation/p1' }] }, 'p1'), false);
    assert.equal(inPatientCompartment({ resourceType: 'Practitioner', id: 'p1' }, 'p1'), false, 'outside the compartment');
    assert.equal(inPatientCompartment({ resourceType: 'Binary', id: 'b', contentType: 'text/plain' }, 'p1'), false);
    assert.equal(inPatientCompartment(null, 'p1'), false);
    assert.equal(inPatientCompartment({ subject: { reference: 'Patient/p1' } }, 'p1'), false, 'no resourceType');
  });

  test('every Synthea resource is in its own patient\'s compartment and in no other', { skip: SYNTHEA_SKIP }, () => {
    const patients = readSynthea('Patient').map((p) => p.id as string);
    assert.ok(patients.length >= 2);
    let checked = 0;
    for (const type of ['Encounter', 'Condition', 'Procedure', 'AllergyIntolerance', 'MedicationRequest', 'Immunization', 'DocumentReference']) {
      for (const r of readSynthea(type).slice(0, 60)) {
        const ref: string = (r.subject ?? r.patient).reference;
        const owner = ref.replace(/^Patient\//, '');
        const other = patients.find((p) => p !== owner)!;
        assert.equal(inPatientCompartment(r, owner), true, `${type}/${r.id} in ${owner}`);
        assert.equal(inPatientCompartment(r, other), false, `${type}/${r.id} not in ${other}`);
        checked++;
      }
    }
    for (const p of readSynthea('Patient')) assert.equal(inPatientCompartment(p, p.id), true);
    // R4 leaves Device out of the Patient compartment, although Synthea's Devices name a patient.
    for (const d of readSynthea('Device').slice(0, 5)) assert.equal(inPatientCompartment(d, d.patient.reference.slice(8)), false);
    for (const o of readSynthea('Organization').slice(0, 5)) assert.equal(inPatientCompartment(o, patients[0]!), false);
    assert.ok(checked > 100, `checked ${checked}`);
  });

  test('filterBundleEntries drops entries, keeps outcomes, fixes total, and never mutates the input', () => {
    const bundle = {
      resourceType: 'Bundle',
      type: 'searchset',
      total: 3,
      entry: [
        { resource: { resourceType: 'Observation', id: 'a', subject: { reference: 'Patient/p1' } }, search: { mode: 'match' } },
        { resource: { resourceType: 'Observation', id: 'b', subject: { reference: 'Patient/p2' } }, search: { mode: 'match' } },
        { resource: { resourceType: 'Patient', id: 'p2' }, search: { mode: 'include' } },
        { resource: { resourceType: 'OperationOutcome', issue: [] }, search: { mode: 'outcome' } },
      ],
    };
    const copy = structuredClone(bundle);
    const { bundle: out, removed } = filterBundleEntries(bundle, (r) => inPatientCompartment(r, 'p1'));
    assert.equal(removed, 2);
    assert.deepEqual(out.entry.map((e) => (e.resource as { id?: string }).id ?? 'outcome'), ['a', 'outcome']);
    assert.equal(out.total, 2);
    assert.deepEqual(bundle, copy);
    const history = { resourceType: 'Bundle', entry: [{ request: { method: 'DELETE' } }, { resource: { resourceType: 'Observation', subject: { reference: 'Patient/p2' } } }] };
    const h = filterBundleEntries(history, (r) => inPatientCompartment(r, 'p1'));
    assert.equal(h.removed, 2, 'a deletion entry goes with the versions it belongs to');
    assert.equal(h.bundle.entry, undefined);
  });
});

describe('request classification (mirrors src/fhir/express.ts routes)', () => {
  const c = (m: string, p: string, q = false, ine = false) => {
    const i = classifyFhirRequest(m, p, q, ine);
    return i.kind === 'interaction' ? `${i.interaction}:${i.resourceType ?? ''}:${i.id ?? ''}${i.vid ? `:${i.vid}` : ''}${i.operation ? `:${i.operation}` : ''}` : i.kind === 'unknown' ? `unknown:${i.status}` : i.kind;
  };
  test('routes', () => {
    const cases: Array<[string, string, boolean, boolean, string]> = [
      ['GET', '/metadata', false, false, 'public'],
      ['HEAD', '/Metadata/', false, false, 'public'],
      ['POST', '/metadata', false, false, 'unknown:405'],
      ['GET', '/', true, false, 'search-system::'],
      ['POST', '/_search', false, false, 'search-system::'],
      ['POST', '/', false, false, 'batch'],
      ['GET', '/Observation', true, false, 'search-type:Observation:'],
      ['POST', '/Observation/_SEARCH', false, false, 'search-type:Observation:'],
      ['POST', '/Observation', false, false, 'create:Observation:'],
      ['POST', '/Observation', false, true, 'conditional-create:Observation:'],
      ['PUT', '/Observation', true, false, 'conditional-update:Observation:'],
      ['DELETE', '/Observation', true, false, 'conditional-delete:Observation:'],
      ['GET', '/Observation/o1', false, false, 'read:Observation:o1'],
      ['HEAD', '/Observation/o1/', false, false, 'read:Observation:o1'],
      ['PUT', '/Observation/o1', false, false, 'update:Observation:o1'],
      ['PATCH', '/Observation/o1', false, false, 'patch:Observation:o1'],
      ['DELETE', '/Observation/o1', false, false, 'delete:Observation:o1'],
      ['GET', '/Observation/o1/_history', false, false, 'history-instance:Observation:o1'],
      ['GET', '/Observation/o1/_history/3', false, false, 'vread:Observation:o1:3'],
      ['GET', '/Observation/o1/$conflicts', false, false, 'operation:Observation:o1:$conflicts'],
      ['POST', '/Observation/$validate', false, false, 'operation:Observation::$validate'],
      ['GET', '/$export', false, false, 'operation:::$export'],
      ['GET', '//Observation', false, false, 'unknown:404'],
      ['GET', '/Observation/%E0%A4%A', false, false, 'unknown:404'],
      ['OPTIONS', '/Observation', false, false, 'unknown:405'],
      ['GET', '/a/b/c/d/e', false, false, 'unknown:404'],
    ];
    for (const [m, p, q, ine, want] of cases) assert.equal(c(m, p, q, ine), want, `${m} ${p}`);
  });
});

describe('authorizeInteraction', () => {
  const ctx = (scope: string, patient?: string): AccessContext => ({ issuer: ISS, subject: 's', clientId: 'c', jti: 'j', expiresAtMs: NOW + 1, scopes: parseScopes(scope), patient, fhirUser: undefined });
  const info = (interaction: InteractionInfo['interaction'], resourceType?: string, id?: string, operation?: string): InteractionInfo => ({ kind: 'interaction', interaction, resourceType, id, vid: undefined, operation });
  const reason = (f: () => unknown) => { try { f(); return 'allowed'; } catch (e) { assert.ok(e instanceof AuthError, String(e)); return e.reason; } };
  const store = new Map<string, string>([
    ['Observation/mine', JSON.stringify({ resourceType: 'Observation', id: 'mine', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p1' } })],
    ['Observation/theirs', JSON.stringify({ resourceType: 'Observation', id: 'theirs', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p2' } })],
  ]);
  const current = (t: string, id: string) => store.get(`${t}/${id}`);
  const obs = (id: string, p: string) => JSON.stringify({ resourceType: 'Observation', id, status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${p}` } });

  test('scope per interaction (403 reasons)', () => {
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.r'), info('read', 'Observation', 'x'))), 'allowed');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.r'), info('search-type', 'Observation'))), 'insufficient_scope');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.s'), info('history-instance', 'Observation', 'x'))), 'insufficient_scope');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.c'), info('conditional-create', 'Observation'))), 'insufficient_scope');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.crs'), info('conditional-create', 'Observation'))), 'allowed');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.u'), info('update', 'Observation', 'nothere'), { current })), 'insufficient_scope', 'create by update needs c');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.u'), info('update', 'Observation', 'mine'), { current })), 'allowed');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.u'), info('operation', 'Observation', undefined, '$validate'))), 'allowed');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.r'), info('operation', 'Observation', undefined, '$validate'))), 'insufficient_scope');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.rs'), info('operation', undefined, undefined, '$export'))), 'insufficient_scope');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.s'), info('search-system'), { searchParams: [['_type', 'Observation,Patient']] })), 'insufficient_scope');
    assert.equal(reason(() => authorizeInteraction(ctx('user/Observation.s user/Patient.s'), info('search-system'), { searchParams: [['_type', 'Observation,Patient']] })), 'allowed');
  });

  test('patient context: searches are constrained, writes must stay in the compartment', () => {
    const p1 = ctx('patient/*.cruds', 'p1');
    assert.deepEqual(authorizeInteraction(p1, info('search-type', 'Observation')).searchConstraint, ['subject', 'Patient/p1']);
    assert.deepEqual(authorizeInteraction(p1, info('search-type', 'Patient')).searchConstraint, ['_id', 'p1']);
    assert.equal(authorizeInteraction(p1, info('search-type', 'Practitioner')).searchConstraint, undefined);
    assert.equal(reason(() => authorizeInteraction(p1, info('search-type', 'Binary'))), 'outside_compartment');
    assert.equal(reason(() => authorizeInteraction(p1, info('search-system'), { searchParams: [['_type', 'Observation']] })), 'outside_compartment');
    assert.equal(reason(() => authorizeInteraction(p1, info('create', 'Observation'), { body: obs('n', 'p1') })), 'allowed');
    assert.equal(reason(() => authorizeInteraction(p1, info('create', 'Observation'), { body: obs('n', 'p2') })), 'outside_compartment');
    assert.equal(reason(() => authorizeInteraction(p1, info('create', 'Practitioner'), { body: '{"resourceType":"Practitioner"}' })), 'outside_compartment');
    assert.equal(reason(() => authorizeInteraction(p1, info('update', 'Observation', 'mine'), { body: obs('mine', 'p1'), current })), 'allowed');
    assert.equal(reason(() => authorizeInteraction(p1, info('update', 'Observation', 'mine'), { body: obs('mine', 'p2'), current })), 'outside_compartment', 'moving it away');
    assert.equal(reason(() => authorizeInteraction(p1, info('update', 'Observation', 'theirs'), { body: obs('theirs', 'p1'), current })), 'outside_compartment', 'taking it over');
    assert.equal(reason(() => authorizeInteraction(p1, info('update', 'Observation', 'mine'), { body: obs('mine', 'p1') })), 'outside_compartment', 'no lookup: refused');
    assert.equal(reason(() => authorizeInteraction(p1, info('delete', 'Observation', 'theirs'), { current })), 'outside_compartment');
    assert.equal(reason(() => authorizeInteraction(p1, info('delete', 'Observation', 'mine'), { current })), 'allowed');
    const patchAway = JSON.stringify([{ op: 'replace', path: '/subject/reference', value: 'Patient/p2' }]);
    assert.equal(reason(() => authorizeInteraction(p1, info('patch', 'Observation', 'mine'), { body: patchAway, contentType: 'application/json-patch+json', current })), 'outside_compartment');
    const patchOk = JSON.stringify([{ op: 'replace', path: '/status', value: 'amended' }]);
    assert.equal(reason(() => authorizeInteraction(p1, info('patch', 'Observation', 'mine'), { body: patchOk, contentType: 'application/json-patch+json', current })), 'allowed');
    assert.equal(reason(() => authorizeInteraction(p1, info('conditional-update', 'Observation'), { current })), 'outside_compartment');
    assert.equal(reason(() => authorizeInteraction(p1, info('operation', 'Observation', 'theirs', '$conflicts'), { current })), 'outside_compartment');
    assert.equal(reason(() => authorizeInteraction(p1, info('operation', 'Observation', 'mine', '$conflicts'), { current })), 'allowed');
    // The compartment rule binds any token with a patient context, even with user/ scopes.
    assert.equal(reason(() => authorizeInteraction(ctx('user/*.cruds', 'p1'), info('create', 'Observation'), { body: obs('n', 'p2') })), 'outside_compartment');
  });
});

describe('open mode and discovery', () => {
  test('assertAuthOrInsecureDev', () => {
    const auth = AuthConfigSchema.parse({ issuer: ISS, audience: AUD, jwksUri: 'https://auth.example.org/jwks' });
    assert.equal(assertAuthOrInsecureDev({ auth }, '0.0.0.0', false), 'authorized');
    assert.throws(() => assertAuthOrInsecureDev({ auth }, '127.0.0.1', true), /remove the flag/);
    assert.throws(() => assertAuthOrInsecureDev({}, '127.0.0.1', false), /No client authorization configured/);
    assert.throws(() => assertAuthOrInsecureDev({}, '0.0.0.0', true), /only on loopback/);
    assert.throws(() => assertAuthOrInsecureDev({}, '10.1.2.3', true), /only on loopback/);
    assert.equal(assertAuthOrInsecureDev({}, '127.0.0.1', true), 'insecure-dev');
    assert.equal(assertAuthOrInsecureDev({}, '::1', true), 'insecure-dev');
    for (const h of ['127.0.0.1', '127.5.6.7', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) assert.equal(isLoopbackHost(h), true, h);
    for (const h of ['0.0.0.0', '::', '', '10.0.0.1', 'example.org', '::ffff:10.0.0.1', '128.0.0.1']) assert.equal(isLoopbackHost(h), false, h);
  });

  test('`tidegate serve` refuses to start open, and says how to fix it', async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { execFile } = await import('node:child_process');
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-open-'));
    const main = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');
    const run = (cfg: object, args: string[]) => {
      writeFileSync(join(dir, 'node.json'), JSON.stringify(cfg));
      return new Promise<{ code: number | null; stderr: string }>((resolve) => {
        execFile(process.execPath, [main, 'serve', '--config', join(dir, 'node.json'), ...args], { timeout: 60_000 }, (err, _out, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }));
      });
    };
    try {
      const base = { nodeId: 'open-test', hospitalFhirUrl: 'http://127.0.0.1:9/fhir', secretKeyFile: 'missing.json', redisUrl: 'redis://127.0.0.1:1' };
      const a = await run({ ...base, listen: { host: '0.0.0.0', port: 0 } }, []);
      assert.equal(a.code, 2);
      assert.match(a.stderr, /No client authorization configured.*--insecure-dev/);
      const b = await run({ ...base, listen: { host: '0.0.0.0', port: 0 } }, ['--insecure-dev']);
      assert.equal(b.code, 2);
      assert.match(b.stderr, /allowed only on loopback/);
      // On loopback with the flag it gets past the rule (and then fails on the missing key file).
      const c = await run({ ...base, listen: { host: '127.0.0.1', port: 0 } }, ['--insecure-dev']);
      assert.equal(c.code, 2);
      assert.doesNotMatch(c.stderr, /client authorization|loopback/);
      assert.match(c.stderr, /missing\.json|secret key/i);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('loadNodeConfig validates auth and resolves its files against the config folder', async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { loadNodeConfig } = await import('../src/config/config.ts');
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-authcfg-'));
    try {
      const base = { nodeId: 'node-x', hospitalFhirUrl: 'http://127.0.0.1:9/fhir', secretKeyFile: 'k.json', storeFile: ':memory:' };
      const bs = { issuer: 'https://node-x/auth', tokenUrl: 'https://node-x/auth/token', signingKeyFile: 'keys/sign.json', clients: [{ clientId: 'lab', jwksFile: 'clients/lab.json', scope: 'system/*.rs' }] };
      writeFileSync(join(dir, 'a.json'), JSON.stringify({ ...base, auth: { issuer: ISS, audience: AUD, jwksFile: 'as/jwks.json', backendServices: bs } }));
      const cfg = loadNodeConfig(join(dir, 'a.json'), {});
      assert.equal(cfg.auth?.jwksFile, join(dir, 'as', 'jwks.json'));
      assert.equal(cfg.auth?.backendServices?.signingKeyFile, join(dir, 'keys', 'sign.json'));
      assert.equal(cfg.auth?.backendServices?.clients[0]?.jwksFile, join(dir, 'clients', 'lab.json'));
      writeFileSync(join(dir, 'b.json'), JSON.stringify({ ...base, auth: { issuer: ISS, audience: AUD, jwksUri: 'https://x/jwks', algorithms: ['HS256'] } }));
      assert.throws(() => loadNodeConfig(join(dir, 'b.json'), {}), /auth\.algorithms/);
      writeFileSync(join(dir, 'c.json'), JSON.stringify(base));
      assert.equal(loadNodeConfig(join(dir, 'c.json'), {}).auth, undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('smart-configuration has the fields SMART 2.x requires', () => {
    const doc = smartConfiguration({ issuer: ISS, jwksUri: `${ISS}/jwks`, tokenEndpoint: `${ISS}/token`, algorithms: ['RS384', 'ES384'] });
    for (const k of ['token_endpoint', 'grant_types_supported', 'capabilities', 'code_challenge_methods_supported']) assert.ok(k in doc, k);
    assert.deepEqual(doc.code_challenge_methods_supported, ['S256']);
    assert.deepEqual(doc.token_endpoint_auth_methods_supported, ['private_key_jwt']);
    assert.ok((doc.capabilities as string[]).includes('permission-v2'));
    assert.ok(!('authorization_endpoint' in doc));
  });
});
