// Per-host concurrency limit, as Nova's max_concurrent_snapshots: holding a slot is an activity
// on the host's slot task queue, whose worker runs at most N of them at once. The activity tells
// its snapshot it may go on, then holds the slot until the snapshot cancels it. A terminated
// snapshot or a dead worker ends the activity too (heartbeats), so no slot is ever leaked.
import { Context } from '@temporalio/activity';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import { inspectInstance, type InspectInput, type SlotAcquired } from './inspection.js';

/**
 * The slot holders running in this process, by owner. The host worker runs in the same process as
 * the slot worker: its step `releaseSnapshotSlot` ends a holder at once, where a cancel reaches the
 * holder only with its next heartbeat (up to a second, on every snapshot's critical path).
 */
const holders = new Map<string, () => void>();

/** The host step that lets go of a snapshot's slot; false when no holder of it runs in this process. */
export function slotReleaseActivities() {
  return {
    async releaseSnapshotSlot(owner: string): Promise<boolean> {
      const release = holders.get(owner);
      release?.();
      return release !== undefined;
    },
  };
}

export function slotActivities({ workflows, hypervisor }: Pick<ActivityDeps, 'workflows' | 'hypervisor'>) {
  return {
    async holdSnapshotSlot(input: { owner: string; inspect: InspectInput }): Promise<void> {
      // The snapshot's next step would read the instance on this host: read now, it comes with
      // the slot (one trip through Temporal less). Failing that, the snapshot asks itself.
      const inspection = await inspectInstance(hypervisor, input.inspect).catch(() => undefined);
      const acquired: SlotAcquired = inspection ? { inspection } : {};
      await workflows.signalSlotAcquired(input.owner, acquired);
      const stop = keepHeartbeating(() => ({ holding: input.owner }), 1000);
      const released = new Promise<void>((resolve) => holders.set(input.owner, resolve));
      try {
        // Ends when the snapshot lets go of the slot: released by its host step, or cancelled.
        await Promise.race([Context.current().cancelled, released]);
      } finally {
        holders.delete(input.owner);
        stop();
      }
    },
  };
}
