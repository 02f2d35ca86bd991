/**
 * Mapping configuration (docs/mappings.md): the published JSON Schema matches the zod schema, the
 * example two-hospital configuration passes `tidegate config check`, invalid configurations are
 * refused with file:line:column messages and fix hints (by the check, by the loader a node starts
 * with, and by the CLI's exit status), and `tidegate map preview` prints the diff.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { jsonPositions, loadMapping, loadMappingOrThrow, mappingJsonSchema, MappingConfigError, positionOf, runConfigCheck } from '../src/mapping/index.ts';
import { generateNodeKeys, writeKeyFiles } from '../src/envelope/index.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLES = join(ROOT, 'config/examples');
const run = promisify(execFile);

/** Key files of both example hospitals (`config check` requires the files the configs name). */
const KEYS = mkdtempSync(join(tmpdir(), 'tidegate-mapping-keys-'));
before(async () => {
  for (const node of ['hospital-a', 'hospital-b']) await writeKeyFiles(KEYS, generateNodeKeys(node));
});
after(() => rmSync(KEYS, { recursive: true, force: true }));

/** A copy of config/examples in a temp dir, with its `keys/` and `edit` applied to the named JSON files. */
function examplesCopy(edit: Record<string, (v: any) => void> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-mapping-'));
  cpSync(EXAMPLES, dir, { recursive: true });
  cpSync(KEYS, join(dir, 'keys'), { recursive: true });
  for (const [name, fn] of Object.entries(edit)) {
    const v = JSON.parse(readFileSync(join(dir, name), 'utf8'));
    fn(v);
    writeFileSync(join(dir, name), `${JSON.stringify(v, null, 2)}\n`);
  }
  return dir;
}

/** 1-based line of the first line of `text` containing `needle`. */
function lineOf(text: string, needle: string): number {
  const i = text.split('\n').findIndex((l) => l.includes(needle));
  assert.ok(i >= 0, `"${needle}" in the file`);
  return i + 1;
}

