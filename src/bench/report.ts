/**
 * The bench report: its JSON shape ({@link BenchReport}, what `--json` prints), a plain-text table
 * for the terminal, and the Markdown of docs/BENCHMARKS.md.
 */
import type { EnvelopeFigures } from './envelope.ts';
import type { ImportFigures } from './import.ts';
import type { MergeFigures } from './merge.ts';
import type { ReplicationFigures } from './replication.ts';
import type { BenchSectionResult } from './section.ts';
import { fmtBytes, fmtMs } from './stats.ts';
import type { Summary } from './stats.ts';

/** Where the bench ran. */
export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  nodeVersion: string;
  platform: string;
  arch: string;
  totalMemMiB: number;
  /** 1-minute load average when the bench started. */
  loadAvg1mAtStart: number;
  /** 1-minute load average when the bench ended (other processes share the cores). */
  loadAvg1mAtEnd: number | null;
}

/** Everything the bench measured; `null` figures were skipped (see `skipped`). */
export interface BenchReport {
  /** ISO 8601 start time. */
  date: string;
  machine: MachineInfo;
  /** Redis used: `default` (127.0.0.1:6379), `REDIS_URL` or `spawned`. */
  redis: string;
  data: { dir: string; present: boolean; resources: number | null; patients: number | null };
  /** Wall time of the whole run, seconds. */
  durationSeconds: number;
  /** CPU time (user + system, all threads) the process used, seconds. */
  processCpuSeconds: number;
  merge: MergeFigures | null;
  envelope: EnvelopeFigures | null;
  replication: ReplicationFigures | null;
  import: ImportFigures | null;
  /** Results of the bench sections (src/bench/sections.ts), in run order. */
  sections: BenchSectionResult[];
  /** Figure name → why it was skipped. */
  skipped: Record<string, string>;
}

const pq = (s: Summary): string => `${fmtMs(s.p50)} / ${fmtMs(s.p99)}`;
const x = (r: number | null): string => (r === null ? 'n/a' : `${r}×`);
const pct = (r: number | null): string => (r === null ? 'n/a' : `${Math.round(r * 100)} %`);

function rows(table: string[][]): string {
  const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => (r[c] ?? '').length)));
  return table.map((r) => `  ${r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ')}`.trimEnd()).join('\n');
}

/**
 * Renders the report as a terminal table (plain text, one section per figure).
 * @param r - the report.
 * @returns Text lines joined with `\n`.
 */
