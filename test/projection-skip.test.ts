/**
 * Projection feeds skip a new version whose redacted render the projection document already holds
 * (src/mapping/projection.ts "Unchanged renders are not written", docs/mappings.md "Redaction"):
 *
 * - a change of a removed element (telecom) writes nothing and publishes nothing to the peer (its
 *   projection replica's state vector is unchanged); a change of a kept element is written and
 *   published, and the peer's copy still holds no telecom;
 * - a delete is published once, a repeated delete is skipped, a re-create is written;
 * - the skip never costs a needed write: after a failed projection write (the same render is
 *   written again on the next version), after a shred, after a restart with a new epoch (memory
 *   store: everything re-sent) or the same epoch (persisted SQLite store: a kept change sent, a
 *   removed one not), after a mapping reload that changes the rules, and when the per-peer memory of
 *   renders is full (LRU).
 *
 * And on a node (FHIR API PUT, real Redis): a telecom change queues nothing for the research peer
 * (Tide's `projectionUpdatesQueued`), a gender change queues one update.
 *
 * Real merge replicas (Yjs) and real stores; the only fault is a store whose next write throws.
 */
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateNodeKeys } from '../src/envelope/index.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { loadMappingOrThrow } from '../src/mapping/load.ts';
import type { Mapping } from '../src/mapping/load.ts';
import { openProjectionSqlite, ProjectionFeeds, renderDigest } from '../src/mapping/projection.ts';
import type { OpenedProjectionStore } from '../src/mapping/projection.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { Replica } from '../src/merge/replica.ts';
import { MemoryStore } from '../src/store/store.ts';
import type { ResourceRecord } from '../src/store/store.ts';
import { startMappedNodes } from './fixtures/mapped-nodes.ts';
import type { MappedNodes } from './fixtures/mapped-nodes.ts';

const POLICY = loadMergePolicy();
const dir = mkdtempSync(join(tmpdir(), 'tidegate-projection-skip-'));
after(() => rmSync(dir, { recursive: true, force: true }));

let fileSeq = 0;
/** A mapping whose `research` route has the given redact rules. */
function mappingWith(redact: unknown[]): Mapping {
  const file = join(dir, `m${fileSeq++}.mapping.json`);
  writeFileSync(file, JSON.stringify({ routes: { research: { redact } } }));
  return loadMappingOrThrow(file, { peers: ['research'] });
}

/** A memory store whose next `set` throws once `failNext` is set (a full disk, a lost connection). */
class FailingStore extends MemoryStore {
  failNext = false;
  override set(key: string, record: ResourceRecord): void {
    if (this.failNext) {
      this.failNext = false;
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR' });
    }
    super.set(key, record);
  }
}

/** A node's shared replica, a projection peer's replica and the feeds between them. */
function setup(opts: { mapping?: () => Mapping | undefined; openStore?: (peerId: string) => OpenedProjectionStore; renderCacheSize?: number; shared?: Replica } = {}) {
  const mapping = mappingWith([{ path: 'Patient.telecom' }]);
  const shared = opts.shared ?? new Replica({ nodeId: 'hospital-a', store: new MemoryStore(), policy: POLICY });
  const peer = new Replica({ nodeId: 'research', store: new MemoryStore(), policy: POLICY });
  const sent: string[] = [];
  const feeds = new ProjectionFeeds({
    nodeId: 'hospital-a',
    mapping: opts.mapping ?? (() => mapping),
    shared,
    policy: POLICY,
    ...(opts.openStore ? { openStore: opts.openStore } : {}),
    ...(opts.renderCacheSize !== undefined ? { renderCacheSize: opts.renderCacheSize } : {}),
    publishTo: (peerId, updates) => {
      for (const u of updates) {
        sent.push(`${peerId} ${u.key}`);
        peer.applyRemote(u.key, u.update);
      }
    },
    mayReceive: () => true,
  });
  /** Writes `body` (or deletes) in the shared replica and lets the feeds project it. */
  const version = async (key: string, body: FhirJsonObject | null): Promise<void> => {
    shared.write(key, body);
    feeds.onVersion(key);
    await feeds.idle();
  };
  return { shared, peer, sent, feeds, version };
}

function patient(id: string, fields: Record<string, unknown>): FhirJsonObject {
  return { resourceType: 'Patient', id, ...fields } as FhirJsonObject;
}

