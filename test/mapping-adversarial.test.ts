/**
 * Adversarial review of the mapping features (docs/mappings.md): each test is a defect found by
 * trying to break routing, redaction, Consent and the configuration checks, kept as a regression.
 *
 * - FHIRPath evaluation errors (Medplum's "Expected singleton, but found [...]") carry the values
 *   the expression met; routing and redaction log them: the logs must never hold resource content.
 * - A projection with nothing to redact must still carry the REDACTED label, or the projection
 *   peer forwards it (and its own edits of it) to third nodes as if it were a shared document.
 * - A Consent period with a date that is not a FHIR date/dateTime must fail closed, not be read
 *   leniently by `Date.parse` (`"1"` is the year 2001) or rolled over (`2020-13-45`); so must a
 *   period that ends before it starts.
 * - A mapping file nested too deeply, a dangling symlink in the profiles directory, a JSON file
 *   with a byte order mark: clear errors (or a normal load), not a crash with a stack trace.
 * - A duplicate key in a JSON mapping file is an error (as in YAML): `JSON.parse` keeps the last
 *   route of a peer and would silently drop the first one's withhold rules.
 * - A projection whose REDACTED label a client at the projection peer removed (a PUT without
 *   `meta`) is still a projection there: the peer never forwards it.
 * - A route key YAML/JSON reads as `__proto__` must not vanish silently.
 * - A redaction rule whose output no FHIR server accepts (removing a required element, masking an
 *   element whose type has required children, masking an extension: no `url`) is a configuration
 *   error, so "masked resources pass R4 validation" holds for every rule `config check` accepts.
 * - A merge-policy `elements` entry that can never take effect (a mode on a field of its parent's
 *   identity key, `first-writer-wins` on a repeating primitive) is refused, not silently ignored.
 */
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tryGetDataType } from '@medplum/core';
import pino from 'pino';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { validateFhirResource } from '../src/fhir/validate.ts';
import { compileRedactRule, ConsentEvaluationError, consentDecision, DEFAULT_CONSENT_POLICY, elementPathProblem, loadMapping, loadMappingOrThrow, ProjectionFeeds, REDACTED_CODE, REDACTED_SYSTEM, redactResource, RedactRuleError } from '../src/mapping/index.ts';
import { checkProfilesDir, runConfigCheck } from '../src/mapping/check.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { generateNodeKeys } from '../src/envelope/index.ts';
import { HospitalClient } from '../src/hospital/index.ts';
import { TidegateNode } from '../src/node/node.ts';
import { Replica } from '../src/merge/replica.ts';
import { MemoryStore } from '../src/store/store.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const dir = mkdtempSync(join(tmpdir(), 'tidegate-adversarial-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A pino-like logger that keeps every call as JSON text. */
function capture(): { lines: string[]; warn(obj: object, msg: string): void; info(obj: object, msg: string): void } {
  const lines: string[] = [];
  return { lines, warn: (obj, msg) => lines.push(`${msg} ${JSON.stringify(obj)}`), info: (obj, msg) => lines.push(`${msg} ${JSON.stringify(obj)}`) };
}

function mappingFile(name: string, value: unknown): string {
  const file = join(dir, name);
  writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value, null, 2));
  return file;
}

const PATIENT: FhirJsonObject = {
  resourceType: 'Patient',
  id: 'adv-1',
  name: [{ family: 'Zyxwvutson', given: ['Quillonia', 'Brandeberta'] }],
  telecom: [{ system: 'phone', value: '555-867-5309' }, { system: 'email', value: 'quillonia@example.org' }],
  birthDate: '1971-02-03',
};
const SECRETS = ['Zyxwvutson', 'Quillonia', 'Brandeberta', '555-867-5309', 'quillonia@example.org', '1971-02-03'];

