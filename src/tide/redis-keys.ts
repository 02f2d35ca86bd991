/**
 * Redis housekeeping shared by the in-process network, the bench and the tests: deleting every key
 * under a prefix without blocking Redis (SCAN + DEL in pages, https://redis.io/docs/latest/commands/scan/).
 */
import type { Redis } from 'ioredis';

/**
 * Deletes every key matching `pattern`, one SCAN page (≤ 1,000 keys) at a time.
 * @param redis - a connected ioredis client.
 * @param pattern - a SCAN MATCH glob, e.g. `tidegate-test-1:*`.
 * @returns How many keys were deleted.
 * @throws Whatever ioredis throws when Redis is unreachable.
 */
export async function deleteKeysMatching(redis: Redis, pattern: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await redis.del(...keys);
  } while (cursor !== '0');
  return deleted;
}
