// The instance's side of a snapshot in vmsnap's store: lookup, task state by compare-and-swap
// (Nova's expected_task_state), instance faults and action events.
import type { ActivityDeps } from './deps.js';
import { VmsnapError } from '../shared/errors.js';
import { ALL_TASK_STATES } from '../store/schema.js';
import type { InstanceRecord, TaskState } from '../store/store.js';

/** A host worker re-registers every discovery interval (15 s by default). */
const LIVE_HOST_WINDOW_MS = 10 * 60_000;

export interface TaskStateChange {
  instanceId: string;
  expected: TaskState | null;
  next: TaskState | null;
  /** The snapshot workflow's id: owner of the task state while it runs. */
  owner: string;
}

/**
 * Whether the change is made already, by us: the task state held by `owner`, at `next` or a state
 * after it (each action's states are in the order its run moves through them). None is no one's:
 * reached is made.
 */
function madeAlready(now: InstanceRecord | undefined, { next, owner }: TaskStateChange): boolean {
  if (!now) return false;
  if (next === null) return now.taskState === null;
  return now.taskOwner === owner && now.taskState !== null && ALL_TASK_STATES.indexOf(now.taskState) >= ALL_TASK_STATES.indexOf(next);
}

export function instanceStateActivities({ store, settings }: Pick<ActivityDeps, 'store' | 'settings'>) {
  return {
    async getSnapshotSettings() {
      return settings;
    },

    async findInstance(ref: string): Promise<InstanceRecord | null> {
      return (await store.findInstance(ref)) ?? null;
    },

    /** Hosts whose worker registered lately: a decommissioned host must not hold up lookups. */
    async listHosts(): Promise<string[]> {
      const since = Date.now() - LIVE_HOST_WINDOW_MS;
      return (await store.listHosts()).filter((h) => Date.parse(h.seenAt) >= since).map((h) => h.host);
    },

    async setTaskState(change: TaskStateChange): Promise<void> {
      if (await store.compareAndSwapTaskState(change.instanceId, change.expected, change.next, change.owner)) return;
      const now = await store.getInstance(change.instanceId);
      // A retry after a lost completion finds the change already made by us: that is success. So
      // does a rerun of an earlier step of ours (a workflow task that failed reruns its local
      // activities from its start, after later ones already moved the task state on).
      if (madeAlready(now, change)) return;
      const held = now?.taskState ?? 'None';
      throw new VmsnapError(
        'InstanceBusy',
        change.expected === null
          ? `instance ${change.instanceId} has a task in progress (task state ${held}): wait for it to finish, then try again`
          : `instance ${change.instanceId} task state changed under this snapshot (expected ${change.expected}, found ${held})`,
        { taskState: now?.taskState ?? null },
      );
    },

    /** Puts task state back to None if this snapshot still holds it. */
    async releaseTaskState(input: { instanceId: string; owner: string }): Promise<boolean> {
      return store.releaseTaskState(input.instanceId, input.owner);
    },

    async recordInstanceFault(fault: { instanceId: string; code: string; message: string; details: Record<string, unknown> }): Promise<void> {
      await store.recordFault(fault);
    },

    /** An action event; the action is createImage unless named (rebuild for a restore). */
    async recordInstanceEvent(event: {
      instanceId: string;
      event: string;
      requestId: string;
      details: Record<string, unknown>;
      action?: string;
    }): Promise<void> {
      await store.recordEvent({ ...event, action: event.action ?? 'createImage' });
    },
  };
}
