/**
 * Hand-written findings of a separate `node --cpu-prof src/cli/main.ts bench` run, appended to
 * docs/BENCHMARKS.md as "What dominates the costs". The bench does not refresh them: update this
 * text after re-profiling (the shares are of one thread's CPU-profile samples during figure 4).
 */
export const PROFILE_NOTES = `
From \`node --cpu-prof src/cli/main.ts bench\` on this machine (2026-11-29 18:14 UTC, load average
5–8; code as of that time: profile validation at the gateway, durable hospital outbox, envelope
crypto on a worker thread). Node writes one profile per thread. Shares are of one thread's samples
during figure 4's import (97 s: 44 s of PUTs, then 53 s of draining); a profiled thread that is
runnable but descheduled still counts as busy. **This section is not refreshed by the bench.**

**Main thread** — both gateways, both Medplum stand-in hospital servers, the HTTP clients, the
BullMQ/Redis clients: 98 % busy during the PUTs *and* 93 % during the drain. It sets the
end-to-end rate. Inclusive shares over the whole import:

| where | share |
|---|---:|
| \`FhirService.update\` (gateway PUT) | 16.7 % |
| … \`validateWithProfiles\` (base R4 + profile validation, Medplum's validator) | 9.0 % |
| … \`Replica.write\` | 6.8 % |
| Medplum stand-in hospital servers (\`handleFhir\`) — the hospitals, not tidegate | 13.1 % |
| \`Replica.applyRemote\` (updates received by hospital 2) | 8.2 % |
| hospital outbox writes (\`HospitalOutbox\` #write, incl. \`HospitalClient.upsert\` 2.6 %) | 7.5 % |
| … ledger \`contentHash\` (SHA-256 of \`comparableForm\`) | 2.5 % |
| Redis commands (ioredis \`sendCommand\`: Tide and outbox queues) | 4.4 % |
| \`fetch\` (undici), inclusive; its self time across internals is ~7.5 % | 3.8 % |
| garbage collection | 5.4 % |

During the drain alone the hospital servers take 19.5 %, the outbox 11 % and \`applyRemote\` 10 %:
after the last PUT the backlog is writing the merged resources into both hospital servers and
merging at hospital 2, on the same thread as everything else.

Inside the merge engine: \`render\` 4.4 %, \`Y.encodeStateAsUpdate\` 3.3 %, \`loadDoc\` 1.1 %,
\`canonicalStringify\` 3.9 %, \`parseFhirJson\` 2.3 %. (\`loadDoc\` was 4.1 % in an earlier profile: a
\`new Y.Doc()\` without a \`guid\` draws a random UUID through ~31 \`crypto.getRandomValues\` calls,
~200–350 µs here; fixed in commit d0b0e37 with a fixed guid.)

**Envelope crypto worker thread** (one thread on 2 cores, shared by both nodes): 65 % busy during
both phases, so it is *not* the bottleneck on this machine. Of its wall time: \`seal\` 41 % — ML-DSA-65
signing alone 28 %, X-Wing encapsulation 7 %, AES-256-GCM encryption 5 % — and \`open\` 22 % —
X-Wing decapsulation 8 %, ML-DSA-65 verification 8 %, AES-256-GCM decryption 5 %. By self time,
Keccak-f[1600] (the SHAKE XOF that ML-DSA and ML-KEM expand matrices and samples with) is 13 %.
Envelope parsing, base64url and header checks are below 1 %.

**Bytes.** A 3.5 KB Synthea Patient is a 22 KB Yjs create update: 130 leaves, whose element paths
alone are 12 KB (array items carry URI-encoded identity keys such as extension URLs), and each entry
repeats a 22-character HLC stamp and the node id. Envelopes are 1.35–1.6 × their plaintext (figure 2),
so the import moves several times the sample's size through Redis, AES-GCM and base64url.

**Levers**, by effect here: one process (and core) per node in a real deployment; cheaper gateway
validation (profile validation is 9 % of the main thread); the hospital write path (outbox hashing,
Redis round trips); larger Tide batches (each envelope pays a 15–30 ms ML-DSA-65 signature and a
5–10 ms X-Wing encapsulation); native AES-256-GCM (\`node:crypto\`, same bytes on the wire) instead of
the pure-JS one; shorter entry keys in the Yjs layout.
`;
