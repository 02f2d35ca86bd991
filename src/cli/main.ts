#!/usr/bin/env node
/**
 * tidegate's command line: `demo`, `serve`, `keys generate|rotate|retire|rewrap|list`, `shred`, `audit verify`, `config check`, `map preview`, `bench`.
 */
import { Command, InvalidArgumentError } from 'commander';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

/** Default demo data: the project's own small example set (kept here so `keys` etc. don't load the demo). */
const EXAMPLES_DIR = fileURLToPath(new URL('../../examples/data/', import.meta.url));

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

/** A TCP port option: an integer 0-65535 (0: any free port). */
function tcpPort(v: string): number {
  const n = /^\d+$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n > 65535) throw new InvalidArgumentError('must be an integer from 0 to 65535 (0: any free port)');
  return n;
}

/** A node id option: what the config's `nodeId` allows (src/config/config.ts). */
function nodeIdArg(v: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(v)) throw new InvalidArgumentError('node id must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit (as the config\'s nodeId)');
  return v;
}

/**
 * The message for an error that ends a command: a missing or existing key file is said in words
 * (which file, where it looked, what to run), other errors keep their message.
 * @param err - what the command threw.
 */
function cliMessage(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const path = typeof e?.path === 'string' ? e.path : '';
  const m = /([^/\\]+)\.(secret|public)\.json$/.exec(path);
  if (m && e.code === 'ENOENT') return `no ${m[2]} key file for ${m[1]}: ${path} does not exist (ENOENT; looked in ${resolve(dirname(path))}; give the key folder with --dir, or create the keys with \`tidegate keys generate --node ${m[1]} --out <folder>\`)`;
  if (m && e.code === 'EEXIST') return `key file ${path} already exists (EEXIST): to replace ${m[1]}'s keys run \`tidegate keys rotate --node ${m[1]} --dir ${dirname(path) || '.'}\` (the old X-Wing key keeps decrypting until retired), or remove the files first`;
  return (err as Error).message;
}

/** A repeatable option's values, in order (`--consent a.json --consent b.json`). */
function collect(v: string, previous: string[]): string[] {
  return [...previous, v];
}

const program = new Command();
program.name('tidegate').description('FHIR R4 gateway that merges concurrent writes (Yjs) and gossips them sealed (post-quantum) between hospitals');

