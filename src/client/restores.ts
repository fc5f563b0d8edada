// Programmatic client of restores: start one (image by id or name), follow it, wait for it,
// roll it back. One restore or rollback per instance at a time (workflow id restore-<instance>).
import { WorkflowExecutionAlreadyStartedError, type Client, type WorkflowHandle, type WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { connectCloud } from '../drivers/cloud.js';
import type { Config } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { DEFAULT_TASK_QUEUE, restoreWorkflowId } from '../shared/names.js';
import { INSTANCE_ID } from '../shared/search-attributes.js';
import type { RestoreProgress, RestoreRequest, RestoreResult, RollbackRequest } from '../shared/types.js';
import { UUID_PATTERN, describeProblems, validateRestoreRequest, validateRollbackRequest, type InputProblem } from '../shared/validation.js';
import type { restoreInstance, rollbackRestore } from '../workflows/restore.js';
import { stepProgress, type SnapshotProgressDetails } from './snapshots.js';

export const RESTORE_WORKFLOW_TYPE = 'restoreInstance';
export const ROLLBACK_WORKFLOW_TYPE = 'rollbackRestore';

export type RestoreHandle = WorkflowHandle<typeof restoreInstance>;
export type StartedRestore = WorkflowHandleWithFirstExecutionRunId<typeof restoreInstance>;
export type RollbackHandle = WorkflowHandleWithFirstExecutionRunId<typeof rollbackRestore>;

export type RestoreProgressDetails = RestoreProgress & Pick<SnapshotProgressDetails, 'percent' | 'bytesDone' | 'bytesTotal' | 'step'>;

/**
 * The id of the image a person means: a UUID as it is, else the one image of that name visible
 * to vmsnap's project in Glance. None: ImageNotFound; several: InvalidInput listing their ids.
 */
export async function resolveImage(config: Pick<Config, 'cloud' | 'glance'>, ref: string): Promise<string> {
  if (UUID_PATTERN.test(ref)) return ref.toLowerCase();
  if (ref.trim() === '') throw new VmsnapError('InvalidInput', '--image must be an image id or name');
  const cloud = await connectCloud(config, { patienceMs: 5000 });
  try {
    const found = await cloud.imageService.listImages({ name: ref });
    const matching = found.filter((i) => i.name === ref);
    if (matching.length === 0) throw new VmsnapError('ImageNotFound', `no image named "${ref}" in Glance (visible to vmsnap's project): give its id or check the name`);
    if (matching.length > 1) {
      throw new VmsnapError('InvalidInput', `${matching.length} images are named "${ref}" (${matching.map((i) => i.id).join(', ')}): give the id of the one to restore`);
    }
    return matching[0]!.id;
  } finally {
    await cloud.close();
  }
}

/**
 * Starts a restore or a rollback on the instance's one restore workflow id; a bad request is
 * refused before anything starts, a restore or rollback already running is InstanceBusy.
 */
async function start<W extends typeof restoreInstance | typeof rollbackRestore>(
  client: Client,
  workflowType: string,
  request: Parameters<W>[0],
  problems: InputProblem[],
  taskQueue: string,
): Promise<WorkflowHandleWithFirstExecutionRunId<W>> {
  const what = workflowType === ROLLBACK_WORKFLOW_TYPE ? 'rollback' : 'restore';
  if (problems.length) throw new VmsnapError('InvalidInput', `invalid ${what} request: ${describeProblems(problems)}`, { problems });
  try {
    return await client.workflow.start<W>(workflowType, {
      taskQueue,
      workflowId: restoreWorkflowId(request.instance),
      args: [request] as Parameters<W>,
      typedSearchAttributes: [{ key: INSTANCE_ID, value: request.instance }],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new VmsnapError('InstanceBusy', `a restore or rollback of ${request.instance} is already running (workflow ${restoreWorkflowId(request.instance)}): wait for it`);
    }
    throw err;
  }
}

/** Starts a restore. A bad request is refused before anything starts. */
export async function startRestore(client: Client, request: RestoreRequest, taskQueue = DEFAULT_TASK_QUEUE): Promise<StartedRestore> {
  return start<typeof restoreInstance>(client, RESTORE_WORKFLOW_TYPE, request, validateRestoreRequest(request), taskQueue);
}

/** Starts putting the pre-restore disk back. */
export async function startRollback(client: Client, request: RollbackRequest, taskQueue = DEFAULT_TASK_QUEUE): Promise<RollbackHandle> {
  return start<typeof rollbackRestore>(client, ROLLBACK_WORKFLOW_TYPE, request, validateRollbackRequest(request), taskQueue);
}

export function restoreHandle(client: Client, instance: string, runId?: string): RestoreHandle {
  return client.workflow.getHandle<typeof restoreInstance>(restoreWorkflowId(instance), runId);
}

/** The restore's `progress` query, with percent and bytes of the download while it runs. */
export async function getRestoreProgress(handle: RestoreHandle): Promise<RestoreProgressDetails> {
  const [progress, description] = await Promise.all([handle.query<RestoreProgress>('progress'), handle.describe()]);
  const { percent, bytesDone, bytesTotal, step } = await stepProgress(handle, description, progress.phase);
  return { ...progress, ...(percent !== undefined ? { percent, bytesDone, bytesTotal } : {}), ...(step ? { step } : {}) };
}

export async function restoreResult(handle: RestoreHandle): Promise<RestoreResult> {
  return handle.result();
}
