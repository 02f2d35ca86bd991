#!/usr/bin/env node
// `tidegate` command: runs src/cli/main.ts with a Node that strips TypeScript types (>= 22.18).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const launcher = fileURLToPath(new URL('../scripts/node.mjs', import.meta.url));
const main = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const child = spawn(process.execPath, [launcher, main, ...process.argv.slice(2)], { stdio: 'inherit' });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
child.on('exit', (code) => process.exit(code ?? 1));
