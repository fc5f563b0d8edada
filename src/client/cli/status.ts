// What `vmsnap status` and `vmsnap restore status` share: reading one workflow's state (its
// progress while it runs, how it ended after) and the rows every status table starts and ends with.
import type { WorkflowHandle } from '@temporalio/client';
import { ProgressView } from '../progress.js';
import { oneLine, type SnapshotProgressDetails } from '../snapshots.js';
import { describeProgress, outcomeOf, type Outcome } from './follow.js';
import { since } from './options.js';
import type { Session } from './session.js';

/** A workflow as visibility lists it: what the status rows need. */
interface Found {
  workflowId: string;
  runId: string;
  status: string;
  taskQueue: string;
  phase?: string;
  instanceId?: string;
  host?: string;
  imageId?: string;
  startTime: string;
  closeTime?: string;
}

/** The progress a status shows: a snapshot's, or a restore's (the same fields the table reads). */
type Progress = Pick<SnapshotProgressDetails, 'taskState' | 'step' | 'imageId'>;

export interface Status<P extends Progress, R> {
  progress?: P;
  progressError?: string;
  result?: R;
  error?: Outcome['error'];
}

/**
 * Running: its progress, if `progress` is given (a worker that does not answer within 5 s is
 * named in `progressError`, not thrown). Ended: its result or its typed error.
 */
export async function readStatus<P extends Progress, R>(
  found: Found,
  handle: WorkflowHandle,
  progress: ((handle: WorkflowHandle) => Promise<P>) | undefined,
): Promise<Status<P, R>> {
  if (found.status !== 'running') {
    const ended = await handle.result().then(
      (result: R) => ({ result }),
      (error: unknown) => ({ error }),
    );
    const { result, error } = outcomeOf<R>(ended);
    return { result, error };
  }
  if (!progress) return {};
  try {
    return { progress: await handle.client.withDeadline(Date.now() + 5000, () => progress(handle)) };
  } catch (err) {
    const why = oneLine((err as Error).message);
    return { progressError: `no answer to the progress query (${why}): is a vmsnap worker running on task queue ${found.taskQueue}?` };
  }
}

/** The table's rows: workflow to closed, then `middle` (the kind's own), then error, note and link. */
export function statusRows(
  session: Session,
  found: Found,
  status: Status<Progress, unknown>,
  image: string | undefined,
  middle: string[][],
  what = '',
): string[][] {
  const p = status.progress;
  const view = new ProgressView(session.io.stdout, 'plain');
  const link = session.webUiLink(found.workflowId, found.runId);
  return [
    ['workflow', `${found.workflowId} (run ${found.runId})${what}`],
    ['status', found.status],
    ['phase', p ? describeProgress(view, p as SnapshotProgressDetails) : (found.phase ?? '-')],
    ['instance', `${found.instanceId ?? '-'}${found.host ? ` on ${found.host}` : ''}`],
    ['image', image ?? p?.imageId ?? found.imageId ?? '-'],
    ...(p ? [['task state', p.taskState ?? 'None']] : []),
    ...(p?.step?.lastFailure ? [['retrying', `${p.step.activityType} attempt ${p.step.attempt}: ${p.step.lastFailure}`]] : []),
    ['started', since(found.startTime)],
    ['closed', since(found.closeTime)],
    ...middle,
    ...(status.error ? [['error', `${status.error.type}: ${status.error.message}`]] : []),
    ...(status.progressError ? [['note', status.progressError]] : []),
    ...(link ? [['web UI', link]] : []),
  ];
}
