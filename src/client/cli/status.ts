// What `vmsnap status` and `vmsnap restore status` share: reading one workflow's state (its
// progress while it runs, how it ended after) and the rows every status table starts and ends with.
import type { Client, WorkflowHandle } from '@temporalio/client';
import type { Command } from 'commander';
import type { ClientError } from '../errors.js';
import { instanceAliases } from '../inventory.js';
import { ProgressView, attemptText, type WorkProgress } from '../progress.js';
import { oneLine } from '../snapshots.js';
import { describeProgress, outcomeOf, type Outcome } from './follow.js';
import { since } from './options.js';
import { table, withGlobals, type GlobalOptions, type Session } from './session.js';

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
type Progress = WorkProgress & { taskState: string | null; imageId: string };

export interface Status<P extends Progress, R> {
  progress?: P;
  progressError?: string;
  result?: R;
  error?: Outcome['error'];
}

/** What `status` needs to know of one kind of workflow (snapshot, restore). */
export interface StatusKind<F extends Found, P extends Progress, R> {
  /** The command's help: what it shows, and what its argument names. */
  description: string;
  argument: string;
  /** The workflow `ref` names: a workflow id, or the latest of an instance (UUID or one of its names). */
  find(client: Client, ref: string, aliases: string[]): Promise<F | undefined>;
  notFound(ref: string): ClientError;
  /** Its progress query; undefined for a workflow that answers none. */
  progress(found: F): ((handle: WorkflowHandle) => Promise<P>) | undefined;
  /** The image its result names, the kind's own rows, and a word after the workflow id. */
  rows(found: F, status: Status<P, R>): { image?: string; middle: string[][]; what?: string };
}

/** `status <instance|workflow-id>` under `parent`, for workflows of this kind. */
export function addStatusCommand<F extends Found, P extends Progress, R>(parent: Command, session: Session, kind: StatusKind<F, P, R>): void {
  parent
    .command('status')
    .description(kind.description)
    .argument('<instance|workflow-id>', kind.argument)
    .action(withGlobals((g, ref: string) => showStatus(session, g, ref, kind)));
}

/** `status`: the workflow `ref` names, its progress or how it ended, as JSON or a table. */
async function showStatus<F extends Found, P extends Progress, R>(session: Session, g: GlobalOptions, ref: string, kind: StatusKind<F, P, R>): Promise<void> {
  const config = session.getConfig();
  const client = await session.getClient();
  const found = await kind.find(client, ref, await instanceAliases(config, ref));
  if (!found) throw kind.notFound(ref);
  const status = await readStatus<P, R>(found, client.workflow.getHandle(found.workflowId, found.runId), kind.progress(found));
  const { image, middle, what } = kind.rows(found, status);
  session.show(g, { ...found, ...status }, () => table(statusRows(session, found, status, image, middle, what)));
}

/**
 * Running: its progress, if `progress` is given (a worker that does not answer within 5 s is
 * named in `progressError`, not thrown). Ended: its result or its typed error.
 */
async function readStatus<P extends Progress, R>(
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
function statusRows(session: Session, found: Found, status: Status<Progress, unknown>, image: string | undefined, middle: string[][], what = ''): string[][] {
  const p = status.progress;
  const view = new ProgressView(session.io.stdout, 'plain');
  const link = session.webUiLink(found.workflowId, found.runId);
  return [
    ['workflow', `${found.workflowId} (run ${found.runId})${what}`],
    ['status', found.status],
    ['phase', p ? describeProgress(view, p) : (found.phase ?? '-')],
    ['instance', `${found.instanceId ?? '-'}${found.host ? ` on ${found.host}` : ''}`],
    ['image', image ?? p?.imageId ?? found.imageId ?? '-'],
    ...(p ? [['task state', p.taskState ?? 'None']] : []),
    ...(p?.step?.lastFailure ? [['retrying', `${p.step.activityType} ${attemptText(p.step)}: ${p.step.lastFailure}`]] : []),
    ['started', since(found.startTime)],
    ['closed', since(found.closeTime)],
    ...middle,
    ...(status.error ? [['error', `${status.error.type}: ${status.error.message}`]] : []),
    ...(status.progressError ? [['note', status.progressError]] : []),
    ...(link ? [['web UI', link]] : []),
  ];
}
