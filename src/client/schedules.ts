// Scheduled snapshots on Temporal Schedules. A vmsnap schedule is a Temporal Schedule whose id is
// in vmsnap's own namespace (vmsnap-schedule-<name>) and whose action starts scheduledSnapshots
// on the main task queue: snapshots of the selected instances, then the schedule's retention.
// Overlap policy SKIP: a run still going when the next is due makes that one skipped, not queued.
import type { DiskSelection } from '../shared/disk-set.js';
import {
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  isGrpcServiceError,
  type Client,
  type ScheduleDescription,
  type ScheduleExecutionResult,
  type ScheduleSpecDescription,
} from '@temporalio/client';
import { existsSync } from 'node:fs';
import { planRetention, retentionPolicyProblems, type RetentionPlan, type RetentionPolicy, type RetentionSources } from '../activities/retention.js';
import { connectCloud } from '../drivers/cloud.js';
import type { Config } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { DEFAULT_TASK_QUEUE } from '../shared/names.js';
import type { DiskFormat } from '../shared/types.js';
import { describeProblems, validateSnapshotRequest, type InputProblem } from '../shared/validation.js';
import { createStore } from '../store/index.js';
import type { ScheduledSnapshotsInput, ScheduledSnapshotsReport } from '../workflows/scheduled.js';
import { ClientError, ScheduleError } from './errors.js';
import { oneLine } from './snapshots.js';

export const SCHEDULE_ID_PREFIX = 'vmsnap-schedule-';
export const SCHEDULED_WORKFLOW_TYPE = 'scheduledSnapshots';
export const DEFAULT_CATCHUP_WINDOW = '10m';

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;
const MAX_INSTANCES = 1000;
const MAX_PREFIX = 100;
/** Temporal does not catch up on less than this. */
const MIN_CATCHUP_MS = 10_000;

export { ScheduleError, type ScheduleErrorCode } from './errors.js';

export interface CreateScheduleOptions {
  /** 1-100 letters, digits, "_", "." or "-"; the schedule's id is vmsnap-schedule-<name>. */
  name: string;
  /** Instance UUIDs or names: one, or a selection. */
  instances: string[];
  /** A cron expression (UTC), e.g. "0 3 * * *"; or else `every`. */
  cron?: string;
  /** An interval, e.g. "6h", "30m", "1d12h"; or else `cron`. */
  every?: string;
  /** How late a run missed while Temporal was away may still start; default 10m. */
  catchupWindow?: string;
  /** Applied after each run; none: every image is kept. */
  retention?: RetentionPolicy;
  /** Images are named <prefix>-<instance name>-<run start, ISO 8601 UTC>; default the name. */
  imageNamePrefix?: string;
  metadata?: Record<string, string>;
  diskFormat?: DiskFormat;
  compress?: boolean;
  /** Which disks each snapshot takes (SnapshotRequest.disks); default root. */
  disks?: DiskSelection;
  /** Create it paused. */
  paused?: boolean;
  /** The schedule's note (shown by describe; pause and unpause replace it). */
  note?: string;
}

/** What vmsnap keeps in the schedule's memo: what it was created with, as the user wrote it. */
interface ScheduleMemo {
  name: string;
  cron?: string;
  every?: string;
  catchupWindow: string;
}

/** A vmsnap schedule, as list and describe show it. */
export interface VmsnapSchedule {
  name: string;
  scheduleId: string;
  instances: string[];
  cron?: string;
  every?: string;
  catchupWindow: string;
  retention: RetentionPolicy;
  imageNamePrefix: string;
  taskQueue: string;
  paused: boolean;
  note?: string;
  /** The next times it will run (ISO 8601). */
  nextRuns: string[];
  /** Its latest runs, oldest first: the scheduledSnapshots workflows it started. */
  recentRuns: ScheduleRun[];
}

export interface ScheduleRun {
  workflowId: string;
  runId: string;
  scheduledAt: string;
  startedAt: string;
  /** With describe: the workflow's status, and for a completed run what its report says. */
  status?: string;
  completed?: number;
  busy?: number;
  failed?: number;
  deletedImages?: number;
}

export interface VmsnapScheduleDetails extends VmsnapSchedule {
  createdAt: string;
  /** Runs started so far; runs skipped because the previous one still ran; runs missed for good. */
  runsTaken: number;
  skippedOverlap: number;
  missedCatchupWindow: number;
  /** Workflow ids of its runs going on now. */
  running: string[];
  /** The report of its latest completed run. */
  lastReport?: ScheduledSnapshotsReport;
}