export function formatTable(r: BenchReport): string {
  const out: string[] = ['', `tidegate bench — ${r.date}, ${r.machine.cpus} × ${r.machine.cpuModel}, Node ${r.machine.nodeVersion}, ${r.durationSeconds.toFixed(0)} s wall / ${r.processCpuSeconds.toFixed(0)} s CPU, load ${r.machine.loadAvg1mAtStart.toFixed(1)}→${r.machine.loadAvg1mAtEnd?.toFixed(1) ?? '?'}`, ''];
  if (r.merge) {
    const m = r.merge;
    out.push(`1. Merge per edit (${m.patients} Synthea Patients × ${m.editsPerPatient} edits × ${m.rounds} rounds)   p50 / p99`);
    out.push(
      rows([
        ['replica.write (local edit)', pq(m.localEdit), `${x(m.ratios.localEditVsJson)} JSON round trip`],
        ['replica.applyRemote (remote edit)', pq(m.remoteEdit), `${x(m.ratios.remoteEditVsJson)} JSON round trip`],
        ['replica.write (create)', pq(m.localCreate), ''],
        ['replica.applyRemote (create)', pq(m.remoteCreate), ''],
        ['JSON.parse + JSON.stringify', pq(m.jsonRoundTrip), 'reference'],
        ['parseFhirJson + canonicalStringify', pq(m.losslessRoundTrip), 'reference (lossless)'],
      ]),
    );
    out.push('');
  }
  if (r.envelope) {
    out.push('2. Envelope per message (tidegate-env/2, one recipient)   p50 / p99');
    out.push(
      rows([
        ['payload', 'plaintext', 'envelope', 'overhead', 'seal+sign', 'verify+open'],
        ...r.envelope.cases.map((c) => [c.label, fmtBytes(c.plaintextBytes), fmtBytes(c.envelopeBytes), `+${fmtBytes(c.overheadBytes)}`, pq(c.seal), pq(c.open)]),
      ]),
    );
    const b = r.envelope.breakdown;
    out.push(
      `  primitives (p50): ML-DSA-65 sign ${fmtMs(b.mldsaSign.p50)} (${pct(b.signShareOfSeal)} of seal), verify ${fmtMs(b.mldsaVerify.p50)} (${pct(b.verifyShareOfOpen)} of open), ` +
        `X-Wing encaps ${fmtMs(b.xwingEncapsulate.p50)}, decaps ${fmtMs(b.xwingDecapsulate.p50)}, AES-GCM ${fmtMs(b.aesGcmEncrypt.p50)} / ${fmtMs(b.aesGcmDecrypt.p50)}`,
    );
    const pl = r.envelope.pool;
    out.push(`  worker pool vs direct (${pl.label}, p50): seal ${fmtMs(pl.poolSeal.p50)} vs ${fmtMs(pl.directSeal.p50)} (${x(pl.sealRatio)}), open ${fmtMs(pl.poolOpen.p50)} vs ${fmtMs(pl.directOpen.p50)} (${x(pl.openRatio)})`);
    out.push('');
  }
  if (r.replication) {
    const p = r.replication;
    out.push(`3. Replication latency, 2 hospitals, batchDelayMs ${p.batchDelayMs}, ${p.samples} sequential PUTs   p50 / p99`);
    out.push(
      rows([
        ['PUT at hospital-1 gateway (response)', pq(p.putResponse)],
        ['node 1 → node 2 replica', pq(p.nodeToNode)],
        ['node 1 → hospital-2 FHIR server', pq(p.nodeToHospitalServer2)],
      ]),
    );
    out.push('');
  }
  if (r.import) {
    const i = r.import;
    out.push(`4. Import through hospital-1, 2 hospitals${i.truncated ? ' (TIME-BOXED: subset)' : ''}`);
    out.push(
      rows([
        ['resources accepted', `${i.accepted} of ${i.planned}${i.rejected ? ` (${i.rejected} rejected)` : ''}`],
        ['ingest (all PUTs answered)', `${i.ingestPerSecond} resources/s (${i.ingestSeconds} s)`],
        ['end to end (converged, both servers)', i.endToEndPerSecond === null ? `did not converge in time (${i.replicatedAtEnd} of ${i.accepted} at hospital-2)` : `${i.endToEndPerSecond} resources/s (${i.endToEndSeconds} s, drain ${i.drainSeconds} s)`],
        ['envelopes / bytes on the wire', `${i.messages} / ${fmtBytes(i.bytesOnWire)} (${i.updatesPerMessage ?? 'n/a'} updates per envelope)`],
      ]),
    );
    out.push('');
  }
  for (const sec of r.sections) out.push('', sec.title, sec.text);
  for (const [fig, why] of Object.entries(r.skipped)) out.push(`skipped ${fig}: ${why}`);
  return out.join('\n');
}

