/**
 * The hospital outbox across a key rotation (src/hospital/outbox.ts, issue 4 "Rotation"): jobs
 * queued in Redis under the node's old X-Wing secret must still reach the hospital after
 * `tidegate keys rotate` and a restart, and, once the restarted outbox has re-encrypted them under
 * the new key, after `tidegate keys retire` of the old key too. Real Redis (REDIS_URL, default
 * 127.0.0.1:6379), a real Medplum stand-in hospital over HTTP.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { createKeyStore, keyStoreToSecretKeys, retireKey, rotateKeyStore } from '../src/envelope/keys.ts';
import type { NodeSecretKeys } from '../src/envelope/keys.ts';
import { HospitalClient, HospitalOutbox, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import type { VersionRecord } from '../src/store/store.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const PREFIX = `tgrot${process.pid}${Date.now().toString(36)}`;
const FAMILY = 'Rotationsby';

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return;
    if (Date.now() - t0 > timeoutMs) assert.fail(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 40));
  }
}

function patientVersion(id: string, versionId: string, birthDate: string): VersionRecord {
  const body = JSON.stringify({ resourceType: 'Patient', id, name: [{ family: FAMILY }], birthDate });
  return { versionId, lastUpdated: '2026-01-01T00:00:00.000Z', deleted: false, body, state: new Uint8Array(0) };
}

function outboxOf(hospital: MedplumHospital, nodeId: string, keys: NodeSecretKeys): HospitalOutbox {
  return new HospitalOutbox(new HospitalClient({ baseUrl: hospital.url }), {
    nodeId,
    redisUrl: REDIS_URL,
    prefix: PREFIX,
    secret: keys.kemSecretKey,
    previousSecrets: (keys.additionalKemKeys ?? []).map((k) => k.secretKey),
    backoffMs: 30,
    maxBackoffMs: 200,
  });
}

async function hospitalBirthDate(hospital: MedplumHospital, id: string): Promise<string | undefined> {
  const res = await fetch(`${hospital.url}/Patient/${id}`, { headers: { accept: 'application/fhir+json' } });
  if (res.status !== 200) return undefined;
  return ((await res.json()) as { birthDate?: string }).birthDate;
}

/** Enqueues while the hospital is down and stops: the jobs stay in Redis, sealed under `keys`. */
async function queueWhileDown(hospital: MedplumHospital, nodeId: string, keys: NodeSecretKeys, items: Array<[string, VersionRecord]>): Promise<void> {
  hospital.setAvailable(false);
  const first = outboxOf(hospital, nodeId, keys);
  await first.start();
  for (const [key, v] of items) first.enqueue(key, v);
  const redis = new Redis(REDIS_URL);
  try {
    // The jobs are in Redis (waiting or delayed for a retry), and the hospital has not got them.
    await waitFor('jobs in Redis', async () => (await redis.keys(`${PREFIX}:outbox-${nodeId}:*`)).length > 0 && first.backlog === items.length && first.stats().attemptsFailed >= 1);
    const raw = JSON.stringify(await redis.hgetall(`${PREFIX}:outbox-${nodeId}:1`));
    assert.doesNotMatch(raw, new RegExp(FAMILY), 'job payload is encrypted');
  } finally {
    redis.disconnect();
  }
  await first.stop();
}

