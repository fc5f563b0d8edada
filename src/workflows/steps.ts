// How every workflow calls its steps: one table of timeouts and retries, and the proxies that give
// each step a one-line summary for the Web UI. Deterministic code only.
import {
  ActivityCancellationType,
  proxyActivities,
  proxyLocalActivities,
  type ActivityOptions,
  type LocalActivityOptions,
  type RetryPolicy,
} from '@temporalio/workflow';
import type { HostActivities, MainActivities, SlotActivities } from '../activities/index.js';
import type { SnapshotSettings } from '../shared/config.js';
import { PERMANENT_FAILURE_TYPES } from '../shared/failures.js';
import { hostSlotTaskQueue, hostTaskQueue } from '../shared/names.js';

/** Every step's retries back off to 30 s, and never retry a failure no retry can fix. */
const BACKOFF: RetryPolicy = {
  initialInterval: '1s',
  backoffCoefficient: 2,
  maximumInterval: '30s',
  nonRetryableErrorTypes: PERMANENT_FAILURE_TYPES,
};

function tries(maximumAttempts?: number): RetryPolicy {
  return maximumAttempts ? { ...BACKOFF, maximumAttempts } : BACKOFF;
}

// Waiting for a cancelled step to end means its effect is over before the undo starts (qemu-img is
// dead before the resume, an image's creation over before its deletion).
const WAIT = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED;

/**
 * Store steps (inventory, task state, faults, events) and the Glance record: local activities, run
 * by the workflow's own worker inside the workflow task, recorded and retried like any step
 * without two trips through the server each. For steps of seconds, not hours.
 */
export const STORE_STEP: LocalActivityOptions = { startToCloseTimeout: '30s', retry: tries(10) };

/** The options of every step of the snapshot and restore workflows, from the workers' settings (recorded in history). */
export function stepOptions(settings: SnapshotSettings, host: string) {
  const taskQueue = hostTaskQueue(host);
  const heartbeatTimeout = settings.heartbeatTimeoutMs;
  // Glance calls retry as the settings say (VMSNAP_GLANCE_RETRY_*).
  const imageRetry: RetryPolicy = {
    ...BACKOFF,
    maximumAttempts: settings.imageServiceRetry.maximumAttempts,
    initialInterval: settings.imageServiceRetry.initialIntervalMs,
    maximumInterval: settings.imageServiceRetry.maximumIntervalMs,
  };
  // Stopping may wait out the graceful shutdown; starting waits for the guest (and its agent).
  const powerMs = settings.restoreShutdownTimeoutMs + settings.restoreStartTimeoutMs + 60_000;
  return {
    store: STORE_STEP,
    /** A Glance call on the main queue. */
    image: { startToCloseTimeout: '60s', retry: imageRetry } satisfies ActivityOptions,
    /**
     * Compensation's delete of an unfinished image: one try, bounded. What it cannot delete (Glance
     * gone) is the reconciler's sweep's, rather than a reason to hold the task state and the slot.
     */
    imageCleanup: { startToCloseTimeout: '10s', retry: tries(1) } satisfies ActivityOptions,
    /** The image record, made locally: a cancelled snapshot deletes it, so its creation must be over by then. */
    imageRecord: { startToCloseTimeout: '60s', retry: imageRetry, cancellationType: WAIT } satisfies LocalActivityOptions,
    // The host steps of seconds heartbeat from their start (activities/index.ts): a task lost with
    // its host worker is tried again after the heartbeat timeout, not the minute.
    quick: { taskQueue, startToCloseTimeout: '60s', heartbeatTimeout, retry: tries(5) } satisfies ActivityOptions,
    copy: { taskQueue, startToCloseTimeout: '6h', heartbeatTimeout, cancellationType: WAIT, retry: tries(3) } satisfies ActivityOptions,
    upload: { taskQueue, startToCloseTimeout: '6h', heartbeatTimeout, cancellationType: WAIT, retry: imageRetry } satisfies ActivityOptions,
    /** The download is retried like any Glance call; a cancel waits until its files are removed. */
    download: { taskQueue, startToCloseTimeout: '6h', heartbeatTimeout, cancellationType: WAIT, retry: imageRetry } satisfies ActivityOptions,
    /**
     * A guest we paused must run again: retried until it succeeds (the step treats a gone or shut-off
     * instance as done, so it cannot spin forever on a missing VM).
     */
    resume: { taskQueue, startToCloseTimeout: '60s', heartbeatTimeout, retry: tries() } satisfies ActivityOptions,
    /** Cleanup is bounded: if the host is gone for good, the reconciler removes what is left. */
    cleanup: { taskQueue, scheduleToCloseTimeout: '10m', startToCloseTimeout: '60s', heartbeatTimeout, retry: tries() } satisfies ActivityOptions,
    /** One try: when it cannot, the slot is let go of by the cancel (HostSlot.letGo). */
    letGo: { taskQueue, startToCloseTimeout: '10s', retry: tries(1) } satisfies ActivityOptions,
    /** Holds one of the host's snapshot slots until cancelled; a lost holder is started again. */
    slot: {
      taskQueue: hostSlotTaskQueue(host),
      startToCloseTimeout: '24h',
      heartbeatTimeout,
      cancellationType: WAIT,
      retry: tries(),
    } satisfies ActivityOptions,
    /** Stop and start a guest: heartbeats move a dead worker's step on after the heartbeat timeout. */
    power: { taskQueue, startToCloseTimeout: powerMs, heartbeatTimeout, retry: tries(5) } satisfies ActivityOptions,
    /** The guest must get its disk back and run again: retried until it does, or the host is gone for good (the reconciler's then). */
    undoRestore: { taskQueue, startToCloseTimeout: powerMs, heartbeatTimeout, scheduleToCloseTimeout: '30m', retry: tries() } satisfies ActivityOptions,
  };
}

