// scheduledSnapshots: what a vmsnap schedule starts each time. Snapshots every selected instance
// as a child snapshotInstance with the workflow id a manual snapshot of it would have
// (snapshot-<instance uuid>), so the two never run at once; each on its own, so one failing or busy
// instance does not stop the others. Then applies the schedule's retention, and returns a report.
import { ApplicationFailure, CancellationScope, ChildWorkflowFailure, ParentClosePolicy, log, startChild, workflowInfo } from '@temporalio/workflow';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import type { MainActivities } from '../activities/index.js';
import type { RetentionDecision, RetentionPolicy } from '../activities/retention.js';
import { failureTypeOfCause } from '../shared/failures.js';
import { snapshotWorkflowId } from '../shared/names.js';
import { INSTANCE_ID } from '../shared/search-attributes.js';
import type { DiskSelection } from '../shared/disk-set.js';
import type { DiskFormat, SnapshotRequest } from '../shared/types.js';
import type { snapshotInstance } from './snapshot.js';
import { messageOf } from './failures.js';
import { HOUSEKEEPING, onHost, onMain } from './steps.js';

export interface ScheduledSnapshotsInput {
  /** The schedule's id (vmsnap-schedule-<name>): each image records it as vmsnap_schedule. */
  scheduleId: string;
  /** Instance UUIDs or names. */
  instances: string[];
  /** Images are named <prefix>-<instance name>-<this run's start, ISO 8601 UTC>. */
  imageNamePrefix: string;
  /** Applied after the snapshots; none (or all zero): every image is kept. */
  retention?: RetentionPolicy;
  metadata?: Record<string, string>;
  diskFormat?: DiskFormat;
  compress?: boolean;
  /** Which disks each snapshot takes; a set is kept or deleted whole by retention. */
  disks?: DiskSelection;
}

export interface ScheduledSnapshotOutcome {
  /** As the schedule names it. */
  instance: string;
  /** Its UUID, when the inventory knows it. */
  instanceId?: string;
  workflowId: string;
  /** busy: a snapshot or another task of the instance was in progress; nothing was done. */
  status: 'completed' | 'busy' | 'failed';
  imageName: string;
  imageId?: string;
  /** Why it is busy or failed: the failure type (InstanceBusy, InstanceNotFound, Cancelled, ...). */
  error?: { type: string; message: string };
}

export interface ScheduledSnapshotsReport {
  scheduleId: string;
  /** This run's start: the time in the image names. */
  startedAt: string;
  snapshots: ScheduledSnapshotOutcome[];
  /** null when the schedule has no retention rule. */
  retention: {
    /** Every image of the schedule, newest first, with what retention decided and why. */
    decisions: RetentionDecision[];
    deleted: string[];
    errors: string[];
  } | null;
}

// What ended a child that did not fail by itself.
const ENDED: Record<string, string> = {
  Cancelled: 'the snapshot was cancelled',
  Terminated: 'the snapshot workflow was terminated',
  TimedOut: 'the snapshot workflow timed out',
};

/** The failure of a child (or of starting it) as the report shows it. */
function failureOf(err: unknown): { type: string; message: string } {
  const cause = err instanceof ChildWorkflowFailure && err.cause ? err.cause : err;
  const type = failureTypeOfCause(cause);
  if (cause instanceof ApplicationFailure) return { type, message: cause.message };
  return { type, message: ENDED[type] ?? (cause instanceof Error ? cause.message : String(cause)) };
}

export async function scheduledSnapshots(input: ScheduledSnapshotsInput): Promise<ScheduledSnapshotsReport> {
  if (!input || typeof input.scheduleId !== 'string' || !Array.isArray(input.instances) || typeof input.imageNamePrefix !== 'string') {
    throw ApplicationFailure.create({
      type: 'InvalidInput',
      message: 'scheduledSnapshots needs {scheduleId, instances: [...], imageNamePrefix}: create schedules with vmsnap schedule create',
      nonRetryable: true,
    });
  }
  const startedAt = workflowInfo()
    .startTime.toISOString()
    .replace(/\.\d{3}Z$/, 'Z');
  const targets = await findTargets(input.instances);
  const snapshots = await Promise.all(targets.map((target) => snapshotTarget(input, target, startedAt)));
  const report: ScheduledSnapshotsReport = { scheduleId: input.scheduleId, startedAt, snapshots, retention: await applyRetention(input) };
  const count = (status: ScheduledSnapshotOutcome['status']) => snapshots.filter((s) => s.status === status).length;
  log.info('scheduled snapshots done', {
    scheduleId: input.scheduleId,
    completed: count('completed'),
    busy: count('busy'),
    failed: count('failed'),
    deletedImages: report.retention?.deleted.length ?? 0,
  });
  return report;
}

interface Target {
  /** As the schedule names it. */
  instance: string;
  instanceId?: string;
  name: string;
}

/**
 * Each instance by its UUID, as a manual snapshot's workflow id has it; on a miss, every host is
 * asked to rediscover (once), as the snapshot itself would. A name and its UUID given both are one
 * instance.
 */
