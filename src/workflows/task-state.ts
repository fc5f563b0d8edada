// The instance's task state as one run holds it: taken from None by compare-and-swap (Nova's
// expected_task_state), moved on step by step, and given back with a fault and an event when the
// run fails. Action events are recorded under the same owner. Deterministic code only.
import { workflowInfo } from '@temporalio/workflow';
import { faultCode, type Action } from './failures.js';
import type { Compensations } from './saga.js';
import { onMainLocal, type Steps } from './steps.js';
import type { Tracker } from './tracker.js';
import type { TaskState } from '../store/store.js';

/** The instance action its events and faults are recorded under, as Nova names them. */
const NOVA_ACTION: Record<Action, string> = { Snapshot: 'createImage', Restore: 'rebuild' };

export class TaskStateHolder {
  private taken = false;

  constructor(
    private readonly run: {
      action: Action;
      instanceId: string;
      /** `<workflow id>/<run id>`: the task state's owner and the events' request id. */
      owner: string;
      steps: Steps;
      track: Tracker<string>;
      /** Details every fault and event of the run carries (the image id). */
      details: Record<string, unknown>;
      /** The Nova action its events are recorded under when not the action's own (createBackup). */
      novaAction?: string;
    },
  ) {}

  /** None → `first`; InstanceBusy when another task holds the instance, and nothing changed. */
  async take(first: TaskState): Promise<void> {
    await this.move(null, first);
    this.taken = true;
  }

  async move(expected: TaskState | null, next: TaskState | null): Promise<void> {
    const { instanceId, owner, steps, track } = this.run;
    await onMainLocal(steps.store, `task state ${expected ?? 'None'} → ${next ?? 'None'}`).setTaskState({ instanceId, expected, next, owner });
    track.taskState(next);
  }

  /** The last move, after which the run is done with the instance. */
  async finish(expected: TaskState): Promise<void> {
    await this.move(expected, null);
    await this.event('finish', this.run.details);
  }

  event(event: string, details: Record<string, unknown>): Promise<void> {
    const { action, instanceId, owner, steps } = this.run;
    return onMainLocal(steps.store, `record ${event} event`).recordInstanceEvent({
      instanceId,
      event,
      requestId: owner,
      details,
      action: this.run.novaAction ?? NOVA_ACTION[action],
    });
  }

  /** Compensation's end: task state None (if this run still holds it), and, if it held it, a fault and an error event. */
  async release(result: unknown, undo: Compensations): Promise<void> {
    const { action, instanceId, owner, steps, track, details } = this.run;
    await undo.attempt('reset task state', () => onMainLocal(steps.store, 'compensation: task state → None').releaseTaskState({ instanceId, owner }));
    track.taskState(null);
    if (!this.taken) return;
    const code = faultCode(result, action);
    const { workflowId, runId } = workflowInfo();
    await undo.attempt('record fault', () =>
      onMainLocal(steps.store, 'record instance fault').recordInstanceFault({
        instanceId,
        code,
        message: track.progress.error ?? code,
        details: { workflowId, runId, ...details, ...(action === 'Restore' ? { action: NOVA_ACTION[action] } : {}) },
      }),
    );
    await undo.attempt('record event', () => this.event('error', { ...details, code }));
  }
}
