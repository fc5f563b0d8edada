// Builds vmsnap's Temporal workers from their dependencies: the main queue (workflows, image
// record, task state) and the host queue (pause, convert, resume, upload, discovery).
import { NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { createHostActivities, createMainActivities, createSlotActivities, type ActivityDeps } from '../activities/index.js';
import { syncInventory } from '../activities/inventory.js';
import type { Config } from '../shared/config.js';
import { hostSlotTaskQueue, hostTaskQueue } from '../shared/names.js';
import { temporalConnectionOptions } from '../shared/temporal-config.js';
import { activityLogAttributes, expectNoWorkflows } from './observability.js';
import { ensureReconcileSchedule } from './reconcile-schedule.js';
import { watchAbandonedPauses } from './pause-watch.js';
import { workflowBundle } from './workflow-bundle.js';
import type { Client } from '@temporalio/client';

export type WorkerRole = 'main' | 'host';

export async function connect(temporal: Config['temporal']): Promise<NativeConnection> {
  return NativeConnection.connect(temporalConnectionOptions(temporal));
}

export interface RunningWorkers {
  /** Resolves when every worker has stopped. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startWorkers(opts: {
  connection: NativeConnection;
  namespace: string;
  /** Main task queue (config temporal.taskQueue). */
  taskQueue: string;
  roles: WorkerRole[];
  deps: ActivityDeps;
  discoveryIntervalMs: number;
  /** With the host role: how often to look for guests paused by a run that is gone (0: never). */
  pauseWatchIntervalMs?: number;
  /** With the host role: snapshots this host runs at once. */
  maxConcurrentSnapshots: number;
  /** With the host role: long polls on each of the host's queues (config hostPollers). */
  hostPollers: number;
  /** With the main role: keep the reconciler's schedule at this interval (0: none). */
  reconcile?: { client: Client; intervalMs: number };
}): Promise<RunningWorkers> {
  const { connection, namespace, deps } = opts;
  let discovery: NodeJS.Timeout | undefined;
  let stopPauseWatch = () => undefined as void;
  const createMain = async (): Promise<Worker[]> => [
    await Worker.create({
      connection,
      namespace,
      taskQueue: opts.taskQueue,
      workflowBundle: await workflowBundle(),
      activities: createMainActivities(deps),
      interceptors: { activity: [activityLogAttributes] },
    }),
  ];
  const createHost = async (): Promise<Worker[]> => {
    const taskQueue = hostTaskQueue(deps.host);
    // Activities only: the workflows run on the main queue.
    expectNoWorkflows(taskQueue);
    expectNoWorkflows(hostSlotTaskQueue(deps.host));
    const created = [
      await Worker.create({
        connection,
        namespace,
        taskQueue,
        activities: createHostActivities(deps),
        interceptors: { activity: [activityLogAttributes] },
        // Heartbeats carry cancellation: without this they are throttled to 80% of the heartbeat
        // timeout, and a cancelled copy (or a blown pause budget) would keep a guest paused longer.
        maxHeartbeatThrottleInterval: '1s',
        // Few: each open poll counts against the frontend's limit that the whole fleet shares.
        activityTaskPollerBehavior: { type: 'simple-maximum', maximum: opts.hostPollers },
      }),
      await Worker.create({
        connection,
        namespace,
        taskQueue: hostSlotTaskQueue(deps.host),
        activities: createSlotActivities(deps),
        // The limit itself: the worker runs no more slot holders than this at once.
        maxConcurrentActivityTaskExecutions: opts.maxConcurrentSnapshots,
        maxHeartbeatThrottleInterval: '1s',
        activityTaskPollerBehavior: { type: 'simple-maximum', maximum: Math.min(opts.hostPollers, opts.maxConcurrentSnapshots) },
      }),
    ];
    await deps.store.registerHost(deps.host, taskQueue);
    await syncInventory(deps);
    // Keep the inventory true as VMs come, go and move; a snapshot's lookup also asks on a miss.
    discovery = setInterval(() => {
      Promise.all([deps.store.registerHost(deps.host, taskQueue), syncInventory(deps)]).catch((err: Error) =>
        Runtime.instance().logger.error('instance discovery failed', { host: deps.host, error: err.message }),
      );
    }, opts.discoveryIntervalMs);
    stopPauseWatch = watchAbandonedPauses(deps, opts.pauseWatchIntervalMs ?? 2000);
    return created;
  };
  // Side by side: the main worker's start is mostly the workflow thread's, the host's is libvirt's.
  const workers = (await Promise.all([opts.roles.includes('main') ? createMain() : [], opts.roles.includes('host') ? createHost() : []])).flat();
  const startSchedule = opts.roles.includes('main') && opts.reconcile && opts.reconcile.intervalMs > 0 ? opts.reconcile : undefined;
  // Workers also stop on their own (SIGTERM, SIGINT): discovery must stop with them.
  const running = Promise.all(workers.map((w) => w.run()));
  // The schedule triggers a reconcile at once: only now is a worker polling for it.
  if (startSchedule) await ensureReconcileSchedule(startSchedule.client, opts.taskQueue, startSchedule.intervalMs);
  const done = running.then(
    () => {
      clearInterval(discovery);
      stopPauseWatch();
    },
    (err: unknown) => {
      clearInterval(discovery);
      stopPauseWatch();
      throw err;
    },
  );
  return {
    done,
    async shutdown() {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await done;
    },
  };
}
