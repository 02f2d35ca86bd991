/**
 * Mapping files in YAML (docs/mappings.md "The file"): a `*.yaml` mapping file loads to the same
 * mapping as its JSON twin (same value, same translation and routing on the example Observation
 * and on Synthea resources); every problem is reported at its YAML line and column (schema,
 * FHIRPath, ConceptMap file, peers, syntax, duplicate keys, anchors, tags); YAML's implicit typing
 * (`0123`, `1.10`, an empty value, `yes`) gets a "quote it" hint; `tidegate config check` and
 * `tidegate map preview` work with a YAML mapping; and `map preview` prints a `#` line per
 * identifier added (systems and path, no value).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { formatPreview, loadMapping, loadMappingOrThrow, MappingConfigError, positionOf, previewResource, runConfigCheck, yamlPositions } from '../src/mapping/index.ts';
import type { ConfigIssue, Mapping } from '../src/mapping/index.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { generateNodeKeys, writeKeyFiles } from '../src/envelope/index.ts';
import { SYNTHEA_DIR, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLES = join(ROOT, 'config/examples');
const FIXTURE = join(ROOT, 'test/fixtures/mapping-yaml/hospital-a.mapping.yaml');
const FIXTURE_TEXT = readFileSync(FIXTURE, 'utf8');
const run = promisify(execFile);

/** Key files of both example hospitals (`config check` requires the files the configs name). */
const KEYS = mkdtempSync(join(tmpdir(), 'tidegate-yaml-keys-'));
const TMP = mkdtempSync(join(tmpdir(), 'tidegate-yaml-'));
before(async () => {
  for (const node of ['hospital-a', 'hospital-b']) await writeKeyFiles(KEYS, generateNodeKeys(node));
});
after(() => {
  rmSync(KEYS, { recursive: true, force: true });
  rmSync(TMP, { recursive: true, force: true });
});

let n = 0;
/** Writes `text` as a new `.yaml` file in a temp dir, with the fixture's relative example paths made absolute. */
function yamlFile(text: string, name = 'hospital-a.mapping.yaml'): { file: string; text: string } {
  const dir = join(TMP, `m${n++}`);
  cpSync(join(ROOT, 'test/fixtures/mapping-yaml'), dir, { recursive: true });
  const out = text.replaceAll('../../../config/examples/', `${EXAMPLES}/`);
  writeFileSync(join(dir, name), out);
  return { file: join(dir, name), text: out };
}

/** The fixture with `from` replaced by `to` (which must occur once). */
function edited(from: string, to: string): string {
  assert.equal(FIXTURE_TEXT.split(from).length, 2, `"${from}" once in the fixture`);
  return FIXTURE_TEXT.replace(from, to);
}

/** 1-based line and column of the first occurrence of `needle` in `text` (plus `skip` characters). */
function at(text: string, needle: string, skip = 0): { line: number; column: number } {
  const i = text.indexOf(needle);
  assert.ok(i >= 0, `"${needle}" in the file`);
  const before = text.slice(0, i + skip);
  return { line: before.split('\n').length, column: i + skip - before.lastIndexOf('\n') };
}

/** The single issue of loading `text` as a YAML mapping (peers: hospital-b). */
function oneIssue(text: string): ConfigIssue & { text: string } {
  const f = yamlFile(text);
  const r = loadMapping(f.file, { peers: ['hospital-b'] });
  assert.equal(r.mapping, undefined);
  assert.equal(r.issues.length, 1, JSON.stringify(r.issues, null, 2));
  const issue = r.issues[0]!;
  assert.ok(issue.file.endsWith('.yaml'), issue.file);
  assert.ok(issue.hint.length > 10, 'has a hint');
  return { ...issue, text: f.text };
}

const where = (i: { line: number; column: number }) => ({ line: i.line, column: i.column });

async function cli(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [join(ROOT, 'src/cli/main.ts'), ...args], { cwd });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A copy of config/examples with keys, `hospital-a.mapping.yaml` (from `yaml`) and `node-a-yaml.json` naming it. */
function nodeDirWithYaml(yaml: string): string {
  const dir = join(TMP, `node${n++}`);
  cpSync(EXAMPLES, dir, { recursive: true });
  cpSync(KEYS, join(dir, 'keys'), { recursive: true });
  writeFileSync(join(dir, 'hospital-a.mapping.yaml'), yaml.replaceAll('../../../config/examples/', ''));
  const node = JSON.parse(readFileSync(join(dir, 'node-a.json'), 'utf8'));
  node.mappingFile = 'hospital-a.mapping.yaml';
  writeFileSync(join(dir, 'node-a-yaml.json'), JSON.stringify(node, null, 2));
  return dir;
}

