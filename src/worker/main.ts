// Worker entry point: `node dist/worker/main.js [--role main|host|all]` (compiled, `npm run
// build`), or `tsx src/worker/main.ts` from source. One host runs both roles; in a fleet, one main
// worker anywhere and a host worker on each hypervisor, next to libvirt.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { hostSlotTaskQueue, hostTaskQueue } from '../shared/names.js';
import { loadConfig } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { Runtime } from '@temporalio/worker';
import { installRuntime } from './observability.js';
import { startVmsnapWorker } from './vmsnap-worker.js';
import type { WorkerRole } from './workers.js';

/**
 * How long a stop may take. Temporal's runtime stops the workers on SIGTERM or SIGINT: running
 * activities are cancelled at once and report their attempt as failed, so the server retries them
 * on another worker without waiting for a heartbeat timeout, and then everything is closed. A
 * service manager restarting every host during an upgrade should not wait longer than this.
 */
const STOP_BOUND_MS = 1800;

/** Past the bound, whatever still runs or holds the event loop is named, and the process goes anyway. */
function boundTheStop(): void {
  const bound = () =>
    setTimeout(() => {
      Runtime.instance().logger.error('vmsnap worker: not stopped within the bound after the signal; exiting anyway', {
        boundMs: STOP_BOUND_MS,
        heldBy: process.getActiveResourcesInfo(),
      });
      process.exit(1);
    }, STOP_BOUND_MS).unref();
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, bound);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { role: { type: 'string', default: 'all' } } });
  const roles: WorkerRole[] = values.role === 'all' ? ['main', 'host'] : [values.role as WorkerRole];
  if (!roles.every((r) => r === 'main' || r === 'host')) throw new Error(`--role must be main, host or all (got "${values.role}")`);

  const config = loadConfig();
  installRuntime({ logLevel: config.logLevel, metricsAddress: config.metricsAddress });
  boundTheStop();
  const worker = await startVmsnapWorker(config, { roles, keepReconcileSchedule: true });
  // One line that says what this process is and where it points (never a secret).
  Runtime.instance().logger.info('vmsnap worker started', {
    version: packageVersion(),
    roles,
    host: config.host,
    queues: [
      ...(roles.includes('main') ? [config.temporal.taskQueue] : []),
      ...(roles.includes('host') ? [hostTaskQueue(config.host), hostSlotTaskQueue(config.host)] : []),
    ],
    temporal: config.temporal.address,
    namespace: config.temporal.namespace,
    ...(config.temporal.profile ? { temporalProfile: config.temporal.profile } : {}),
    tls: Boolean(config.temporal.tls),
    glance: worker.glanceUrl,
    identity: worker.identity,
    metrics: config.metricsAddress ? `http://${config.metricsAddress}/metrics` : 'off',
  });
  await worker.done;
}

/** package.json is two levels up from both src/worker and dist/worker. */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

// Exit 5 for a bad setting, as the CLI does: a service manager need not restart what cannot work.
main().catch((err: Error) => {
  console.error(`vmsnap worker: ${err.message}`);
  process.exit(err instanceof VmsnapError && err.code === 'ConfigError' ? 5 : 1);
});
