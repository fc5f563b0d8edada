// Programmatic client: start a snapshot, follow its progress, wait for its result, cancel it, and
// list snapshots from Temporal's visibility store.
import {
  Client,
  Connection,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  type WorkflowClient,
  type WorkflowExecutionDescription,
  type WorkflowExecutionInfo,
  type WorkflowHandle,
  type WorkflowHandleWithFirstExecutionRunId,
} from '@temporalio/client';
import type { Payload } from '@temporalio/common';
import type { Config } from '../shared/config.js';
import { temporalConnectionOptions } from '../shared/temporal-config.js';
import { VmsnapError } from '../shared/errors.js';
import { DEFAULT_TASK_QUEUE, snapshotWorkflowId } from '../shared/names.js';
import { HOST, IMAGE_ID, INSTANCE_ID, PHASE } from '../shared/search-attributes.js';
import type { SnapshotPhase, SnapshotProgress, SnapshotRequest, SnapshotResult, StepNote, StepProgress } from '../shared/types.js';
import { describeProblems, validateSnapshotRequest } from '../shared/validation.js';
import type { snapshotInstance } from '../workflows/snapshot.js';
import { ClientError } from './errors.js';
import { checkedUuid } from './acceptance.js';

export type SnapshotHandle = WorkflowHandle<typeof snapshotInstance>;
/** What startSnapshot returns: a handle that also knows the run it started. */
export type StartedSnapshot = WorkflowHandleWithFirstExecutionRunId<typeof snapshotInstance>;

export const SNAPSHOT_WORKFLOW_TYPE = 'snapshotInstance';

/** Workflow execution status, lower case as the CLI prints it. */
export type SnapshotStatus = 'running' | 'completed' | 'failed' | 'cancelled' | 'terminated' | 'timed-out' | 'continued-as-new' | 'unknown';

/** The statuses `listSnapshots` can filter on, and their names in Temporal's list filter. */
export const LISTABLE_STATUSES = {
  running: 'Running',
  completed: 'Completed',
  failed: 'Failed',
  cancelled: 'Canceled',
  terminated: 'Terminated',
  'timed-out': 'TimedOut',
} as const;
export type ListableStatus = keyof typeof LISTABLE_STATUSES;

function statusOf(name: string): SnapshotStatus {
  switch (name) {
    case 'RUNNING':
      return 'running';
    case 'COMPLETED':
      return 'completed';
    case 'FAILED':
      return 'failed';
    case 'CANCELLED':
      return 'cancelled';
    case 'TERMINATED':
      return 'terminated';
    case 'TIMED_OUT':
      return 'timed-out';
    case 'CONTINUED_AS_NEW':
      return 'continued-as-new';
    default:
      return 'unknown';
  }
}

export async function connectClient(temporal: Config['temporal'], options: { connectTimeoutMs?: number } = {}): Promise<Client> {
  let connection: Connection;
  try {
    connection = await Connection.connect({ ...temporalConnectionOptions(temporal), connectTimeout: options.connectTimeoutMs ?? 10_000 });
  } catch (err) {
    throw new ClientError(
      'TemporalUnavailable',
      `cannot reach Temporal at ${temporal.address} (${oneLine((err as Error).message)}): is the Temporal server running, and is TEMPORAL_ADDRESS right?`,
      { cause: err },
    );
  }
  return new Client({ connection, namespace: temporal.namespace });
}

/**
 * Starts a snapshot of the instance with this UUID, without waiting for it to take the task state
 * (acceptSnapshot waits). Refuses a bad request or a name before anything starts, and a second
 * snapshot of an instance that has one running (InstanceBusy).
 */