describe('hospital outbox across a key rotation', () => {
  let hospital: MedplumHospital;
  before(async () => {
    hospital = await startMedplumHospital({ name: 'rotation-hospital' });
  });
  after(async () => {
    await hospital.close();
    const redis = new Redis(REDIS_URL);
    const keys = await redis.keys(`${PREFIX}:*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
  });

  it('accepts the queue prefixes the node config accepts (one Redis Cluster {hash tag}), refuses ":" and too-short previous secrets', () => {
    const keys = keyStoreToSecretKeys(createKeyStore('rot-p'));
    const make = (prefix: string, previousSecrets: Uint8Array[] = []) =>
      new HospitalOutbox(new HospitalClient({ baseUrl: hospital.url }), { nodeId: 'rot-p', redisUrl: REDIS_URL, prefix, secret: keys.kemSecretKey, previousSecrets });
    assert.doesNotThrow(() => make('{tide}'));
    assert.doesNotThrow(() => make('tg-{tide}_1'));
    assert.throws(() => make('a:b'), TypeError);
    assert.throws(() => make('{a}{b}'), TypeError);
    assert.throws(() => make('tidegate', [new Uint8Array(8)]), TypeError);
  });

  it('delivers jobs queued under the old key after rotate + restart (old key still in the key file)', { timeout: 120_000 }, async () => {
    const ks = createKeyStore('rot-a');
    const oldKeys = keyStoreToSecretKeys(ks);
    await queueWhileDown(hospital, 'rot-a', oldKeys, [['Patient/rot-a-1', patientVersion('rot-a-1', '1.aa', '1951-01-01')]]);

    const rotated = keyStoreToSecretKeys(rotateKeyStore(ks));
    assert.notDeepEqual(rotated.kemSecretKey, oldKeys.kemSecretKey);
    hospital.setAvailable(true);
    const second = outboxOf(hospital, 'rot-a', rotated);
    await second.start();
    try {
      await waitFor('delivery to the hospital', async () => (await hospitalBirthDate(hospital, 'rot-a-1')) === '1951-01-01');
      await waitFor('outbox idle', () => second.backlog === 0);
      assert.equal(second.failures().size, 0);
      assert.equal(second.stats().written, 1);
    } finally {
      await second.stop();
    }
  });

  it('re-encrypts queued jobs under the current key at start, so the old key can be retired afterwards', { timeout: 120_000 }, async () => {
    const ks = createKeyStore('rot-b');
    const oldKeys = keyStoreToSecretKeys(ks);
    await queueWhileDown(hospital, 'rot-b', oldKeys, [
      ['Patient/rot-b-1', patientVersion('rot-b-1', '1.bb', '1952-02-02')],
      ['Patient/rot-b-2', patientVersion('rot-b-2', '1.cc', '1953-03-03')],
    ]);
    const ks2 = rotateKeyStore(ks);
    // Restart with the rotated key file while the hospital is still down: nothing is delivered yet.
    const second = outboxOf(hospital, 'rot-b', keyStoreToSecretKeys(ks2));
    await second.start();
    assert.equal(second.backlog, 2);
    await second.stop();
    // Retire the old key: only the new one remains in the key file.
    const retired = keyStoreToSecretKeys(retireKey(ks2, oldKeys.kemKeyId));
    assert.equal((retired.additionalKemKeys ?? []).length, 0);
    hospital.setAvailable(true);
    const third = outboxOf(hospital, 'rot-b', retired);
    await third.start();
    try {
      await waitFor('delivery of both', async () => (await hospitalBirthDate(hospital, 'rot-b-1')) === '1952-02-02' && (await hospitalBirthDate(hospital, 'rot-b-2')) === '1953-03-03');
      await waitFor('outbox idle', () => third.backlog === 0);
      assert.equal(third.failures().size, 0);
    } finally {
      await third.stop();
    }
  });

  it('keeps refusing stale versions after a rotation (written-version record survives the tag key change)', { timeout: 120_000 }, async () => {
    const ks = createKeyStore('rot-c');
    const oldKeys = keyStoreToSecretKeys(ks);
    hospital.setAvailable(true);
    const first = outboxOf(hospital, 'rot-c', oldKeys);
    await first.start();
    first.enqueue('Patient/rot-c-1', patientVersion('rot-c-1', '5.newer', '1960-06-06'));
    await waitFor('first write', async () => first.stats().written === 1);
    await first.stop();
    const rotated = keyStoreToSecretKeys(rotateKeyStore(ks));
    const second = outboxOf(hospital, 'rot-c', rotated);
    await second.start();
    try {
      // An older version (clock sum 3 < 5) must not overwrite the newer one at the hospital.
      second.enqueue('Patient/rot-c-1', patientVersion('rot-c-1', '3.older', '1930-03-03'));
      await waitFor('outbox idle', () => second.backlog === 0);
      assert.equal(second.stats().stale, 1);
      assert.equal(await hospitalBirthDate(hospital, 'rot-c-1'), '1960-06-06');
    } finally {
      await second.stop();
    }
  });
});
