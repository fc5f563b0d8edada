// Every way a vmsnap request can fail, once: whether a retry can help, the CLI's exit code and what
// the operator should do. Activities, workflows, the client, the CLI and the tests all read it.
// Imported by workflow code: no Node modules here, only deterministic data and functions.
import { ApplicationFailure, CancelledFailure, TerminatedFailure, TimeoutFailure } from '@temporalio/common';

/** The CLI's exit codes (`vmsnap --help` prints them). */
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

export interface FailureKind {
  /**
   * Whether the same call may succeed later: true (network blip, 5xx, busy service), false (no
   * retry can fix it: the workflow stops at once), or 'transient' (the thrower knows: a locked
   * store file is worth another try, a bad password file is not).
   */
  retryable: boolean | 'transient';
  /** The CLI's exit code when a command ends with this failure. */
  exit: ExitCode;
  /** What the operator can do about it. */
  hint: string;
}

const never = (exit: ExitCode, hint: string): FailureKind => ({ retryable: false, exit, hint });
const later = (hint: string): FailureKind => ({ retryable: true, exit: EXIT.failed, hint });

/** The failures activities and drivers throw (as VmsnapError); each becomes a Temporal failure type. */
export const ERRORS = {
  InvalidInput: never(EXIT.usage, 'correct the request as the message says; nothing was changed'),
  InstanceNotFound: never(EXIT.notFound, 'check the UUID or name (virsh list --all on its host, vmsnap instances)'),
  InstanceBusy: never(EXIT.busy, 'wait for the running snapshot or task to end (vmsnap status), then try again'),
  InstanceInvalidState: never(EXIT.failed, 'bring the instance into a state the request allows (running, paused or shut off), or ask for another mode'),
  DiskNotFound: never(EXIT.failed, "check the instance's disks (virsh domblklist --details): each one to copy must be a local file or block device"),
  ConvertFailed: later('qemu-img could not read or write the disk through every retry: check the host storage, then snapshot again'),
  ImageCorrupt: never(
    EXIT.failed,
    'the message says what is damaged: an instance disk qemu-img check finds damaged, repair it (qemu-img check -r) before the next snapshot; ' +
      'a copy or an upload that does not match, check the host storage and snapshot again; an image whose bytes do not match its Glance ' +
      'checksum, restore from another image',
  ),
  CopyLost: never(EXIT.failed, 'the host restarted between the copy of the disk and its upload, so the copy may be torn: nothing was uploaded; snapshot again'),
  ImageNotFound: never(EXIT.notFound, 'check the image id in Glance (openstack image show)'),
  ImageConflict: never(EXIT.failed, 'the image id is taken in Glance: start a new snapshot, which picks a new id'),
  ImageServiceError: {
    retryable: false,
    exit: EXIT.failed,
    hint: 'Glance refused the request: check the role, quota and image properties the message names',
  },
  ImageStuck: never(
    EXIT.failed,
    'Glance kept the image saving after an upload was cut off, each time the snapshot made a new one: check glance-api, its log and its store, ' +
      'then snapshot again',
  ),
  ImageServiceUnavailable: later('Glance stayed unreachable or busy through every retry: check that glance-api runs and can be reached, then snapshot again'),
  IdentityServiceUnavailable: later('Keystone stayed unreachable or busy through every retry: check that it runs and can be reached, then try again'),
  HypervisorError: later('libvirt or QEMU failed through every retry: check libvirtd and the instance on its host, then try again'),
  NoSpace: never(
    EXIT.failed,
    'the message names the dir, the space needed and what is free: free that much there (snapshots: VMSNAP_SNAPSHOTS_DIR on the host, or point it at ' +
      'a larger disk), then try again',
  ),
  ConfigError: never(EXIT.unavailable, 'correct the setting the message names, in the environment or the file VMSNAP_CONFIG_FILE names'),
  StoreError: {
    retryable: 'transient',
    exit: EXIT.unavailable,
    hint: 'check the store (VMSNAP_STORE_URL): a locked or unreachable store is retried, a bad setting is not',
  },
} as const satisfies Record<string, FailureKind>;
export type ErrorCode = keyof typeof ERRORS;

