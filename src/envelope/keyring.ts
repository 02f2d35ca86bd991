/**
 * Peers' public keys, reloadable at run time: a node learns a peer's rotated keys by re-reading
 * the peers' public key files (docs/envelope.md §7 "Rotation procedure", §15), on SIGHUP or
 * `POST /admin/reload`, without a restart.
 *
 * The keyring hands out ONE {@link NodePublicKeys} object per peer for the life of the process and
 * updates that object in place on reload. Whoever holds it (Tide's peer config and its
 * kid → key map, the crypto pool calls that copy it per message) sees the new keys at the next
 * seal/open, with no other wiring. A reload is all-or-nothing: every file is read and validated
 * first (format, lengths, kid = hash of the key, node id), and only if all pass are the objects
 * updated, synchronously, so no seal or open ever sees a mix.
 */
import { KeyFileError } from './errors.ts';
import { keyIdOf, readPublicKeys } from './keys.ts';
import type { NodePublicKeys } from './keys.ts';

/** One configured peer: its node id and the path of its `<nodeId>.public.json`. */
export interface PeerKeyFile {
  nodeId: string;
  publicKeyFile: string;
}

/** What one {@link PeerKeyring.reload} changed. */
export interface KeyringReloadResult {
  /** Peers whose published kids changed, with the old and new kids (no key bytes). */
  changed: { nodeId: string; kemKeyId: { from: string; to: string }; sigKeyIds: { from: string[]; to: string[] } }[];
  /** Peers whose files were re-read and are unchanged. */
  unchanged: string[];
}

function sigKids(k: NodePublicKeys): string[] {
  return [k.sigKeyId, ...(k.additionalSigKeys ?? []).map((a) => a.kid)];
}

/** See module doc. */
export class PeerKeyring {
  readonly #files: readonly PeerKeyFile[];
  readonly #keys = new Map<string, NodePublicKeys>();
  readonly #read: (path: string) => Promise<NodePublicKeys>;

  private constructor(files: readonly PeerKeyFile[], read: (path: string) => Promise<NodePublicKeys>) {
    this.#files = files;
    this.#read = read;
  }

  /**
   * Reads every peer's public key file once.
   * @param files - Peers (distinct node ids) and their public key files (`tidegate-node-public/1` or `/2`).
   * @param read - File reader, default {@link readPublicKeys} (injectable for tests of failure paths).
   * @returns The keyring.
   * @throws {@link KeyFileError} for an invalid file, a file of another node, or a duplicate peer;
   *   the Node.js fs error for an unreadable file.
   */
  static async load(files: readonly PeerKeyFile[], read: (path: string) => Promise<NodePublicKeys> = readPublicKeys): Promise<PeerKeyring> {
    const ids = new Set<string>();
    for (const f of files) {
      if (ids.has(f.nodeId)) throw new KeyFileError(`peer ${f.nodeId} is listed twice`);
      ids.add(f.nodeId);
    }
    const ring = new PeerKeyring([...files.map((f) => ({ ...f }))], read);
    for (const [nodeId, keys] of await ring.#readAll()) ring.#keys.set(nodeId, keys);
    return ring;
  }

  async #readAll(): Promise<Map<string, NodePublicKeys>> {
    const out = new Map<string, NodePublicKeys>();
    for (const f of this.#files) {
      const keys = await this.#read(f.publicKeyFile);
      if (keys.nodeId !== f.nodeId) throw new KeyFileError(`public key file ${f.publicKeyFile} is for node ${keys.nodeId}, not ${f.nodeId}`);
      if (keys.kemKeyId !== keyIdOf(keys.kemPublicKey) || keys.sigKeyId !== keyIdOf(keys.sigPublicKey)) {
        throw new KeyFileError(`public key file ${f.publicKeyFile}: key ids do not match the keys`);
      }
      out.set(f.nodeId, keys);
    }
    return out;
  }

  /**
   * The live public keys of `nodeId`: the same object for the life of the keyring, updated in place by {@link reload}.
   * @param nodeId - Peer node id.
   * @returns Its keys, or `undefined` for an unknown peer.
   */
  get(nodeId: string): NodePublicKeys | undefined {
    return this.#keys.get(nodeId);
  }

  /** A map of node id → live public keys (the objects of {@link get}); a new Map each call. */
  peers(): Map<string, NodePublicKeys> {
    return new Map(this.#keys);
  }

  /**
   * Re-reads every peer's public key file and, if ALL are valid, updates the live key objects in
   * place (current X-Wing key, current ML-DSA-65 key, `next` ML-DSA-65 keys). If any file fails,
   * nothing changes and the error is thrown: a half-updated keyring is never visible.
   *
   * @returns Which peers' kids changed (ids only, never key bytes).
   * @throws {@link KeyFileError} or the fs error of the first bad file; the keyring is then unchanged.
   */
  async reload(): Promise<KeyringReloadResult> {
    const fresh = await this.#readAll();
    const result: KeyringReloadResult = { changed: [], unchanged: [] };
    // synchronous from here on: no seal/open can interleave with a partial update
    for (const [nodeId, next] of fresh) {
      const live = this.#keys.get(nodeId);
      if (live === undefined) continue; // cannot happen: the file list is fixed
      const before = { kem: live.kemKeyId, sig: sigKids(live) };
      live.kemKeyId = next.kemKeyId;
      live.kemPublicKey = next.kemPublicKey;
      live.sigKeyId = next.sigKeyId;
      live.sigPublicKey = next.sigPublicKey;
      if (next.additionalSigKeys !== undefined && next.additionalSigKeys.length > 0) live.additionalSigKeys = next.additionalSigKeys;
      else delete live.additionalSigKeys;
      const after = { kem: live.kemKeyId, sig: sigKids(live) };
      if (before.kem === after.kem && before.sig.join() === after.sig.join()) result.unchanged.push(nodeId);
      else result.changed.push({ nodeId, kemKeyId: { from: before.kem, to: after.kem }, sigKeyIds: { from: before.sig, to: after.sig } });
    }
    return result;
  }
}
