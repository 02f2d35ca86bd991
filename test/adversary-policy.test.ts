/**
 * Adversarial review of policy agreement (src/mapping/policy-digest.ts): peer ids that are also
 * names of `Object.prototype` members (`constructor`, `toString`, `valueOf`, `hasOwnProperty`:
 * valid node ids) must not be taken for a route the mapping file does not have.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { peerPolicy, policyDigest, sensitiveTypes } from '../src/mapping/policy-digest.ts';
import { MappingFileSchema } from '../src/mapping/schema.ts';

const PROTO_IDS = ['constructor', 'toString', 'valueOf', 'hasOwnProperty', 'isPrototypeOf'];

describe('policy digest: peer ids named like Object.prototype members', () => {
  test('a mapping file without a route for the peer digests like no mapping file (as for any other peer id)', () => {
    const withoutRoute = MappingFileSchema.parse({ routes: { 'hospital-b': { withhold: [{ resourceType: 'Condition' }] } } });
    // the reference behaviour: an ordinary id
    assert.equal(policyDigest(withoutRoute, { nodeId: 'research-r' }), policyDigest(undefined, { nodeId: 'research-r' }));
    for (const id of PROTO_IDS) {
      assert.equal(peerPolicy(withoutRoute, { nodeId: id }).route, null, id);
      assert.equal(policyDigest(withoutRoute, { nodeId: id }), policyDigest(undefined, { nodeId: id }), id);
      assert.deepEqual([...(sensitiveTypes(withoutRoute, { nodeId: id }) as ReadonlySet<string>)], [], id);
    }
  });

  test('a real route for such a peer is still digested', () => {
    const m = MappingFileSchema.parse({ routes: { constructor: { withhold: [{ resourceType: 'Condition' }] } } });
    assert.notEqual(policyDigest(m, { nodeId: 'constructor' }), policyDigest(undefined, { nodeId: 'constructor' }));
    const types = sensitiveTypes(m, { nodeId: 'constructor' });
    assert.ok(types === '*' || types.has('Condition'), 'the withheld type is protected');
  });
});