describe('no resource content in logs from FHIRPath errors', () => {
  test('routing and redaction conditions that fail at run time log the rule, never the values', () => {
    // Each condition passes `config check` (it evaluates on an empty resource) but fails on a
    // Patient with two telecoms or two given names; Medplum's message lists the items it found.
    const file = mappingFile('leak.mapping.json', {
      routes: {
        'hospital-b': { send: [{ resourceType: 'Patient', where: "telecom.value < 'x'" }] },
        'hospital-c': { withhold: [{ resourceType: 'Patient', where: 'name.given and true' }] },
        research: { redact: [{ path: 'Patient.address', where: "telecom.value & 'x' = 'y'" }] },
      },
    });
    const log = capture();
    const mapping = loadMappingOrThrow(file, { peers: ['hospital-b', 'hospital-c', 'research'], logger: log });
    assert.equal(mapping.routeAllows('hospital-b', PATIENT), false, 'fail closed');
    assert.equal(mapping.routeAllows('hospital-c', PATIENT), false, 'fail closed');
    mapping.redact('research', PATIENT);
    assert.equal(log.lines.length, 3, log.lines.join('\n'));
    for (const line of log.lines) {
      for (const s of SECRETS) assert.ok(!line.includes(s), `log line carries resource content (${s}): ${line}`);
      assert.match(line, /routes\.(hospital-b|hospital-c|research)\.(send|withhold|redact)\[0\]/, 'the rule is named');
    }
  });

  test('the same on every Synthea Patient', { skip: SYNTHEA_SKIP }, () => {
    const file = mappingFile('leak-synthea.mapping.json', { routes: { 'hospital-b': { send: [{ resourceType: 'Patient', where: "name.given + address.line > 'a'" }] } } });
    const log = capture();
    const mapping = loadMappingOrThrow(file, { peers: ['hospital-b'], logger: log });
    for (const p of readSynthea('Patient') as Array<Record<string, any>>) {
      mapping.routeAllows('hospital-b', p);
      const values = [...(p.name ?? []).flatMap((n: any) => [n.family, ...(n.given ?? [])]), ...(p.address ?? []).flatMap((a: any) => a.line ?? [])].filter((v) => typeof v === 'string' && v.length > 3);
      for (const line of log.lines) for (const v of values) assert.ok(!line.includes(v), `log line carries a name or address of ${String(p.id)}`);
    }
    assert.ok(log.lines.length > 0, 'the condition failed on some Patient');
  });
});

describe('a projection is never forwarded', () => {
  test('a projection with nothing to redact still carries the REDACTED label', async () => {
    const file = mappingFile('project.mapping.json', { routes: { research: { redact: [{ path: 'Patient.telecom' }] } } });
    const mapping = loadMappingOrThrow(file, { peers: ['research'] });
    const policy = loadMergePolicy();
    const shared = new Replica({ nodeId: 'node-a', store: new MemoryStore(), policy });
    const feeds = new ProjectionFeeds({ nodeId: 'node-a', mapping: () => mapping, shared, policy, publishTo: () => {}, mayReceive: () => true });
    const { telecom: _t, ...noTelecom } = PATIENT;
    shared.write('Patient/adv-1', noTelecom);
    shared.write('Patient/adv-2', { ...PATIENT, id: 'adv-2' });
    feeds.onVersion('Patient/adv-1');
    feeds.onVersion('Patient/adv-2');
    await feeds.idle();
    for (const key of ['Patient/adv-1', 'Patient/adv-2']) {
      const body = JSON.parse(feeds.replicaFor('research').current(key)!.body!);
      assert.ok(
        (body.meta?.security ?? []).some((c: any) => c.system === REDACTED_SYSTEM && c.code === REDACTED_CODE),
        `${key}: the projection carries the REDACTED label, so the peer withholds it from its own peers`,
      );
      assert.equal(body.telecom, undefined);
    }
    await feeds.stop();
  });
});

