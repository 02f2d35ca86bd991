/**
 * Figure 2: seal+sign and verify+open per tidegate-env/1 envelope, for a Tide `updates` plaintext
 * (src/tide/codec.ts `encodeUpdates`) holding (a) one real Yjs create update of a Synthea Patient,
 * (b) one Patient edit update, and (c) a batch of 200 updates; envelope size and overhead. Then a
 * breakdown of one seal/open into its primitives (X-Wing, ML-DSA-65, AES-256-GCM), measured side by
 * side in the same loop, and seal/open on the calling thread vs through an {@link EnvelopeCryptoPool}
 * worker thread (as Tide does), alternating in one loop.
 */
import { randomUUID } from 'node:crypto';
import { gcm } from '@noble/ciphers/aes.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';
import { EnvelopeCryptoPool, generateNodeKeys, open, seal, signatureInput } from '../envelope/index.ts';
import { encodeUpdates } from '../tide/index.ts';
import type { ResourceUpdate } from '../tide/index.ts';
import { nextTurn, ratio, summarize } from './stats.ts';
import type { Summary } from './stats.ts';

/** Figures of one payload. Durations in ms, sizes in bytes. */
export interface EnvelopeCase {
  /** What the plaintext holds. */
  label: string;
  updates: number;
  /** Tide plaintext bytes (`encodeUpdates`). */
  plaintextBytes: number;
  /** Serialized envelope (ASCII JSON) bytes. */
  envelopeBytes: number;
  /** envelopeBytes − plaintextBytes. */
  overheadBytes: number;
  /** envelopeBytes / plaintextBytes. */
  expansion: number | null;
  /** `seal` (X-Wing encaps, HKDF, AES-GCM, ML-DSA-65 sign, base64url). */
  seal: Summary;
  /** `open` (strict parse, ML-DSA-65 verify, X-Wing decaps, HKDF, AES-GCM decrypt). */
  open: Summary;
}

/** Primitive costs of one seal + open of the single-update payload, ms, all from the same loop. */
export interface EnvelopeBreakdown {
  /** `seal` and `open` of the same payload, in the same loop as the primitives. */
  seal: Summary;
  open: Summary;
  xwingEncapsulate: Summary;
  mldsaSign: Summary;
  aesGcmEncrypt: Summary;
  mldsaVerify: Summary;
  xwingDecapsulate: Summary;
  aesGcmDecrypt: Summary;
  /** Median of the signature primitive / median of `seal` (resp. `open`), same loop (0..1). */
  signShareOfSeal: number | null;
  verifyShareOfOpen: number | null;
}

/**
 * The same payload sealed and opened directly on the calling thread and through an
 * {@link EnvelopeCryptoPool} of one worker thread (what Tide uses), alternating in one loop, ms.
 */
export interface EnvelopePoolComparison {
  label: string;
  directSeal: Summary;
  poolSeal: Summary;
  directOpen: Summary;
  poolOpen: Summary;
  /** Median ratios pool / direct. */
  sealRatio: number | null;
  openRatio: number | null;
}

/** Figure 2 results. */
export interface EnvelopeFigures {
  cases: EnvelopeCase[];
  breakdown: EnvelopeBreakdown;
  pool: EnvelopePoolComparison;
}

/** Inputs of {@link runEnvelopeBench}: the payloads to seal. */
export interface EnvelopeInputs {
  /** A typical (median-size) Patient create update. */
  patientCreate: ResourceUpdate;
  /** A typical Patient edit update. */
  patientEdit: ResourceUpdate;
  /** The batch (200 updates). */
  batch: ResourceUpdate[];
  /** Description of the batch's contents, for the report. */
  batchLabel: string;
}

/** Iteration counts of {@link runEnvelopeBench}. */
export interface EnvelopeBenchOptions {
  warmup?: number;
  /** Iterations for single-update payloads. Default 100. */
  iterations?: number;
  /** Iterations for the batch. Default 20. */
  batchIterations?: number;
  /** Iterations of the primitive breakdown. Default 50. */
  breakdownIterations?: number;
  /** Iterations of the direct vs worker-pool comparison. Default 50. */
  poolIterations?: number;
  /** Progress callback (stderr). */
  progress?: (msg: string) => void;
}

