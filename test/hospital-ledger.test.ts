import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OWN_WRITES_KEPT, SyncLedger } from '../src/hospital/ledger.ts';

// Bug found by the bench: with 16 own writes remembered, a resource written ~25 times between two
// polls had its oldest own versions read back through `_history` as "hospital edits", which were
// merged and gossiped and reverted newer content.
test('every own write of a burst between two polls is still recognized as the node\'s own', () => {
  const ledger = new SyncLedger();
  const key = 'Patient/burst';
  const burst = 100;
  assert.ok(OWN_WRITES_KEPT >= burst, 'a burst of 100 writes per poll period must fit');
  for (let i = 0; i < burst; i++) {
    ledger.beginWrite(key, `${i + 1}.v`, `hash-${i}`);
    ledger.wrote(key, `${i + 1}.v`, `hospital-${i}`);
  }
  // The poller then reads them back, oldest first.
  for (let i = 0; i < burst; i++) {
    assert.equal(ledger.matchOwn(key, `hospital-${i}`, `hash-${i}`), `${i + 1}.v`, `own write #${i + 1} recognized`);
  }
  assert.equal(ledger.matchOwn(key, 'hospital-other', 'hash-other'), undefined, 'a real hospital edit is not taken for an own write');
});
