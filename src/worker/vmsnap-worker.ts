// Everything one vmsnap worker process runs: the store, the connections to Temporal and the
// workers of its roles, started in order and closed in reverse. The entry point, the demo and
// the test harness all start workers through here.
import type { Client } from '@temporalio/client';
import { Runtime } from '@temporalio/worker';
import type { Caller } from '../drivers/identity.js';
import type { ActivityDeps } from '../activities/index.js';
import { TemporalWorkflowLookup } from '../activities/workflow-lookup.js';
import { connectClient } from '../client/snapshots.js';
import { connectCloud, type Cloud } from '../drivers/cloud.js';
import type { Config } from '../shared/config.js';
import { createStore } from '../store/index.js';
import type { Store } from '../store/store.js';
import { buildDeps } from './deps.js';
import { connect, startWorkers, type WorkerRole } from './workers.js';

export interface VmsnapWorker {
  store: Store;
  /** Where Glance is, and as whom vmsnap calls it (for the start-up line). */
  glanceUrl: string;
  identity: string;
  client: Client;
  /** Resolves when the workers have stopped (shutdown() or a signal) and all is closed. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

/** Token renewals are worth a line: an operator sees that they happen, and how often. */
function logRenewal({ expiresInMs, caller, renewal }: { expiresInMs: number; caller: Caller; renewal: boolean }): void {
  // The first token is part of start-up, which the start-up line reports.
  if (renewal)
    Runtime.instance().logger.info('identity: new Keystone token', {
      user: caller.userName,
      project: caller.projectName,
      validForS: Math.round(expiresInMs / 1000),
    });
}

export async function startVmsnapWorker(
  config: Config,
  opts: { roles: WorkerRole[]; overrides?: Partial<ActivityDeps>; keepReconcileSchedule?: boolean; cloud?: Cloud },
): Promise<VmsnapWorker> {
  // First the cloud: wrong credentials stop the worker before it touches anything else.
  const cloud = opts.cloud ?? (await connectCloud(config, { onToken: logRenewal }));
  const store = createStore(config);
  // Independent, so at once: start-up time is an operator's restart time.
  const [, connection, client] = await Promise.all([store.migrate(), connect(config.temporal), connectClient(config.temporal)]);
  const workers = await startWorkers({
    connection,
    namespace: config.temporal.namespace,
    taskQueue: config.temporal.taskQueue,
    roles: opts.roles,
    discoveryIntervalMs: config.discoveryIntervalMs,
    pauseWatchIntervalMs: config.pauseWatchIntervalMs,
    maxConcurrentSnapshots: config.maxConcurrentSnapshots,
    hostPollers: config.hostPollers,
    deps: buildDeps(config, store, cloud, { workflows: new TemporalWorkflowLookup(client), ...opts.overrides }),
    ...(opts.keepReconcileSchedule ? { reconcile: { client, intervalMs: config.reconcileIntervalMs } } : {}),
  });
  const done = workers.done.finally(async () => {
    await client.connection.close();
    await connection.close();
    await store.close();
    if (!opts.cloud) await cloud.close();
  });
  return {
    store,
    glanceUrl: cloud.glanceUrl,
    identity: cloud.identity.description,
    client,
    done,
    async shutdown() {
      await workers.shutdown();
      await done;
    },
  };
}