describe('a projection stays a projection at the peer', () => {
  test('an edit at the projection peer that drops meta.security does not make it forwardable', async () => {
    const keys = ['research', 'hospital-c'].map((n) => generateNodeKeys(n));
    const research = new TidegateNode({
      secretKeys: keys[0]!.secretKeys,
      peers: [{ nodeId: 'hospital-c', redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', publicKeys: keys[1]!.publicKeys }],
      redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
      queuePrefix: `adv-${randomBytes(4).toString('hex')}`,
      hospital: new HospitalClient({ baseUrl: 'http://127.0.0.1:9/fhir' }),
      logger: pino({ level: 'silent' }),
      antiEntropyIntervalMs: 0,
      hospitalPollIntervalMs: 0,
    });
    try {
      // what node A's ProjectionFeeds writes for research (src/mapping/projection.ts): its own writer
      const policy = loadMergePolicy();
      const projection = new Replica({ nodeId: 'hospital-a~redacted~research~0a1b2c', store: new MemoryStore(), policy });
      const key = 'Patient/adv-1';
      const { telecom: _t, ...redacted } = PATIENT;
      const w = projection.write(key, { ...redacted, meta: { security: [{ system: REDACTED_SYSTEM, code: REDACTED_CODE }] } });
      research.replica.applyRemote(key, w.update!);
      assert.equal(research.tide.mayReceive('hospital-c', key), false, 'the labelled projection is withheld');
      // a client at research PUTs the Patient without meta: the label leaf is deleted
      const { meta: _m, ...edited } = JSON.parse(research.replica.current(key)!.body!) as FhirJsonObject;
      research.replica.write(key, { ...edited, gender: 'female' });
      assert.equal(JSON.parse(research.replica.current(key)!.body!).meta.security, undefined, 'the label is gone from the rendered resource');
      assert.equal(research.tide.mayReceive('hospital-c', key), false, 'still a projection: never forwarded');
      // an ordinary resource of research is still sent
      research.replica.write('Patient/own', { resourceType: 'Patient', id: 'own', gender: 'male' });
      assert.equal(research.tide.mayReceive('hospital-c', 'Patient/own'), true);
    } finally {
      await research.stop();
    }
  });
});

describe('Consent dates fail closed', () => {
  const consent = (period: object): Record<string, unknown> => ({
    resourceType: 'Consent',
    id: 'c1',
    status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    patient: { reference: 'Patient/adv-1' },
    provision: { type: 'deny', period },
  });
  const obs = { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/adv-1' } };
  const now = Date.UTC(2026, 10, 29);

  for (const period of [{ end: '1' }, { end: '2020-13-45' }, { end: '2020-02-30' }, { start: 'Tue, 01 Jan 2030' }, { end: '2020-01-01T10:00:00' }, { end: '2020-01-01T10:00' }, { end: '20200101' }, { start: '2026-12-01', end: '2026-01-01' }]) {
    test(`a deny with period ${JSON.stringify(period)} (not a FHIR dateTime, or ending before it starts) cannot be evaluated: withheld`, () => {
      assert.throws(() => consentDecision([], obs, [consent(period)], DEFAULT_CONSENT_POLICY, now), ConsentEvaluationError);
    });
  }

  test('valid FHIR dates still work: a deny that ended is no answer, one that runs withholds', () => {
    assert.equal(consentDecision([], obs, [consent({ end: '2020-02-29' })], DEFAULT_CONSENT_POLICY, now).allowed, true);
    assert.equal(consentDecision([], obs, [consent({ end: '2026-11' })], DEFAULT_CONSENT_POLICY, now).allowed, false);
    assert.equal(consentDecision([], obs, [consent({ start: '2026-11-28T23:00:00+01:00', end: '2027' })], DEFAULT_CONSENT_POLICY, now).allowed, false);
    assert.equal(consentDecision([], obs, [consent({ end: '2026-11-28T23:59:59.999Z' })], DEFAULT_CONSENT_POLICY, now).allowed, true);
  });
});

describe('odd mapping files', () => {
  test('JSON nested too deeply is an error at its place, not a crash', () => {
    const file = mappingFile('deep.mapping.json', `{"description": ${'['.repeat(20000)}${']'.repeat(20000)}}`);
    const { mapping, issues } = loadMapping(file, { peers: [] });
    assert.equal(mapping, undefined);
    assert.equal(issues.length, 1);
    assert.match(issues[0]!.message, /nested/);
    assert.equal(issues[0]!.line, 1);
  });

  test('a JSON mapping file with a byte order mark loads (columns count from after it), as YAML does', () => {
    const file = mappingFile('bom.mapping.json', '\uFEFF{ "routes": { "hospital-b": { "send": [ { "resourceType": "Patent" } ] } } }');
    const { mapping, issues } = loadMapping(file, { peers: ['hospital-b'] });
    assert.equal(mapping, undefined);
    assert.deepEqual(issues.map((i) => `${i.line}:${i.column} ${i.message}`), ['1:59 "Patent" is not an R4 resource type']);
    const ok = mappingFile('bom-ok.mapping.json', '\uFEFF{ "routes": { "hospital-b": { "send": [ { "resourceType": "Patient" } ] } } }');
    assert.ok(loadMapping(ok, { peers: ['hospital-b'] }).mapping);
  });

  test('a JSON mapping file with a duplicate key is refused at the second one, as in YAML', () => {
    // JSON.parse keeps the last "hospital-b": the withhold rule of the first would vanish silently
    const file = mappingFile(
      'dup.mapping.json',
      `{
  "routes": {
    "hospital-b": { "withhold": [{ "resourceType": "Condition" }] },
    "hospital-b": { "send": [{ "resourceType": "Patient" }] }
  }
}`,
    );
    const { mapping, issues } = loadMapping(file, { peers: ['hospital-b'] });
    assert.equal(mapping, undefined);
    assert.deepEqual(issues.map((i) => `${i.line}:${i.column} ${i.message}`), ['4:5 not JSON: duplicate key "hospital-b" in an object']);
  });

  test('a dangling symlink in the profiles directory is an issue at that file, not a crash', () => {
    const profiles = join(dir, 'profiles-dangling');
    mkdirSync(profiles);
    symlinkSync(join(dir, 'no-such-target.json'), join(profiles, 'gone.json'));
    const { issues } = checkProfilesDir(profiles);
    assert.equal(issues.length, 1);
    assert.match(issues[0]!.file, /gone\.json$/);
    assert.match(issues[0]!.message, /cannot read the file \(ENOENT\)/);
  });

  for (const [name, text] of [
    ['proto.mapping.json', '{ "routes": { "__proto__": { "send": [] } } }'],
    ['proto.mapping.yaml', 'routes:\n  __proto__:\n    send: []\n'],
  ] as const) {
    test(`${name}: a route for "__proto__" is refused, not silently dropped`, () => {
      const { mapping, issues } = loadMapping(mappingFile(name, text), { peers: ['hospital-b'] });
      assert.equal(mapping, undefined, 'an invalid file does not load');
      assert.ok(issues.some((i) => i.severity === 'error' && /__proto__/.test(i.message)), JSON.stringify(issues));
    });
  }
});

describe('merge policy entries that could never take effect are refused', () => {
  const base = JSON.parse(readFileSync(fileURLToPath(new URL('../profiles/merge-policy.json', import.meta.url)), 'utf8')) as Record<string, unknown>;
  const policyFile = (name: string, elements: unknown): string => mappingFile(name, { ...base, elements });
  const errorOf = (name: string, elements: unknown): string => {
    try {
      loadMergePolicy(policyFile(name, elements));
    } catch (err) {
      return (err as Error).message;
    }
    return 'accepted';
  };

  test('a mode on a field of the identity key of its repeating parent (identifier.value: system + value)', () => {
    // a changed value is another identifier item, so two concurrent values never compete
    assert.match(errorOf('key-field.json', { 'Patient.identifier.value': 'first-writer-wins' }), /elements\["Patient\.identifier\.value"\]: .*identity key of Patient\.identifier.*system, value/);
    assert.match(errorOf('key-field2.json', { 'Observation.code.coding.code': 'never-merge' }), /elements\["Observation\.code\.coding\.code"\]: .*identity key/);
    assert.match(errorOf('key-field3.json', { 'Patient.identifier': { key: ['system', 'value'] }, 'Patient.identifier.value': 'first-writer-wins' }), /identity key/);
    // with a key that leaves value out, the entry works (docs/merge.md example) and is accepted
    assert.equal(errorOf('key-ok.json', { 'Patient.identifier': { key: ['system'] }, 'Patient.identifier.value': 'first-writer-wins' }), 'accepted');
    assert.equal(errorOf('key-ok2.json', { 'Patient.identifier.period': 'first-writer-wins', 'Observation.code.coding.display': 'first-writer-wins' }), 'accepted');
  });

  test('first-writer-wins on a repeating primitive (its items are identified by their value)', () => {
    assert.match(errorOf('prim.json', { 'Patient.name.given': 'first-writer-wins' }), /elements\["Patient\.name\.given"\]: .*repeating primitive/);
    assert.equal(errorOf('prim-ok.json', { 'Patient.name.given': 'never-merge' }), 'accepted', 'never-merge makes the list one value: it has an effect');
  });

  test('config check reports it for the node\'s merge-policy file', () => {
    const cfgText = readFileSync(fileURLToPath(new URL('../config/examples/node-a.json', import.meta.url)), 'utf8');
    const cfg = JSON.parse(cfgText) as Record<string, unknown>;
    const policy = policyFile('node-policy.json', { 'Patient.identifier.value': 'first-writer-wins' });
    const node = mappingFile('node-a.json', { ...cfg, mergePolicyFile: policy, mappingFile: undefined, secretKeyFile: 'no.secret.json', peers: [] });
    const report = runConfigCheck(node);
    assert.ok(report.issues.some((i) => i.severity === 'error' && /Patient\.identifier\.value.*identity key/.test(i.message)), JSON.stringify(report.issues.map((i) => i.message)));
  });
});

describe('redaction rules whose output a FHIR server refuses are configuration errors', () => {
  const problem = (path: string, action: 'remove' | 'mask'): string | undefined => {
    try {
      compileRedactRule({ path, action }, 'routes.research.redact[0]');
      return undefined;
    } catch (err) {
      assert.ok(err instanceof RedactRuleError);
      return err.message;
    }
  };

  test('refused: remove of a required element, mask of a type with required children or of an extension', () => {
    assert.match(problem('Encounter.status', 'remove') ?? '', /Encounter\.status is required/);
    assert.match(problem('Device.deviceName.name', 'remove') ?? '', /Device\.deviceName\.name is required/);
    assert.match(problem('Patient.extension.url', 'remove') ?? '', /required/);
    assert.match(problem('Patient.communication', 'mask') ?? '', /Patient\.communication.*required.*language/);
    assert.match(problem('Encounter.location', 'mask') ?? '', /required.*location/);
    assert.match(problem('Patient.extension', 'mask') ?? '', /required.*url/);
    assert.match(problem('Patient.address.extension', 'mask') ?? '', /required.*url/);
    // accepted
    for (const [path, action] of [['Encounter.status', 'mask'], ['Patient.address', 'mask'], ['Patient.name.given', 'mask'], ['Observation.value[x]', 'mask'], ['Patient.link', 'remove'], ['Patient.communication', 'remove'], ['Patient.extension', 'remove'], ['Immunization.vaccineCode', 'mask']] as const) {
      assert.equal(problem(path, action), undefined, `${action} ${path}`);
    }
  });

  test('every rule accepted on the elements of Synthea resources gives resources without missing required elements', { skip: SYNTHEA_SKIP }, () => {
    const missing: string[] = [];
    const checked = { remove: 0, mask: 0 };
    for (const type of ['Patient', 'Encounter', 'MedicationRequest', 'DocumentReference', 'AllergyIntolerance', 'Device', 'Immunization']) {
      const list = readSynthea(type).slice(0, 15) as FhirJsonObject[];
      const schema = tryGetDataType(type)!;
      const paths: string[] = [];
      for (const [name, el] of Object.entries(schema.elements)) {
        paths.push(`${type}.${name}`);
        const codes = (el.type ?? []).map((t) => t.code);
        if (codes.length === 1 && /^[A-Z]/.test(codes[0]!)) for (const n of Object.keys(tryGetDataType(codes[0]!)?.elements ?? {})) paths.push(`${type}.${name}.${n}`);
      }
      for (const path of paths) {
        if (elementPathProblem(path) !== undefined) continue;
        for (const action of ['remove', 'mask'] as const) {
          if (problem(path, action) !== undefined) continue;
          const rule = compileRedactRule({ path, action }, 'x');
          for (const r of list) {
            const out = redactResource(r, [rule]).resource;
            if (out === r) continue;
            checked[action]++;
            // documented limit: a removal that empties a required parent (a subject holding only
            // its reference) removes the parent too; that depends on the resource, not the rule
            const parent = path.split('.').slice(0, -1).join('.');
            const bad = validateFhirResource(out).filter((i) => /Missing required property/.test(i.details?.text ?? i.diagnostics ?? '') && !(action === 'remove' && String(i.expression?.[0]).replace(/\[\d+\]/g, '') === parent));
            if (bad.length > 0) missing.push(`${action} ${path}: ${String(bad[0]!.expression)}`);
          }
        }
      }
    }
    assert.deepEqual([...new Set(missing)], []);
    // not vacuous: both actions were accepted on many elements and changed real resources
    assert.ok(checked.remove > 100 && checked.mask > 100, `redacted resources checked: ${JSON.stringify(checked)}`);
  });
});
