// Per-host concurrency limit, as Nova's max_concurrent_snapshots: holding a slot is an activity
// on the host's slot task queue, whose worker runs at most N of them at once. The activity tells
// its snapshot it may go on, then holds the slot until the snapshot cancels it. A terminated
// snapshot or a dead worker ends the activity too (heartbeats), so no slot is ever leaked.
import { Context } from '@temporalio/activity';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';

export function slotActivities({ workflows }: Pick<ActivityDeps, 'workflows'>) {
  return {
    async holdSnapshotSlot(input: { owner: string }): Promise<void> {
      await workflows.signalSlotAcquired(input.owner);
      const stop = keepHeartbeating(() => ({ holding: input.owner }), 1000);
      try {
        await Context.current().cancelled; // rejects when the snapshot lets go of the slot
      } finally {
        stop();
      }
    },
  };
}
