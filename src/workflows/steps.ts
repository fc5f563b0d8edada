// What the saga workflows (snapshot, restore) share: their steps on the main and host queues, each
// with a one-line summary for the Web UI, and the workflow failure typed like its cause.
// Deterministic code only.
import { ActivityFailure, ApplicationFailure, TimeoutFailure, isCancellation, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { HostActivities, MainActivities } from '../activities/index.js';
import type { FailureType } from '../shared/failures.js';

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