export async function startSnapshot(client: Client, given: SnapshotRequest, taskQueue = DEFAULT_TASK_QUEUE): Promise<StartedSnapshot> {
  const problems = validateSnapshotRequest(given);
  if (problems.length) throw new VmsnapError('InvalidInput', `invalid snapshot request: ${describeProblems(problems)}`, { problems });
  const request = { ...given, instance: checkedUuid(given.instance) };
  const workflowId = snapshotWorkflowId(request.instance);
  try {
    return await client.workflow.start<typeof snapshotInstance>(SNAPSHOT_WORKFLOW_TYPE, {
      taskQueue,
      workflowId,
      args: [request],
      typedSearchAttributes: [{ key: INSTANCE_ID, value: request.instance }],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new VmsnapError('InstanceBusy', `a snapshot of ${request.instance} is already running (workflow ${workflowId}): wait for it or cancel it`);
    }
    throw err;
  }
}

export function snapshotHandle(client: Client, instance: string, runId?: string): SnapshotHandle {
  return client.workflow.getHandle<typeof snapshotInstance>(snapshotWorkflowId(instance), runId);
}

/** The `progress` query, plus percent and bytes of the step running now (convert or upload). */
export interface SnapshotProgressDetails extends SnapshotProgress, StepDetails {}

/** The running step of a snapshot or a restore, as its heartbeat and describe() tell it. */
export interface StepDetails {
  /** Percent, bytes done and total of the running step, from its last heartbeat. */
  percent?: number;
  bytesDone?: number;
  bytesTotal?: number;
  /** What the running step waits for when its bytes do not move ("waiting for Glance to confirm"). */
  note?: string;
  /** A snapshot of several disks: each disk's step (its target device, percent and bytes) when more than one runs. */
  disks?: { dev: string; percent: number; bytesDone: number; bytesTotal: number }[];
  /** The running step: activity type, attempt (1 = first) of at most maximumAttempts (0: no limit), when it last reported, why it last failed. */
  step?: { activityType: string; attempt: number; maximumAttempts?: number; lastHeartbeatAt?: string; lastFailure?: string };
}

/**
 * Where a snapshot is: the workflow's `progress` query merged with the pending activity's
 * heartbeat details from describe(), which carry percent and bytes of the long steps.
 */
export async function getProgress(handle: SnapshotHandle): Promise<SnapshotProgressDetails> {
  const [progress, description] = await Promise.all([handle.query<SnapshotProgress>('progress'), handle.describe()]);
  return { ...progress, ...(await stepProgress(handle, description, progress.phase)) };
}

/** Percent and bytes of the pending step of a workflow in `phase`, from its heartbeat (snapshots and restores). */
export async function stepProgress(handle: { client: WorkflowClient }, description: WorkflowExecutionDescription, phase: string): Promise<StepDetails> {
  const pending = description.raw.pendingActivities ?? [];
  // One step runs at a time, or one per disk of a set (the uploads): the ones that report progress are worth showing.
  let fallback: StepDetails = {};
  const perDisk: (StepProgress & { step: NonNullable<StepDetails['step']> })[] = [];
  for (const activity of pending) {
    const step = {
      activityType: activity.activityType?.name ?? 'unknown',
      attempt: activity.attempt ?? 1,
      maximumAttempts: activity.maximumAttempts ?? 0,
      lastHeartbeatAt: tsToIso(activity.lastHeartbeatTime),
      lastFailure: activity.lastFailure?.message ? oneLine(activity.lastFailure.message) : undefined,
    };
    const details = await decodePayloads(handle, activity.heartbeatDetails?.payloads ?? []);
    // The query and describe() are two calls: a heartbeat of a step that just ended is not news.
    const waiting = details.find(isStepNote);
    if (waiting && waiting.phase === phase) return { note: waiting.note, step };
    const heartbeat = details.find(isStepProgress);
    if (heartbeat && heartbeat.phase === phase) {
      if (heartbeat.dev === undefined) return stepDetails(heartbeat, step);
      perDisk.push({ ...heartbeat, step });
      continue;
    }
    fallback = { step };
  }
  const [first] = perDisk;
  if (!first) return fallback;
  // A set's disks, one or several at once: their sum, and each disk's own.
  const bytesDone = perDisk.reduce((sum, d) => sum + d.bytesDone, 0);
  const bytesTotal = perDisk.reduce((sum, d) => sum + d.bytesTotal, 0);
  return {
    percent: bytesTotal ? (100 * bytesDone) / bytesTotal : 100,
    bytesDone,
    bytesTotal,
    disks: perDisk.map((d) => ({ dev: d.dev ?? '', percent: d.percent, bytesDone: d.bytesDone, bytesTotal: d.bytesTotal })),
    step: first.step,
  };
}

function stepDetails(heartbeat: StepProgress, step: NonNullable<StepDetails['step']>): StepDetails {
  return {
    percent: heartbeat.percent,
    bytesDone: heartbeat.bytesDone,
    bytesTotal: heartbeat.bytesTotal,
    ...(heartbeat.note ? { note: heartbeat.note } : {}),
    step,
  };
}

function isStepNote(value: unknown): value is StepNote {
  const v = value as Partial<StepNote & StepProgress> | null;
  return typeof v === 'object' && v !== null && typeof v.phase === 'string' && typeof v.note === 'string' && v.percent === undefined;
}

function isStepProgress(value: unknown): value is StepProgress {
  const v = value as Partial<StepProgress> | null;
  return typeof v === 'object' && v !== null && typeof v.percent === 'number' && typeof v.bytesDone === 'number' && typeof v.bytesTotal === 'number';
}

/** Heartbeat details are payloads: run them through the client's codecs and converter as Temporal would. */
async function decodePayloads(handle: { client: WorkflowClient }, payloads: Payload[]): Promise<unknown[]> {
  const { payloadConverter, payloadCodecs } = handle.client.options.loadedDataConverter;
  let decoded = payloads;
  for (const codec of [...payloadCodecs].reverse()) decoded = await codec.decode(decoded);
  return decoded.map((p) => {
    try {
      return payloadConverter.fromPayload(p);
    } catch {
      return undefined; // details of another shape (or encoding) are not progress
    }
  });
}

export async function snapshotResult(handle: SnapshotHandle): Promise<SnapshotResult> {
  return handle.result();
}

/** One snapshot workflow as Temporal's visibility (and its search attributes) show it. */
export interface SnapshotSummary {
  workflowId: string;
  runId: string;
  status: SnapshotStatus;
  taskQueue: string;
  startTime: string;
  closeTime?: string;
  /** The instance UUID once the workflow found it, before that the reference it was started with. */
  instanceId?: string;
  imageId?: string;
  phase?: SnapshotPhase;
  host?: string;
}

function summaryOf(info: Omit<WorkflowExecutionInfo, 'raw'>): SnapshotSummary {
  const sa = info.typedSearchAttributes;
  return {
    workflowId: info.workflowId,
    runId: info.runId,
    status: statusOf(info.status.name),
    taskQueue: info.taskQueue,
    startTime: info.startTime.toISOString(),
    closeTime: info.closeTime?.toISOString(),
    instanceId: sa.get(INSTANCE_ID),
    imageId: sa.get(IMAGE_ID),
    phase: sa.get(PHASE) as SnapshotPhase | undefined,
    host: sa.get(HOST),
  };
}

/** A string literal in Temporal's list filter language. */
function quote(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

export interface ListSnapshotsOptions {
  /** Instance UUID or name; several refer to one instance (e.g. its name and its UUID). */
  instance?: string | string[];
  status?: ListableStatus;
  /** Most recent first; default 20. */
  limit?: number;
}

/** Which workflows a listing or look-up covers: snapshots by default; restores use their own. */
export interface WorkflowKind {
  types: string[];
  /** The workflow id an instance reference gives. */
  idOf: (instance: string) => string;
}

const SNAPSHOTS: WorkflowKind = { types: [SNAPSHOT_WORKFLOW_TYPE], idOf: snapshotWorkflowId };

/**
 * Snapshots from Temporal's visibility store, most recently started first. Visibility is
 * eventually consistent: a snapshot started a moment ago may show up a second later.
 */
export async function listSnapshots(client: Client, options: ListSnapshotsOptions = {}): Promise<SnapshotSummary[]> {
  return (await listWorkflows(client, SNAPSHOTS, options)).map(({ workflowType: _type, ...summary }) => summary);
}

/** listSnapshots for any kind of vmsnap workflow; each row also says its workflow type. */
export async function listWorkflows(
  client: Client,
  kind: WorkflowKind,
  options: ListSnapshotsOptions = {},
): Promise<(SnapshotSummary & { workflowType: string })[]> {
  const limit = options.limit ?? 20;
  if (!Number.isInteger(limit) || limit <= 0) throw new VmsnapError('InvalidInput', `limit must be a positive whole number (got ${limit})`);
  const filters = [kind.types.length === 1 ? `WorkflowType = ${quote(kind.types[0]!)}` : `WorkflowType IN (${kind.types.map(quote).join(', ')})`];
  const instances = [options.instance ?? []].flat();
  if (instances.length) filters.push(`${INSTANCE_ID.name} IN (${instances.map(quote).join(', ')})`);
  if (options.status) filters.push(`ExecutionStatus = ${quote(LISTABLE_STATUSES[options.status])}`);
  const found: (SnapshotSummary & { workflowType: string })[] = [];
  for await (const info of client.workflow.list({ query: filters.join(' AND '), pageSize: Math.min(limit, 1000) })) {
    found.push({ ...summaryOf(info), workflowType: info.type });
    if (found.length >= limit) break;
  }
  return found;
}

/**
 * The snapshot workflow a person means by `ref`: a workflow id, or an instance UUID or name (its
 * workflow `snapshot-<ref>`, or the latest workflow whose instance attribute is `ref`). `aliases`
 * are other references to the same instance (its UUID for a name). A running one wins over closed
 * ones, then the most recently started.
 */
export async function findSnapshot(client: Client, ref: string, aliases: string[] = []): Promise<SnapshotSummary | undefined> {
  const found = await findWorkflow(client, SNAPSHOTS, ref, aliases);
  if (!found) return undefined;
  const { workflowType: _type, ...summary } = found;
  return summary;
}

/** findSnapshot for any kind of vmsnap workflow. */
export async function findWorkflow(
  client: Client,
  kind: WorkflowKind,
  ref: string,
  aliases: string[] = [],
): Promise<(SnapshotSummary & { workflowType: string }) | undefined> {
  const refs = [...new Set([ref, ...aliases])];
  const ids = new Set([ref, ...refs.map(kind.idOf)]);
  const candidates: (SnapshotSummary & { workflowType: string })[] = [];
  await Promise.all(
    [...ids].map(async (id) => {
      try {
        const description = await client.workflow.getHandle(id).describe();
        if (kind.types.includes(description.type)) candidates.push({ ...summaryOf(description), workflowType: description.type });
      } catch (err) {
        if (!(err instanceof WorkflowNotFoundError)) throw err;
      }
    }),
  );
  // Started under another reference (the name, then found by UUID): only visibility knows.
  const validRefs = refs.filter((r) => validateSnapshotRequest({ instance: r, imageName: 'x' }).length === 0);
  if (validRefs.length) candidates.push(...(await listWorkflows(client, kind, { instance: validRefs, limit: 5 })));
  // Running first, then the latest run that took the instance: a refused one only when no run did.
  const took = (s: SnapshotSummary) => Number(s.phase !== 'refused');
  candidates.sort((a, b) => Number(b.status === 'running') - Number(a.status === 'running') || took(b) - took(a) || b.startTime.localeCompare(a.startTime));
  return candidates[0];
}

/**
 * Requests cancellation of the running snapshot of an instance (or of a workflow id). The
 * workflow then undoes what it did (resumes the guest, deletes the unfinished image) and ends
 * cancelled; await `snapshotResult` on the returned `handle` to see it end.
 */
export async function cancelSnapshot(
  client: Client,
  instanceOrWorkflowId: string,
  aliases: string[] = [],
): Promise<SnapshotSummary & { handle: SnapshotHandle }> {
  const found = await findSnapshot(client, instanceOrWorkflowId, aliases);
  if (!found || found.status !== 'running') {
    const last = found ? ` (the last one, ${found.workflowId}, is ${found.status})` : '';
    throw new ClientError('SnapshotNotFound', `no running snapshot of ${instanceOrWorkflowId}${last}: nothing to cancel; see vmsnap list`);
  }
  // The run found, not whatever runs under that id by the time the request lands.
  const handle = client.workflow.getHandle<typeof snapshotInstance>(found.workflowId, found.runId);
  await handle.cancel();
  return { ...found, handle };
}

function tsToIso(ts: { seconds?: { toString(): string } | number | null; nanos?: number | null } | null | undefined): string | undefined {
  if (!ts || ts.seconds === undefined || ts.seconds === null) return undefined;
  return new Date(Number(ts.seconds.toString()) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6)).toISOString();
}

export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}
