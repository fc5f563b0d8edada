// Per-host concurrency limit, as Nova's max_concurrent_snapshots: holding a slot is an activity
// on the host's slot task queue, whose worker runs at most N of them at once. The activity tells
// its snapshot it may go on, then holds the slot until the snapshot cancels it. A terminated
// snapshot or a dead worker ends the activity too (heartbeats), so no slot is ever leaked.
import { Context } from '@temporalio/activity';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import { inspectInstance, type InspectInput, type SlotAcquired } from './power.js';

export function slotActivities({ workflows, hypervisor }: Pick<ActivityDeps, 'workflows' | 'hypervisor'>) {
  return {
    async holdSnapshotSlot(input: { owner: string; inspect?: InspectInput }): Promise<void> {
      // The snapshot's next step would read the instance on this host: read now, it comes with
      // the slot (one trip through Temporal less). Failing that, the snapshot asks itself.
      const acquired: SlotAcquired = {};
      if (input.inspect) {
        const inspection = await inspectInstance(hypervisor, input.inspect).catch(() => undefined);
        if (inspection) acquired.inspection = inspection;
      }
      await workflows.signalSlotAcquired(input.owner, acquired);
      const stop = keepHeartbeating(() => ({ holding: input.owner }), 1000);
      try {
        await Context.current().cancelled; // rejects when the snapshot lets go of the slot
      } finally {
        stop();
      }
    },
  };
}
