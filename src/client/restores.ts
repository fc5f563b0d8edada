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
import { ClientError } from './errors.js';
import { findWorkflow, listWorkflows, stepProgress } from './snapshots.js';
import type { ListSnapshotsOptions, SnapshotSummary, StepDetails, WorkflowKind } from './snapshots.js';
import { checkedUuid } from './acceptance.js';

export const RESTORE_WORKFLOW_TYPE = 'restoreInstance';
export const ROLLBACK_WORKFLOW_TYPE = 'rollbackRestore';

export type RestoreHandle = WorkflowHandle<typeof restoreInstance>;
export type StartedRestore = WorkflowHandleWithFirstExecutionRunId<typeof restoreInstance>;
export type RollbackHandle = WorkflowHandleWithFirstExecutionRunId<typeof rollbackRestore>;

const RESTORES: WorkflowKind = { types: [RESTORE_WORKFLOW_TYPE, ROLLBACK_WORKFLOW_TYPE], idOf: restoreWorkflowId };

/** A restore or rollback as Temporal's visibility shows it. */
export type RestoreSummary = Omit<SnapshotSummary, 'phase'> & { action: 'restore' | 'rollback'; phase?: string };

function restoreSummaryOf({ workflowType, phase, ...rest }: SnapshotSummary & { workflowType: string }): RestoreSummary {
  return { ...rest, action: workflowType === ROLLBACK_WORKFLOW_TYPE ? 'rollback' : 'restore', ...(phase ? { phase } : {}) };
}

/** Restores and rollbacks, most recently started first (visibility may lag a second). */
export async function listRestores(client: Client, options: ListSnapshotsOptions = {}): Promise<RestoreSummary[]> {
  return (await listWorkflows(client, RESTORES, options)).map(restoreSummaryOf);
}

/**
 * The restore or rollback a person means by `ref`: a workflow id, or an instance UUID or name
 * (aliases: its other references). A running one wins, then the most recently started.
 */
export async function findRestore(client: Client, ref: string, aliases: string[] = []): Promise<RestoreSummary | undefined> {
  const found = await findWorkflow(client, RESTORES, ref, aliases);
  return found && restoreSummaryOf(found);
}

/**
 * Requests cancellation of the running restore (or rollback) of an instance. Before the swap it
 * leaves the instance as it was; after it, the previous disk goes back and the guest is started.
 */
export async function cancelRestore(client: Client, ref: string, aliases: string[] = []): Promise<RestoreSummary & { handle: RestoreHandle }> {
  const found = await findRestore(client, ref, aliases);
  if (!found || found.status !== 'running') {
    const last = found ? ` (the last one, ${found.workflowId}, is ${found.status})` : '';
    throw new ClientError('RestoreNotFound', `no running restore of ${ref}${last}: nothing to cancel; see vmsnap restore list`);
  }
  const handle = client.workflow.getHandle<typeof restoreInstance>(found.workflowId, found.runId);
  await handle.cancel();
  return { ...found, handle };
}

export type RestoreProgressDetails = RestoreProgress & StepDetails;

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
    if (matching.length === 0)
      throw new VmsnapError('ImageNotFound', `no image named "${ref}" in Glance (visible to vmsnap's project): give its id or check the name`);
    if (matching.length > 1) {
      throw new VmsnapError(
        'InvalidInput',
        `${matching.length} images are named "${ref}" (${matching.map((i) => i.id).join(', ')}): give the id of the one to restore`,
      );
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
  request = { ...request, instance: checkedUuid(request.instance) };
  try {
    return await client.workflow.start<W>(workflowType, {
      taskQueue,
      workflowId: restoreWorkflowId(request.instance),
      args: [request] as Parameters<W>,
      typedSearchAttributes: [{ key: INSTANCE_ID, value: request.instance }],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new VmsnapError(
        'InstanceBusy',
        `a restore or rollback of ${request.instance} is already running (workflow ${restoreWorkflowId(request.instance)}): wait for it`,
      );
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
  const { percent, bytesDone, bytesTotal, note, step } = await stepProgress(handle, description, progress.phase);
  return { ...progress, ...(percent !== undefined ? { percent, bytesDone, bytesTotal } : {}), ...(note ? { note } : {}), ...(step ? { step } : {}) };
}

export async function restoreResult(handle: RestoreHandle): Promise<RestoreResult> {
  return handle.result();
}