/** Failure types of a workflow as a whole (what ended it), and of the client. */
export const OUTCOMES = {
  PauseBudgetExceeded: never(EXIT.failed, 'the copy outlasted VMSNAP_PAUSE_BUDGET_MS: raise it, or snapshot live (mode live or auto)'),
  SnapshotFailed: never(EXIT.failed, 'see the message; vmsnap undid its work, snapshot again once the cause is fixed'),
  SnapshotTimedOut: never(EXIT.failed, "a step timed out: check that the instance's host worker is running"),
  RestoreFailed: never(EXIT.failed, 'see the message; vmsnap put the instance back as it was, restore again once the cause is fixed'),
  RestoreTimedOut: never(EXIT.failed, "a step timed out: check that the instance's host worker is running"),
  Cancelled: never(EXIT.failed, 'vmsnap undid its work (guest state, temp files, unfinished image); start a new one with vmsnap snapshot'),
  Terminated: never(
    EXIT.failed,
    'a guest it had paused runs again within seconds (its host worker resumes it, VMSNAP_PAUSE_WATCH_MS); the reconciler removes its unfinished ' +
      'image and frees the task state within a minute (VMSNAP_RECONCILE_INTERVAL_MS): see vmsnap instances, then snapshot again',
  ),
  TimedOut: never(EXIT.failed, 'the workflow ran out of time: check the workers, then start again'),
  SnapshotNotFound: never(EXIT.notFound, 'check the instance or workflow id (vmsnap status, vmsnap list)'),
  RestoreNotFound: never(EXIT.notFound, 'check the instance UUID or name (vmsnap restore list)'),
  ScheduleNotFound: never(EXIT.notFound, 'check the name (vmsnap schedule list)'),
  ScheduleExists: never(EXIT.usage, 'pick another name, or delete the schedule first'),
  TemporalUnavailable: never(EXIT.unavailable, 'is the Temporal server running, and TEMPORAL_ADDRESS right?'),
  StoreUnavailable: never(EXIT.unavailable, 'check VMSNAP_STORE_URL and that the store is up'),
} as const satisfies Record<string, FailureKind>;
export type OutcomeType = keyof typeof OUTCOMES;
export type FailureType = ErrorCode | OutcomeType;

export const FAILURES: Record<FailureType, FailureKind> = { ...ERRORS, ...OUTCOMES };

/** The kind of a failure type, if it is one of the table's. */
export function knownFailure(type: string | undefined): FailureKind | undefined {
  return type !== undefined && Object.hasOwn(FAILURES, type) ? FAILURES[type as FailureType] : undefined;
}

/** The kind of a failure type; an unknown type (a newer worker's) is a failed request. */
export function failureKind(type: string | undefined): FailureKind {
  return knownFailure(type) ?? OUTCOMES.SnapshotFailed;
}

/** Types no retry can fix: retry policies stop at once on these (nonRetryableErrorTypes). */
export const PERMANENT_FAILURE_TYPES: FailureType[] = (Object.keys(FAILURES) as FailureType[]).filter((type) => FAILURES[type].retryable === false);

/**
 * The failure type of what ended a workflow or child: its ApplicationFailure type, or what ended it
 * (Cancelled, Terminated, TimedOut); `otherwise` for anything else.
 */
export function failureTypeOfCause(cause: unknown, otherwise: FailureType = 'SnapshotFailed'): string {
  if (cause instanceof ApplicationFailure) return cause.type ?? otherwise;
  if (cause instanceof CancelledFailure) return 'Cancelled';
  if (cause instanceof TerminatedFailure) return 'Terminated';
  if (cause instanceof TimeoutFailure) return 'TimedOut';
  return otherwise;
}