const UNIT_MS: Record<string, number> = { w: 604_800_000, d: 86_400_000, h: 3_600_000, m: 60_000, s: 1000 };

/** "6h", "30m", "1d12h", "90s" in milliseconds; undefined when it is not such a duration. */
export function parseDuration(text: string): number | undefined {
  const t = text.trim();
  if (!/^(\d+[wdhms])+$/.test(t)) return undefined;
  let ms = 0;
  for (const [, n, unit] of t.matchAll(/(\d+)([wdhms])/g)) ms += Number(n) * UNIT_MS[unit!]!;
  return ms;
}

/** Milliseconds as parseDuration reads them: 21600000 → "6h", 90000 → "1m30s". */
export function durationText(ms: number): string {
  let rest = Math.round(ms / 1000) * 1000;
  let text = '';
  for (const [unit, size] of Object.entries(UNIT_MS)) {
    if (unit === 'w') continue; // "14d" reads better than "2w"
    if (rest >= size) {
      text += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return text || '0s';
}

const CRON_SHORTHAND = /^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$/;
const CRON_FIELD = /^[0-9A-Za-z*?,/#-]+$/;
const CRON_HELP = 'give 5 fields, minute hour day-of-month month day-of-week, like "0 3 * * *" (03:00 UTC daily), or @daily, @hourly; or use --every 6h';

/** A first check of a cron expression; Temporal checks the values themselves. */
function cronProblem(cron: string): string | undefined {
  const expr = cron
    .trim()
    .replace(/^(CRON_TZ|TZ)=\S+\s+/, '')
    .replace(/\s+#.*$/, '');
  if (CRON_SHORTHAND.test(expr)) return undefined;
  if (expr.startsWith('@every ')) return parseDuration(expr.slice(7).split('/')[0] ?? '') ? undefined : `"${cron}" has no valid @every interval: ${CRON_HELP}`;
  const fields = expr.split(/\s+/);
  if (fields.length < 5 || fields.length > 7 || !fields.every((f) => CRON_FIELD.test(f))) return `"${cron}" is not a cron expression: ${CRON_HELP}`;
  return undefined;
}

/** The schedule id of a vmsnap schedule name; an id (vmsnap-schedule-...) is taken as it is. */
export function scheduleIdOf(nameOrId: string): string {
  return nameOrId.startsWith(SCHEDULE_ID_PREFIX) ? nameOrId : `${SCHEDULE_ID_PREFIX}${nameOrId}`;
}

function nameOf(scheduleId: string): string {
  return scheduleId.slice(SCHEDULE_ID_PREFIX.length);
}

/** Problems with a schedule to create; an empty list means it is valid. Nothing is contacted. */
/** A snapshot request's fields as a schedule names them. */
const SCHEDULE_FIELD: Record<string, string> = { instance: 'instances', imageName: 'imageNamePrefix' };

export function validateScheduleOptions(options: CreateScheduleOptions): InputProblem[] {
  const problems: InputProblem[] = [];
  const name = options.name;
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    problems.push({ field: 'name', message: 'must be 1-100 letters, digits, "_", "." or "-", starting with a letter or digit' });
  } else if (name.startsWith(SCHEDULE_ID_PREFIX)) {
    problems.push({ field: 'name', message: `must not start with "${SCHEDULE_ID_PREFIX}": that is the id vmsnap makes of the name` });
  }
  const instances = Array.isArray(options.instances) ? options.instances : [];
  if (!instances.length) problems.push({ field: 'instances', message: 'required: at least one instance UUID or name' });
  if (instances.length > MAX_INSTANCES) problems.push({ field: 'instances', message: `at most ${MAX_INSTANCES}` });

  if ((options.cron === undefined) === (options.every === undefined)) {
    problems.push({ field: 'cron', message: 'give either a cron expression or an interval (every), one of the two' });
  } else if (options.cron !== undefined) {
    const problem = cronProblem(options.cron);
    if (problem) problems.push({ field: 'cron', message: problem });
  } else {
    const ms = parseDuration(options.every ?? '');
    if (ms === undefined || ms < 1000)
      problems.push({
        field: 'every',
        message: `"${options.every}" is not an interval: give a duration like 30m, 6h or 1d (units s, m, h, d, w)`,
      });
  }
  if (options.catchupWindow !== undefined) {
    const ms = parseDuration(options.catchupWindow);
    if (ms === undefined || ms < MIN_CATCHUP_MS)
      problems.push({ field: 'catchupWindow', message: `"${options.catchupWindow}" is not a duration of 10s or more, like 10m or 1h` });
  }
  if (options.retention !== undefined) problems.push(...retentionPolicyProblems(options.retention));
  const prefix = options.imageNamePrefix ?? name;
  if (options.imageNamePrefix !== undefined && (typeof prefix !== 'string' || prefix.trim() === '' || [...prefix].length > MAX_PREFIX)) {
    problems.push({ field: 'imageNamePrefix', message: `must be 1-${MAX_PREFIX} characters` });
  }
  // Each instance's request as the schedule will make it, checked as the workflow will check it.
  const seen = new Set<string>();
  for (const instance of instances) {
    const sample = {
      instance,
      imageName: `${typeof prefix === 'string' ? prefix : 'x'}-${instance}-2000-01-01T00:00:00Z`,
      ...(options.metadata !== undefined ? { metadata: options.metadata } : {}),
      ...(options.diskFormat !== undefined ? { diskFormat: options.diskFormat } : {}),
      ...(options.compress !== undefined ? { compress: options.compress } : {}),
      ...(options.disks !== undefined ? { disks: options.disks } : {}),
    };
    for (const p of validateSnapshotRequest(sample)) {
      const field = SCHEDULE_FIELD[p.field] ?? p.field;
      const message = p.field === 'instance' ? `"${instance}" ${p.message}` : p.message;
      const key = `${field}: ${message}`;
      if (!seen.has(key)) problems.push({ field, message });
      seen.add(key);
    }
  }
  return problems;
}

function notFound(nameOrId: string): ScheduleError {
  return new ScheduleError('ScheduleNotFound', `no vmsnap schedule ${nameOf(scheduleIdOf(nameOrId))}: see vmsnap schedule list`);
}

/** Runs a call on one schedule, turning Temporal's "not found" into ours. */
async function onSchedule<T>(nameOrId: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) throw notFound(nameOrId);
    throw err;
  }
}

/** The gRPC status code under an error of the schedule client (it wraps them). */
function grpcCode(err: unknown): number | undefined {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) if (isGrpcServiceError(e)) return e.code;
  return undefined;
}