export type Steps = ReturnType<typeof stepOptions>;

/**
 * The reconciler's and the schedules' steps: they run without the workers' settings. A host that
 * does not answer within its schedule-to-close timeout is tried again on the next round.
 */
export const HOUSEKEEPING = {
  main: { startToCloseTimeout: '60s', retry: { ...tries(3), maximumInterval: '10s' } } satisfies ActivityOptions,
  lookup: { startToCloseTimeout: '30s', retry: tries(5) } satisfies ActivityOptions,
  /** Listing a schedule's images and checking each candidate is a handful of Glance calls. */
  retention: { startToCloseTimeout: '2m', retry: tries(5) } satisfies ActivityOptions,
  /** Discovery on a host whose worker is down must not hold up the lookup for long. */
  discovery: (host: string) => ({ taskQueue: hostTaskQueue(host), scheduleToCloseTimeout: '15s', retry: tries(2) }) satisfies ActivityOptions,
  host: (host: string) =>
    ({
      taskQueue: hostTaskQueue(host),
      scheduleToCloseTimeout: '2m',
      startToCloseTimeout: '60s',
      retry: { ...tries(), maximumInterval: '10s' },
    }) satisfies ActivityOptions,
  /**
   * Undoing a restore may wait out a guest's shutdown and start, hence 5 minutes; it heartbeats from
   * its start, so a dead worker's undo is retried after the heartbeat timeout (a fixed 30 s: the
   * reconciler has no worker settings; the step beats every second).
   */
  undoRestore: (host: string) =>
    ({ ...HOUSEKEEPING.host(host), startToCloseTimeout: '5m', heartbeatTimeout: '30s', scheduleToCloseTimeout: '10m' }) satisfies ActivityOptions,
};

/** A host-queue step with a one-line summary for the Web UI. */
export function onHost(options: ActivityOptions, summary: string) {
  return proxyActivities<HostActivities>({ ...options, summary });
}

/** A main-queue step with a one-line summary for the Web UI. */
export function onMain(options: ActivityOptions, summary: string) {
  return proxyActivities<MainActivities>({ ...options, summary });
}

/** A short main-queue step (see STORE_STEP) as a local activity. */
export function onMainLocal(options: LocalActivityOptions, summary: string) {
  return proxyLocalActivities<MainActivities>({ ...options, summary });
}

/** A step of the host's slot queue. */
export function onSlots(options: ActivityOptions, summary: string) {
  return proxyActivities<SlotActivities>({ ...options, summary });
}