async function measureCase(label: string, updates: ResourceUpdate[], warmup: number, iterations: number): Promise<EnvelopeCase> {
  const a = generateNodeKeys('hospital-1');
  const b = generateNodeKeys('hospital-2');
  const peers = new Map([[a.publicKeys.nodeId, a.publicKeys]]);
  const plaintext = encodeUpdates(updates);
  const resources = [...new Set(updates.map((u) => u.key))];
  const sealT: number[] = [];
  const openT: number[] = [];
  let envelopeBytes = 0;
  for (let i = 0; i < warmup + iterations; i++) {
    let t = performance.now();
    const env = seal({ kind: 'updates', messageId: randomUUID(), resources, plaintext }, a.secretKeys, b.publicKeys);
    const ts = performance.now() - t;
    t = performance.now();
    const opened = open(env, b.secretKeys, peers);
    const to = performance.now() - t;
    if (opened.plaintext.length !== plaintext.length) throw new Error('envelope bench: open returned a different plaintext');
    envelopeBytes = env.length;
    if (i >= warmup) {
      sealT.push(ts);
      openT.push(to);
    }
    await nextTurn();
  }
  return {
    label,
    updates: updates.length,
    plaintextBytes: plaintext.length,
    envelopeBytes,
    overheadBytes: envelopeBytes - plaintext.length,
    expansion: ratio(envelopeBytes, plaintext.length),
    seal: summarize(sealT),
    open: summarize(openT),
  };
}

async function measureBreakdown(update: ResourceUpdate, warmup: number, iterations: number): Promise<EnvelopeBreakdown> {
  const a = generateNodeKeys('hospital-1');
  const b = generateNodeKeys('hospital-2');
  const peers = new Map([[a.publicKeys.nodeId, a.publicKeys]]);
  const plaintext = encodeUpdates([update]);
  const sealT: number[] = [];
  const openT: number[] = [];
  const aad = new TextEncoder().encode(`{"protected-header-stand-in":"${'x'.repeat(400)}"}`);
  const ctx = new TextEncoder().encode('tidegate-env/1');
  const out = { enc: [] as number[], sign: [] as number[], gcmE: [] as number[], verify: [] as number[], dec: [] as number[], gcmD: [] as number[] };
  for (let i = 0; i < warmup + iterations; i++) {
    let t = performance.now();
    const env = seal({ kind: 'updates', messageId: randomUUID(), resources: [update.key], plaintext }, a.secretKeys, b.publicKeys);
    const tSeal = performance.now() - t;
    t = performance.now();
    open(env, b.secretKeys, peers);
    const tOpen = performance.now() - t;
    t = performance.now();
    const { cipherText: ek, sharedSecret } = ml_kem768_x25519.encapsulate(b.publicKeys.kemPublicKey);
    const tEnc = performance.now() - t;
    const key = sharedSecret.slice(0, 32);
    const iv = randomBytes(12);
    t = performance.now();
    const ct = gcm(key, iv, aad).encrypt(plaintext);
    const tGcmE = performance.now() - t;
    const msg = signatureInput(aad, ek, iv, ct);
    t = performance.now();
    const sig = ml_dsa65.sign(msg, a.secretKeys.sigSecretKey, { context: ctx });
    const tSign = performance.now() - t;
    t = performance.now();
    const ok = ml_dsa65.verify(sig, msg, a.publicKeys.sigPublicKey, { context: ctx });
    const tVerify = performance.now() - t;
    t = performance.now();
    const ss2 = ml_kem768_x25519.decapsulate(ek, b.secretKeys.kemSecretKey);
    const tDec = performance.now() - t;
    t = performance.now();
    const pt2 = gcm(ss2.slice(0, 32), iv, aad).decrypt(ct);
    const tGcmD = performance.now() - t;
    if (!ok || pt2.length !== plaintext.length) throw new Error('envelope bench: primitive round trip failed');
    if (i >= warmup) {
      sealT.push(tSeal);
      openT.push(tOpen);
      out.enc.push(tEnc);
      out.sign.push(tSign);
      out.gcmE.push(tGcmE);
      out.verify.push(tVerify);
      out.dec.push(tDec);
      out.gcmD.push(tGcmD);
    }
    await nextTurn();
  }
  const sealS = summarize(sealT);
  const openS = summarize(openT);
  const sign = summarize(out.sign);
  const verify = summarize(out.verify);
  return {
    seal: sealS,
    open: openS,
    xwingEncapsulate: summarize(out.enc),
    mldsaSign: sign,
    aesGcmEncrypt: summarize(out.gcmE),
    mldsaVerify: verify,
    xwingDecapsulate: summarize(out.dec),
    aesGcmDecrypt: summarize(out.gcmD),
    signShareOfSeal: ratio(sign.p50, sealS.p50),
    verifyShareOfOpen: ratio(verify.p50, openS.p50),
  };
}