program
  .command('demo')
  .description('start N hospitals in one process (hospital-a and hospital-b with the example mappings), import ndjson through hospital-a, edit concurrently, check convergence and the mapping')
  .option('--hospitals <n>', 'number of hospitals', positiveInt, 2)
  .option('--data <dir>', 'FHIR Bulk Data ndjson folder to import', EXAMPLES_DIR)
  .option('--json', 'print the report as one JSON object on stdout', false)
  .option('--serve', 'keep the network running after the import until SIGINT/SIGTERM', false)
  .option('--edit-patients <n>', 'patients edited concurrently', positiveInt, 5)
  .option('--concurrency <n>', 'concurrent writes during the import', positiveInt, 8)
  .option('--timeout <ms>', 'convergence timeout in ms', positiveInt, 300_000)
  .action(async (o: { hospitals: number; data: string; json: boolean; serve: boolean; editPatients: number; concurrency: number; timeout: number }) => {
    const { formatReport, runDemo } = await import('./demo.ts');
    const report = await runDemo({ hospitals: o.hospitals, data: o.data, json: o.json, serve: o.serve, editPatients: o.editPatients, concurrency: o.concurrency, timeoutMs: o.timeout });
    if (o.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    else process.stdout.write(`${formatReport(report)}\n`);
    process.exitCode = report.ok ? 0 : 1;
  });

const keys = program.command('keys').description('key management (docs/envelope.md §7)');

keys
  .command('generate')
  .description("write a node's secret keys (tidegate-node-secret/2, mode 0600) and public keys (AKP JWK Set)")
  .requiredOption('--node <id>', 'node id', nodeIdArg)
  .option('--out <dir>', 'output folder', 'keys')
  .option('--config <file>', "record the operation in this node configuration's audit trail")
  .action(async (o: { node: string; out: string; config?: string }) => {
    const { createKeyStore, listKeys, writeKeyStoreFiles } = await import('../envelope/index.ts');
    const store = createKeyStore(o.node);
    await (await import('node:fs/promises')).mkdir(o.out, { recursive: true, mode: 0o700 });
    const written = await writeKeyStoreFiles(o.out, store);
    await (await import('../audit/cli.ts')).auditKeyCommand(o.config, o.node, 'generate', listKeys(store));
    process.stdout.write(`${JSON.stringify({ ...written, keys: listKeys(store) })}\n`);
  });

keys
  .command('rotate')
  .description('new X-Wing key (old one still decrypts until retired) and a next ML-DSA-65 key (signs once the current one is retired)')
  .requiredOption('--node <id>', 'node id', nodeIdArg)
  .option('--dir <dir>', 'key folder', 'keys')
  .option('--config <file>', "record the operation in this node configuration's audit trail")
  .action(async (o: { node: string; dir: string; config?: string }) => {
    const { listKeys, readKeyStore, rotateKeyStore, writeKeyStoreFiles } = await import('../envelope/index.ts');
    const { join } = await import('node:path');
    const store = rotateKeyStore(await readKeyStore(join(o.dir, `${o.node}.secret.json`)));
    const written = await writeKeyStoreFiles(o.dir, store, { overwrite: true });
    await (await import('../audit/cli.ts')).auditKeyCommand(o.config, o.node, 'rotate', listKeys(store).filter((k) => k.status !== 'retired'));
    process.stdout.write(`${JSON.stringify({ ...written, keys: listKeys(store) })}\n`);
  });

keys
  .command('retire')
  .description('destroy the secret of key KID (a previous X-Wing key stops decrypting; retiring the current ML-DSA-65 key promotes the next one)')
  .argument('<kid>', 'key id (22 base64url characters)')
  .requiredOption('--node <id>', 'node id', nodeIdArg)
  .option('--dir <dir>', 'key folder', 'keys')
  .option('--config <file>', "record the operation in this node configuration's audit trail, and refuse an X-Wing key a key vault of its store (or projection stores) is still wrapped under (node stopped)")
  .action(async (kid: string, o: { node: string; dir: string; config?: string }) => {
    const { listKeys, readKeyStore, retireKey, writeKeyStoreFiles } = await import('../envelope/index.ts');
    const { join } = await import('node:path');
    const current = await readKeyStore(join(o.dir, `${o.node}.secret.json`));
    if (current.keys.some((k) => k.kid === kid && k.use === 'enc' && k.status !== 'retired')) {
      if (o.config === undefined) process.stderr.write("tidegate: warning: without --config it is not checked whether the store's key vaults are still wrapped under this X-Wing key (run `keys rewrap --config` first)\n");
      else {
        const { vaultsWrappedUnder } = await import('./shred.ts');
        const under = await vaultsWrappedUnder(kid, { config: o.config });
        if (under.length > 0) throw new Error(`X-Wing key ${kid} not retired: key vault(s) still wrapped under it: ${under.join(', ')}. Run \`tidegate keys rewrap --config ${o.config}\` (node stopped) first`);
      }
    }
    const store = retireKey(current, kid);
    const written = await writeKeyStoreFiles(o.dir, store, { overwrite: true });
    await (await import('../audit/cli.ts')).auditKeyCommand(o.config, o.node, 'retire', listKeys(store).filter((k) => k.kid === kid));
    process.stdout.write(`${JSON.stringify({ ...written, keys: listKeys(store) })}\n`);
  });

keys
  .command('rewrap')
  .description("re-wrap the sealed store's content keys, and its projection stores', under the current X-Wing key (after rotate, before retiring the old key; the node must be stopped)")
  .requiredOption('--config <file>', 'node configuration JSON')
  .option('--force', 'new key generation even when already under the current key', false)
  .action(async (o: { config: string; force: boolean }) => {
    const { runRewrap } = await import('./shred.ts');
    const r = await runRewrap(o);
    const projectionKeys = r.projections.reduce((n, p) => n + p.keys, 0);
    if (r.keys > 0 || projectionKeys > 0) {
      const { auditFileOfConfig, keyOperationFromStore, recordOffline } = await import('../audit/cli.ts');
      const { file, nodeId, rotation } = auditFileOfConfig(o.config);
      await recordOffline(file, nodeId, [keyOperationFromStore(nodeId, 'rewrap', [{ kid: r.to.kid, alg: 'X-Wing', use: 'enc', status: 'current' }], { rewrapped: r.keys, generation: r.to.gen, projectionStoresRewrapped: r.projections.filter((p) => p.keys > 0).length, projectionKeysRewrapped: projectionKeys })], rotation);
    }
    process.stdout.write(`${JSON.stringify(r)}\n`);
  });

keys
  .command('list')
  .description("show a node's key ids, algorithms, creation dates and status (no secrets)")
  .requiredOption('--node <id>', 'node id', nodeIdArg)
  .option('--dir <dir>', 'key folder', 'keys')
  .option('--json', 'print JSON', false)
  .action(async (o: { node: string; dir: string; json: boolean }) => {
    const { listKeys, readKeyStore } = await import('../envelope/index.ts');
    const { join } = await import('node:path');
    const rows = listKeys(await readKeyStore(join(o.dir, `${o.node}.secret.json`)));
    if (o.json) {
      process.stdout.write(`${JSON.stringify(rows)}\n`);
      return;
    }
    const table = [['KID', 'ALG', 'USE', 'STATUS', 'CREATED', 'RETIRED'], ...rows.map((r) => [r.kid, r.alg, r.use, r.status, r.created ?? 'unknown', r.retired ?? '-'])];
    const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
    process.stdout.write(`${table.map((row) => row.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n')}\n`);
  });

program
  .command('serve')
  .description('run one node from a configuration file')
  .requiredOption('--config <file>', 'node configuration JSON (see config/)')
  .option('--insecure-dev', 'run without client authorization (only without an auth section, on a loopback listen.host)', false)
  .action(async (o: { config: string; insecureDev: boolean }) => {
    const { serve } = await import('./serve.ts');
    await serve(o.config, { insecureDev: o.insecureDev });
  });

program
  .command('shred')
  .description("crypto-shred a patient and its compartment on this node (its store and every projection store): content keys destroyed, queued messages dropped, AuditEvent recorded (docs/storage.md)")
  .argument('<patient>', 'Patient/<id>')
  .requiredOption('--config <file>', 'node configuration JSON (the node must be stopped, or give --node-url)')
  .option('--node-url <url>', 'shred through the running node at this base URL (POST /admin/shred/Patient/<id>)')
  .option('--no-redis', 'do not drop queued messages in Redis')
  .action(async (patient: string, o: { config: string; nodeUrl?: string; redis: boolean }) => {
    const { runShred } = await import('./shred.ts');
    const report = await runShred(patient, o);
    // Offline, the report's AuditEvent goes to the node's trail (through --node-url the node records it).
    if (o.nodeUrl === undefined && 'auditEvent' in report) {
      const { auditFileOfConfig, recordOffline } = await import('../audit/cli.ts');
      const { file, nodeId, rotation } = auditFileOfConfig(o.config);
      await recordOffline(file, nodeId, [report.auditEvent as import('../audit/index.ts').AuditEvent], rotation);
    }
    process.stdout.write(`${JSON.stringify(report)}\n`);
  });

const audit = program.command('audit').description('the audit trail (docs/security.md "Audit trail")');

audit
  .command('verify')
  .description("walk a node's hash-chained audit trail; exit 1 at the first edited, removed or reordered event")
  .option('--config <file>', 'node configuration JSON (its auditFile)')
  .option('--file <path>', 'the trail file itself')
  .option('--expect <seq:hash>', 'an anchor printed by an earlier verify, kept outside the node')
  .option('--from <segment>', 'start at this rotated segment (earlier ones archived), trusting its recorded previous hash')
  .action(async (o: { config?: string; file?: string; expect?: string; from?: string }) => {
    const { runAuditVerify } = await import('../audit/cli.ts');
    const report = await runAuditVerify(o);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exitCode = report.ok ? 0 : 1;
  });

const configCommand = program.command('config').description('configuration tools');

configCommand
  .command('check')
  .description('validate the node config, its mapping file (schema, ConceptMaps, FHIRPath), merge policy and every StructureDefinition/ConceptMap in profiles/; file:line:column + hint per error; exit 1 on any error')
  .requiredOption('--config <file>', 'node configuration JSON')
  .option('--profiles <dir>', 'profiles directory (default: the repository profiles/)')
  .option('--json', 'print the report as JSON', false)
  .action(async (o: { config: string; profiles?: string; json: boolean }) => {
    const { formatCheckReport, runConfigCheck } = await import('../mapping/check.ts');
    const report = runConfigCheck(o.config, o.profiles ? { profilesDir: o.profiles } : {});
    process.stdout.write(o.json ? `${JSON.stringify(report)}\n` : formatCheckReport(report));
    process.exitCode = report.ok ? 0 : 1;
  });

program
  .command('map')
  .description('mapping tools (docs/mappings.md)')
  .command('preview')
  .description("show what a peer (--peer) or this node's hospital would get for a resource after routing, Consent, translation, redaction and identifier mapping, as a diff against the input")
  .argument('<resource>', 'FHIR resource JSON file')
  .requiredOption('--config <file>', 'node configuration JSON (with mappingFile)')
  .option('--peer <id>', 'a peer node id; without it: what this node writes to its own hospital')
  .option('--consent <file>', 'a Consent resource (or Bundle of them) the patient has, honoured as the node would (with --peer); repeat for more', collect, [] as string[])
  .option('--json', 'print the preview as JSON', false)
  .action(async (file: string, o: { config: string; peer?: string; consent?: string[]; json: boolean }) => {
    const { formatPreview, previewMapping } = await import('../mapping/preview.ts');
    const p = previewMapping({ config: o.config, peer: o.peer, file, consent: o.consent });
    process.stdout.write(o.json ? `${JSON.stringify(p)}\n` : formatPreview(p));
    process.exitCode = p.rejected || p.invalid.length > 0 ? 1 : 0;
  });

const hospitalCommand = program
  .command('hospital')
  .description('run a stand-in hospital FHIR server (Medplum FhirRouter + MemoryRepository over HTTP) for trying nodes by hand')
  .option('--port <n>', 'TCP port (0 = any free port)', tcpPort, 8103)
  .option('--host <host>', 'interface to bind', '127.0.0.1')
  .action(async (o: { port: number; host: string }) => {
    const { startMedplumHospital } = await import('../hospital/index.ts');
    const h = await startMedplumHospital({ port: o.port, host: o.host, name: 'stand-in-hospital' });
    process.stdout.write(`${JSON.stringify({ fhirServer: h.url })}\n`);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await h.close();
  });

hospitalCommand
  .command('resync')
  .description('resend the running node\'s current version of every resource (or of --type) to its hospital, e.g. after the hospital lost data; deleted resources are sent as DELETE, crypto-shredded ones never')
  .requiredOption('--config <file>', 'node configuration JSON (its listen address gives the node URL)')
  .option('--node-url <url>', 'base URL of the running node (default from --config)')
  .option('--type <type>', 'resource type to resend (repeatable; default all)', collect, [])
  .option('--wait', 'wait until every version is handed to the outbox, printing progress', false)
  .action(async (o: { config: string; nodeUrl?: string; type: string[]; wait: boolean }) => {
    const { runHospitalResync } = await import('./hospital-resync.ts');
    const result = await runHospitalResync({ ...o, onProgress: (st) => process.stderr.write(`${JSON.stringify(st)}\n`) });
    process.stdout.write(`${JSON.stringify(result)}\n`);
  });

program
  .command('bench')
  .description('benchmarks: merge, seal/open, replication, import, then the sections (Automerge, HTTP overhead, Tide scale); writes docs/BENCHMARKS.md')
  .option('--json', 'print the figures as JSON', false)
  .option('--data <dir>', 'Synthea ndjson folder', '../shared/data/synthea-10')
  .option('--only <ids>', 'comma-separated: core (figures 1-4) and/or section ids (merge-automerge, merge-property, envelope-throughput, store-sealed, http, tide, detection)')
  .option('--quick', 'smallest sizes (smoke run; docs/BENCHMARKS.md is not written)', false)
  .action(async (o: { json: boolean; data: string; only?: string; quick: boolean }) => {
    const { runBench } = await import('./bench.ts');
    await runBench({ json: o.json, data: o.data, quick: o.quick, only: o.only ? o.only.split(',').map((s) => s.trim()).filter(Boolean) : [] });
  });

/**
 * Key ids are 22 base64url characters, and 1 in 64 begin with "-", which commander would read as an
 * option ("unknown option '-SFJ…'"). For `keys retire`, a token that is exactly such a key id, and
 * is not the value of the option before it, is moved behind "--" so commander reads it as the
 * `<kid>` argument. Other commands take no key id argument.
 *
 * @param argv - process.argv (node, script, ...args); not modified.
 * @returns The argument vector to parse.
 */
function keyIdArgv(argv: readonly string[]): string[] {
  const args = argv.slice(2);
  if (args[0] !== 'keys' || args[1] !== 'retire' || args.includes('--')) return [...argv];
  const valued = new Set(['--node', '--dir', '--config']);
  const kid = args.findIndex((a, i) => /^-[A-Za-z0-9_-]{21}$/.test(a) && !valued.has(args[i - 1] ?? ''));
  if (kid < 0) return [...argv];
  return [...argv.slice(0, 2), ...args.filter((_, i) => i !== kid), '--', args[kid]!];
}

program.parseAsync(keyIdArgv(process.argv)).then(
  () => {
    // BullMQ and ioredis may keep timers; everything is stopped by now.
    setTimeout(() => process.exit(), 100).unref();
  },
  (err: unknown) => {
    process.stderr.write(`tidegate: ${cliMessage(err)}\n`);
    process.exit(2);
  },
);
