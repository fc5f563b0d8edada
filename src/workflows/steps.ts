// What the saga workflows (snapshot, restore) share: their steps on the main and host queues, each
// with a one-line summary for the Web UI, the compensation stack, and the workflow failure typed
// like its cause. Deterministic code only.
import {
  ActivityFailure,
  ApplicationFailure,
  TimeoutFailure,
  isCancellation,
  log,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  type ActivityOptions,
  type LocalActivityOptions,
} from '@temporalio/workflow';
import type { HostActivities, MainActivities } from '../activities/index.js';
import type { InstanceRecord } from '../store/store.js';
import type { SnapshotSettings } from '../shared/config.js';
import { PERMANENT_FAILURE_TYPES, type FailureType } from '../shared/failures.js';
import { hostTaskQueue } from '../shared/names.js';

/** Every step's retries: backing off to 30 s, never on a failure no retry can fix. */
export const RETRY = {
  initialInterval: '1s',
  backoffCoefficient: 2,
  maximumInterval: '30s',
  nonRetryableErrorTypes: PERMANENT_FAILURE_TYPES,
};
export const STORE_STEP: ActivityOptions = { startToCloseTimeout: '30s', retry: { ...RETRY, maximumAttempts: 10 } };
/** The same as a local activity: run by the workflow's own worker, with no round trip through the server. */
export const LOCAL_STORE_STEP: LocalActivityOptions = { startToCloseTimeout: '30s', retry: { ...RETRY, maximumAttempts: 10 } };

/** The steps both sagas take, from the worker's settings (recorded in history). */
export function commonSteps(settings: SnapshotSettings, host: string) {
  const taskQueue = hostTaskQueue(host);
  // Glance calls retry as the settings say (VMSNAP_GLANCE_RETRY_*).
  const imageRetry = {
    ...RETRY,
    maximumAttempts: settings.imageServiceRetry.maximumAttempts,
    initialInterval: settings.imageServiceRetry.initialIntervalMs,
    maximumInterval: settings.imageServiceRetry.maximumIntervalMs,
  };
  return {
    taskQueue,
    imageRetry,
    store: STORE_STEP,
    // Main-queue steps that talk to Glance run on the workflow's own task queue.
    image: { startToCloseTimeout: '60s', retry: imageRetry } satisfies ActivityOptions,
    // Heartbeats from its start (activities/index.ts): a task lost with its host worker is tried
    // again after the heartbeat timeout, not the minute.
    quick: {
      taskQueue,
      startToCloseTimeout: '60s',
      heartbeatTimeout: settings.heartbeatTimeoutMs,
      retry: { ...RETRY, maximumAttempts: 5 },
    } satisfies ActivityOptions,
    // Discovery on a host whose worker is down must not hold up the lookup for long.
    discovery: { taskQueue, scheduleToCloseTimeout: '15s', retry: { ...RETRY, maximumAttempts: 2 } } satisfies ActivityOptions,
  };
}

/** A host-queue step with a one-line summary for the Web UI. */
export function onHost(options: ActivityOptions, summary: string) {
  return proxyActivities<HostActivities>({ ...options, summary });
}
export function onMain(options: ActivityOptions, summary: string) {
  return proxyActivities<MainActivities>({ ...options, summary });
}
/**
 * A short main-queue step (a store write, a Glance record) as a local activity: the workflow's
 * worker runs it within the workflow task, so it costs the step itself, not two trips through
 * the server. Still recorded in history and retried; for steps of seconds, not hours.
 */
export function onMainLocal(options: LocalActivityOptions, summary: string) {
  return proxyLocalActivities<MainActivities>({ ...options, summary });
}

/**
 * Sets the workflow's current details (Web UI, `temporal workflow metadata`): one markdown
 * paragraph per entry. The Web UI (2.42) renders them in an iframe sized to the body's
 * scrollHeight, which leaves out the first paragraph's collapsed top margin, so the last ~14 px
 * were cut off: a trailing blank paragraph (a no-break space) takes that cut instead of the text.
 */
