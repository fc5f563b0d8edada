// Errors of the client side that are not failures of a snapshot: nothing to act on, Temporal or the
// store out of reach. The workflow's own failures stay Temporal failures typed by ErrorCode.
import { OUTCOMES, type ExitCode } from '../shared/failures.js';

export type ClientErrorCode =
  /** No snapshot workflow matches the instance or workflow id (or none is running, for cancel). */
  | 'SnapshotNotFound'
  /** No restore or rollback workflow matches the instance or workflow id (or none is running, for cancel). */
  | 'RestoreNotFound'
  /** The followed snapshot was terminated (the message says what that left and when it is undone). */
  | 'Terminated'
  /** Temporal's frontend does not answer, or refused the connection. */
  | 'TemporalUnavailable'
  /** The store file (instance inventory) is missing or unreadable. */
  | 'StoreUnavailable';

export class ClientError extends Error {
  constructor(
    readonly code: ClientErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = code;
  }
}

export type ScheduleErrorCode = 'ScheduleNotFound' | 'ScheduleExists';

/** No such vmsnap schedule, or the name is taken. */
export class ScheduleError extends Error {
  constructor(
    readonly code: ScheduleErrorCode,
    message: string,
  ) {
    super(message);
    this.name = code;
  }

  /** The CLI's exit code: no such schedule is "not found"; a name taken is a bad request. */
  get exitCode(): ExitCode {
    return OUTCOMES[this.code].exit;
  }
}