const hex = (b: Uint8Array | undefined): string => Buffer.from(b ?? []).toString('hex');

describe('projection feeds: unchanged redacted renders are not written', () => {
  test('a change of a removed element publishes nothing; a change of a kept element does', async () => {
    const { peer, sent, feeds, version } = setup();
    const key = 'Patient/sk-1';
    await version(key, patient('sk-1', { gender: 'female', telecom: [{ system: 'phone', value: '555-0100' }] }));
    assert.deepEqual(sent, ['research Patient/sk-1']);
    const sv = hex(feeds.replicaFor('research').stateVector(key));
    const versionId = feeds.replicaFor('research').current(key)!.versionId;

    // only telecom (removed for research) changes: nothing written, nothing sent
    await version(key, patient('sk-1', { gender: 'female', telecom: [{ system: 'phone', value: '555-0199' }] }));
    await version(key, patient('sk-1', { gender: 'female' }));
    assert.deepEqual(sent, ['research Patient/sk-1'], 'nothing published for a removed element');
    assert.equal(hex(feeds.replicaFor('research').stateVector(key)), sv, 'projection document untouched');
    assert.equal(feeds.replicaFor('research').current(key)!.versionId, versionId);
    assert.equal(feeds.stats().skipped, 2);
    assert.equal(feeds.stats().written, 1);

    // a kept element changes: written and published, still without telecom
    await version(key, patient('sk-1', { gender: 'male', telecom: [{ system: 'phone', value: '555-0142' }] }));
    assert.deepEqual(sent, ['research Patient/sk-1', 'research Patient/sk-1']);
    assert.notEqual(hex(feeds.replicaFor('research').stateVector(key)), sv);
    const atPeer = JSON.parse(peer.current(key)!.body!);
    assert.equal(atPeer.gender, 'male');
    assert.equal(atPeer.telecom, undefined);
    assert.ok(!peer.current(key)!.body!.includes('555-01'), 'no phone number at the peer');
    assert.equal(feeds.stats().written, 2);
    assert.equal(feeds.stats().failures, 0);
    await feeds.stop();
  });

  test('a delete is published once, a repeated delete skipped, a re-create written', async () => {
    const { peer, sent, feeds, version } = setup();
    const key = 'Patient/sk-del';
    await version(key, patient('sk-del', { gender: 'female' }));
    await version(key, null);
    assert.equal(sent.length, 2);
    assert.equal(peer.current(key)!.deleted, true);
    feeds.onVersion(key); // the same deleted version again (e.g. backfill)
    await feeds.idle();
    assert.equal(sent.length, 2);
    assert.equal(feeds.stats().skipped, 1);
    await version(key, patient('sk-del', { gender: 'female', telecom: [{ system: 'email', value: 'a@example.org' }] }));
    assert.equal(sent.length, 3, 'the re-create reaches the peer');
    assert.equal(peer.current(key)!.deleted, false);
    assert.equal(JSON.parse(peer.current(key)!.body!).telecom, undefined);
    await feeds.stop();
  });

  test('a failed projection write leaves no digest: the next version with that render is written', async () => {
    const store = new FailingStore();
    const { peer, sent, feeds, version } = setup({ openStore: () => ({ store, epoch: 'f1' }) });
    const key = 'Patient/sk-fail';
    await version(key, patient('sk-fail', { gender: 'female' }));
    assert.equal(sent.length, 1);
    store.failNext = true;
    await version(key, patient('sk-fail', { gender: 'male' }));
    assert.equal(feeds.stats().failures, 1);
    assert.equal(sent.length, 1, 'the failed write sent nothing');
    assert.throws(() => feeds.source('research').keys(), /last write failed/);
    // same render (only telecom differs): must be written now, not skipped
    await version(key, patient('sk-fail', { gender: 'male', telecom: [{ system: 'phone', value: '555-0100' }] }));
    assert.equal(sent.length, 2, 'the render the failed write lost reaches the peer');
    assert.equal(JSON.parse(peer.current(key)!.body!).gender, 'male');
    assert.equal(feeds.stats().skipped, 0);
    assert.deepEqual([...feeds.source('research').keys()], [key], 'the store is healthy again');
    await feeds.stop();
  });

  test('a shred forgets the digests of the shredded keys', async () => {
    const opened = openProjectionSqlite(join(dir, 'shred.sqlite'), 'research', { secretKeys: generateNodeKeys('hospital-a').secretKeys });
    try {
      const { feeds, version } = setup({ openStore: () => opened });
      await version('Patient/sk-s1', patient('sk-s1', { gender: 'female' }));
      await version('Patient/sk-s2', patient('sk-s2', { gender: 'male' }));
      assert.deepEqual(feeds.shred(['Patient/sk-s1']), { shredded: 1, unshreddable: 0 });
      assert.equal(opened.store.get('Patient/sk-s1'), undefined);
      const skipped = feeds.stats().skipped;
      // the shared copy of sk-2 unchanged in render: skipped; sk-1 is not skipped (its document is gone)
      feeds.onVersion('Patient/sk-s2');
      feeds.onVersion('Patient/sk-s1');
      await feeds.idle();
      assert.equal(feeds.stats().skipped, skipped + 1, 'only the key that was not shredded is skipped');
      await feeds.stop();
    } finally {
      opened.close();
    }
  });

  test('a restart: a new epoch re-sends everything; a persisted store sends a kept change only', async () => {
    const shared = new Replica({ nodeId: 'hospital-a', store: new MemoryStore(), policy: POLICY });
    for (let i = 0; i < 3; i++) shared.write(`Patient/sk-r${i}`, patient(`sk-r${i}`, { gender: 'female', telecom: [{ system: 'phone', value: `555-010${i}` }] }));
    // memory projection store: every start is a new epoch, everything is sent again
    for (let run = 0; run < 2; run++) {
      const { sent, feeds } = setup({ shared });
      await feeds.backfill();
      assert.equal(sent.length, 3, `memory store, start ${run}: all re-sent`);
      await feeds.stop();
    }
    // persisted SQLite projection store: same epoch, and the in-memory digests start empty
    const storeFile = join(dir, 'restart.sqlite');
    const start = async (): Promise<ReturnType<typeof setup> & { close: () => void }> => {
      const opened = openProjectionSqlite(storeFile, 'research');
      const s = setup({ shared, openStore: () => opened });
      await s.feeds.backfill();
      return { ...s, close: opened.close };
    };
    const first = await start();
    assert.equal(first.sent.length, 3);
    await first.feeds.stop();
    first.close();
    shared.write('Patient/sk-r0', patient('sk-r0', { gender: 'female', telecom: [{ system: 'phone', value: '555-0999' }] })); // removed element, while stopped
    shared.write('Patient/sk-r1', patient('sk-r1', { gender: 'male', telecom: [{ system: 'phone', value: '555-0101' }] })); // kept element, while stopped
    const second = await start();
    assert.deepEqual(second.sent, ['research Patient/sk-r1'], 'after the restart only the kept change is sent');
    assert.equal(JSON.parse(second.feeds.replicaFor('research').current('Patient/sk-r1')!.body!).gender, 'male');
    // now the digests are known: a removed element change is skipped
    await second.version('Patient/sk-r2', patient('sk-r2', { gender: 'female' }));
    assert.deepEqual(second.sent, ['research Patient/sk-r1']);
    assert.equal(second.feeds.stats().skipped, 1);
    await second.feeds.stop();
    second.close();
  });

  test('a mapping reload that changes the rules writes the new render', async () => {
    let mapping = mappingWith([{ path: 'Patient.telecom' }]);
    const { peer, sent, feeds, version } = setup({ mapping: () => mapping });
    const key = 'Patient/sk-m';
    await version(key, patient('sk-m', { gender: 'female', birthDate: '1970-01-01', telecom: [{ system: 'phone', value: '555-0100' }] }));
    assert.equal(sent.length, 1);
    mapping = mappingWith([{ path: 'Patient.telecom' }, { path: 'Patient.birthDate' }]);
    await feeds.backfill();
    assert.equal(sent.length, 2, 'the new rules change the render: written');
    assert.equal(JSON.parse(peer.current(key)!.body!).birthDate, undefined);
    await feeds.backfill();
    assert.equal(sent.length, 2, 'a second backfill finds nothing to write');
    assert.equal(feeds.stats().skipped, 1);
    await feeds.stop();
  });

  test('a full memory of renders forgets the oldest key: it is written again, never skipped wrongly', async () => {
    const { sent, feeds, version } = setup({ renderCacheSize: 1 });
    await version('Patient/sk-l1', patient('sk-l1', { gender: 'female' }));
    await version('Patient/sk-l2', patient('sk-l2', { gender: 'female' }));
    assert.equal(sent.length, 2);
    // sk-l1 was forgotten: written again (the merge engine finds nothing to change: nothing sent)
    await version('Patient/sk-l1', patient('sk-l1', { gender: 'female', telecom: [{ system: 'phone', value: '1' }] }));
    assert.equal(feeds.stats().skipped, 0);
    assert.equal(sent.length, 2);
    // a kept change of the forgotten key is sent
    await version('Patient/sk-l2', patient('sk-l2', { gender: 'male' }));
    await version('Patient/sk-l1', patient('sk-l1', { gender: 'male' }));
    assert.equal(sent.length, 4);
    // renderCacheSize 0: no skip at all
    const off = setup({ renderCacheSize: 0 });
    await off.version('Patient/sk-o', patient('sk-o', { gender: 'female' }));
    await off.version('Patient/sk-o', patient('sk-o', { gender: 'female', telecom: [{ system: 'phone', value: '2' }] }));
    assert.equal(off.feeds.stats().skipped, 0);
    assert.equal(off.sent.length, 1);
    await feeds.stop();
    await off.feeds.stop();
  });

  test('renderDigest ignores the server-managed meta.versionId and meta.lastUpdated, nothing else', () => {
    const a = patient('d', { meta: { versionId: 'a', lastUpdated: '2020-01-01T00:00:00Z', security: [{ code: 'REDACTED' }] }, gender: 'female' });
    const b = patient('d', { gender: 'female', meta: { security: [{ code: 'REDACTED' }], lastUpdated: '2024-01-01T00:00:00Z', versionId: 'b' } });
    assert.equal(renderDigest(a), renderDigest(b));
    assert.notEqual(renderDigest(a), renderDigest(patient('d', { meta: { security: [{ code: 'REDACTED' }] }, gender: 'male' })));
    assert.notEqual(renderDigest(a), renderDigest(patient('d', { meta: { security: [{ code: 'REDACTED' }], tag: [{ code: 'x' }] }, gender: 'female' })));
    assert.match(renderDigest(a), /^[A-Za-z0-9+/]{43}=$/);
  });
});

