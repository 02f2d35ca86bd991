#!/usr/bin/env node
/**
 * tidegate's command line: `demo`, `serve`, `keys generate`, `bench`.
 */
import { Command, InvalidArgumentError } from 'commander';
import { EXAMPLES_DIR, formatReport, runDemo } from './demo.ts';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

const program = new Command();
program.name('tidegate').description('FHIR R4 gateway that merges concurrent writes (Yjs) and gossips them sealed (post-quantum) between hospitals');

program
  .command('demo')
  .description('start N hospitals in one process, import ndjson through hospital 1, edit concurrently, check convergence')
  .option('--hospitals <n>', 'number of hospitals', positiveInt, 2)
  .option('--data <dir>', 'FHIR Bulk Data ndjson folder to import', EXAMPLES_DIR)
  .option('--json', 'print the report as one JSON object on stdout', false)
  .option('--serve', 'keep the network running after the import until SIGINT/SIGTERM', false)
  .option('--edit-patients <n>', 'patients edited concurrently', positiveInt, 5)
  .option('--concurrency <n>', 'concurrent writes during the import', positiveInt, 8)
  .option('--timeout <ms>', 'convergence timeout in ms', positiveInt, 300_000)
  .action(async (o: { hospitals: number; data: string; json: boolean; serve: boolean; editPatients: number; concurrency: number; timeout: number }) => {
    const report = await runDemo({ hospitals: o.hospitals, data: o.data, json: o.json, serve: o.serve, editPatients: o.editPatients, concurrency: o.concurrency, timeoutMs: o.timeout });
    if (o.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    else process.stdout.write(`${formatReport(report)}\n`);
    process.exitCode = report.ok ? 0 : 1;
  });

program
  .command('keys')
  .description('key management')
  .command('generate')
  .description("write a node's secret keys (mode 0600) and public keys")
  .requiredOption('--node <id>', 'node id')
  .option('--out <dir>', 'output folder', 'keys')
  .action(async (o: { node: string; out: string }) => {
    const { generateNodeKeys, writeKeyFiles } = await import('../envelope/index.ts');
    const keys = generateNodeKeys(o.node);
    const written = await writeKeyFiles(o.out, keys);
    process.stdout.write(`${JSON.stringify(written)}\n`);
  });

program
  .command('serve')
  .description('run one node from a configuration file')
  .requiredOption('--config <file>', 'node configuration JSON (see config/)')
  .action(async (o: { config: string }) => {
    const { serve } = await import('./serve.ts');
    await serve(o.config);
  });

program
  .command('bench')
  .description('benchmarks: merge, seal/open, replication latency; writes docs/BENCHMARKS.md')
  .option('--json', 'print the figures as JSON', false)
  .option('--data <dir>', 'Synthea ndjson folder', '../shared/data/synthea-10')
  .action(async (o: { json: boolean; data: string }) => {
    const { runBench } = await import('./bench.ts');
    await runBench(o);
  });

program.parseAsync(process.argv).then(
  () => {
    // BullMQ and ioredis may keep timers; everything is stopped by now.
    setTimeout(() => process.exit(), 100).unref();
  },
  (err: unknown) => {
    process.stderr.write(`tidegate: ${(err as Error).message}\n`);
    process.exit(2);
  },
);
