/**
 * Test harness for the FHIR API suites: a node's FhirService with a real Medplum stand-in hospital
 * behind a real HospitalClient and HospitalSync (no mocks), served by the express adapter.
 */
import pino from 'pino';
import { fhirApp } from '../src/fhir/express.ts';
import { FhirService } from '../src/fhir/service.ts';
import type { FhirServiceOptions } from '../src/fhir/service.ts';
import { Replica } from '../src/merge/replica.ts';
import { MemoryStore } from '../src/store/store.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { HospitalSync } from '../src/hospital/sync.ts';

export const FHIR = 'application/fhir+json';

/** A node without network gossip: updates are collected in `updates`. */
export interface Harness {
  app: ReturnType<typeof fhirApp>;
  service: FhirService;
  replica: Replica;
  updates: Array<{ key: string; update: Uint8Array }>;
  hospital?: MedplumHospital;
  client?: HospitalClient;
  sync?: HospitalSync;
  close(): Promise<void>;
}

/**
 * @param opts.hospital - start a Medplum hospital and wire search + sync to it.
 * @param opts.allowUpdateCreate - false: the hospital assigns its own ids (id map exercised).
 */
export async function makeHarness(opts: { hospital?: boolean; allowUpdateCreate?: boolean; service?: FhirServiceOptions } = {}): Promise<Harness> {
  const updates: Harness['updates'] = [];
  let hospital: MedplumHospital | undefined;
  let client: HospitalClient | undefined;
  let sync: HospitalSync | undefined;
  if (opts.hospital) {
    hospital = await startMedplumHospital({ allowUpdateCreate: opts.allowUpdateCreate ?? true });
    client = new HospitalClient({ baseUrl: hospital.url, timeoutMs: 5000 });
    sync = new HospitalSync(client, { backoffMs: 20, maxAttempts: 2 });
  }
  const s = sync;
  const replica = new Replica({
    nodeId: 'node-a',
    store: new MemoryStore(),
    policy: loadMergePolicy(),
    ...(s ? { onVersion: (key: string, v: Parameters<HospitalSync['enqueue']>[1]) => s.enqueue(key, v) } : {}),
  });
  const service = new FhirService(replica, (key, update) => updates.push({ key, update }), { ...(client ? { hospital: client } : {}), ...opts.service });
  return {
    app: fhirApp(service, pino({ level: 'silent' })),
    service,
    replica,
    updates,
    ...(hospital ? { hospital } : {}),
    ...(client ? { client } : {}),
    ...(sync ? { sync } : {}),
    async close() {
      await sync?.stop();
      await hospital?.close();
    },
  };
}