/**
 * Creates a schedule that snapshots the instances on a cron expression or interval and applies
 * retention after each run. A bad schedule is refused (InvalidInput) before anything is created,
 * or by Temporal (a cron value out of range), likewise InvalidInput; a name taken is ScheduleExists.
 */
export async function createSchedule(client: Client, options: CreateScheduleOptions, taskQueue = DEFAULT_TASK_QUEUE): Promise<VmsnapScheduleDetails> {
  const problems = validateScheduleOptions(options);
  if (problems.length) throw new VmsnapError('InvalidInput', `invalid schedule: ${describeProblems(problems)}`, { problems });
  const scheduleId = scheduleIdOf(options.name);
  const catchupWindow = options.catchupWindow ?? DEFAULT_CATCHUP_WINDOW;
  const input: ScheduledSnapshotsInput = {
    scheduleId,
    instances: [...new Set(options.instances)],
    imageNamePrefix: options.imageNamePrefix ?? options.name,
    ...(options.retention ? { retention: options.retention } : {}),
    ...(options.metadata ? { metadata: options.metadata } : {}),
    ...(options.diskFormat ? { diskFormat: options.diskFormat } : {}),
    ...(options.compress ? { compress: true } : {}),
    ...(options.disks !== undefined ? { disks: options.disks } : {}),
  };
  const memo: ScheduleMemo = { name: options.name, ...(options.cron ? { cron: options.cron } : { every: options.every! }), catchupWindow };
  try {
    await client.schedule.create({
      scheduleId,
      spec: options.cron ? { cronExpressions: [options.cron] } : { intervals: [intervalFromNow(parseDuration(options.every!)!)] },
      action: {
        type: 'startWorkflow',
        workflowType: SCHEDULED_WORKFLOW_TYPE,
        taskQueue,
        // Temporal appends each run's scheduled time to this.
        workflowId: `vmsnap-scheduled-${options.name}`,
        args: [input],
      },
      policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: parseDuration(catchupWindow)! },
      memo: { vmsnap: memo },
      state: { paused: options.paused ?? false, ...(options.note ? { note: options.note } : {}) },
    });
  } catch (err) {
    if (err instanceof ScheduleAlreadyRunning) {
      throw new ScheduleError(
        'ScheduleExists',
        `a schedule named ${options.name} exists already: choose another name, or delete it first (vmsnap schedule delete ${options.name})`,
      );
    }
    // The schedule client throws a TypeError for a spec Temporal refused (a cron value out of range).
    if (err instanceof TypeError || grpcCode(err) === 3) {
      throw new VmsnapError('InvalidInput', `Temporal refused the schedule (${oneLine((err as Error).message)}): correct the cron expression or interval`);
    }
    throw err;
  }
  return describeSchedule(client, scheduleId);
}

