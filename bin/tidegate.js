#!/usr/bin/env node
// `tidegate` command: runs src/cli/main.ts with a Node that strips TypeScript types (>= 22.18).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const launcher = fileURLToPath(new URL('../scripts/node.mjs', import.meta.url));
const main = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const r = spawnSync(process.execPath, [launcher, main, ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(r.status ?? 1);