export function setDetails(paragraphs: string[]): void {
  setCurrentDetails([...paragraphs, '\u00a0'].join('\n\n'));
}

/**
 * The instance by UUID or name: the inventory first; on a miss, every host rediscovers (each with
 * the `discovery` options of its queue), then it is looked up again. Null if still unknown.
 */
export async function lookUpInstance(
  ref: string,
  store: ActivityOptions,
  discovery: (host: string) => ActivityOptions,
  local?: LocalActivityOptions,
): Promise<InstanceRecord | null> {
  const onStore = (summary: string) => (local ? onMainLocal(local, summary) : onMain(store, summary));
  const lookup = onStore(`look up instance ${ref}`);
  const instance = await lookup.findInstance(ref);
  if (instance) return instance;
  const hosts = await onStore('list hosts').listHosts();
  await Promise.allSettled(hosts.map((h) => onHost(discovery(h), `discover instances on ${h}`).discoverInstances()));
  return lookup.findInstance(ref);
}

export function instanceNotFound(ref: string): ApplicationFailure {
  return failure('InstanceNotFound', `no instance "${ref}" on any host known to vmsnap: check the UUID or name (virsh list --all on its host)`);
}

interface Compensation {
  what: string;
  undo: () => Promise<unknown>;
  guest: boolean;
  dropped: boolean;
}

/**
 * The saga's undo steps. Each is pushed as its step is scheduled, not when it completes: a step
 * counts from that moment, since its result may be lost while its effect is real. `run` undoes in
 * reverse order, except that what gives the guest back (thaw, resume) goes first of all: a paused
 * guest does not wait for cleanup. A step that is done with (the guest resumed, the image
 * verified) is dropped. An undo step that fails is logged and the others still run; what it
 * leaves is the reconciler's. Run it in a non-cancellable scope.
 */
export class Compensations {
  private readonly stack: Compensation[] = [];

  constructor(private readonly context: Record<string, unknown>) {}

  push(what: string, undo: () => Promise<unknown>, opts: { guest?: boolean } = {}): { drop(): void } {
    const entry: Compensation = { what, undo, guest: opts.guest ?? false, dropped: false };
    this.stack.push(entry);
    return {
      drop() {
        entry.dropped = true;
      },
    };
  }

  async run(): Promise<void> {
    const pending = this.stack.filter((c) => !c.dropped).reverse();
    for (const c of [...pending.filter((c) => c.guest), ...pending.filter((c) => !c.guest)]) await this.attempt(c.what, c.undo);
  }

  /** Runs one undo step; a failure is logged, not thrown. */
  async attempt(what: string, step: () => Promise<unknown>): Promise<void> {
    try {
      await step();
    } catch (e) {
      log.error(`compensation step failed: ${what}`, { ...this.context, error: (e as Error).message });
    }
  }
}

/** What went wrong, in the words of the activity's own failure. */
export function messageOf(err: unknown): string {
  const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
  return cause instanceof Error ? cause.message : String(cause);
}

export function failure(type: FailureType, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true });
}

/**
 * The workflow's failure: typed like its cause, so clients can switch on InstanceBusy etc.;
 * `action` names the generic types (SnapshotFailed, SnapshotTimedOut, RestoreFailed, ...).
 */
export function typedFailure(err: unknown, action: 'Snapshot' | 'Restore'): unknown {
  if (isCancellation(err)) return err;
  const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
  if (cause instanceof ApplicationFailure) {
    return ApplicationFailure.create({
      type: cause.type ?? `${action}Failed`,
      message: cause.message,
      nonRetryable: true,
      details: cause.details ?? undefined,
      cause: err as Error,
    });
  }
  if (cause instanceof TimeoutFailure) {
    return ApplicationFailure.create({
      type: `${action}TimedOut`,
      message: `a step timed out (${cause.timeoutType}): is the host worker running?`,
      nonRetryable: true,
      cause: err as Error,
    });
  }
  return failure(`${action}Failed`, (err as Error)?.message ?? String(err));
}
