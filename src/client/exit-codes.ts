// The CLI's exit codes: defined once, printed by `vmsnap --help`, mapped from errors here.
import { WorkflowFailedError, isGrpcServiceError } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure, TerminatedFailure, TimeoutFailure } from '@temporalio/common';
import { VmsnapError } from '../shared/errors.js';
import { ClientError } from './errors.js';

export const EXIT = {
  ok: 0,
  /** The snapshot failed, was cancelled, terminated or timed out. */
  failed: 1,
  /** Bad command line or bad request (InvalidInput). */
  usage: 2,
  /** No such instance (InstanceNotFound) or no such snapshot. */
  notFound: 3,
  /** The instance has a snapshot or another task in progress (InstanceBusy). */
  busy: 4,
  /** Temporal or the store cannot be reached, or a setting is wrong (ConfigError). */
  unavailable: 5,
  /** Interrupted (Ctrl-C) while waiting: the snapshot itself goes on. */
  interrupted: 130,
} as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

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
  switch (type) {
    case 'InvalidInput': return EXIT.usage;
    case 'InstanceNotFound': return EXIT.notFound;
    case 'InstanceBusy': return EXIT.busy;
    case 'ConfigError': return EXIT.unavailable;
    default: return EXIT.failed;
  }
}

/** The failure type of a snapshot that ended badly: its ApplicationFailure type, or what ended it. */
export function failureTypeOf(err: WorkflowFailedError): string {
  const cause = err.cause;
  if (cause instanceof ApplicationFailure) return cause.type ?? 'SnapshotFailed';
  if (cause instanceof CancelledFailure) return 'Cancelled';
  if (cause instanceof TerminatedFailure) return 'Terminated';
  if (cause instanceof TimeoutFailure) return 'TimedOut';
  return 'SnapshotFailed';
}

// gRPC status codes that mean "cannot talk to Temporal", as opposed to "Temporal said no".
const UNREACHABLE = new Set([4 /* DEADLINE_EXCEEDED */, 14 /* UNAVAILABLE */, 16 /* UNAUTHENTICATED */, 7 /* PERMISSION_DENIED */]);

export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof ClientError) {
    if (err.code === 'Terminated') return EXIT.failed;
    return err.code === 'SnapshotNotFound' || err.code === 'RestoreNotFound' ? EXIT.notFound : EXIT.unavailable;
  }
  if (err instanceof VmsnapError) return err.code === 'StoreError' ? EXIT.unavailable : exitCodeOfType(err.code);
  if (err instanceof WorkflowFailedError) return exitCodeOfType(failureTypeOf(err));
  if (isGrpcServiceError(err) && UNREACHABLE.has(err.code)) return EXIT.unavailable;
  return EXIT.failed;
}
