/**
 * Property test of the merge layer, in the spirit of yjs tests/testHelper.js `applyRandomTests`:
 * three replicas apply random client edits (current or stale base versions, deletes, re-creates)
 * while updates are delivered in random order, with duplicates and anti-entropy diffs. After every
 * update reached every replica, all replicas must render identical bytes, versionIds and conflict
 * lists, and re-delivering everything must change nothing.
 *
 * Seeded (FC_SEED, default below) and shrinkable: on failure fast-check prints the seed, the path
 * and the minimal op sequence. FC_RUNS overrides the number of runs.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { isJsonObject } from '../src/fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../src/fhir/json.ts';
import { assertConverged, copy, fhir, makeNode, T0 } from './fixtures/merge/harness.ts';
import { DELETED, loadDoc, readPaths } from '../src/merge/doc.ts';
import type { Entry } from '../src/merge/doc.ts';
import type { TestNode } from './fixtures/merge/harness.ts';

const KEY = 'Patient/p';
const SEED = Number(process.env.FC_SEED ?? 20_251_129);
const RUNS = Number(process.env.FC_RUNS ?? 100);
const SKELETON = '{"resourceType":"Patient","id":"p","name":[{"id":"n1","family":"Tide","given":["Ada"]}]}';
const EXT = 'http://example.org/fhir/StructureDefinition/weight';
const QUAL = 'http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier';

type Op =
  | { kind: 'edit'; node: number; edit: number; arg: number; stale: number; dt: number }
  | { kind: 'deliver'; from: number; to: number; idx: number }
  | { kind: 'sync'; from: number; to: number };

const N_EDITS = 15;

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('edit' as const), node: fc.nat(2), edit: fc.nat(N_EDITS - 1), arg: fc.nat(7), stale: fc.nat(3), dt: fc.nat(3) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('deliver' as const), from: fc.nat(2), to: fc.nat(2), idx: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('sync' as const), from: fc.nat(2), to: fc.nat(2) }) },
);

function arr(p: FhirJsonObject, name: string): FhirJson[] {
  const v = p[name];
  if (Array.isArray(v)) return v;
  const a: FhirJson[] = [];
  p[name] = a;
  return a;
}

function firstName(p: FhirJsonObject): FhirJsonObject {
  const names = arr(p, 'name');
  let n = names.find((x) => isJsonObject(x) && x.id === 'n1');
  if (!isJsonObject(n)) {
    n = fhir('{"id":"n1","family":"Tide"}');
    names.unshift(n);
  }
  return n;
}

/** A client edit of a body; returns null for a delete. `arg` picks values. */
function applyEdit(p: FhirJsonObject, edit: number, arg: number): FhirJsonObject | null {
  switch (edit) {
    case 0:
      p.gender = ['male', 'female', 'other', 'unknown'][arg % 4]!;
      break;
    case 1:
      p.birthDate = `198${arg}-0${(arg % 9) + 1}-1${arg % 9}`;
      break;
    case 2:
      delete p[arg % 2 === 0 ? 'birthDate' : 'gender'];
      break;
    case 3:
      arr(p, 'telecom').push(fhir(`{"system":"phone","value":"555-01${arg % 5}","use":"${arg % 2 ? 'home' : 'work'}"}`));
      break;
    case 4: {
      const t = arr(p, 'telecom');
      if (t.length > 0) t.splice(arg % t.length, 1);
      if (t.length === 0) delete p.telecom;
      break;
    }
    case 5:
      arr(p, 'telecom').reverse();
      if (arr(p, 'telecom').length === 0) delete p.telecom;
      break;
    case 6:
      p.maritalStatus = arg % 3 === 0 ? fhir('{"text":"single"}') : fhir(`{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"${arg % 2 ? 'M' : 'S'}"}],"text":"t${arg}"}`);
      break;
    case 7: {
      const n = firstName(p);
      if (Array.isArray(n._given)) {
        (n._given as FhirJson[]).push(null);
        arr(n, 'given').push(`G${arg}`);
      } else arr(n, 'given').push(`G${arg}`);
      break;
    }
    case 8: {
      // Set given together with an aligned _given companion (atomic leaves), or drop the companion.
      const n = firstName(p);
      if (arg % 3 === 0) delete n._given;
      else {
        const given = Array.isArray(n.given) && n.given.length > 0 ? n.given : ['Ada'];
        n.given = given;
        n._given = given.map((_, i) => (i === arg % given.length ? fhir(`{"extension":[{"url":"${QUAL}","valueCode":"${arg % 2 ? 'CL' : 'BR'}"}]}`) : null));
      }
      break;
    }
    case 9:
      p.extension = [fhir(`{"url":"${EXT}","valueDecimal":${['1.50', '1.5', '1.500', '61.50'][arg % 4]!}}`)];
      break;
    case 10:
      return null;
    case 11: {
      // Add contact c0/c1, or edit its gender when present.
      const contacts = arr(p, 'contact');
      const id = `c${arg % 2}`;
      const c = contacts.find((x) => isJsonObject(x) && x.id === id);
      if (isJsonObject(c)) c.gender = arg < 4 ? 'male' : 'female';
      else contacts.push(fhir(`{"id":"${id}","name":{"family":"K${arg}"}}`));
      break;
    }
    case 13: {
      // Remove contact c0/c1.
      const contacts = arr(p, 'contact').filter((x) => !(isJsonObject(x) && x.id === `c${arg % 2}`));
      if (contacts.length > 0) p.contact = contacts;
      else delete p.contact;
      break;
    }
    case 12:
      // A name without a key: content-hash keyed, so edits replace the item.
      arr(p, 'name').push(fhir(`{"use":"nickname","given":["N${arg % 3}"]}`));
      break;
    case 14:
      // Switch the type of a choice element (deceased[x]): boolean or dateTime.
      delete p.deceasedBoolean;
      delete p.deceasedDateTime;
      if (arg % 2 === 0) p.deceasedBoolean = arg % 4 === 0;
      else p.deceasedDateTime = `20${10 + arg}-01-01`;
      break;
    default:
      throw new Error(`no edit ${edit}`);
  }
  return p;
}