async function cli(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [join(ROOT, 'src/cli/main.ts'), ...args], { cwd });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('mapping configuration', () => {
  test('docs/mappings.schema.json is generated from the zod schema and up to date', () => {
    const published = JSON.parse(readFileSync(join(ROOT, 'docs/mappings.schema.json'), 'utf8'));
    assert.deepEqual(published, mappingJsonSchema(), 'regenerate docs/mappings.schema.json (see docs/mappings.md "The file")');
    assert.equal(published.additionalProperties, false);
    assert.deepEqual(Object.keys(published.properties as object).sort(), ['$schema', 'conceptMaps', 'consent', 'description', 'identifierSystems', 'patientMatching', 'policyAgreement', 'profilesDir', 'routes']);
  });

  test('JSON positions: every value and key is located by JSON Pointer; a syntax error has its place', () => {
    const text = '{\n  "a": [1, {"b~/c": "x"}],\n  "d": true\n}';
    const p = jsonPositions(text);
    assert.equal(p.error, undefined);
    assert.deepEqual(p.values.get('/a/1/b~0~1c'), { line: 2, column: 21 });
    assert.deepEqual(p.keys.get('/d'), { line: 3, column: 3 });
    assert.deepEqual(positionOf(p, '/a/1/missing'), { line: 2, column: 12 }, 'a missing member is reported at its object');
    const bad = jsonPositions('{\n  "a": 1,\n}');
    assert.equal(bad.error?.position.line, 3);
  });

  test('the example two-hospital configuration passes the check, both nodes', () => {
    const dir = examplesCopy();
    try {
      for (const node of ['node-a.json', 'node-b.json']) {
        const report = runConfigCheck(join(dir, node));
        assert.deepEqual(report.issues, [], node);
        assert.equal(report.ok, true);
        assert.ok(report.files.some((f) => f.endsWith('hospital-a-lab-to-loinc.conceptmap.json')));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an invalid mapping file is refused: each error at its file, line and column, with a hint', () => {
    const dir = examplesCopy({
      'hospital-a.mapping.json': (m) => {
        m.routes['hospital-b'].send[1].where = "category.coding.where(code = 'laboratory'";
        m.routes['hospital-b'].send[0].resourceType[1] = 'Encountr';
        m.routes['hospital-b'].withhold[0].where = 'code.coding.nosuchfunction()';
        m.routes['hospital-c'] = { send: [{ resourceType: 'Patient' }] };
      },
      'hospital-a-lab-to-loinc.conceptmap.json': (c) => {
        c.group[0].element[0].target[0].equivalence = 'same';
        delete c.group[0].element[1].target[0].code;
      },
    });
    try {
      const mappingText = readFileSync(join(dir, 'hospital-a.mapping.json'), 'utf8');
      const mapText = readFileSync(join(dir, 'hospital-a-lab-to-loinc.conceptmap.json'), 'utf8');
      const report = runConfigCheck(join(dir, 'node-a.json'));
      assert.equal(report.ok, false);
      const by = (needle: string) => {
        const found = report.issues.find((i) => i.message.includes(needle));
        assert.ok(found, `an issue mentioning ${needle}: ${JSON.stringify(report.issues.map((i) => i.message))}`);
        assert.ok(found.hint.length > 10, 'has a hint');
        return found;
      };
      const parse = by('does not parse');
      assert.equal(parse.pointer, '/routes/hospital-b/send/1/where');
      assert.equal(parse.line, lineOf(mappingText, "\"where\": \"category.coding.where(code = 'laboratory'\""));
      assert.ok(parse.file.endsWith('hospital-a.mapping.json'));
      assert.equal(by('Encountr').line, lineOf(mappingText, '"Encountr"'));
      assert.match(by('Unrecognized function').message, /nosuchfunction/);
      assert.equal(by('not a peer').line, lineOf(mappingText, '"hospital-c"'));
      const eq = by('"same" is not a ConceptMap equivalence');
      assert.ok(eq.file.endsWith('hospital-a-lab-to-loinc.conceptmap.json'));
      assert.equal(eq.line, lineOf(mapText, '"same"'));
      assert.equal(by('has no code').pointer, '/group/0/element/1/target/0');
      assert.equal(report.errors, 6);

      // the loader a node starts with refuses it with the same messages
      assert.throws(
        () => loadMappingOrThrow(join(dir, 'hospital-a.mapping.json'), { peers: ['hospital-b'] }),
        (err: unknown) => err instanceof MappingConfigError && err.issues.length === 6 && /hospital-a\.mapping\.json:\d+:\d+: error: .*does not parse/.test(err.message),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('schema errors: unknown members, bad enum values, not JSON; StructureDefinitions in profiles/ are checked', () => {
    const dir = examplesCopy({
      'hospital-a.mapping.json': (m) => {
        m.conceptMaps[0].unmapped = 'ignore';
        m.routes['hospital-b'].send[0].wher = 'x';
      },
    });
    try {
      const r = loadMapping(join(dir, 'hospital-a.mapping.json'));
      assert.equal(r.mapping, undefined);
      assert.deepEqual(r.issues.map((i) => i.pointer).sort(), ['/conceptMaps/0/unmapped', '/routes/hospital-b/send/0/wher']);
      assert.match(r.issues.find((i) => i.pointer.endsWith('unmapped'))!.hint, /"pass-through", "drop", "reject"/);
      writeFileSync(join(dir, 'hospital-a.mapping.json'), '{\n  "routes": {},\n}\n');
      const nj = loadMapping(join(dir, 'hospital-a.mapping.json'));
      assert.equal(nj.issues[0]?.line, 3);
      assert.match(nj.issues[0]!.message, /not JSON/);
      // a profiles directory with a broken StructureDefinition and a file that is not JSON
      const profiles = join(dir, 'profiles');
      cpSync(join(ROOT, 'profiles'), profiles, { recursive: true });
      writeFileSync(join(profiles, 'bad-profile.json'), JSON.stringify({ resourceType: 'StructureDefinition', name: 'Bad', status: 'bogus', kind: 'resource', abstract: false, type: 'Patient' }, null, 2));
      writeFileSync(join(profiles, 'broken.json'), '{ "resourceType": ');
      writeFileSync(join(dir, 'hospital-a.mapping.json'), '{ "routes": {} }');
      const report = runConfigCheck(join(dir, 'node-a.json'), { profilesDir: profiles });
      assert.equal(report.ok, false);
      const sd = report.issues.filter((i) => i.file.endsWith('bad-profile.json'));
      assert.ok(sd.some((i) => i.pointer === '/url' && /Missing required property/.test(i.message)), JSON.stringify(sd));
      assert.ok(sd.some((i) => /sdf-4/.test(i.message) && i.line === 1), 'the invariant (no baseDefinition) is reported at the resource');
      assert.ok(report.issues.some((i) => i.file.endsWith('broken.json') && /not JSON/.test(i.message)));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('CLI: config check exits 0 on the examples, 1 with errors printed file:line:column; map preview prints a diff', async () => {
    const good = examplesCopy();
    try {
      const ok = await cli(['config', 'check', '--config', 'node-a.json'], good);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.match(ok.stdout, /config check: OK/);
    } finally {
      rmSync(good, { recursive: true, force: true });
    }
    const dir = examplesCopy({ 'hospital-a.mapping.json': (m) => (m.routes['hospital-b'].send[1].where = 'category.coding.where(') });
    try {
      const bad = await cli(['config', 'check', '--config', 'node-a.json'], dir);
      assert.equal(bad.code, 1);
      assert.match(bad.stdout, /hospital-a\.mapping\.json:\d+:\d+: error: FHIRPath does not parse/);
      assert.match(bad.stdout, /hint: /);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const preview = await cli(['map', 'preview', '--config', 'node-a.json', '--peer', 'hospital-b', 'lab-observation.json'], EXAMPLES);
    assert.equal(preview.code, 0, preview.stderr);
    assert.match(preview.stdout, /^\+\s+"system": "http:\/\/loinc\.org",$/m);
    assert.match(preview.stdout, /^\+\s+"code": "2345-7",$/m);
    assert.doesNotMatch(preview.stdout, /^-(?!--)/m, 'nothing removed: the local coding is kept');
    assert.match(preview.stdout, /hospital-b receives it \(sent by routes\.hospital-b\.send\[1\]\)/);
  });
});
