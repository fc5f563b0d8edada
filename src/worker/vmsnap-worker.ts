// Everything one vmsnap worker process runs: the store, the connections to Temporal and the
// workers of its roles, started in order and closed in reverse. The entry point, the demo and
// the test harness all start workers through here.
import type { Client } from '@temporalio/client';
import type { ActivityDeps } from '../activities/index.js';
import { TemporalWorkflowLookup } from '../activities/workflow-lookup.js';
import { connectClient } from '../client/snapshots.js';
import type { Config } from '../shared/config.js';
import { createStore } from '../store/index.js';
import type { Store } from '../store/store.js';
import { buildDeps } from './deps.js';
import { connect, startWorkers, type WorkerRole } from './workers.js';

export interface VmsnapWorker {
  store: Store;
  client: Client;
  /** Resolves when the workers have stopped (shutdown() or a signal) and all is closed. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startVmsnapWorker(
  config: Config,
  opts: { roles: WorkerRole[]; overrides?: Partial<ActivityDeps>; keepReconcileSchedule?: boolean },
): Promise<VmsnapWorker> {
  const store = createStore(config);
  // Independent, so at once: start-up time is an operator's restart time.
  const [, connection, client] = await Promise.all([store.migrate(), connect(config.temporal), connectClient(config.temporal)]);
  const workers = await startWorkers({
    connection,
    namespace: config.temporal.namespace,
    taskQueue: config.temporal.taskQueue,
    roles: opts.roles,
    discoveryIntervalMs: config.discoveryIntervalMs,
    maxConcurrentSnapshots: config.maxConcurrentSnapshots,
    deps: buildDeps(config, store, { workflows: new TemporalWorkflowLookup(client), ...opts.overrides }),
    ...(opts.keepReconcileSchedule ? { reconcile: { client, intervalMs: config.reconcileIntervalMs } } : {}),
  });
  const done = workers.done.finally(async () => {
    await client.connection.close();
    await connection.close();
    await store.close();
  });
  return {
    store,
    client,
    done,
    async shutdown() {
      await workers.shutdown();
      await done;
    },
  };
}