/** Every entry a client write made in this run: path, and the entry (value, stamp, node). */
let written: Array<{ path: string; entry: Entry }> = [];

/** The entries `node`'s last write made (those of its own log stamped with its newest stamp). */
function recordWrite(node: TestNode): void {
  const paths = readPaths(loadDoc(node.store.get(KEY)!.state, node.id));
  let newest = '';
  for (const ps of paths.values()) for (const e of ps.entries) if (e.n === node.id && e.t > newest) newest = e.t;
  for (const [path, ps] of paths) for (const e of ps.entries) if (e.n === node.id && e.t === newest) written.push({ path, entry: e });
}

/**
 * Issue 3: every clinician's write is either in the final resource or in a conflict record. An
 * entry is accounted for when its value is the winner's, a conflict record's loser holds its value
 * (its own entry, or a later one of its node with the same value), or the writer of a later entry at
 * its path had seen it (a knowing overwrite, even if that entry was overwritten in turn); when the resource ends deleted, a delete that saw
 * the write accounts for it too.
 */
function assertNothingLostSilently(node: TestNode): void {
  const paths = readPaths(loadDoc(node.store.get(KEY)!.state, node.id));
  const conflicts = node.replica.conflicts(KEY);
  const deletedWinner = paths.get(DELETED)?.winner;
  const deleted = deletedWinner?.v === 'true';
  const saw = (w: Entry | undefined, e: Entry): boolean => w !== undefined && (w.s?.[e.n] ?? '') >= e.t;
  for (const { path, entry } of written) {
    const ps = paths.get(path);
    assert.ok(ps, `entry at ${path} of ${entry.n}@${entry.t} vanished`);
    if (ps.winner.v === entry.v) continue;
    // A later write whose client had seen it overwrote it knowingly (that write may itself be gone).
    if (written.some((w) => w.path === path && saw(w.entry, entry))) continue;
    // The same value is kept in a record (this entry's, or a later one of the same node that
    // rewrote the same value without having seen this one).
    if (conflicts.some((c) => c.path === path && c.loser.n === entry.n && c.loser.t >= entry.t && c.loser.v === entry.v)) continue;
    if (deleted && written.some((w) => w.path === DELETED && w.entry.v === 'true' && saw(w.entry, entry))) continue;
    assert.fail(`lost silently: ${path} = ${entry.v ?? '(removed)'} by ${entry.n}@${entry.t}; winner ${ps.winner.n}@${ps.winner.t} = ${ps.winner.v ?? '(removed)'}`);
  }
}

/** What a client sends: the node's current (or an older) version edited, or a fresh create. */
function clientWrite(node: TestNode, edit: number, arg: number, stale: number): void {
  const history = node.replica.history(KEY); // newest first
  const base = history[Math.min(stale, Math.max(0, history.length - 1))];
  const start = base?.body ? fhir(base.body) : fhir(SKELETON);
  if (isJsonObject(start.meta)) {
    delete start.meta.versionId;
    delete start.meta.lastUpdated;
    if (Object.keys(start.meta).length === 0) delete start.meta;
  }
  // The REST layer always sends resourceType and id (a body read from a partial version, see the
  // todo bug in merge.test.ts, may lack them).
  start.resourceType = 'Patient';
  start.id = 'p';
  const body = applyEdit(copy(start), edit, arg);
  const opts = base && stale > 0 ? { baseVersionId: base.versionId } : {};
  const res = node.replica.write(KEY, body, opts);
  if (res.update) {
    node.produced.push(res.update);
    recordWrite(node);
  }
  // Local invariants of every write.
  const cur = node.replica.current(KEY);
  assert.ok(cur);
  assert.equal(res.version, cur);
  if (cur.body !== null) {
    const r = fhir(cur.body);
    assert.equal(r.resourceType, 'Patient');
    assert.equal(r.id, 'p');
  }
}