async function findTargets(instances: string[]): Promise<Target[]> {
  type Found = Awaited<ReturnType<MainActivities['findInstance']>>;
  const lookup = async (ref: string): Promise<Found> => {
    try {
      return await onMain(HOUSEKEEPING.lookup, `look up instance ${ref}`).findInstance(ref);
    } catch (err) {
      // The child looks it up again; the store may be back by then.
      log.warn('scheduled snapshots: instance lookup failed', { instance: ref, error: messageOf(err) });
      return null;
    }
  };
  const found = new Map<string, Found>();
  for (const ref of instances) found.set(ref, await lookup(ref));
  if ([...found.values()].includes(null)) {
    const hosts = await onMain(HOUSEKEEPING.lookup, 'list hosts')
      .listHosts()
      .catch(() => [] as string[]);
    await Promise.allSettled(hosts.map((host) => onHost(HOUSEKEEPING.discovery(host), `discover instances on ${host}`).discoverInstances()));
    for (const [ref, record] of found) if (!record) found.set(ref, await lookup(ref));
  }
  const targets = new Map<string, Target>();
  for (const [ref, record] of found) {
    const key = record?.id ?? ref;
    if (!targets.has(key)) targets.set(key, { instance: ref, ...(record ? { instanceId: record.id } : {}), name: record?.name ?? ref });
  }
  return [...targets.values()];
}

/** One child snapshotInstance; its failure is reported, not thrown, so the others go on. */
async function snapshotTarget(input: ScheduledSnapshotsInput, target: Target, startedAt: string): Promise<ScheduledSnapshotOutcome> {
  const workflowId = snapshotWorkflowId(target.instanceId ?? target.instance);
  const request: SnapshotRequest = {
    instance: target.instanceId ?? target.instance,
    imageName: `${input.imageNamePrefix}-${target.name}-${startedAt}`,
    scheduleId: input.scheduleId,
    ...(input.metadata ? { metadata: input.metadata } : {}),
    ...(input.diskFormat ? { diskFormat: input.diskFormat } : {}),
    ...(input.compress ? { compress: true } : {}),
    ...(input.disks !== undefined ? { disks: input.disks } : {}),
  };
  const outcome: ScheduledSnapshotOutcome = {
    instance: target.instance,
    ...(target.instanceId ? { instanceId: target.instanceId } : {}),
    workflowId,
    status: 'failed',
    imageName: request.imageName,
  };
  try {
    const child = await startChild<typeof snapshotInstance>('snapshotInstance', {
      workflowId,
      taskQueue: workflowInfo().taskQueue,
      args: [request],
      // Cancelling (or terminating) this run cancels its snapshots, which undo their work.
      parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      typedSearchAttributes: [{ key: INSTANCE_ID, value: request.instance }],
    });
    const result = await child.result();
    return { ...outcome, status: 'completed', imageId: result.imageId };
  } catch (err) {
    if (CancellationScope.current().consideredCancelled) throw err;
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      return {
        ...outcome,
        status: 'busy',
        error: { type: 'InstanceBusy', message: `a snapshot of ${target.instance} is running already (workflow ${workflowId})` },
      };
    }
    const error = failureOf(err);
    log.warn('scheduled snapshot did not complete', {
      instance: target.instance,
      workflowId,
      failureType: error.type,
      error: error.message,
    });
    return { ...outcome, status: error.type === 'InstanceBusy' ? 'busy' : 'failed', error };
  }
}

/** The schedule's retention, after its snapshots; null when it has no rule. Errors are reported. */
async function applyRetention(input: ScheduledSnapshotsInput): Promise<ScheduledSnapshotsReport['retention']> {
  const policy = input.retention ?? {};
  if (!((policy.keepLast ?? 0) > 0 || (policy.keepDaily ?? 0) > 0 || (policy.keepWeekly ?? 0) > 0)) return null;
  const retention: NonNullable<ScheduledSnapshotsReport['retention']> = { decisions: [], deleted: [], errors: [] };
  try {
    const plan = await onMain(HOUSEKEEPING.retention, `plan retention of ${input.scheduleId}`).planScheduleRetention({
      scheduleId: input.scheduleId,
      policy,
    });
    retention.decisions = plan.decisions;
    for (const d of plan.decisions.filter((x) => x.action === 'delete')) {
      try {
        const outcome = await onMain(HOUSEKEEPING.retention, `retention: delete image ${d.imageId} (${d.name})`).deleteExpiredImage({
          scheduleId: input.scheduleId,
          imageId: d.imageId,
        });
        if (outcome.deleted) retention.deleted.push(d.imageId);
        // Protected or put to use meanwhile: kept after all, and the decision says why.
        if (outcome.kept) Object.assign(d, { action: 'keep', ...outcome.kept });
      } catch (err) {
        retention.errors.push(`delete ${d.imageId}: ${messageOf(err)}`);
      }
    }
  } catch (err) {
    retention.errors.push(`plan: ${messageOf(err)}`);
  }
  return retention;
}
