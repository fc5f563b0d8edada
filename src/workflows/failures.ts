// A workflow's failures: typed like their cause (InstanceBusy, ImageServiceError, ...), so that
// clients can switch on them, and worded for the operator. Deterministic code only.
import { ActivityFailure, ApplicationFailure, TimeoutFailure, isCancellation } from '@temporalio/workflow';
import type { FailureType } from '../shared/failures.js';
import { describeProblems, type InputProblem } from '../shared/validation.js';

/** What went wrong, in the words of the activity's own failure. */
export function messageOf(err: unknown): string {
  const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
  return cause instanceof Error ? cause.message : String(cause);
}

/** A failure no retry can fix. */
export function failure(type: FailureType, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true });
}

/** Bad input is refused before anything is done, with every problem named. */
export function refuseInvalid(problems: InputProblem[], what: string): void {
  if (!problems.length) return;
  throw ApplicationFailure.create({
    type: 'InvalidInput',
    message: `invalid ${what}: ${describeProblems(problems)}`,
    nonRetryable: true,
    details: [problems],
  });
}

export type Action = 'Snapshot' | 'Restore';

/**
 * The workflow's failure: typed like its cause; `action` names the generic types (SnapshotFailed,
 * SnapshotTimedOut, RestoreFailed, ...). A cancellation stays one.
 */
export function typedFailure(err: unknown, action: Action): unknown {
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

/** The fault code of a workflow's failure, as the instance fault records it. */
export function faultCode(result: unknown, action: Action): string {
  if (result instanceof ApplicationFailure) return result.type ?? `${action}Failed`;
  return 'Cancelled';
}
