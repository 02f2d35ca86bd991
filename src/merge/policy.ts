/**
 * The merge policy: which child elements identify an item of a repeating element.
 * Loaded from `profiles/merge-policy.json`, which interface engineers may edit.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';

/** Parsed merge policy. `arrayKeys[elementName]` lists the identifying child element names. */
export interface MergePolicy {
  readonly version: 1;
  readonly arrayKeys: Readonly<Record<string, readonly string[]>>;
}

const PolicySchema = z.object({
  $comment: z.string().optional(),
  version: z.literal(1),
  arrayKeys: z.record(z.string().regex(/^[A-Za-z][A-Za-z0-9_]*$/), z.array(z.string().regex(/^[A-Za-z][A-Za-z0-9_]*$/)).min(1)),
});

/** The default policy file, `profiles/merge-policy.json` at the repository root. */
export const DEFAULT_POLICY_PATH = new URL('../../profiles/merge-policy.json', import.meta.url);

/**
 * Reads and validates a merge-policy file.
 * @param path - file path or URL of the JSON policy.
 * @returns The frozen policy.
 * @throws Error naming the file and the invalid field when the file is missing or malformed.
 */
export function loadMergePolicy(path: string | URL = DEFAULT_POLICY_PATH): MergePolicy {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`Cannot read merge policy ${String(path)}: ${(err as Error).message}`);
  }
  const parsed = PolicySchema.safeParse(raw);
  if (!parsed.success) {
    throw new Error(`Invalid merge policy ${String(path)}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return Object.freeze({ version: 1, arrayKeys: Object.freeze({ ...parsed.data.arrayKeys }) });
}
