/**
 * Entry point: one stand-in hospital FHIR server ({@link startMedplumHospital},
 * src/hospital/medplum-server.ts) in a process of its own. In a deployment the hospital's FHIR
 * server is a separate system; the bench (src/bench/http.ts) runs it here so that the node and the
 * hospital do not share one event loop.
 *
 * Usage: `node src/hospital/medplum-main.ts ['{"name":"h1","port":0,...}']` — the optional argument
 * is JSON with any of `name`, `host`, `port`, `validate`, `allowUpdateCreate`, `systemHistory`,
 * `bodyLimitBytes` ({@link MedplumHospitalOptions}).
 *
 * Once listening it prints one line to stdout, `{"url":"http://127.0.0.1:PORT/fhir","port":PORT,"pid":N}`,
 * and nothing else there. It closes the server and exits 0 when its stdin ends (the parent exited
 * or closed the pipe, so it never outlives the parent), on SIGTERM or on SIGINT. Bad options or a
 * port that cannot be bound: a message on stderr and exit code 2 or 1.
 */
import { startMedplumHospital } from './medplum-server.ts';
import type { MedplumHospitalOptions } from './medplum-server.ts';

/** The options the command line may set, and their JSON types. */
const ALLOWED: Record<string, 'string' | 'number' | 'boolean'> = {
  name: 'string',
  host: 'string',
  port: 'number',
  validate: 'boolean',
  allowUpdateCreate: 'boolean',
  systemHistory: 'boolean',
  bodyLimitBytes: 'number',
};

/**
 * Parses the options argument.
 * @param arg - JSON object text, or undefined for the defaults.
 * @returns The options.
 * @throws Error naming the first unknown option or wrongly typed value.
 */
function parseOptions(arg: string | undefined): MedplumHospitalOptions {
  if (arg === undefined || arg === '') return {};
  const parsed: unknown = JSON.parse(arg);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('options must be a JSON object');
  for (const [k, v] of Object.entries(parsed)) {
    const type = ALLOWED[k];
    if (type === undefined) throw new Error(`unknown option ${k}`);
    if (typeof v !== type) throw new Error(`option ${k} must be a ${type}`);
  }
  return parsed as MedplumHospitalOptions;
}

let options: MedplumHospitalOptions;
try {
  options = parseOptions(process.argv[2]);
} catch (err) {
  process.stderr.write(`medplum-main: ${(err as Error).message}\n`);
  process.exit(2);
}

try {
  const hospital = await startMedplumHospital(options);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    hospital.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  process.stdout.write(`${JSON.stringify({ url: hospital.url, port: hospital.port, pid: process.pid })}\n`);
} catch (err) {
  process.stderr.write(`medplum-main: cannot start: ${(err as { code?: string }).code ?? (err as Error).message}\n`);
  process.exit(1);
}