describe('a node: unchanged projections are not published to the peer (Tide publishTo, real Redis)', { timeout: 300_000 }, () => {
  let fx: MappedNodes | undefined;
  after(() => fx?.stop());

  test('PUT of a telecom change queues nothing for research; PUT of a gender change queues one update', async () => {
    fx = await startMappedNodes({
      prefix: 'projskip',
      names: ['hospital-a'],
      remotePeers: ['research'],
      hospitals: false,
      mappings: { 'hospital-a': { routes: { research: { redact: [{ path: 'Patient.telecom' }] } } } },
    });
    const node = fx.node('hospital-a');
    const key = 'Patient/ps-1';
    const put = async (body: Record<string, unknown>): Promise<void> => {
      const res = await fetch(`${node.baseUrl}/${key}`, { method: 'PUT', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', id: 'ps-1', ...body }) });
      assert.ok(res.ok, `PUT: ${res.status} ${await res.text()}`);
      await node.projections.idle();
    };
    const queued = (): number => node.tide.stats().projectionUpdatesQueued;
    await put({ gender: 'female', telecom: [{ system: 'phone', value: '555-0100' }] });
    assert.equal(queued(), 1, 'the first projection is sent');
    const sv = hex(node.projections.replicaFor('research').stateVector(key));

    await put({ gender: 'female', telecom: [{ system: 'phone', value: '555-0111' }] });
    assert.ok(JSON.parse(node.replica.current(key)!.body!).telecom[0].value === '555-0111', 'the shared resource changed');
    assert.equal(queued(), 1, 'a telecom change queues nothing for research');
    assert.equal(hex(node.projections.replicaFor('research').stateVector(key)), sv);
    assert.equal(node.projections.stats().skipped, 1);

    await put({ gender: 'male', telecom: [{ system: 'phone', value: '555-0111' }] });
    assert.equal(queued(), 2, 'a gender change is sent');
    assert.notEqual(hex(node.projections.replicaFor('research').stateVector(key)), sv);
    assert.equal(JSON.parse(node.projections.replicaFor('research').current(key)!.body!).gender, 'male');
  });
});