/** Coverage counters, reported as test diagnostics. */
const stats = { runs: 0, writes: 0, deliveries: 0, withConflicts: 0, conflicts: 0, deletedAtEnd: 0, removedItem: 0, choice: 0 };

function run(ops: Op[], finalOrder: number[]): void {
  stats.runs++;
  written = [];
  const nodes = ['a', 'b', 'c'].map((id) => makeNode(id, T0));
  for (const op of ops) {
    if (op.kind === 'edit') {
      const node = nodes[op.node]!;
      node.wall += op.dt; // dt 0 gives equal wall times, hence tie-breaks by counter / node id
      clientWrite(node, op.edit, op.arg, op.stale);
      stats.writes++;
    } else if (op.kind === 'deliver') {
      const from = nodes[op.from]!;
      const to = nodes[op.to]!;
      if (from === to || from.produced.length === 0) continue;
      to.replica.applyRemote(KEY, from.produced[op.idx % from.produced.length]!);
      stats.deliveries++;
    } else {
      const from = nodes[op.from]!;
      const to = nodes[op.to]!;
      if (from === to) continue;
      const diff = from.replica.diffFor(KEY, to.replica.stateVector(KEY));
      if (diff) to.replica.applyRemote(KEY, diff);
    }
  }
  // Deliver every update to every node, in a random order (finalOrder are random sort keys).
  const all = nodes.flatMap((n) => n.produced.map((u) => ({ from: n, u })));
  if (all.length === 0) return;
  const order = all.map((_, i) => i).sort((x, y) => (finalOrder[x % finalOrder.length]! - finalOrder[y % finalOrder.length]!) || x - y);
  for (const i of order) for (const to of nodes) if (to !== all[i]!.from) to.replica.applyRemote(KEY, all[i]!.u);

  const body = assertConverged(KEY, nodes);
  assertNothingLostSilently(nodes[0]!);
  const conflicts = nodes[0]!.replica.conflicts(KEY);
  stats.conflicts += conflicts.length;
  if (conflicts.length > 0) stats.withConflicts++;
  if (conflicts.some((c) => c.kind === 'removed-item')) stats.removedItem++;
  if (!body) stats.deletedAtEnd++;
  if (body) {
    assert.equal(body.resourceType, 'Patient');
    assert.equal(body.id, 'p');
    // A choice element ([x]) has at most one variant.
    assert.ok(!('deceasedBoolean' in body && 'deceasedDateTime' in body), 'two deceased[x] variants');
  }
  if (conflicts.some((c) => c.kind === 'choice')) stats.choice++;
  // Idempotence: re-delivering everything changes nothing and makes no version.
  const before = nodes.map((n) => n.replica.history(KEY).length);
  for (const { from, u } of all) for (const to of nodes) if (to !== from) assert.equal(to.replica.applyRemote(KEY, u), undefined);
  assert.deepEqual(nodes.map((n) => n.replica.history(KEY).length), before);
  // A fresh replica that receives one node's whole state renders the same.
  const fresh = makeNode('d');
  fresh.replica.applyRemote(KEY, nodes[1]!.replica.diffFor(KEY, undefined)!);
  assertConverged(KEY, [nodes[0]!, fresh]);
}

describe('merge property: random edits and delivery orders converge', () => {
  it(`3 replicas converge to identical bytes, versionIds and conflicts (seed ${SEED}, ${RUNS} runs)`, (t) => {
    const t0 = performance.now();
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 4, maxLength: 48, size: 'max' }), fc.array(fc.nat(1000), { minLength: 1, maxLength: 64 }), (ops, finalOrder) => {
        run(ops, finalOrder);
      }),
      { seed: SEED, numRuns: RUNS },
    );
    const ms = performance.now() - t0;
    t.diagnostic(`${(ms / 1000).toFixed(1)} s; ${JSON.stringify(stats)}`);
    assert.ok(stats.withConflicts > 0 && stats.deletedAtEnd > 0, 'the generator no longer reaches conflicts / deletes');
    assert.ok(ms < 60_000, `property took ${ms} ms`);
  });

  it('the property detects divergence (sanity check of the harness)', () => {
    // Two replicas that never exchange the second write must not pass assertConverged.
    const a = makeNode('a');
    const b = makeNode('b');
    const r = a.replica.write(KEY, fhir(SKELETON));
    b.replica.applyRemote(KEY, r.update!);
    a.replica.write(KEY, fhir(SKELETON.replace('"Tide"', '"Other"')));
    assert.throws(() => assertConverged(KEY, [a, b]), assert.AssertionError);
  });
});