/**
 * An interval whose first run comes one interval after now: Temporal counts intervals from the
 * epoch, so without an offset `--every 24h` would first run at the next midnight UTC.
 */
function intervalFromNow(everyMs: number): { every: number; offset: number } {
  return { every: everyMs, offset: Date.now() % everyMs };
}

function runOf(r: ScheduleExecutionResult): ScheduleRun {
  return {
    workflowId: r.action.workflow.workflowId,
    runId: r.action.workflow.firstExecutionRunId,
    scheduledAt: r.scheduledAt.toISOString(),
    startedAt: r.takenAt.toISOString(),
  };
}

function vmsnapMemo(memo: Record<string, unknown> | undefined): Partial<ScheduleMemo> {
  const m = memo?.vmsnap;
  return typeof m === 'object' && m !== null ? (m as Partial<ScheduleMemo>) : {};
}

/** The spec in the user's words: the memo's, else what Temporal describes (an interval). */
function timing(memo: Partial<ScheduleMemo>, spec: ScheduleSpecDescription | undefined): { cron?: string; every?: string } {
  if (memo.cron) return { cron: memo.cron };
  if (memo.every) return { every: memo.every };
  const every = spec?.intervals?.[0]?.every;
  return typeof every === 'number' ? { every: durationText(every) } : {};
}

function scheduleOf(d: ScheduleDescription): VmsnapSchedule {
  const memo = vmsnapMemo(d.memo);
  const input = (d.action.args?.[0] ?? {}) as Partial<ScheduledSnapshotsInput>;
  return {
    name: memo.name ?? nameOf(d.scheduleId),
    scheduleId: d.scheduleId,
    instances: input.instances ?? [],
    ...timing(memo, d.spec),
    catchupWindow: durationText(d.policies.catchupWindow),
    retention: input.retention ?? {},
    imageNamePrefix: input.imageNamePrefix ?? '',
    taskQueue: d.action.taskQueue,
    paused: d.state.paused,
    ...(d.state.note ? { note: d.state.note } : {}),
    nextRuns: d.info.nextActionTimes.map((t) => t.toISOString()),
    recentRuns: d.info.recentActions.map(runOf),
  };
}

/** What a run's report says, in counts. */
function summaryOf(report: ScheduledSnapshotsReport): Pick<ScheduleRun, 'completed' | 'busy' | 'failed' | 'deletedImages'> {
  const count = (status: string) => report.snapshots.filter((s) => s.status === status).length;
  return {
    completed: count('completed'),
    busy: count('busy'),
    failed: count('failed'),
    deletedImages: report.retention?.deleted.length ?? 0,
  };
}

/** A schedule in detail: its settings, state, counters, and its latest runs with their outcome. */
export async function describeSchedule(client: Client, nameOrId: string): Promise<VmsnapScheduleDetails> {
  const d = await onSchedule(nameOrId, () => client.schedule.getHandle(scheduleIdOf(nameOrId)).describe());
  const schedule = scheduleOf(d);
  let lastReport: ScheduledSnapshotsReport | undefined;
  // Newest first, so the latest completed run's report is the one kept.
  for (const run of [...schedule.recentRuns].reverse()) {
    const handle = client.workflow.getHandle(run.workflowId, run.runId);
    try {
      const { status } = await handle.describe();
      run.status = status.name.toLowerCase();
      if (status.name === 'COMPLETED') {
        const report = (await handle.result()) as ScheduledSnapshotsReport;
        Object.assign(run, summaryOf(report));
        lastReport ??= report;
      }
    } catch {
      run.status = 'unknown'; // its history is gone (past the namespace's retention)
    }
  }
  return {
    ...schedule,
    createdAt: d.info.createdAt.toISOString(),
    runsTaken: d.info.numActionsTaken,
    skippedOverlap: d.info.numActionsSkippedOverlap,
    missedCatchupWindow: d.info.numActionsMissedCatchupWindow,
    running: d.info.runningActions.map((a) => a.workflow.workflowId),
    ...(lastReport ? { lastReport } : {}),
  };
}