/** JSON and YAML give the same translation (both directions) and the same route decision for hospital-b. */
function assertSameBehaviour(json: Mapping, yaml: Mapping, resource: FhirJsonObject, label: string): void {
  for (const direction of ['inbound', 'outbound'] as const) {
    let a: unknown;
    let b: unknown;
    try {
      a = json.translate(resource, direction);
    } catch (err) {
      a = { error: (err as Error).message };
    }
    try {
      b = yaml.translate(resource, direction);
    } catch (err) {
      b = { error: (err as Error).message };
    }
    assert.deepEqual(b, a, `${label} ${direction}`);
  }
  assert.deepEqual(yaml.explainRoute('hospital-b', resource), json.explainRoute('hospital-b', resource), `${label} route`);
}

describe('mapping files in YAML', () => {
  test('the YAML fixture reads to the same value as config/examples/hospital-a.mapping.json and loads without issues', () => {
    const y = yamlPositions(FIXTURE_TEXT);
    assert.equal(y.positions.error, undefined);
    const json = JSON.parse(readFileSync(join(EXAMPLES, 'hospital-a.mapping.json'), 'utf8'));
    delete json.$schema; // the YAML file names the schema in a yaml-language-server comment
    json.conceptMaps[0].file = `../../../config/examples/${json.conceptMaps[0].file}`;
    json.identifierSystems[1].crosswalk = `../../../config/examples/${json.identifierSystems[1].crosswalk}`;
    assert.deepEqual(y.value, json);
    const r = loadMapping(FIXTURE, { peers: ['hospital-b'] });
    assert.deepEqual(r.issues, []);
    assert.ok(r.mapping);
    assert.ok(r.files.some((f) => f.endsWith('hospital-a-lab-to-loinc.conceptmap.json')));
    assert.ok(r.files.some((f) => f.endsWith('hospital-a-mrn.crosswalk.csv')));
  });

  test('positions: values and keys by JSON Pointer; a block collection is reported at its key', () => {
    const text = 'a:\n  - x: 1\n    "y~/z": [2, {b: c}]\n  - plain\nd:\n  e: f\n';
    const { value, positions } = yamlPositions(text);
    assert.deepEqual(value, { a: [{ x: 1, 'y~/z': [2, { b: 'c' }] }, 'plain'], d: { e: 'f' } });
    assert.deepEqual(positions.values.get('/a/0/y~0~1z/1/b'), { line: 3, column: 21 });
    assert.deepEqual(positions.keys.get('/a/0/y~0~1z'), { line: 3, column: 5 });
    assert.deepEqual(positions.values.get('/a/0/y~0~1z'), { line: 3, column: 13 }, 'a flow sequence at its [');
    assert.deepEqual(positions.values.get('/a/0'), { line: 2, column: 5 }, 'a sequence item after its "- "');
    assert.deepEqual(positions.values.get('/a'), { line: 1, column: 1 }, 'a block sequence at its key');
    assert.deepEqual(positions.values.get('/d'), { line: 5, column: 1 });
    assert.deepEqual(positionOf(positions, '/d/missing'), { line: 5, column: 1 }, 'a missing member at its object');
  });

  test('the YAML mapping behaves like the JSON one on config/examples/lab-observation.json', () => {
    const json = loadMappingOrThrow(join(EXAMPLES, 'hospital-a.mapping.json'), { peers: ['hospital-b'] });
    const yaml = loadMappingOrThrow(FIXTURE, { peers: ['hospital-b'] });
    const obs = JSON.parse(readFileSync(join(EXAMPLES, 'lab-observation.json'), 'utf8')) as FhirJsonObject;
    assertSameBehaviour(json, yaml, obs, 'lab-observation');
    const t = yaml.translate(obs, 'inbound');
    assert.deepEqual(t.changes.map((c) => c.to), ['http://loinc.org|2345-7']);
    assert.equal(yaml.explainRoute('hospital-b', t.resource).reason, 'sent by routes.hospital-b.send[1]');
  });

  test('the YAML mapping behaves like the JSON one on every Synthea resource', { skip: SYNTHEA_SKIP }, () => {
    const json = loadMappingOrThrow(join(EXAMPLES, 'hospital-a.mapping.json'), { peers: ['hospital-b'] });
    const yaml = loadMappingOrThrow(FIXTURE, { peers: ['hospital-b'] });
    let count = 0;
    let mrns = 0;
    const verdicts = new Set<boolean>();
    for (const name of readdirSync(SYNTHEA_DIR).filter((f) => f.endsWith('.ndjson') && f !== 'log.ndjson').sort()) {
      for (const line of readFileSync(join(SYNTHEA_DIR, name), 'utf8').split('\n')) {
        if (!line.trim()) continue;
        const r = JSON.parse(line) as FhirJsonObject & { identifier?: { system?: string; value?: string }[] };
        // give the first patients hospital A's MRN system (values from the example crosswalk) so identifiers are translated too
        if (r.resourceType === 'Patient' && mrns < 3 && Array.isArray(r.identifier)) {
          mrns++;
          r.identifier = [...r.identifier, { system: 'urn:oid:1.2.3.4.5', value: `A0000${mrns}` }];
        }
        assertSameBehaviour(json, yaml, r, `${r.resourceType}/${String(r.id)}`);
        verdicts.add(yaml.routeAllows('hospital-b', r));
        count++;
      }
    }
    assert.ok(count > 1000, `${count} resources`);
    assert.equal(mrns, 3);
    assert.deepEqual([...verdicts].sort(), [false, true], 'some resources sent, some withheld');
  });

  test('schema, FHIRPath, ConceptMap and peer errors are reported at their YAML line and column', () => {
    const unknown = oneIssue(edited('      - resourceType: Observation\n', '      - resourceType: Observation\n        wher: x\n'));
    assert.equal(unknown.pointer, '/routes/hospital-b/send/1/wher');
    assert.equal(unknown.message, 'unknown member "wher"');
    assert.deepEqual(where(unknown), at(unknown.text, 'wher: x', 6));

    const type = oneIssue(edited('    identifierSystems: [http://hl7.org/fhir/sid/us-ssn]', '    identifierSystems: http://hl7.org/fhir/sid/us-ssn'));
    assert.equal(type.pointer, '/patientMatching/deterministic/identifierSystems');
    assert.match(type.message, /expected array, received string/);
    assert.deepEqual(where(type), at(type.text, 'identifierSystems: http', 19));
    const wrong = oneIssue(edited('    unmapped: pass-through', '    unmapped: [pass-through]'));
    assert.equal(wrong.pointer, '/conceptMaps/0/unmapped');
    assert.deepEqual(where(wrong), at(wrong.text, '[pass-through]'));
    assert.match(wrong.hint, /"pass-through", "drop", "reject"/);

    const fhirpath = oneIssue(edited("code = 'laboratory').exists()", "code = 'laboratory'"));
    assert.match(fhirpath.message, /FHIRPath does not parse/);
    assert.equal(fhirpath.pointer, '/routes/hospital-b/send/1/where');
    assert.deepEqual(where(fhirpath), at(fhirpath.text, 'category.coding.where('));

    const folded = oneIssue(edited("code.coding.where(system = 'http://snomed.info/sct'", "code.coding.nosuchfunction(system = 'http://snomed.info/sct'"));
    assert.match(folded.message, /nosuchfunction/);
    assert.deepEqual(where(folded), at(folded.text, 'where: >-', 7), 'a folded scalar at its ">-"');

    const missing = oneIssue(edited('hospital-a-lab-to-loinc.conceptmap.json', 'no-such.conceptmap.json'));
    assert.match(missing.message, /no-such\.conceptmap\.json: cannot read the file \(ENOENT\)/);
    assert.deepEqual(where(missing), at(missing.text, '/no-such.conceptmap.json', -EXAMPLES.length));

    const peer = oneIssue(edited('routes:\n', 'routes:\n  hospital-c:\n    send: [{resourceType: Patient}]\n'));
    assert.match(peer.message, /route for "hospital-c", which is not a peer/);
    assert.deepEqual(where(peer), at(peer.text, 'hospital-c:'));

    const resType = oneIssue(edited('[Patient, Encounter,', '[Patient, Encountr,'));
    assert.match(resType.message, /"Encountr" is not an R4 resource type/);
    assert.deepEqual(where(resType), at(resType.text, 'Encountr'));
  });

  test('YAML typing traps: an unquoted 0123 or 1.10, an empty value, yes for a boolean, a number as key get a "quote it" hint', () => {
    const version = oneIssue(edited('    description: laboratory results only', '    description: 1.10'));
    assert.equal(version.pointer, '/routes/hospital-b/send/1/description');
    assert.match(version.message, /expected string, received number/);
    assert.equal(version.hint, 'YAML reads the unquoted 1.10 as the number 1.1: quote it ("1.10") to keep it a string');
    assert.deepEqual(where(version), at(version.text, '1.10'));

    const code = oneIssue(edited('  - local: urn:oid:1.2.3.4.5\n    shared: https://mpi.example.org/sid/hospital-a-mrn', '  - local: urn:oid:1.2.3.4.5\n    shared: 0123'));
    assert.equal(code.hint, 'YAML reads the unquoted 0123 as the number 123: quote it ("0123") to keep it a string');
    assert.deepEqual(where(code), at(code.text, '0123'));

    const quoted = yamlFile(edited('    description: laboratory results only', '    description: "1.10"'));
    assert.deepEqual(loadMapping(quoted.file, { peers: ['hospital-b'] }).issues, [], 'quoted, it is a string');
    const tagged = yamlFile(edited('    description: laboratory results only', '    description: !!str 0123'));
    assert.deepEqual(loadMapping(tagged.file, { peers: ['hospital-b'] }).issues, [], '!!str makes a string');
    const yes = yamlFile(edited('    description: laboratory results only', '    description: yes'));
    assert.deepEqual(loadMapping(yes.file, { peers: ['hospital-b'] }).issues, [], 'yes is a string in YAML 1.2');

    const empty = oneIssue(edited('    description: laboratory results only', '    description:'));
    assert.match(empty.hint, /empty, which YAML reads as null/);
    assert.deepEqual(where(empty), at(empty.text, '    description:\n', 16));

    const bool = oneIssue(edited('  description: "sure:', '  possible: no\n  description: "sure:'));
    assert.equal(bool.pointer, '/patientMatching/possible');
    assert.equal(bool.hint, 'YAML 1.2 reads no as a string: write true or false');

    const key = oneIssue(edited('routes:\n  hospital-b:', 'routes:\n  0123:\n    send: []\n  hospital-b:'));
    assert.equal(key.message, 'key 0123 is not a string (YAML reads it as the number 123)');
    assert.equal(key.hint, 'quote the key: "0123"');
    assert.deepEqual(where(key), at(key.text, '0123:'));
  });

  test('YAML syntax errors, duplicate keys, anchors, aliases, tags and several documents: one issue at the place, with a hint', () => {
    const syntax = oneIssue(edited('    withhold:\n', '    withhold: [\n'));
    assert.match(syntax.message, /^not YAML: /);
    assert.equal(syntax.pointer, '');
    assert.ok(syntax.line >= at(syntax.text, 'withhold: [').line, `line ${syntax.line}`);

    const tab = oneIssue(edited('    description: "general', '\tdescription: "general'));
    assert.match(tab.message, /Tabs are not allowed/);
    assert.deepEqual(where(tab), at(tab.text, '\tdescription'));
    assert.equal(tab.hint, 'indent with spaces, not tabs');

    const dup = oneIssue(edited('    direction: both\n', '    direction: both\n    unmapped: drop\n'));
    assert.equal(dup.message, 'duplicate key "unmapped" in a mapping');
    assert.deepEqual(where(dup), at(dup.text, 'unmapped: pass-through'), 'at the second occurrence');
    assert.match(dup.hint, /once in a mapping/);

    const anchor = oneIssue(edited('    shared: https://mpi.example.org/sid/hospital-a-mrn', '    shared: &mrn https://mpi.example.org/sid/hospital-a-mrn'));
    assert.equal(anchor.message, 'anchor &mrn in a mapping file');
    assert.equal(anchor.pointer, '/identifierSystems/0/shared');
    assert.match(anchor.hint, /no YAML anchors/);
    const alias = oneIssue(edited('    identifierSystems: [http://hl7.org/fhir/sid/us-ssn]', '    identifierSystems: [*x]'));
    assert.equal(alias.message, 'alias *x in a mapping file');

    const tag = oneIssue(edited('    direction: both', '    direction: !secret both'));
    assert.equal(tag.message, 'Unresolved tag: !secret');
    assert.deepEqual(where(tag), at(tag.text, '!secret'));
    const timestamp = oneIssue(edited('    direction: both', '    direction: !!timestamp 2026-11-29'));
    assert.equal(timestamp.message, 'Unresolved tag: tag:yaml.org,2002:timestamp');
    const int = oneIssue(edited('    direction: both', '    direction: !!int 12'));
    assert.equal(int.message, 'tag !!int in a mapping file');
    assert.deepEqual(where(int), at(int.text, '12\n'));

    const docs = oneIssue(`${FIXTURE_TEXT}---\nroutes: {}\n`);
    assert.match(docs.message, /multiple documents/);
    assert.match(docs.hint, /one YAML document/);

    const f = yamlFile('routes: {}\n', 'empty.yml');
    assert.deepEqual(loadMapping(f.file).issues, [], '.yml works too');
    assert.throws(() => loadMappingOrThrow(yamlFile('routes:\n  hospital-b: {send: [{where: "x.("}]}\n').file, { peers: ['hospital-b'] }), (err: unknown) => err instanceof MappingConfigError && /hospital-a\.mapping\.yaml:2:31: error: FHIRPath does not parse/.test(err.message));
  });

  test('CLI: config check and map preview with a YAML mappingFile; errors printed file.yaml:line:column', async () => {
    const dir = nodeDirWithYaml(FIXTURE_TEXT);
    const ok = await cli(['config', 'check', '--config', 'node-a-yaml.json'], dir);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /config check: OK/);
    const report = runConfigCheck(join(dir, 'node-a-yaml.json'));
    assert.ok(report.files.some((f) => f.endsWith('hospital-a.mapping.yaml')));

    const fromYaml = await cli(['map', 'preview', '--config', 'node-a-yaml.json', '--peer', 'hospital-b', 'lab-observation.json'], dir);
    const fromJson = await cli(['map', 'preview', '--config', 'node-a.json', '--peer', 'hospital-b', 'lab-observation.json'], dir);
    assert.equal(fromYaml.code, 0, fromYaml.stderr);
    assert.equal(fromYaml.stdout, fromJson.stdout, 'same preview as with the JSON mapping');
    assert.match(fromYaml.stdout, /hospital-b receives it \(sent by routes\.hospital-b\.send\[1\]\)/);

    const bad = nodeDirWithYaml(FIXTURE_TEXT.replace('    description: laboratory results only', '    description: 1.10'));
    const text = readFileSync(join(bad, 'hospital-a.mapping.yaml'), 'utf8');
    const r = await cli(['config', 'check', '--config', 'node-a-yaml.json'], bad);
    assert.equal(r.code, 1);
    const p = at(text, '1.10');
    assert.ok(r.stdout.includes(`hospital-a.mapping.yaml:${p.line}:${p.column}: error: `), r.stdout);
    assert.match(r.stdout, /hint: YAML reads the unquoted 1\.10 as the number 1\.1: quote it/);
    const preview = await cli(['map', 'preview', '--config', 'node-a-yaml.json', '--peer', 'hospital-b', 'lab-observation.json'], bad);
    assert.equal(preview.code, 2);
    assert.match(preview.stderr, /hospital-a\.mapping\.yaml:\d+:\d+: error: /);
  });

  test('map preview prints a # line per identifier added: path and systems, never the value', () => {
    const mapping = loadMappingOrThrow(FIXTURE, { peers: ['hospital-b'] });
    const patient = { resourceType: 'Patient', id: 'p1', identifier: [{ system: 'urn:oid:1.2.3.4.5', value: 'A00001' }], name: [{ family: 'Test' }] } as FhirJsonObject;
    const p = previewResource(mapping, patient, 'hospital-b');
    const comments = formatPreview(p).split('\n').filter((l) => l.startsWith('#'));
    assert.deepEqual(comments, [
      '# added identifier Patient.identifier[1]: system urn:oid:1.2.3.4.5 -> https://mpi.example.org/sid/hospital-a-mrn by identifierSystems[0]',
      '# added identifier Patient.identifier[2]: system urn:oid:1.2.3.4.5 -> https://mpi.example.org/sid/enterprise-id by identifierSystems[1]',
      '# hospital-b receives it (sent by routes.hospital-b.send[0])',
    ]);
    assert.ok(!comments.join('\n').includes('A00001') && !comments.join('\n').includes('E-1001'), 'no identifier values in # lines');
    assert.match(p.diff, /^\+\s+"value": "E-1001"$/m, 'the values show in the diff only');
    const outbound = previewResource(mapping, patient, undefined);
    assert.equal(outbound.identifiers.length, 0, 'outbound: nothing in a shared system to translate');
  });
});
