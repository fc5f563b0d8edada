// Worker entry point: `tsx src/worker/main.ts [--role main|host|all]`. One host runs both roles;
// in a fleet, one main worker anywhere and a host worker on each hypervisor, next to libvirt.
import { parseArgs } from 'node:util';
import { loadConfig } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { Runtime } from '@temporalio/worker';
import { installRuntime } from './observability.js';
import { startVmsnapWorker } from './vmsnap-worker.js';
import type { WorkerRole } from './workers.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { role: { type: 'string', default: 'all' } } });
  const roles: WorkerRole[] = values.role === 'all' ? ['main', 'host'] : [values.role as WorkerRole];
  if (!roles.every((r) => r === 'main' || r === 'host')) throw new Error(`--role must be main, host or all (got "${values.role}")`);

  const config = loadConfig();
  installRuntime({ logLevel: config.logLevel, metricsAddress: config.metricsAddress });
  const worker = await startVmsnapWorker(config, { roles, keepReconcileSchedule: true });
  Runtime.instance().logger.info('vmsnap worker started', {
    roles,
    host: config.host,
    temporal: config.temporal.address,
    glance: worker.glanceUrl,
    identity: worker.identity,
    taskQueue: config.temporal.taskQueue,
    metrics: config.metricsAddress ? `http://${config.metricsAddress}/metrics` : 'off',
  });
  await worker.done;
}

// Exit 5 for a bad setting, as the CLI does: a service manager need not restart what cannot work.
main().catch((err: Error) => {
  console.error(`vmsnap worker: ${err.message}`);
  process.exit(err instanceof VmsnapError && err.code === 'ConfigError' ? 5 : 1);
});
