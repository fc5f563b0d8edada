#!/usr/bin/env node
// The `vmsnap` command: runs the compiled CLI (dist/client/cli/index.js). `npm run build` makes it, and
// scripts/setup runs the build whenever the sources changed.
import process from 'node:process';

let cli;
try {
  cli = await import('../dist/client/cli/index.js');
} catch (err) {
  if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !String(err.message).includes('dist/client/cli/index.js')) throw err;
  process.stderr.write('vmsnap: the compiled CLI (dist/) is missing: run `npm run build` (or ./scripts/setup) in the vmsnap directory\n');
  process.exit(1);
}
process.exitCode = await cli.main(process.argv.slice(2));