function mdTable(head: string[], body: string[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map((h, i) => (i === 0 ? '---' : '---:')).join('|')}|`, ...body.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

const ms = (v: number): string => fmtMs(v);

function mergeSection(m: MergeFigures): string {
  return `## 1. Merge time per edit

${m.patients} Synthea Patients (canonical JSON median ${fmtBytes(m.patientBytes.p50)}, max ${fmtBytes(m.patientBytes.max)}), ${m.editsPerPatient} edits each, ${m.rounds} measured rounds (fresh replicas each round): ${m.localEdit.n} edit samples, ${m.localCreate.n} creates.

${mdTable(
  ['operation', 'p50', 'p99', 'mean', 'vs JSON round trip (p50)'],
  [
    ['`replica.write` — local edit', ms(m.localEdit.p50), ms(m.localEdit.p99), ms(m.localEdit.mean), x(m.ratios.localEditVsJson)],
    ['`replica.applyRemote` — same edit as a remote update', ms(m.remoteEdit.p50), ms(m.remoteEdit.p99), ms(m.remoteEdit.mean), x(m.ratios.remoteEditVsJson)],
    ['`replica.write` — create', ms(m.localCreate.p50), ms(m.localCreate.p99), ms(m.localCreate.mean), ''],
    ['`replica.applyRemote` — create', ms(m.remoteCreate.p50), ms(m.remoteCreate.p99), ms(m.remoteCreate.mean), ''],
    ['reference: `JSON.parse` + `JSON.stringify`', ms(m.jsonRoundTrip.p50), ms(m.jsonRoundTrip.p99), ms(m.jsonRoundTrip.mean), '1×'],
    ['reference: `parseFhirJson` + `canonicalStringify` (lossless)', ms(m.losslessRoundTrip.p50), ms(m.losslessRoundTrip.p99), ms(m.losslessRoundTrip.mean), ''],
  ],
)}

A local edit costs ${x(m.ratios.localEditVsLossless)} a lossless parse + canonical serialization of the same Patient.

By edit (p50 / p99; update = Yjs update bytes gossiped, median):

${mdTable(
  ['edit', 'local write', 'remote apply', 'update'],
  m.byEdit.map((e) => [e.edit, `${ms(e.local.p50)} / ${ms(e.local.p99)}`, `${ms(e.remote.p50)} / ${ms(e.remote.p99)}`, fmtBytes(e.updateBytesP50)]),
)}

Yjs update sizes (median): create ${fmtBytes(m.updateBytes.createP50)} (${x(m.patientBytes.p50 === 0 ? null : Math.round((m.updateBytes.createP50 / m.patientBytes.p50) * 10) / 10)} the Patient's JSON: each leaf is a Y.Map entry keyed by its full element path — array items carry URI-encoded identity keys such as extension URLs — plus the node id, holding the value text, an HLC stamp and the node id), edit ${fmtBytes(m.updateBytes.editP50)}; stored document after all edits ${fmtBytes(m.stateBytesAfterEditsP50)}. Replica B rendered the same final version as replica A for every Patient: ${m.converged ? 'yes' : '**NO**'}.
`;
}

function envelopeSection(e: EnvelopeFigures): string {
  const b = e.breakdown;
  const pl = e.pool;
  return `## 2. Seal+sign and verify+open per message

Plaintext = a Tide \`updates\` message (\`encodeUpdates\`); envelope = the serialized tidegate-env/2 JSON string with one recipient (ASCII, so characters = bytes).

${mdTable(
  ['payload', 'n', 'plaintext', 'envelope', 'overhead', 'seal+sign p50 / p99', 'verify+open p50 / p99'],
  e.cases.map((c) => [c.label, String(c.seal.n), fmtBytes(c.plaintextBytes), fmtBytes(c.envelopeBytes), `+${fmtBytes(c.overheadBytes)} (${x(c.expansion)})`, `${ms(c.seal.p50)} / ${ms(c.seal.p99)}`, `${ms(c.open.p50)} / ${ms(c.open.p99)}`]),
)}

The fixed overhead is the ML-DSA-65 signature (3309 B) + per recipient the X-Wing encapsulated key (1120 B) and the HPKE-wrapped content key (32 B + 16 B tag) + the content nonce and tag (28 B) + the header (with its content-key commitment), all base64url (×4/3); the payload itself also grows by 4/3. See docs/envelope.md.

Primitives of one envelope (1 Patient create update), measured side by side in one loop (each iteration: seal, open, then each primitive), ${b.mldsaSign.n} iterations:

${mdTable(
  ['operation', 'p50', 'p99'],
  [
    ['`seal` (whole)', ms(b.seal.p50), ms(b.seal.p99)],
    ['`open` (whole)', ms(b.open.p50), ms(b.open.p99)],
    ['ML-DSA-65 sign (hedged)', ms(b.mldsaSign.p50), ms(b.mldsaSign.p99)],
    ['X-Wing encapsulate (inside HPKE SealBase)', ms(b.xwingEncapsulate.p50), ms(b.xwingEncapsulate.p99)],
    ['AES-256-GCM encrypt', ms(b.aesGcmEncrypt.p50), ms(b.aesGcmEncrypt.p99)],
    ['ML-DSA-65 verify', ms(b.mldsaVerify.p50), ms(b.mldsaVerify.p99)],
    ['X-Wing decapsulate', ms(b.xwingDecapsulate.p50), ms(b.xwingDecapsulate.p99)],
    ['AES-256-GCM decrypt', ms(b.aesGcmDecrypt.p50), ms(b.aesGcmDecrypt.p99)],
  ],
)}

ML-DSA-65 signing is ${pct(b.signShareOfSeal)} of the median seal; verification is ${pct(b.verifyShareOfOpen)} of the median open. Signing has a long tail because FIPS 204 signing is a rejection-sampling loop (a variable number of tries per signature). The rest of \`open\` is mostly X-Wing decapsulation (ML-KEM-768 re-encryption check + X25519); the rest of \`seal\` mostly X-Wing encapsulation.

Tide seals and opens on an \`EnvelopeCryptoPool\` worker thread. Same payload (${pl.label}), direct call on this thread vs through a one-thread pool, alternating in one loop, ${pl.directSeal.n} iterations:

${mdTable(
  ['', 'direct p50 / p99', 'worker pool p50 / p99', 'pool / direct (p50)'],
  [
    ['seal', `${ms(pl.directSeal.p50)} / ${ms(pl.directSeal.p99)}`, `${ms(pl.poolSeal.p50)} / ${ms(pl.poolSeal.p99)}`, x(pl.sealRatio)],
    ['open', `${ms(pl.directOpen.p50)} / ${ms(pl.directOpen.p99)}`, `${ms(pl.poolOpen.p50)} / ${ms(pl.poolOpen.p99)}`, x(pl.openRatio)],
  ],
)}
`;
}

function replicationSection(p: ReplicationFigures): string {
  return `## 3. Replication latency between two hospitals

\`startNetwork({ hospitals: 2, batchDelayMs: ${p.batchDelayMs} })\`; ${p.samples} sequential PUTs of one Patient (${fmtBytes(p.bodyBytes)}) at hospital-1's gateway, each changing \`birthDate\`, after warm-up. Times from just before the PUT is sent.

${mdTable(
  ['span', 'p50', 'p99', 'mean'],
  [
    ['PUT at hospital-1 answered (parse, validate, merge)', ms(p.putResponse.p50), ms(p.putResponse.p99), ms(p.putResponse.mean)],
    ['… hospital-2 node holds the version (node to node)', ms(p.nodeToNode.p50), ms(p.nodeToNode.p99), ms(p.nodeToNode.mean)],
    ['… hospital-2 FHIR server holds it (node to hospital server 2)', ms(p.nodeToHospitalServer2.p50), ms(p.nodeToHospitalServer2.p99), ms(p.nodeToHospitalServer2.mean)],
  ],
)}
${p.timeouts > 0 ? `\n${p.timeouts} samples timed out and are not counted.\n` : ''}
Node to node is: batch delay (${p.batchDelayMs} ms) + seal on the crypto worker thread (one envelope, see figure 2) + BullMQ \`add\` on Redis + inbox worker pickup + open on the crypto worker thread + \`applyRemote\`. The hospital-server leg adds the HTTP PUT of the merged resource to hospital 2's Medplum server (validation included).
`;
}

function importSection(i: ImportFigures): string {
  return `## 4. Import throughput

${i.truncated ? `**Time-boxed, subset**: PUTs were stopped after ${i.sent} of ${i.planned} resources so that the import and its drain fit the run's time budget; the figures are for that subset (the types listed below).` : `The whole Synthea sample: ${i.planned} resources.`} PUT at hospital-1's gateway, ${i.concurrency} concurrent requests within a type, types in import order; 2 hospitals.

${mdTable(
  ['measure', 'value'],
  [
    ['resources accepted', `${i.accepted}${i.rejected ? ` (${i.rejected} rejected)` : ''}`],
    ['ingest: all PUTs answered by hospital-1', `**${i.ingestPerSecond} resources/s** (${i.ingestSeconds} s)`],
    ['end to end: replicated to hospital-2 and written to both hospital servers', i.endToEndPerSecond === null ? `did not converge within the time budget (${i.replicatedAtEnd} of ${i.accepted} at hospital-2)` : `**${i.endToEndPerSecond} resources/s** (${i.endToEndSeconds} s; ${i.drainSeconds} s after the last PUT)`],
    ['held by hospital-2 when the last PUT was answered', `${i.replicatedAtIngestEnd} of ${i.accepted}`],
    ['sealed envelopes sent', `${i.messages} (${i.updatesPerMessage ?? 'n/a'} updates per envelope)`],
    ['bytes on the wire', fmtBytes(i.bytesOnWire)],
  ],
)}

By type (ingest):

${mdTable(
  ['type', 'resources', 'seconds', 'resources/s', 'body p50'],
  i.byType.map((t) => [t.type, String(t.resources), String(t.seconds), String(t.perSecond), fmtBytes(t.bodyBytesP50)]),
)}
`;
}

/**
 * Renders docs/BENCHMARKS.md.
 * @param r - the report.
 * @param profileNotes - optional Markdown appended as "What dominates the costs" (hand-written
 *   profile findings); the section is omitted when empty.
 * @returns Markdown text ending in a newline.
 */
export function renderMarkdown(r: BenchReport, profileNotes = ''): string {
  const m = r.machine;
  const parts = [
    `# Benchmarks

Generated by \`npm run bench\` (\`src/cli/bench.ts\`, \`src/bench/\`) — do not edit by hand; re-run to refresh.

- **Date**: ${r.date}
- **Machine**: ${m.cpus} × ${m.cpuModel}, ${m.totalMemMiB} MiB RAM, ${m.platform}/${m.arch}; shared, noisy cores: 1-minute load average ${m.loadAvg1mAtStart.toFixed(2)} at start${m.loadAvg1mAtEnd === null ? '' : `, ${m.loadAvg1mAtEnd.toFixed(2)} at the end`}
- **Node**: ${m.nodeVersion}
- **Redis**: ${r.redis}
- **Data**: \`${r.data.dir}\`${r.data.present ? ` (${r.data.resources} resources, ${r.data.patients} Patients)` : ' — **absent**'}
- **Run time**: ${r.durationSeconds.toFixed(0)} s wall, ${r.processCpuSeconds.toFixed(0)} s CPU over all threads (CPU / wall ${r.durationSeconds > 0 ? ((r.processCpuSeconds / r.durationSeconds) * 100).toFixed(0) : '?'} %; ${r.machine.cpus * 100} % would be every core, all the time)

## Method

- Everything runs in one Node process: both tidegate nodes, both stand-in Medplum hospital servers (in memory, over HTTP on 127.0.0.1) and the bench itself share one event loop; envelope crypto of both nodes runs on Tide's shared \`EnvelopeCryptoPool\` (cores − 1 worker threads, 1 to 4: ${Math.max(1, Math.min(4, m.cpus - 1))} here). Redis is local. Figures 3 and 4 are therefore pessimistic for a real deployment with one node per host. The nodes' hospital \`_history\` pollers (the inbound path for edits made directly at a hospital) are off; anti-entropy runs only when \`Network.converge\` finds replicas that differ.
- Durations come from \`performance.now()\` around the operation only (bodies and inputs are prepared outside the timed region). Each figure has warm-up iterations that are discarded.
- **p50** is the median, **p99** the 99th percentile, both nearest-rank; with fewer than 100 samples p99 is the maximum. Means are given where the tail matters.
- Comparisons are measured side by side in the same loop (for figure 1: a JSON round trip, the local write, a lossless round trip and the remote apply of the same Patient version, one after the other), and quoted as ratios of medians, so machine noise affects both sides alike.
- Replication latency is measured by polling every event-loop turn (\`setImmediate\`) for the version at hospital 2's replica, then for the new content in hospital 2's server repository; samples are sequential and each starts once the network is quiet.
`,
  ];
  if (r.merge) parts.push(mergeSection(r.merge));
  if (r.envelope) parts.push(envelopeSection(r.envelope));
  if (r.replication) parts.push(replicationSection(r.replication));
  if (r.import) parts.push(importSection(r.import));
  for (const sec of r.sections) {
    parts.push(`## ${sec.title}\n\n${sec.markdown.trim()}\n`);
    const sk = Object.entries(sec.skipped);
    if (sk.length > 0) parts.push(`Skipped in this section:\n\n${sk.map(([f, why]) => `- ${f}: ${why}`).join('\n')}\n`);
  }
  const skipped = Object.entries(r.skipped);
  if (skipped.length > 0) parts.push(`## Skipped\n\n${skipped.map(([f, why]) => `- ${f}: ${why}`).join('\n')}\n`);
  if (profileNotes.trim()) parts.push(`## What dominates the costs\n\n${profileNotes.trim()}\n`);
  return parts.join('\n');
}
