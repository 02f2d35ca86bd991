/**
 * Finding a Redis for the demo and bench: `REDIS_URL`, else 127.0.0.1:6379, else a `redis-server`
 * from PATH started on a free port (stopped again by `stop()`), else a clear error.
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';

/** A Redis to use, and how to let it go. */
export interface RedisHandle {
  url: string;
  /** Where it came from, for the report. */
  source: 'REDIS_URL' | 'default' | 'spawned';
  stop(): Promise<void>;
}

async function ping(url: string): Promise<boolean> {
  const r = new Redis(url, { lazyConnect: true, connectTimeout: 1000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  r.on('error', () => {});
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/**
 * Finds or starts a Redis.
 * @param env - environment; `REDIS_URL` is used as is when set.
 * @throws Error with set-up advice when no Redis can be reached or started.
 */
export async function resolveRedis(env: NodeJS.ProcessEnv = process.env): Promise<RedisHandle> {
  if (env.REDIS_URL) {
    if (!(await ping(env.REDIS_URL))) throw new Error(`REDIS_URL=${env.REDIS_URL.replace(/\/\/[^@]*@/, '//***@')} does not answer PING`);
    return { url: env.REDIS_URL, source: 'REDIS_URL', stop: async () => {} };
  }
  const def = 'redis://127.0.0.1:6379';
  if (await ping(def)) return { url: def, source: 'default', stop: async () => {} };
  const port = await freePort();
  const child = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const spawnError = await new Promise<Error | undefined>((resolve) => {
    child.once('error', (err) => resolve(err));
    setTimeout(() => resolve(undefined), 300);
  });
  const url = `redis://127.0.0.1:${port}`;
  if (!spawnError) {
    for (let i = 0; i < 30; i++) {
      if (await ping(url)) {
        return {
          url,
          source: 'spawned',
          stop: async () => {
            child.kill('SIGTERM');
          },
        };
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill('SIGKILL');
  }
  throw new Error(
    'No Redis found: set REDIS_URL, or run one on 127.0.0.1:6379 ' +
      '(Debian/Ubuntu: `apt-get install redis-server`, then `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no`).',
  );
}
