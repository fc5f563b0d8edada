// One process of the simulated fleet (npm run bench -- --section fleet): several host workers,
// each with its own host name, host queues and simulated hypervisor, sharing this process's
// Temporal connection, Keystone session and store pool, as one hypervisor's worker would hold
// its own. Settings come as the worker's usual environment plus:
//   FLEET_HOSTS      comma-separated host names
//   FLEET_DIR        where each host's simulated instances live (<dir>/<host>/)
//   FLEET_COPY_MS    how long one simulated copy takes
import { Runtime } from '@temporalio/worker';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TemporalWorkflowLookup } from '../src/activities/workflow-lookup.js';
import { connectClient } from '../src/client/snapshots.js';
import { connectCloud } from '../src/drivers/cloud.js';
import * as qemuImg from '../src/drivers/qemu-img.js';
import { loadConfig } from '../src/shared/config.js';
import { createStore } from '../src/store/index.js';
import { buildDeps } from '../src/worker/deps.js';
import { installRuntime } from '../src/worker/observability.js';
import { connect, startWorkers, type RunningWorkers } from '../src/worker/workers.js';
import { SimulatedHypervisor } from './lib/sim-hypervisor.js';

installRuntime({ logLevel: 'WARN' });
const env = process.env;
const hosts = (env.FLEET_HOSTS ?? '').split(',').filter(Boolean);
const dir = env.FLEET_DIR ?? '';
const copyMs = Number(env.FLEET_COPY_MS ?? '1000');
if (!hosts.length || !dir) throw new Error('FLEET_HOSTS and FLEET_DIR must be set');

const config = loadConfig(env);
const cloud = await connectCloud(config);
// A small pool: ten such processes and the main worker share one PostgreSQL with Temporal.
const store = createStore(config, { maxConnections: 4 });
const [, connection, client] = await Promise.all([store.migrate(), connect(config.temporal), connectClient(config.temporal)]);
const running: RunningWorkers[] = [];
for (const host of hosts) {
  const sim = new SimulatedHypervisor({ host, dir: join(dir, host), copyMs });
  // The cold path copies with the real qemu-img (a small real file); the copy's time is simulated.
  const diskTool = {
    ...qemuImg,
    convert: (opts: qemuImg.ConvertOptions) =>
      sim.copying(async () => {
        await qemuImg.convert(opts);
        await sleep(copyMs, undefined, opts.signal ? { signal: opts.signal } : undefined);
      }),
  };
  const deps = buildDeps({ ...config, host, snapshotsDir: join(dir, host, 'snapshots') }, store, cloud, {
    workflows: new TemporalWorkflowLookup(client),
    hypervisor: sim,
    diskTool,
  });
  running.push(
    await startWorkers({
      connection,
      namespace: config.temporal.namespace,
      taskQueue: config.temporal.taskQueue,
      roles: ['host'],
      deps,
      discoveryIntervalMs: config.discoveryIntervalMs,
      pauseWatchIntervalMs: config.pauseWatchIntervalMs,
      maxConcurrentSnapshots: config.maxConcurrentSnapshots,
      hostPollers: config.hostPollers,
    }),
  );
}
Runtime.instance().logger.warn(`fleet process ready: ${hosts.length} hosts`, { hosts: hosts.join(',') });
console.log(`fleet process ready: ${hosts.length} hosts`);

const stop = async () => {
  await Promise.all(running.map((r) => r.shutdown()));
  await client.connection.close();
  await connection.close();
  await store.close();
  await cloud.close();
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
