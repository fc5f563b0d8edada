// The CLI's exit codes, from the table of failures (src/shared/failures.ts): printed by
// `vmsnap --help`, mapped from errors here.
import { WorkflowFailedError, isGrpcServiceError } from '@temporalio/client';
import { VmsnapError } from '../shared/errors.js';
import { EXIT, OUTCOMES, failureKind, failureTypeOfCause, type ExitCode } from '../shared/failures.js';
import { ClientError, ScheduleError } from './errors.js';

export { EXIT, type ExitCode } from '../shared/failures.js';

export const EXIT_CODES_HELP = `Exit codes:
  0    ok
  ${EXIT.failed}    the snapshot failed, was cancelled, terminated or timed out
  ${EXIT.usage}    bad command line or bad request (InvalidInput)
  ${EXIT.notFound}    no such instance (InstanceNotFound), no such snapshot, restore or schedule, nothing running to cancel
  ${EXIT.busy}    the instance is busy: a snapshot or another task is in progress (InstanceBusy)
  ${EXIT.unavailable}    cannot reach Temporal or the store, or a bad setting (ConfigError)
  ${EXIT.interrupted}  interrupted while waiting (the snapshot goes on)`;

/** Exit code of a workflow failure type or error code. */
export function exitCodeOfType(type: string | undefined): ExitCode {
  return failureKind(type).exit;
}

/** The failure type of a snapshot that ended badly: its ApplicationFailure type, or what ended it. */
export function failureTypeOf(err: WorkflowFailedError): string {
  return failureTypeOfCause(err.cause);
}

// gRPC status codes that mean "cannot talk to Temporal", as opposed to "Temporal said no".
const UNREACHABLE = new Set([4 /* DEADLINE_EXCEEDED */, 14 /* UNAVAILABLE */, 16 /* UNAUTHENTICATED */, 7 /* PERMISSION_DENIED */]);

export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof ClientError || err instanceof VmsnapError || err instanceof ScheduleError) return exitCodeOfType(err.code);
  if (err instanceof WorkflowFailedError) return exitCodeOfType(failureTypeOf(err));
  if (isGrpcServiceError(err) && UNREACHABLE.has(err.code)) return OUTCOMES.TemporalUnavailable.exit;
  return EXIT.failed;
}