async function measurePool(label: string, update: ResourceUpdate, warmup: number, iterations: number): Promise<EnvelopePoolComparison> {
  const a = generateNodeKeys('hospital-1');
  const b = generateNodeKeys('hospital-2');
  const peers = new Map([[a.publicKeys.nodeId, a.publicKeys]]);
  const plaintext = encodeUpdates([update]);
  const pool = new EnvelopeCryptoPool(1);
  const t = { ds: [] as number[], ps: [] as number[], do: [] as number[], po: [] as number[] };
  try {
    for (let i = 0; i < warmup + iterations; i++) {
      const input = { kind: 'updates', messageId: randomUUID(), resources: [update.key], plaintext };
      let t0 = performance.now();
      const env = seal(input, a.secretKeys, b.publicKeys);
      const ds = performance.now() - t0;
      t0 = performance.now();
      open(env, b.secretKeys, peers);
      const dOpen = performance.now() - t0;
      t0 = performance.now();
      const env2 = await pool.seal({ ...input, messageId: randomUUID() }, a.secretKeys, b.publicKeys);
      const ps = performance.now() - t0;
      t0 = performance.now();
      const opened = await pool.open(env2, b.secretKeys, peers);
      const pOpen = performance.now() - t0;
      if (opened.plaintext.length !== plaintext.length) throw new Error('envelope bench: pool open returned a different plaintext');
      if (i >= warmup) {
        t.ds.push(ds);
        t.ps.push(ps);
        t.do.push(dOpen);
        t.po.push(pOpen);
      }
      await nextTurn();
    }
  } finally {
    await pool.close();
  }
  const s = { directSeal: summarize(t.ds), poolSeal: summarize(t.ps), directOpen: summarize(t.do), poolOpen: summarize(t.po) };
  return { label, ...s, sealRatio: ratio(s.poolSeal.p50, s.directSeal.p50), openRatio: ratio(s.poolOpen.p50, s.directOpen.p50) };
}

/**
 * Runs figure 2.
 * @param inputs - the payloads (see {@link EnvelopeInputs}).
 * @param opts - iteration counts and a progress callback.
 * @returns {@link EnvelopeFigures}: one case per payload plus the primitive breakdown.
 * @throws Error when a sealed envelope does not open to the same plaintext.
 */
export async function runEnvelopeBench(inputs: EnvelopeInputs, opts: EnvelopeBenchOptions = {}): Promise<EnvelopeFigures> {
  const warmup = opts.warmup ?? 5;
  const iterations = opts.iterations ?? 100;
  const progress = opts.progress ?? (() => {});
  progress(`  seal/open: 1 Patient create update × ${iterations}`);
  const single = await measureCase('1 Patient create update', [inputs.patientCreate], warmup, iterations);
  progress(`  seal/open: 1 Patient edit update × ${iterations}`);
  const edit = await measureCase('1 Patient edit update', [inputs.patientEdit], warmup, iterations);
  const bi = opts.batchIterations ?? 20;
  progress(`  seal/open: batch of ${inputs.batch.length} × ${bi}`);
  const batch = await measureCase(inputs.batchLabel, inputs.batch, 3, bi);
  const biter = opts.breakdownIterations ?? 50;
  progress(`  primitives × ${biter}`);
  const breakdown = await measureBreakdown(inputs.patientCreate, warmup, biter);
  const piter = opts.poolIterations ?? 50;
  progress(`  direct vs worker pool × ${piter}`);
  const pool = await measurePool('1 Patient edit update', inputs.patientEdit, warmup, piter);
  return { cases: [single, edit, batch], breakdown, pool };
}
