#!/usr/bin/env node
// The `vmsnap` command: runs the TypeScript CLI (src/client/cli.ts) through tsx's loader in this
// process, so there is no build step and no second Node process to start.
import process from 'node:process';
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/client/cli.ts');
process.exitCode = await main(process.argv.slice(2));
