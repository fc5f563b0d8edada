// Starting a snapshot or a restore that answers only once it is accepted, as Nova's API answers
// 202 only once the task state is taken (409 otherwise): Temporal's update-with-start starts the
// workflow and asks its `accepted` update in one call, which the run answers once its task state is
// taken, or with the failure that refused it (InstanceBusy, InstanceNotFound, ...). The workflow id
// comes from the instance's UUID whatever the caller typed, so every entry point meets the same run.
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ApplicationFailure,
  WithStartWorkflowOperation,
  WorkflowExecutionAlreadyStartedError,
  WorkflowFailedError,
  WorkflowUpdateFailedError,
  type Client,
  type Workflow,
  type WorkflowHandle,
} from '@temporalio/client';
import { VmsnapError, type ErrorCode } from '../shared/errors.js';
import { ERRORS } from '../shared/failures.js';
import { ACCEPTED_UPDATE, DEFAULT_TASK_QUEUE, restoreWorkflowId, snapshotWorkflowId } from '../shared/names.js';
import { INSTANCE_ID } from '../shared/search-attributes.js';
import type { Acceptance, RestoreRequest, SnapshotRequest } from '../shared/types.js';
import { UUID_PATTERN, describeProblems, validateRestoreRequest, validateSnapshotRequest } from '../shared/validation.js';
import type { restoreInstance } from '../workflows/restore.js';
import type { snapshotInstance } from '../workflows/snapshot.js';

export interface AcceptOptions {
  /** The instance's UUID: the workflow id is made from it (resolve a name with resolveInstanceId). */
  instanceId: string;
  taskQueue?: string;
  /**
   * How long to wait for the answer: past it the run is cancelled (it undoes whatever it began)
   * and the call fails with a ConfigError that says no worker took it. Default: no limit.
   */
  acceptTimeoutMs?: number;
  /**
   * A run of the instance that has let go of its task state and only tidies up (finishing): how
   * long to wait for it to close before starting this one. Default 60 s.
   */
  endingWaitMs?: number;
}

export interface Accepted<T extends Workflow> {
  handle: WorkflowHandle<T>;
  accepted: Acceptance;
}

/** Starts a snapshot that answers once its task state is taken and its Glance image record made. */
export async function acceptSnapshot(client: Client, request: SnapshotRequest, options: AcceptOptions): Promise<Accepted<typeof snapshotInstance>> {
  const problems = validateSnapshotRequest(request);
  if (problems.length) throw new VmsnapError('InvalidInput', `invalid snapshot request: ${describeProblems(problems)}`, { problems });
  const instanceId = checkedUuid(options.instanceId);
  return acceptStart<typeof snapshotInstance>(client, 'snapshotInstance', snapshotWorkflowId(instanceId), { ...request, instance: instanceId }, options);
}

/** Starts a restore that answers once its task state (rebuilding) is taken. */
export async function acceptRestore(client: Client, request: RestoreRequest, options: AcceptOptions): Promise<Accepted<typeof restoreInstance>> {
  const problems = validateRestoreRequest(request);
  if (problems.length) throw new VmsnapError('InvalidInput', `invalid restore request: ${describeProblems(problems)}`, { problems });
  const instanceId = checkedUuid(options.instanceId);
  return acceptStart<typeof restoreInstance>(client, 'restoreInstance', restoreWorkflowId(instanceId), { ...request, instance: instanceId }, options);
}

/** The instance's UUID, lower case: every entry point makes the workflow id from it, whatever was typed. */
export function checkedUuid(id: string): string {
  if (!UUID_PATTERN.test(id)) {
    throw new VmsnapError(
      'InvalidInput',
      `the instance must be given by its UUID here (got "${id.slice(0, 64)}"): resolve a name with resolveInstanceId, as the workflow id is made from the UUID`,
    );
  }
  return id.toLowerCase();
}

