/**
 * Worker-thread side of {@link EnvelopeCryptoPool}: runs seal/open off the main event loop.
 * Messages: `{ id, op: 'seal', args: [input, sender, recipient] }` or
 * `{ id, op: 'open', args: [serialized, self, peers as [nodeId, keys][], options?] }`; replies
 * `{ id, ok: true, value }` or `{ id, ok: false, error: { name, code, message } }`.
 */
import { parentPort } from 'node:worker_threads';
import { open, seal } from './envelope.ts';
import type { NodePublicKeys, NodeSecretKeys } from './keys.ts';
import type { OpenOptions, SealInput } from './envelope.ts';

type Request =
  | { id: number; op: 'seal'; args: [SealInput, NodeSecretKeys, NodePublicKeys | NodePublicKeys[]] }
  | { id: number; op: 'open'; args: [string, NodeSecretKeys, Array<[string, NodePublicKeys]>, OpenOptions?] };

const port = parentPort;
if (!port) throw new Error('envelope worker must run in a worker thread');
port.on('message', (req: Request) => {
  try {
    const value = req.op === 'seal' ? seal(...req.args) : open(req.args[0], req.args[1], new Map(req.args[2]), req.args[3]);
    port.postMessage({ id: req.id, ok: true, value });
  } catch (err) {
    const e = err as { name?: string; code?: string; message?: string };
    port.postMessage({ id: req.id, ok: false, error: { name: e.name ?? 'Error', code: e.code, message: e.message ?? String(err) } });
  }
});
