// GET /servers/{id}/os-instance-actions and …/{request_id}: Nova's instance actions from the
// action events and faults vmsnap records. One action per run of a snapshot or restore; its
// request id is req-<run id>; its one event (admins only, as Nova's policy has it) says when the
// run started and ended and how, with the fault's message as the traceback.
import type { FastifyInstance } from 'fastify';
import type { InstanceActionEvent, InstanceFault, InstanceRecord } from '../store/store.js';
import type { ApiDeps } from './deps.js';
import { notFound } from './errors.js';
import { allowed, authorize, type Caller } from './policy.js';
import { findServer } from './servers.js';

/** Nova's compute manager event of each action vmsnap records. */
const EVENT_NAMES: Record<string, string> = {
  createImage: 'compute_snapshot_instance',
  createBackup: 'compute_backup_instance',
  rebuild: 'compute_rebuild_instance',
};

interface Run {
  requestId: string;
  /** vmsnap's own request id: <workflow id>/<run id>. */
  owner: string;
  action: string;
  events: InstanceActionEvent[];
}

/** Nova's times of instance actions: microseconds, no zone (UTC). */
function novaTime(iso: string): string {
  return `${iso.slice(0, 19)}.${iso.slice(20, 23).padEnd(6, '0')}`;
}

/** The runs that acted on the instance, newest first. */
function runsOf(events: InstanceActionEvent[]): Run[] {
  const runs = new Map<string, Run>();
  for (const e of events) {
    const run = runs.get(e.requestId) ?? { requestId: `req-${e.requestId.split('/').at(-1)}`, owner: e.requestId, action: e.action, events: [] };
    run.events.push(e);
    runs.set(e.requestId, run);
  }
  return [...runs.values()].reverse();
}

function actionView(instance: InstanceRecord, run: Run) {
  const failed = run.events.some((e) => e.event === 'error');
  return {
    action: run.action,
    instance_uuid: instance.id,
    // Who asked is not recorded with the run: the instance's owner stands for them.
    project_id: instance.projectId ?? '',
    user_id: instance.userId ?? '',
    request_id: run.requestId,
    start_time: novaTime(run.events[0]!.createdAt),
    message: failed ? 'Error' : null,
  };
}

/** Nova's event result: Success or Error once the run ended, null while it runs. */
function resultOf(end: InstanceActionEvent | undefined): string | null {
  if (!end) return null;
  return end.event === 'finish' ? 'Success' : 'Error';
}

function eventsView(run: Run, faults: InstanceFault[], caller: Caller, instance: InstanceRecord) {
  const end = run.events.find((e) => e.event === 'finish' || e.event === 'error');
  const [workflowId, runId] = run.owner.split('/');
  const fault = faults.find((f) => f.details.workflowId === workflowId && f.details.runId === runId);
  const details = allowed(caller, 'os_compute_api:os-instance-actions:events:details', instance);
  return [
    {
      event: EVENT_NAMES[run.action] ?? run.action,
      start_time: novaTime(run.events[0]!.createdAt),
      finish_time: end ? novaTime(end.createdAt) : null,
      result: resultOf(end),
      traceback: details && end?.event === 'error' ? (fault?.message ?? String(end.details.code ?? 'Error')) : null,
    },
  ];
}

export function instanceActionRoutes(app: FastifyInstance, deps: ApiDeps): void {
  app.get<{ Params: { id: string } }>('/servers/:id/os-instance-actions', async (req) => {
    const instance = await findServer(deps, req.caller, req.params.id);
    authorize(req.caller, 'os_compute_api:os-instance-actions:list', instance);
    return { instanceActions: runsOf(await deps.store.listEvents(instance.id)).map((run) => actionView(instance, run)) };
  });
  app.get<{ Params: { id: string; requestId: string } }>('/servers/:id/os-instance-actions/:requestId', async (req) => {
    const instance = await findServer(deps, req.caller, req.params.id);
    authorize(req.caller, 'os_compute_api:os-instance-actions:show', instance);
    const run = runsOf(await deps.store.listEvents(instance.id)).find((r) => r.requestId === req.params.requestId);
    if (!run) throw notFound(`Action for request_id ${req.params.requestId} on instance ${instance.id} not found`);
    const view: Record<string, unknown> = actionView(instance, run);
    if (allowed(req.caller, 'os_compute_api:os-instance-actions:events', instance)) {
      view.events = eventsView(run, await deps.store.listFaults(instance.id), req.caller, instance);
    }
    return { instanceAction: view };
  });
}