async function acceptStart<T extends typeof snapshotInstance | typeof restoreInstance>(
  client: Client,
  workflowType: string,
  workflowId: string,
  request: Parameters<T>[0],
  options: AcceptOptions,
): Promise<Accepted<T>> {
  for (let attempt = 1; ; attempt++) {
    const start = new WithStartWorkflowOperation<T>(workflowType, {
      workflowId,
      taskQueue: options.taskQueue ?? DEFAULT_TASK_QUEUE,
      args: [request] as Parameters<T>,
      // A run already there is another request's: this one is refused, never joined to it.
      workflowIdConflictPolicy: 'FAIL',
      typedSearchAttributes: [{ key: INSTANCE_ID, value: request.instance }],
    });
    try {
      const accepted = await withinTime(
        client.workflow.executeUpdateWithStart<T, Acceptance, []>(ACCEPTED_UPDATE, { startWorkflowOperation: start }),
        start,
        options,
      );
      // The run that answered, not whatever runs under the id later.
      return { handle: client.workflow.getHandle<T>(workflowId, accepted.runId), accepted };
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw await refusal(err, start);
      if (attempt > 1 || !(await endedSoon(client, workflowId, options.endingWaitMs ?? 60_000))) {
        const what = workflowType === 'snapshotInstance' ? 'snapshot' : 'restore';
        throw new VmsnapError(
          'InstanceBusy',
          `instance ${request.instance} has a ${what} running (workflow ${workflowId}): wait for it to end, then try again`,
        );
      }
    }
  }
}

/** The answer, or past the time limit a cancelled run and a ConfigError that says nobody took it. */
async function withinTime<T>(answer: Promise<T>, start: WithStartWorkflowOperation<Workflow>, options: AcceptOptions): Promise<T> {
  if (options.acceptTimeoutMs === undefined) return answer;
  const timer = new AbortController();
  const late = sleep(options.acceptTimeoutMs, 'late' as const, { signal: timer.signal }).catch(() => 'answered' as const);
  try {
    const first = await Promise.race([answer, late]);
    if (first !== 'late') return first as T;
  } finally {
    timer.abort();
  }
  answer.catch(() => undefined); // the run is cancelled below; its answer no longer matters
  const handle = await start.workflowHandle().catch(() => undefined);
  await handle?.cancel().catch(() => undefined);
  const queue = options.taskQueue ?? DEFAULT_TASK_QUEUE;
  const waited = Math.round(options.acceptTimeoutMs / 1000);
  throw new VmsnapError(
    'ConfigError',
    `no vmsnap worker answered within ${waited} s: is a main worker running on task queue ${queue}? The request was withdrawn`,
    {
      setting: 'VMSNAP_TASK_QUEUE',
    },
  );
}

/** Phases in which a run has let go of the instance's task state and only tidies up. */
const ENDING_PHASES = new Set(['finishing', 'completed', 'failed', 'cancelled', 'refused']);

/**
 * Whether the run under this id has let go of the instance (its task state None, the last phase)
 * and closed within `waitMs`: a request right after an image turned active is not refused for
 * the run's last seconds of tidying up, which Nova's task state would not show either.
 */
async function endedSoon(client: Client, workflowId: string, waitMs: number): Promise<boolean> {
  const handle = client.workflow.getHandle(workflowId);
  const progress = await handle.query<{ phase?: string; taskState?: string | null }>('progress').catch(() => undefined);
  if (!progress || progress.taskState !== null || !ENDING_PHASES.has(progress.phase ?? '')) return false;
  const timer = new AbortController();
  const closed = handle.result().then(
    () => true,
    () => true,
  );
  const late = sleep(waitMs, false, { signal: timer.signal }).catch(() => false);
  try {
    return await Promise.race([closed, late]);
  } finally {
    timer.abort();
  }
}

/**
 * Why a run was not accepted: the failure it answered with, or (when it ended before it could
 * answer, and the update failed for that) the failure it ended with, as a VmsnapError of that type
 * where vmsnap knows the type.
 */
async function refusal(err: unknown, start: WithStartWorkflowOperation<Workflow>): Promise<unknown> {
  if (err instanceof VmsnapError) return err;
  const answered = err instanceof WorkflowUpdateFailedError ? typed(err.cause, undefined) : undefined;
  if (answered) return answered;
  // Refused before it could answer (bad input, no such instance): the run's own failure says why.
  const handle = await start.workflowHandle().catch(() => undefined);
  if (!handle) return err;
  try {
    const timer = new AbortController();
    await Promise.race([handle.result(), sleep(10_000, undefined, { signal: timer.signal }).catch(() => undefined)]).finally(() => timer.abort());
  } catch (ended) {
    if (ended instanceof WorkflowFailedError) return typed(ended.cause, ended);
  }
  return err;
}

function typed(cause: unknown, otherwise: unknown): unknown {
  if (cause instanceof ApplicationFailure && cause.type && Object.hasOwn(ERRORS, cause.type)) {
    // refusedByRun: the CLI words it as the run's refusal, with what to do.
    return new VmsnapError(cause.type as ErrorCode, cause.message, { refusedByRun: true });
  }
  return otherwise;
}
