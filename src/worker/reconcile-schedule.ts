// The reconciler runs on a Temporal Schedule (one per main task queue), and once at main worker
// start so that a snapshot abandoned before a restart is undone at once, not a period later.
import { ScheduleAlreadyRunning, ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import { reconcileWorkflowId } from '../shared/names.js';

export async function ensureReconcileSchedule(client: Client, taskQueue: string, intervalMs: number): Promise<void> {
  const scheduleId = reconcileWorkflowId(taskQueue);
  const spec = { intervals: [{ every: intervalMs }] };
  const action = { type: 'startWorkflow' as const, workflowType: 'reconcile', taskQueue, workflowId: scheduleId, args: [] };
  try {
    await client.schedule.create({ scheduleId, spec, action, policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1m' } });
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
    await client.schedule.getHandle(scheduleId).update((previous) => ({ ...previous, spec, action }));
  }
  await client.schedule.getHandle(scheduleId).trigger(ScheduleOverlapPolicy.SKIP);
}
