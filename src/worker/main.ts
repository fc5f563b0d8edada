// Worker entry point: `tsx src/worker/main.ts [--role main|host|all]`. One host runs both roles;
// in a fleet, one main worker anywhere and a host worker on each hypervisor, next to libvirt.
import { parseArgs } from 'node:util';
import { loadConfig } from '../shared/config.js';
import { createStore } from '../store/index.js';
import { Runtime } from '@temporalio/worker';
import { TemporalWorkflowLookup } from '../activities/workflow-lookup.js';
import { connectClient } from '../client/snapshots.js';
import { buildDeps } from './deps.js';
import { installRuntime } from './observability.js';
import { connect, startWorkers, type WorkerRole } from './workers.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { role: { type: 'string', default: 'all' } } });
  const roles: WorkerRole[] = values.role === 'all' ? ['main', 'host'] : [values.role as WorkerRole];
  if (!roles.every((r) => r === 'main' || r === 'host')) throw new Error(`--role must be main, host or all (got "${values.role}")`);

  const config = loadConfig();
  installRuntime({ logLevel: config.logLevel, metricsAddress: config.metricsAddress });
  const store = createStore(config);
  await store.migrate();
  const connection = await connect(config.temporal);
  const client = await connectClient(config.temporal);
  const workers = await startWorkers({
    connection,
    namespace: config.temporal.namespace,
    taskQueue: config.temporal.taskQueue,
    roles,
    discoveryIntervalMs: config.discoveryIntervalMs,
    maxConcurrentSnapshots: config.maxConcurrentSnapshots,
    deps: buildDeps(config, store, { workflows: new TemporalWorkflowLookup(client) }),
    reconcile: { client, intervalMs: config.reconcileIntervalMs },
  });
  Runtime.instance().logger.info('vmsnap worker started', {
    roles,
    host: config.host,
    temporal: config.temporal.address,
    taskQueue: config.temporal.taskQueue,
    metrics: config.metricsAddress ? `http://${config.metricsAddress}/metrics` : 'off',
  });
  await workers.done;
  await client.connection.close();
  await connection.close();
  await store.close();
}

main().catch((err: Error) => {
  console.error(`vmsnap worker: ${err.message}`);
  process.exit(1);
});