/**
 * vmsnap's schedules (only those: ids vmsnap-schedule-*), by name. Temporal's schedule list is
 * eventually consistent: one created a moment ago may show a second later.
 */
export async function listSchedules(client: Client): Promise<VmsnapSchedule[]> {
  const found: VmsnapSchedule[] = [];
  for await (const s of client.schedule.list()) {
    if (!s.scheduleId.startsWith(SCHEDULE_ID_PREFIX)) continue;
    // The list has no action arguments: describe says what each one snapshots.
    try {
      found.push(scheduleOf(await client.schedule.getHandle(s.scheduleId).describe()));
    } catch (err) {
      if (!(err instanceof ScheduleNotFoundError)) throw err; // deleted since it was listed
    }
  }
  return found.sort((a, b) => a.name.localeCompare(b.name));
}

export async function pauseSchedule(client: Client, nameOrId: string, note = 'paused with vmsnap schedule pause'): Promise<VmsnapScheduleDetails> {
  await onSchedule(nameOrId, () => client.schedule.getHandle(scheduleIdOf(nameOrId)).pause(note));
  return describeSchedule(client, nameOrId);
}

export async function unpauseSchedule(client: Client, nameOrId: string, note = 'unpaused with vmsnap schedule unpause'): Promise<VmsnapScheduleDetails> {
  await onSchedule(nameOrId, () => client.schedule.getHandle(scheduleIdOf(nameOrId)).unpause(note));
  return describeSchedule(client, nameOrId);
}

/** Starts a run now (skipped if one is going on). */
export async function triggerSchedule(client: Client, nameOrId: string): Promise<void> {
  await onSchedule(nameOrId, () => client.schedule.getHandle(scheduleIdOf(nameOrId)).trigger(ScheduleOverlapPolicy.SKIP));
}

/** Deletes the schedule. A run going on goes on; the images it made stay. */
export async function deleteSchedule(client: Client, nameOrId: string): Promise<{ scheduleId: string; deleted: true }> {
  const scheduleId = scheduleIdOf(nameOrId);
  await onSchedule(nameOrId, () => client.schedule.getHandle(scheduleId).delete());
  return { scheduleId, deleted: true };
}

/** Glance and the store as the config names them, closed again after `use`. */
async function withSources<T>(config: Config, use: (sources: RetentionSources) => Promise<T>): Promise<T> {
  // The in-use check needs the inventory: a preview without it could show an image as deletable.
  if (config.storeUrl.startsWith('sqlite:') && !existsSync(config.storePath)) {
    throw new ClientError('StoreUnavailable', `no vmsnap store at ${config.storePath}: point VMSNAP_STORE_URL (or VMSNAP_DATA_DIR) at the workers' store`);
  }
  const cloud = await connectCloud(config);
  const store = createStore(config);
  try {
    return await use({ imageService: cloud.imageService, store });
  } finally {
    await Promise.allSettled([cloud.close(), store.close()]);
  }
}

/**
 * What retention would do to the schedule's images now, and why, without deleting anything: the
 * same plan a run makes. `policy` asks "what if": its rules replace the schedule's own (the
 * others stay).
 */
export async function previewRetention(
  client: Client,
  config: Config,
  nameOrId: string,
  options: { policy?: RetentionPolicy; sources?: RetentionSources } = {},
): Promise<RetentionPlan> {
  const schedule = scheduleOf(await onSchedule(nameOrId, () => client.schedule.getHandle(scheduleIdOf(nameOrId)).describe()));
  const policy = { ...schedule.retention, ...options.policy };
  const problems = retentionPolicyProblems(policy);
  if (problems.length) throw new VmsnapError('InvalidInput', `invalid retention policy: ${describeProblems(problems)}`, { problems });
  if (options.sources) return planRetention(options.sources, schedule.scheduleId, policy);
  return withSources(config, (sources) => planRetention(sources, schedule.scheduleId, policy));
}
