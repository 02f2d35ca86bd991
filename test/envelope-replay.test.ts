import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EnvelopeError, generateNodeKeys, open, ReplayGuard, seal } from '../src/envelope/index.ts';
import type { EnvelopeErrorCode, ReplayKey } from '../src/envelope/index.ts';

const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;

function clock(start = T0): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}
function rejects(fn: () => void, code: EnvelopeErrorCode): void {
  assert.throws(fn, (e: unknown) => e instanceof EnvelopeError && e.code === code);
}
const key = (messageId: string, createdAt = T0, sender = 'hospital-a'): ReplayKey => ({ sender, messageId, createdAt });

describe('ReplayGuard', () => {
  it('accepts a new id, rejects the same (sender, messageId) again with ERR_REPLAY, keeps senders apart', () => {
    const g = new ReplayGuard({ now: clock().now });
    g.checkAndRecord(key('m1'));
    rejects(() => g.check(key('m1')), 'ERR_REPLAY');
    rejects(() => g.checkAndRecord(key('m1', T0 + 5)), 'ERR_REPLAY'); // createdAt is not part of the identity
    g.checkAndRecord(key('m1', T0, 'hospital-c')); // same id from another sender is another message
    g.checkAndRecord(key('m2'));
    assert.equal(g.size('hospital-a'), 2);
  });

  it('check() alone records nothing, so a failed and retried job is let through again', () => {
    const g = new ReplayGuard({ now: clock().now });
    g.check(key('m1'));
    g.check(key('m1'));
    assert.equal(g.size('hospital-a'), 0);
    g.record(key('m1'));
    rejects(() => g.check(key('m1')), 'ERR_REPLAY');
  });

  it('rejects createdAt older than the TTL or beyond the future skew with ERR_STALE', () => {
    const c = clock();
    const g = new ReplayGuard({ now: c.now, ttlMs: HOUR, maxFutureSkewMs: 60_000 });
    rejects(() => g.check(key('old', T0 - HOUR - 1)), 'ERR_STALE');
    g.check(key('edge', T0 - HOUR));
    rejects(() => g.check(key('future', T0 + 60_001)), 'ERR_STALE');
    g.check(key('soon', T0 + 60_000));
  });

  it('forgets ids once they expire, and an expired id stays refused (by the window)', () => {
    const c = clock();
    const g = new ReplayGuard({ now: c.now, ttlMs: HOUR });
    g.checkAndRecord(key('m1', T0));
    c.advance(HOUR + 1);
    g.checkAndRecord(key('m2', c.now()));
    assert.equal(g.size('hospital-a'), 1, 'm1 was swept');
    rejects(() => g.check(key('m1', T0)), 'ERR_STALE');
  });

  it('is bounded per sender: evicting raises a floor, so an evicted id is refused (ERR_STALE), never accepted', () => {
    const g = new ReplayGuard({ now: clock(T0 + 1000).now, maxEntriesPerSender: 3 });
    for (let i = 0; i < 10; i++) g.checkAndRecord(key(`m${i}`, T0 + i));
    assert.equal(g.size('hospital-a'), 3);
    for (let i = 0; i < 7; i++) rejects(() => g.check(key(`m${i}`, T0 + i)), 'ERR_STALE');
    for (let i = 7; i < 10; i++) rejects(() => g.check(key(`m${i}`, T0 + i)), 'ERR_REPLAY');
    g.checkAndRecord(key('m10', T0 + 10)); // newer messages still pass
    assert.equal(g.size('hospital-b'), 0);
  });

  it('forget() drops the ids of a sender but keeps it sound (floor = newest forgotten createdAt)', () => {
    const g = new ReplayGuard({ now: clock(T0 + 1000).now });
    g.checkAndRecord(key('m1', T0 + 1));
    g.checkAndRecord(key('m2', T0 + 2));
    g.forget('hospital-a');
    assert.equal(g.size('hospital-a'), 0);
    rejects(() => g.check(key('m1', T0 + 1)), 'ERR_STALE');
    rejects(() => g.check(key('m2', T0 + 2)), 'ERR_STALE');
    g.check(key('m3', T0 + 3));
  });

  it('validates options and keys', () => {
    assert.throws(() => new ReplayGuard({ ttlMs: 0 }), RangeError);
    assert.throws(() => new ReplayGuard({ maxEntriesPerSender: 1.5 }), RangeError);
    const g = new ReplayGuard();
    assert.throws(() => g.check({ sender: 'a', messageId: 'm', createdAt: Number.NaN }), TypeError);
    assert.throws(() => g.record(null as unknown as ReplayKey), TypeError);
  });

  it('end to end: a re-delivered envelope opens again, and the guard refuses it with ERR_REPLAY', () => {
    const a = generateNodeKeys('hospital-a', new Uint8Array(32).fill(1));
    const b = generateNodeKeys('hospital-b', new Uint8Array(32).fill(2));
    const peers = new Map([['hospital-a', a.publicKeys]]);
    const env = seal({ kind: 'updates', messageId: 'msg-1', resources: ['Patient/p1'], plaintext: new Uint8Array([1, 2, 3]) }, a.secretKeys, b.publicKeys);
    const guard = new ReplayGuard(); // real clock: createdAt defaults to now
    const applied: string[] = [];
    const deliver = (e: string): void => {
      const { header } = open(e, b.secretKeys, peers);
      guard.check(header);
      applied.push(header.messageId);
      guard.record(header);
    };
    deliver(env);
    assert.doesNotThrow(() => open(env, b.secretKeys, peers), 'the envelope itself is stateless');
    assert.throws(() => deliver(env), (e: unknown) => e instanceof EnvelopeError && e.code === 'ERR_REPLAY');
    assert.deepEqual(applied, ['msg-1'], 'the replay applied nothing');
  });
});
