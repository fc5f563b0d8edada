// What the saga workflows (snapshot, restore) share: their steps on the main and host queues, each
// with a one-line summary for the Web UI, and the workflow failure typed like its cause.
// Deterministic code only.
import { ActivityFailure, ApplicationFailure, TimeoutFailure, isCancellation, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { HostActivities, MainActivities } from '../activities/index.js';
import type { SnapshotSettings } from '../shared/config.js';
import { PERMANENT_FAILURE_TYPES, type FailureType } from '../shared/failures.js';
import { hostTaskQueue } from '../shared/names.js';

/** Every step's retries: backing off to 30 s, never on a failure no retry can fix. */
export const RETRY = { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', nonRetryableErrorTypes: PERMANENT_FAILURE_TYPES };
export const STORE_STEP: ActivityOptions = { startToCloseTimeout: '30s', retry: { ...RETRY, maximumAttempts: 10 } };

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
    quick: { taskQueue, startToCloseTimeout: '60s', retry: { ...RETRY, maximumAttempts: 5 } } satisfies ActivityOptions,
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
    return ApplicationFailure.create({ type: cause.type ?? `${action}Failed`, message: cause.message, nonRetryable: true, details: cause.details ?? undefined, cause: err as Error });
  }
  if (cause instanceof TimeoutFailure) {
    return ApplicationFailure.create({ type: `${action}TimedOut`, message: `a step timed out (${cause.timeoutType}): is the host worker running?`, nonRetryable: true, cause: err as Error });
  }
  return failure(`${action}Failed`, (err as Error)?.message ?? String(err));
}
