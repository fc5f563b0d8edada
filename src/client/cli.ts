// vmsnap: the operator's command line. Start a snapshot and follow it, look at snapshots, cancel
// one, list the instance inventory. `--json` makes every command print one JSON document on
// stdout and nothing else; errors are one line on stderr, `vmsnap: <what>: <what to do>`.
import type { Client } from '@temporalio/client';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { randomUUID } from 'node:crypto';
import { readFileSync, realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig, type Config } from '../shared/config.js';
import { VmsnapError, type ErrorCode } from '../shared/errors.js';
import type { RestoreRequest, RestoreResult, RollbackResult, SnapshotRequest, SnapshotResult } from '../shared/types.js';
import { validateRestoreRequest, validateRollbackRequest, validateSnapshotRequest, type InputProblem } from '../shared/validation.js';
import { getRestoreProgress, resolveImage, restoreResult, startRestore, startRollback, type RestoreProgressDetails } from './restores.js';
import { ClientError } from './errors.js';
import { EXIT, EXIT_CODES_HELP, exitCodeOf, failureTypeOf, type ExitCode } from './exit-codes.js';
import { instanceAliases, listInstances } from './inventory.js';
import { ProgressView, formatBytes, formatDuration } from './progress.js';
import {
  DEFAULT_CATCHUP_WINDOW,
  ScheduleError,
  createSchedule,
  deleteSchedule,
  describeSchedule,
  listSchedules,
  pauseSchedule,
  previewRetention,
  triggerSchedule,
  unpauseSchedule,
  validateScheduleOptions,
  type CreateScheduleOptions,
  type VmsnapSchedule,
} from './schedules.js';
import type { RetentionPolicy } from '../activities/retention.js';
import {
  LISTABLE_STATUSES,
  cancelSnapshot,
  connectClient,
  findSnapshot,
  getProgress,
  listSnapshots,
  oneLine,
  snapshotResult,
  startSnapshot,
  type ListableStatus,
  type SnapshotHandle,
  type SnapshotProgressDetails,
  type SnapshotSummary,
} from './snapshots.js';

export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  env: Record<string, string | undefined>;
}

interface GlobalOptions {
  json?: boolean;
  debug?: boolean;
}

/** How a waited-for snapshot ended, as `snapshot --wait --json` and `cancel --wait --json` print it. */
interface Outcome {
  status: string;
  result?: SnapshotResult;
  error?: { type: string; message: string };
}

const SETTINGS_HELP = `Settings (environment, or a JSON file named by VMSNAP_CONFIG_FILE):
  TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_TLS_*   the Temporal frontend, read as the temporal CLI
  TEMPORAL_API_KEY, TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE   reads them (also from temporal.toml)
  VMSNAP_TASK_QUEUE                                      the workers' main task queue (default vmsnap)
  VMSNAP_STORE_URL (or VMSNAP_DATA_DIR)                  the store, as the workers have it, for \`vmsnap instances\`
  OS_CLOUD, OS_CLIENT_CONFIG_FILE, OS_* (clouds.yaml)    Keystone and Glance, for image names and retention previews
  VMSNAP_GLANCE_URL                                      Glance's URL, over the catalog's
  VMSNAP_TEMPORAL_UI_URL                                 Web UI, for links in the output`;

const FIELD_FLAGS: Record<string, string> = {
  instance: '<instance>',
  imageName: '--name',
  diskFormat: '--format',
  compress: '--compress',
  imageId: '--image-id',
  asNew: '--as-new',
};

/** A request problem in the words of the command line: the option, then what is wrong. */
function describeCliProblem(p: InputProblem): string {
  if (p.field.startsWith('metadata.')) return `--metadata ${p.field.slice('metadata.'.length)} ${p.message}`;
  const flag = FIELD_FLAGS[p.field] ?? p.field;
  return `${flag} (${p.field}) ${p.message}`;
}

function metadataOption(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`expected key=value, got "${value}"`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`expected a positive whole number, got "${value}"`);
  return n;
}

function version(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

class Session {
  exitCode: ExitCode = EXIT.ok;
  private jsonWritten = false;
  private config: Config | undefined;
  private client: Client | undefined;

  constructor(readonly io: CliIo) {}

  getConfig(): Config {
    this.config ??= loadConfig(this.io.env);
    return this.config;
  }

  async getClient(): Promise<Client> {
    this.client ??= await connectClient(this.getConfig().temporal, { connectTimeoutMs: 5000 });
    return this.client;
  }

  async close(): Promise<void> {
    await this.client?.connection.close().catch(() => undefined);
  }

  /** Text for people: on stdout, except in --json mode where stdout holds the document only. */
  say(global: GlobalOptions, text: string): void {
    if (!global.json) this.io.stdout.write(`${text}\n`);
  }

  json(doc: unknown): void {
    this.jsonWritten = true;
    this.io.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
  }

  /** One line on stderr; in --json mode also an error document on stdout if none was printed. */
  fail(global: GlobalOptions, err: unknown, code = err instanceof ScheduleError ? err.exitCode : exitCodeOf(err)): void {
    this.exitCode = code;
    const message = errorLine(err, this.config);
    this.io.stderr.write(`vmsnap: ${message}\n`);
    if (global.debug && err instanceof Error && err.stack) this.io.stderr.write(`${err.stack}\n`);
    if (global.json && !this.jsonWritten) {
      this.json({ error: { type: errorType(err), message, exitCode: code } });
    }
  }

  webUiLink(workflowId: string, runId?: string): string | undefined {
    const ui = this.io.env.VMSNAP_TEMPORAL_UI_URL?.replace(/\/+$/, '');
    if (!ui) return undefined;
    const ns = encodeURIComponent(this.getConfig().temporal.namespace);
    return `${ui}/namespaces/${ns}/workflows/${encodeURIComponent(workflowId)}${runId ? `/${runId}` : ''}`;
  }
}

function errorType(err: unknown): string {
  if (err instanceof ClientError || err instanceof VmsnapError || err instanceof ScheduleError) return err.code;
  if (err instanceof WorkflowFailedError) return failureTypeOf(err);
  if (err instanceof CommanderError) return 'Usage';
  return err instanceof Error ? err.name : 'Error';
}

/** `<what happened>: <what to do>` on one line. */
function errorLine(err: unknown, config: Config | undefined): string {
  if (err instanceof VmsnapError && err.code === 'ConfigError') {
    const setting = String(err.details.setting ?? 'the setting');
    const where = setting.startsWith('OS_') ? 'clouds.yaml, secure.yaml' : 'the file VMSNAP_CONFIG_FILE names';
    return `${oneLine(err.message)}: correct ${setting} in the environment (or in ${where})`;
  }
  if (err instanceof ClientError || err instanceof VmsnapError || err instanceof ScheduleError) return oneLine(err.message);
  if (err instanceof WorkflowFailedError) {
    const type = failureTypeOf(err);
    if (type === 'Cancelled') return 'the snapshot was cancelled: vmsnap undid its work (guest state, temp files, unfinished image); start a new one with vmsnap snapshot';
    if (type === 'Terminated') {
      return 'the snapshot workflow was terminated: a guest it had paused runs again within seconds (its host worker resumes it, VMSNAP_PAUSE_WATCH_MS); the reconciler removes its unfinished image and frees the task state within a minute (VMSNAP_RECONCILE_INTERVAL_MS): see vmsnap instances, then snapshot again';
    }
    const cause = err.cause instanceof ApplicationFailure ? err.cause.message : (err.cause?.message ?? err.message);
    return `snapshot failed (${type}): ${oneLine(cause)}`;
  }
  if (err instanceof CommanderError) return `${oneLine(err.message.replace(/^error: /, '')).replace(/\.$/, '')}: see vmsnap --help`;
  const grpc = err as { code?: unknown; details?: unknown };
  if (exitCodeOf(err) === EXIT.unavailable && typeof grpc.code === 'number') {
    return `lost Temporal at ${config?.temporal.address ?? 'TEMPORAL_ADDRESS'} (${oneLine(String(grpc.details ?? (err as Error).message))}): is the Temporal server running?`;
  }
  return `${oneLine(err instanceof Error ? err.message : String(err))}: run again with --debug for details`;
}

/**
 * Waits for the snapshot to end, showing its progress (on a terminal one line kept current;
 * otherwise plain lines). Resolves with how it ended; never rejects for a failed snapshot.
 */
async function follow(session: Session, handle: SnapshotHandle, view: ProgressView | undefined, pollMs: number): Promise<{ result?: SnapshotResult; error?: unknown; lastPhase?: string }> {
  let settled = false;
  const outcome = snapshotResult(handle).then(
    (result) => ({ result }),
    (error: unknown) => ({ error }),
  );
  void outcome.then(() => (settled = true));
  let misses = 0;
  let lastPhase: string | undefined;
  while (!settled) {
    if (view) {
      try {
        const p = await handle.client.withDeadline(Date.now() + 5000, () => getProgress(handle));
        misses = 0;
        lastPhase = p.phase;
        if (!settled) view.update(p);
      } catch {
        // No answer now (no worker yet, a worker restarting): say so once, keep waiting.
        if (++misses === 3) {
          const queue = session.getConfig().temporal.taskQueue;
          view.end();
          session.io.stderr.write(`vmsnap: no worker answers on task queue ${queue} yet: is a vmsnap worker running with VMSNAP_TASK_QUEUE=${queue}? still waiting\n`);
        }
      }
    }
    await Promise.race([outcome, sleep(pollMs)]);
  }
  return { ...(await outcome), ...(lastPhase ? { lastPhase } : {}) };
}

function outcomeOf(ended: { result?: SnapshotResult; error?: unknown }): Outcome {
  if (ended.result) return { status: 'completed', result: ended.result };
  const err = ended.error;
  if (err instanceof WorkflowFailedError) {
    const type = failureTypeOf(err);
    const status = type === 'Cancelled' ? 'cancelled' : type === 'Terminated' ? 'terminated' : type === 'TimedOut' ? 'timed-out' : 'failed';
    const message = err.cause instanceof ApplicationFailure ? err.cause.message : (err.cause?.message ?? err.message);
    return { status, error: { type, message: oneLine(message) } };
  }
  throw err;
}

function resultText(instance: string, result: SnapshotResult, link: string | undefined): string {
  const phases = Object.entries(result.phaseDurationsMs)
    .map(([phase, ms]) => `${phase} ${formatDuration(ms ?? 0)}`)
    .join(', ');
  const total = Object.values(result.phaseDurationsMs).reduce((a: number, b) => a + (b ?? 0), 0);
  return [
    `snapshot of ${instance} completed in ${formatDuration(total)}`,
    `  image     ${result.imageId} "${result.imageName}", active in Glance`,
    `  size      ${formatBytes(result.size)} ${result.diskFormat} (virtual ${formatBytes(result.virtualSize)})`,
    `  sha512    ${result.sha512}`,
    `  md5       ${result.md5}`,
    `  instance  ${result.instanceId} on ${result.host}, was ${result.priorPowerState}, guest paused ${formatDuration(result.guestPauseMs)}`,
    `  mode      ${result.mode}${result.modeReason ? ` (${result.modeReason})` : ''}, ${result.consistency}${result.quiesceNote ? ` (${result.quiesceNote})` : ''}`,
    ...(result.guestWriteStallMs !== undefined ? [`  writes    the guest's longest disk write during the copy took ${result.guestWriteStallMs} ms`] : []),
    `  phases    ${phases}`,
    ...(link ? [`  web UI    ${link}`] : []),
  ].join('\n');
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

/** How long ago, for figures that may be stale (the inventory's power states). */
function age(iso: string | undefined): string {
  const ms = iso ? Date.now() - Date.parse(iso) : NaN;
  if (!Number.isFinite(ms)) return '-';
  return `${formatDuration(Math.max(0, ms))} ago`;
}

function since(iso: string | undefined): string {
  return iso ? `${iso.replace('T', ' ').slice(0, 19)}Z` : '-';
}

export function buildProgram(session: Session): Command {
  const { io } = session;
  const program = new Command('vmsnap')
    .description('Snapshot libvirt/QEMU instances into OpenStack Glance as durable Temporal workflows (like Nova createImage).')
    .version(version(), '--version', 'print the version')
    .option('--json', 'print one JSON document on stdout, nothing else')
    .option('--debug', 'print stack traces with errors')
    .configureHelp({ showGlobalOptions: true })
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // Errors are printed once, our way, by the caller of parseAsync.
      outputError: () => undefined,
    })
    .exitOverride()
    .addHelpText('after', `\n${EXIT_CODES_HELP}\n\n${SETTINGS_HELP}\n`);

  const globals = (cmd: Command) => cmd.optsWithGlobals<GlobalOptions>();

  program
    .command('snapshot')
    .description('snapshot an instance into a new Glance image; with --wait, follow it to the end')
    .argument('<instance>', 'instance UUID (libvirt domain UUID) or libvirt domain name')
    .requiredOption('--name <name>', 'name of the new image (1-255 characters)')
    .option('--metadata <key=value>', 'an image property; repeat for more', metadataOption)
    .addOption(new Option('--format <format>', 'disk format of the image (default qcow2)').choices(['qcow2', 'raw']))
    .option('--compress', 'compress the qcow2 image: smaller upload, slower copy')
    .addOption(new Option('--mode <mode>', 'live: copy while the guest runs; cold: pause it for the copy; auto: live where possible (default: the workers\' VMSNAP_DEFAULT_MODE)').choices(['auto', 'cold', 'live']))
    .addOption(new Option('--quiesce <when>', 'live mode: freeze the guest filesystems through the guest agent (default try)').choices(['try', 'require', 'never']))
    .option('--image-id <uuid>', 'id of the new image (default: a new UUID, printed at once)')
    .option('--wait', 'wait until the snapshot ends, showing its progress')
    .addHelpText('after', `\n${EXIT_CODES_HELP}\n`)
    .action(async (instance: string, opts: { name: string; metadata?: Record<string, string>; format?: 'qcow2' | 'raw'; compress?: boolean; mode?: 'auto' | 'cold' | 'live'; quiesce?: 'try' | 'require' | 'never'; imageId?: string; wait?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const request: SnapshotRequest = {
        instance,
        imageName: opts.name,
        // The image id is chosen here so that it is known (and printed) from the first moment.
        imageId: opts.imageId ?? randomUUID(),
        ...(opts.metadata ? { metadata: opts.metadata } : {}),
        ...(opts.format ? { diskFormat: opts.format } : {}),
        ...(opts.compress ? { compress: true } : {}),
        ...(opts.mode ? { mode: opts.mode } : {}),
        ...(opts.quiesce ? { quiesce: opts.quiesce } : {}),
      };
      // Bad input is refused before any connection: it is the user's to fix, whatever the stack does.
      const problems = validateSnapshotRequest(request);
      if (problems.length) {
        throw new VmsnapError('InvalidInput', `invalid request: ${problems.map(describeCliProblem).join('; ')}: correct it and run again`, { problems });
      }
      const config = session.getConfig();
      const client = await session.getClient();
      const handle = await startSnapshot(client, request, config.temporal.taskQueue);
      const runId = handle.firstExecutionRunId;
      const started = { workflowId: handle.workflowId, runId, instance, imageId: request.imageId! };
      if (!opts.wait) {
        if (g.json) session.json({ ...started, status: 'running' });
        session.say(g, `started snapshot of ${instance}: workflow ${handle.workflowId}, image ${request.imageId}`);
        session.say(g, `follow it with: vmsnap status ${instance}${session.webUiLink(handle.workflowId, runId) ? `, or ${session.webUiLink(handle.workflowId, runId)}` : ''}`);
        return;
      }
      session.say(g, `snapshot of ${instance}: workflow ${handle.workflowId}, image ${request.imageId}`);
      const { cause, ...outcome } = await waitAndReport(session, g, handle, instance);
      if (g.json) session.json({ ...started, ...outcome });
      if (outcome.result) session.say(g, resultText(instance, outcome.result, session.webUiLink(handle.workflowId, runId)));
      // After the JSON document, so that stdout holds that one document (with the error in it).
      if (cause) session.fail(g, cause);
    });

  const restore = program
    .command('restore')
    .description('restore an instance from a Glance image (its disk replaced, the previous disk kept for rollback); with --wait, follow it')
    .argument('<instance>', 'instance UUID (libvirt domain UUID) or libvirt domain name')
    // Not a required option: commander would then ask it of `restore rollback` too.
    .option('--image <id|name>', 'the image to restore (required): its id, or its name when one image has it')
    .option('--allow-other-image', 'accept an image that is not a snapshot of this instance')
    .option('--allow-grow', 'accept an image larger (virtual size) than the instance\'s disk: the disk grows')
    .option('--as-new <name>', 'restore as a new instance of this name (new UUID, MAC and disk), leaving the instance untouched')
    .option('--wait', 'wait until the restore ends, showing its progress')
    .addHelpText('after', `\nrestore rollback <instance>: put the pre-restore disk back while it is kept.\n\n${EXIT_CODES_HELP}\n`)
    .action(async (instance: string, opts: { image?: string; allowOtherImage?: boolean; allowGrow?: boolean; asNew?: string; wait?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      if (!opts.image) throw new VmsnapError('InvalidInput', 'restore needs --image <id|name>: the image to restore');
      const config = session.getConfig();
      // Checked before the image is looked up: bad input is refused before any connection.
      const probe = validateRestoreRequest({ instance, imageId: '00000000-0000-4000-8000-000000000000', ...(opts.asNew !== undefined ? { asNew: opts.asNew } : {}) });
      if (probe.length) throw new VmsnapError('InvalidInput', `invalid request: ${probe.map(describeCliProblem).join('; ')}: correct it and run again`);
      const imageId = await resolveImage(config, opts.image);
      const request: RestoreRequest = {
        instance,
        imageId,
        ...(opts.allowOtherImage ? { allowOtherImage: true } : {}),
        ...(opts.allowGrow ? { allowGrow: true } : {}),
        ...(opts.asNew ? { asNew: opts.asNew } : {}),
      };
      const client = await session.getClient();
      const handle = await startRestore(client, request, config.temporal.taskQueue);
      const runId = handle.firstExecutionRunId;
      const started = { workflowId: handle.workflowId, runId, instance, imageId };
      if (!opts.wait) {
        if (g.json) session.json({ ...started, status: 'running' });
        session.say(g, `started restore of ${instance} from image ${imageId}: workflow ${handle.workflowId}`);
        const link = session.webUiLink(handle.workflowId, runId);
        session.say(g, `follow it with: temporal workflow describe --workflow-id ${handle.workflowId}${link ? `, or ${link}` : ''}`);
        return;
      }
      session.say(g, `restore of ${instance} from image ${imageId}: workflow ${handle.workflowId}`);
      const ended = await followWork(session, g, () => restoreResult(handle), () => getRestoreProgress(handle), instance);
      if (g.json) session.json({ ...started, ...ended.outcome });
      if (ended.outcome.result) session.say(g, restoreText(instance, ended.outcome.result as RestoreResult, session.webUiLink(handle.workflowId, runId)));
      if (ended.cause) session.fail(g, ended.cause.said, ended.cause.code);
    });

  restore
    .command('rollback')
    .description('put back the disk an instance had before its last restore (while it is kept), and start the guest as it was')
    .argument('<instance>', 'instance UUID or libvirt domain name')
    .action(async (instance: string, _opts: unknown, cmd: Command) => {
      const g = globals(cmd);
      const problems = validateRollbackRequest({ instance });
      if (problems.length) throw new VmsnapError('InvalidInput', `invalid request: ${problems.map(describeCliProblem).join('; ')}: correct it and run again`);
      const config = session.getConfig();
      const handle = await startRollback(await session.getClient(), { instance }, config.temporal.taskQueue);
      const ended = await followWork(session, g, () => handle.result(), undefined, instance);
      if (g.json) session.json({ workflowId: handle.workflowId, runId: handle.firstExecutionRunId, instance, ...ended.outcome });
      const r = ended.outcome.result as RollbackResult | undefined;
      if (r) session.say(g, `rollback of ${instance} completed: ${r.diskPath} is the pre-restore disk again; guest ${r.priorPowerState}, down ${formatDuration(r.downtimeMs)}`);
      if (ended.cause) session.fail(g, ended.cause.said, ended.cause.code);
    });

  program
    .command('status')
    .description("show a snapshot's state: phase, percent and bytes while it runs, its result or error after")
    .argument('<instance|workflow-id>', 'instance UUID or name (its latest snapshot), or a workflow id')
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const g = globals(cmd);
      const config = session.getConfig();
      const client = await session.getClient();
      const found = await findSnapshot(client, ref, await instanceAliases(config, ref));
      if (!found) throw new ClientError('SnapshotNotFound', `no snapshot of ${ref} found: check the instance UUID or name, or see vmsnap list`);
      const handle = client.workflow.getHandle(found.workflowId, found.runId) as SnapshotHandle;
      const doc: SnapshotSummary & { progress?: SnapshotProgressDetails; progressError?: string; result?: SnapshotResult; error?: Outcome['error'] } = { ...found };
      if (found.status === 'running') {
        try {
          doc.progress = await client.withDeadline(Date.now() + 5000, () => getProgress(handle));
        } catch (err) {
          doc.progressError = `no answer to the progress query (${oneLine((err as Error).message)}): is a vmsnap worker running on task queue ${found.taskQueue}?`;
        }
      } else {
        const ended = outcomeOf(await snapshotResult(handle).then((result) => ({ result }), (error: unknown) => ({ error })));
        doc.result = ended.result;
        doc.error = ended.error;
      }
      if (g.json) {
        session.json(doc);
        return;
      }
      const p = doc.progress;
      const view = new ProgressView(io.stdout, 'plain');
      const lines = [
        ['workflow', `${found.workflowId} (run ${found.runId})`],
        ['status', found.status],
        ['phase', p ? describeProgress(view, p) : (found.phase ?? '-')],
        ['instance', `${found.instanceId ?? '-'}${found.host ? ` on ${found.host}` : ''}`],
        ['image', doc.result?.imageId ?? p?.imageId ?? found.imageId ?? '-'],
        ...(p ? [['task state', p.taskState ?? 'None']] : []),
        ...(p?.step?.lastFailure ? [['retrying', `${p.step.activityType} attempt ${p.step.attempt}: ${p.step.lastFailure}`]] : []),
        ['started', since(found.startTime)],
        ['closed', since(found.closeTime)],
        ...(doc.result ? [['size', `${formatBytes(doc.result.size)} ${doc.result.diskFormat}, sha512 ${doc.result.sha512.slice(0, 16)}…`]] : []),
        ...(doc.result ? [['paused', formatDuration(doc.result.guestPauseMs)]] : []),
        ...(doc.error ? [['error', `${doc.error.type}: ${doc.error.message}`]] : []),
        ...(doc.progressError ? [['note', doc.progressError]] : []),
        ...(session.webUiLink(found.workflowId, found.runId) ? [['web UI', session.webUiLink(found.workflowId, found.runId)!]] : []),
      ];
      session.say(g, table(lines));
    });

  program
    .command('list')
    .description('list snapshots, most recently started first (from Temporal visibility)')
    .option('--instance <instance>', 'only snapshots of this instance (UUID or name)')
    .addOption(new Option('--status <status>', 'only snapshots in this state').choices(Object.keys(LISTABLE_STATUSES)))
    .option('--limit <n>', 'at most this many', positiveInt, 20)
    .action(async (opts: { instance?: string; status?: ListableStatus; limit: number }, cmd: Command) => {
      const g = globals(cmd);
      const config = session.getConfig();
      if (opts.instance !== undefined && validateSnapshotRequest({ instance: opts.instance, imageName: 'x' }).length) {
        throw new VmsnapError('InvalidInput', `--instance "${opts.instance}" is not an instance UUID or name: give one as virsh list shows it`);
      }
      const client = await session.getClient();
      const instance = opts.instance !== undefined ? [opts.instance, ...(await instanceAliases(config, opts.instance))] : undefined;
      const rows = await listSnapshots(client, { instance, status: opts.status, limit: opts.limit });
      if (g.json) {
        session.json(rows);
        return;
      }
      if (!rows.length) {
        session.say(g, 'no snapshots found');
        return;
      }
      session.say(
        g,
        table([
          ['WORKFLOW ID', 'STATUS', 'PHASE', 'IMAGE', 'STARTED', 'CLOSED'],
          ...rows.map((r) => [r.workflowId, r.status, r.phase ?? '-', r.imageId ?? '-', since(r.startTime), since(r.closeTime)]),
        ]),
      );
    });

  program
    .command('cancel')
    .description('cancel a running snapshot: it resumes the guest, deletes the unfinished image and ends cancelled')
    .argument('<instance|workflow-id>', 'instance UUID or name, or a workflow id')
    .option('--wait', 'wait until the snapshot has undone its work and ended')
    .action(async (ref: string, opts: { wait?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const config = session.getConfig();
      const client = await session.getClient();
      const { handle, runId } = await cancelSnapshot(client, ref, await instanceAliases(config, ref));
      const doc = { workflowId: handle.workflowId, runId, cancelRequested: true };
      if (!opts.wait) {
        if (g.json) session.json(doc);
        session.say(g, `cancellation of ${handle.workflowId} requested: it undoes its work and ends cancelled; see vmsnap status ${ref}`);
        return;
      }
      const outcome = outcomeOf(await follow(session, handle, undefined, 1000));
      if (g.json) session.json({ ...doc, ...outcome });
      if (outcome.status === 'cancelled') {
        session.say(g, `snapshot ${handle.workflowId} cancelled: the guest is back in its prior state and no image was kept`);
      } else {
        session.exitCode = EXIT.failed;
        io.stderr.write(`vmsnap: the snapshot ended ${outcome.status} before the cancellation took effect: see vmsnap status ${ref}\n`);
      }
    });

  program
    .command('instances')
    .description('list the instances the host workers discovered (read from the store, read-only)')
    .option('--all', 'include instances gone from their host')
    .action(async (opts: { all?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const rows = await listInstances(session.getConfig(), { includeDeleted: opts.all });
      if (g.json) {
        session.json(rows);
        return;
      }
      if (!rows.length) {
        session.say(g, 'no instances known yet: a host worker discovers them from libvirt when it starts');
        return;
      }
      session.say(g, 'power states as their host worker last read them from libvirt (POWER READ); vmsnap status shows a running snapshot live');
      session.say(
        g,
        table([
          ['ID', 'NAME', 'HOST', 'POWER', 'TASK', 'UPDATED', 'POWER READ'],
          ...rows.map((r) => [r.id, r.name, r.host, r.deletedAt ? 'deleted' : r.powerState, r.taskState ?? 'None', since(r.updatedAt), age(r.powerStateAt)]),
        ]),
      );
    });

  addScheduleCommands(program, session, globals);
  return program;
}

const SCHEDULE_FLAGS: Record<string, string> = {
  name: '<name>',
  instances: '--instance',
  cron: '--cron',
  every: '--every',
  catchupWindow: '--catchup-window',
  imageNamePrefix: '--image-prefix',
  'retention.keepLast': '--keep-last',
  'retention.keepDaily': '--keep-daily',
  'retention.keepWeekly': '--keep-weekly',
  diskFormat: '--format',
  compress: '--compress',
};

const SCHEDULE_HELP = `Schedules are Temporal Schedules with ids vmsnap-schedule-<name>; each run snapshots the
instances (workflow scheduledSnapshots), then deletes the images its retention does not keep.
Exit codes: 2 a bad cron expression, interval or count, or a name taken; 3 no such schedule.`;

function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a whole number, 0 or more, got "${value}"`);
  return n;
}

/** Repeatable, and comma-separated: --instance a --instance b,c. */
function listOption(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), ...value.split(',').map((v) => v.trim()).filter(Boolean)];
}

function retentionText(policy: RetentionPolicy): string {
  const rules = [
    ['keep-last', policy.keepLast],
    ['keep-daily', policy.keepDaily],
    ['keep-weekly', policy.keepWeekly],
  ].filter(([, n]) => typeof n === 'number' && n > 0);
  return rules.length ? rules.map(([rule, n]) => `${rule} ${n}`).join(', ') : 'keep all';
}

function whenText(s: Pick<VmsnapSchedule, 'cron' | 'every'>): string {
  return s.cron ? `cron "${s.cron}" (UTC)` : s.every ? `every ${s.every}` : '-';
}

function retentionOf(opts: { keepLast?: number; keepDaily?: number; keepWeekly?: number }): RetentionPolicy | undefined {
  const policy: RetentionPolicy = {
    ...(opts.keepLast !== undefined ? { keepLast: opts.keepLast } : {}),
    ...(opts.keepDaily !== undefined ? { keepDaily: opts.keepDaily } : {}),
    ...(opts.keepWeekly !== undefined ? { keepWeekly: opts.keepWeekly } : {}),
  };
  return Object.keys(policy).length ? policy : undefined;
}

function addScheduleCommands(program: Command, session: Session, globals: (cmd: Command) => GlobalOptions): void {
  const schedule = program
    .command('schedule')
    .description('snapshots on a schedule (cron or interval), with retention: create, list, describe, pause, unpause, trigger, delete; retention --dry-run')
    .addHelpText('after', `\n${SCHEDULE_HELP}\n`);

  schedule
    .command('create')
    .description('create a schedule that snapshots one instance or a selection, then applies its retention')
    .argument('<name>', 'name of the schedule (letters, digits, "_", "." and "-")')
    .requiredOption('--instance <instance>', 'instance UUID or name; repeat, or separate with commas, for a selection', listOption)
    .option('--cron <expression>', 'when, as a cron expression in UTC, e.g. "0 3 * * *"')
    .option('--every <duration>', 'when, as an interval, e.g. 6h, 30m, 1d')
    .option('--keep-last <n>', 'retention: keep the n newest images of each instance', nonNegativeInt)
    .option('--keep-daily <n>', 'retention: keep the newest image of each of the last n days that have one', nonNegativeInt)
    .option('--keep-weekly <n>', 'retention: keep the newest image of each of the last n weeks that have one', nonNegativeInt)
    .option('--catchup-window <duration>', 'how late a run missed while Temporal was away may still start', DEFAULT_CATCHUP_WINDOW)
    .option('--image-prefix <prefix>', 'images are named <prefix>-<instance>-<time> (default: the schedule name)')
    .option('--metadata <key=value>', 'an image property; repeat for more', metadataOption)
    .addOption(new Option('--format <format>', 'disk format of the images (default qcow2)').choices(['qcow2', 'raw']))
    .option('--compress', 'compress the qcow2 images')
    .option('--paused', 'create it paused')
    .option('--note <text>', "the schedule's note, e.g. why it is paused")
    .action(
      async (
        name: string,
        opts: { instance: string[]; cron?: string; every?: string; keepLast?: number; keepDaily?: number; keepWeekly?: number; catchupWindow: string; imagePrefix?: string; metadata?: Record<string, string>; format?: 'qcow2' | 'raw'; compress?: boolean; paused?: boolean; note?: string },
        cmd: Command,
      ) => {
        const g = globals(cmd);
        const retention = retentionOf(opts);
        const options: CreateScheduleOptions = {
          name,
          instances: opts.instance,
          ...(opts.cron !== undefined ? { cron: opts.cron } : {}),
          ...(opts.every !== undefined ? { every: opts.every } : {}),
          catchupWindow: opts.catchupWindow,
          ...(retention ? { retention } : {}),
          ...(opts.imagePrefix !== undefined ? { imageNamePrefix: opts.imagePrefix } : {}),
          ...(opts.metadata ? { metadata: opts.metadata } : {}),
          ...(opts.format ? { diskFormat: opts.format } : {}),
          ...(opts.compress ? { compress: true } : {}),
          ...(opts.paused ? { paused: true } : {}),
          ...(opts.note !== undefined ? { note: opts.note } : {}),
        };
        // Refused before any connection, in the words of the command line.
        const problems = validateScheduleOptions(options);
        if (problems.length) {
          const words = problems.map((p) => {
            if (p.field === 'cron' && options.cron === undefined) return 'give --cron <expression> or --every <duration>, one of the two';
            if (p.field.startsWith('metadata.')) return `--metadata ${p.field.slice('metadata.'.length)} ${p.message}`;
            return `${SCHEDULE_FLAGS[p.field] ?? p.field} ${p.message}`;
          });
          throw new VmsnapError('InvalidInput', `invalid schedule: ${words.join('; ')}`, { problems });
        }
        const created = await createSchedule(await session.getClient(), options, session.getConfig().temporal.taskQueue);
        if (g.json) {
          session.json(created);
          return;
        }
        session.say(g, `created schedule ${created.name} (${created.scheduleId}): ${whenText(created)}, instances ${created.instances.join(', ')}; ${retentionText(created.retention)}`);
        session.say(g, created.paused ? `it is paused: start it with vmsnap schedule unpause ${name}` : `next run ${since(created.nextRuns[0])}; see it with vmsnap schedule describe ${name}`);
      },
    );

  schedule
    .command('list')
    .description("list vmsnap's schedules")
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd);
      const rows = await listSchedules(await session.getClient());
      if (g.json) {
        session.json(rows);
        return;
      }
      if (!rows.length) {
        session.say(g, 'no vmsnap schedules: create one with vmsnap schedule create');
        return;
      }
      session.say(
        g,
        table([
          ['NAME', 'WHEN', 'INSTANCES', 'RETENTION', 'STATE', 'NEXT RUN'],
          ...rows.map((r) => [r.name, whenText(r), r.instances.join(','), retentionText(r.retention), r.paused ? 'paused' : 'active', r.paused ? '-' : since(r.nextRuns[0])]),
        ]),
      );
    });

  schedule
    .command('describe')
    .description('show a schedule: settings, state, next runs and its latest runs with their outcome')
    .argument('<name>', 'the schedule name (or its id, vmsnap-schedule-<name>)')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const g = globals(cmd);
      const d = await describeSchedule(await session.getClient(), name);
      if (g.json) {
        session.json(d);
        return;
      }
      session.say(
        g,
        table([
          ['schedule', `${d.name} (${d.scheduleId})`],
          ['when', `${whenText(d)}, catch-up window ${d.catchupWindow}, overlapping runs skipped`],
          ['instances', d.instances.join(', ')],
          ['retention', retentionText(d.retention)],
          ['images', `${d.imageNamePrefix}-<instance>-<time>, task queue ${d.taskQueue}`],
          ['state', `${d.paused ? 'paused' : 'active'}${d.note ? ` (${d.note})` : ''}`],
          ['next runs', d.paused ? '-' : d.nextRuns.slice(0, 3).map(since).join(', ') || '-'],
          ['runs', `${d.runsTaken} taken, ${d.skippedOverlap} skipped (previous still running), ${d.missedCatchupWindow} missed`],
          ['running', d.running.join(', ') || '-'],
          ['created', since(d.createdAt)],
        ]),
      );
      if (d.recentRuns.length) {
        session.say(g, '');
        session.say(
          g,
          table([
            ['RUN', 'STARTED', 'STATUS', 'SNAPSHOTS', 'DELETED'],
            ...[...d.recentRuns].reverse().map((r) => [
              r.workflowId,
              since(r.startedAt),
              r.status ?? '-',
              r.completed === undefined ? '-' : `${r.completed} ok, ${r.busy} busy, ${r.failed} failed`,
              r.deletedImages === undefined ? '-' : String(r.deletedImages),
            ]),
          ]),
        );
      }
    });

  const stateCommand = (verb: 'pause' | 'unpause', description: string) =>
    schedule
      .command(verb)
      .description(description)
      .argument('<name>', 'the schedule name')
      .option('--note <text>', 'why (shown by describe)')
      .action(async (name: string, opts: { note?: string }, cmd: Command) => {
        const g = globals(cmd);
        const client = await session.getClient();
        const d = verb === 'pause' ? await pauseSchedule(client, name, opts.note) : await unpauseSchedule(client, name, opts.note);
        if (g.json) {
          session.json(d);
          return;
        }
        session.say(g, `schedule ${d.name} ${d.paused ? 'paused' : 'active'}${d.note ? `: ${d.note}` : ''}`);
      });
  stateCommand('pause', 'pause a schedule: no runs until unpaused (a run going on goes on)');
  stateCommand('unpause', 'unpause a schedule: it runs again at its next time');

  schedule
    .command('trigger')
    .description('run a schedule now (skipped if a run is going on)')
    .argument('<name>', 'the schedule name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const g = globals(cmd);
      await triggerSchedule(await session.getClient(), name);
      if (g.json) session.json({ name, triggered: true });
      session.say(g, `started a run of schedule ${name}; see it with vmsnap schedule describe ${name}`);
    });

  schedule
    .command('delete')
    .description('delete a schedule; a run going on goes on, and its images stay')
    .argument('<name>', 'the schedule name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const g = globals(cmd);
      const deleted = await deleteSchedule(await session.getClient(), name);
      if (g.json) session.json(deleted);
      session.say(g, `deleted schedule ${name}; the images it made stay in Glance`);
    });

  schedule
    .command('retention')
    .description("show what the schedule's retention would keep and delete now, and why (nothing is deleted)")
    .argument('<name>', 'the schedule name')
    .option('--dry-run', 'required: only show, delete nothing')
    .option('--keep-last <n>', "what if: this keep-last instead of the schedule's", nonNegativeInt)
    .option('--keep-daily <n>', "what if: this keep-daily instead of the schedule's", nonNegativeInt)
    .option('--keep-weekly <n>', "what if: this keep-weekly instead of the schedule's", nonNegativeInt)
    .action(async (name: string, opts: { dryRun?: boolean; keepLast?: number; keepDaily?: number; keepWeekly?: number }, cmd: Command) => {
      const g = globals(cmd);
      if (!opts.dryRun) {
        throw new VmsnapError('InvalidInput', `retention is applied by each run of the schedule: add --dry-run to see what it would keep and delete now (vmsnap schedule trigger ${name} runs it)`);
      }
      const policy = retentionOf(opts);
      const plan = await previewRetention(await session.getClient(), session.getConfig(), name, policy ? { policy } : {});
      if (g.json) {
        session.json({ ...plan, dryRun: true });
        return;
      }
      const doomed = plan.decisions.filter((d) => d.action === 'delete').length;
      session.say(g, `retention of schedule ${name} (${retentionText(plan.policy)}), dry run: ${plan.decisions.length - doomed} kept, ${doomed} would be deleted`);
      if (plan.decisions.length) {
        session.say(
          g,
          table([
            ['ACTION', 'IMAGE', 'CREATED', 'NAME', 'WHY'],
            ...plan.decisions.map((d) => [d.action, d.imageId, since(d.createdAt || undefined), d.name, d.reason]),
          ]),
        );
      }
    });
}

function describeProgress(view: ProgressView, p: SnapshotProgressDetails): string {
  const line = view.line(p);
  if (line.percent === undefined) return line.phase;
  return `${line.phase} ${Math.floor(line.percent)}% (${formatBytes(line.bytesDone ?? 0)} of ${formatBytes(line.bytesTotal ?? 0)})`;
}

/** Follows a restore or rollback to its end (progress as for snapshots); never rejects for a failed one. */
async function followWork(
  session: Session,
  g: GlobalOptions,
  result: () => Promise<unknown>,
  progress: (() => Promise<RestoreProgressDetails>) | undefined,
  instance: string,
): Promise<{ outcome: { status: string; result?: unknown; error?: { type: string; message: string } }; cause?: { said: unknown; code: ExitCode } }> {
  const { io } = session;
  const stream = g.json ? io.stderr : io.stdout;
  const view = !progress || (g.json && !io.stderr.isTTY) ? undefined : new ProgressView(stream, stream.isTTY ? 'tty' : 'plain');
  const onInterrupt = () => {
    view?.end();
    io.stderr.write(`vmsnap: stopped waiting; the restore of ${instance} goes on (temporal workflow describe --workflow-id restore-<instance uuid>)\n`);
    process.exit(EXIT.interrupted);
  };
  process.once('SIGINT', onInterrupt);
  try {
    let settled = false;
    const ended = result().then(
      (value) => ({ value, error: undefined as unknown }),
      (error: unknown) => ({ value: undefined, error }),
    );
    void ended.then(() => (settled = true));
    while (!settled && view && progress) {
      try {
        const p = await session.getClient().then((c) => c.withDeadline(Date.now() + 5000, progress));
        if (!settled) view.update(p as unknown as SnapshotProgressDetails);
      } catch {
        // No answer now (a worker restarting): keep waiting.
      }
      await Promise.race([ended, sleep(500)]);
    }
    const { value, error } = await ended;
    if (!error) {
      view?.finish('completed');
      return { outcome: { status: 'completed', result: value } };
    }
    const outcome = outcomeOf({ error });
    view?.finish(outcome.status);
    // Said as a restore's failure (the generic line speaks of snapshots); the exit code is the type's.
    const said = outcome.error ? new VmsnapError(outcome.error.type as ErrorCode, `${progress ? 'restore' : 'rollback'} of ${instance} ${outcome.status === 'failed' ? `failed (${outcome.error.type})` : outcome.status}: ${outcome.error.message}`) : error;
    return { outcome: { status: outcome.status, ...(outcome.error ? { error: outcome.error } : {}) }, cause: { said, code: exitCodeOf(error) } };
  } finally {
    process.off('SIGINT', onInterrupt);
  }
}

function restoreText(instance: string, r: RestoreResult, link: string | undefined): string {
  const phases = Object.entries(r.phaseDurationsMs)
    .map(([phase, ms]) => `${phase} ${formatDuration(ms ?? 0)}`)
    .join(', ');
  return [
    `restore of ${instance} completed`,
    `  image        ${r.imageId}, ${formatBytes(r.downloadedBytes)} downloaded, sha512 verified`,
    `  disk         ${r.diskPath} (${r.diskFormat}, virtual ${formatBytes(r.virtualSize)})`,
    ...(r.newInstance ? [`  new instance ${r.newInstance.name} (${r.newInstance.id}); ${instance} untouched`] : []),
    ...(r.preRestorePath ? [`  pre-restore  ${r.preRestorePath}, kept until ${r.preRestoreKeptUntil} (vmsnap restore rollback ${instance})`] : []),
    `  instance     ${r.instanceId} on ${r.host}, was ${r.priorPowerState}, down ${formatDuration(r.downtimeMs)} (stopped by ${r.stoppedBy})`,
    `  phases       ${phases}`,
    ...(link ? [`  web UI       ${link}`] : []),
  ].join('\n');
}

/** Phases in which a cold snapshot holds the guest paused. */
const PAUSED_PHASES = new Set(['pausing', 'converting', 'resuming']);

function terminatedText(lastPhase: string | undefined): string {
  const rest = 'the reconciler removes its unfinished image and frees the task state within a minute (VMSNAP_RECONCILE_INTERVAL_MS): see vmsnap instances, then snapshot again';
  if (lastPhase && PAUSED_PHASES.has(lastPhase)) {
    return `the snapshot workflow was terminated while the guest was paused (phase ${lastPhase}): its host worker resumes it within seconds (VMSNAP_PAUSE_WATCH_MS, 2 s by default); ${rest}`;
  }
  const where = lastPhase ? ` in phase ${lastPhase}` : '';
  return `the snapshot workflow was terminated${where}${lastPhase ? ', with the guest not paused by it' : ''}: a guest it had paused runs again within seconds (its host worker resumes it); ${rest}`;
}

/** `snapshot --wait`: follows the snapshot and sets the exit code from how it ended. */
async function waitAndReport(session: Session, g: GlobalOptions, handle: SnapshotHandle, instance: string): Promise<Outcome & { cause?: unknown }> {
  const { io } = session;
  // Progress goes where a person looks: stdout, or stderr when stdout carries the JSON document.
  const stream = g.json ? io.stderr : io.stdout;
  const view = g.json && !io.stderr.isTTY ? undefined : new ProgressView(stream, stream.isTTY ? 'tty' : 'plain');
  const onInterrupt = () => {
    view?.end();
    io.stderr.write(`vmsnap: stopped waiting; the snapshot goes on: follow it with vmsnap status ${instance}, stop it with vmsnap cancel ${instance}\n`);
    process.exit(EXIT.interrupted);
  };
  process.once('SIGINT', onInterrupt);
  try {
    // Twice a second: phases of a second or so still show; a query and a describe are cheap.
    const ended = await follow(session, handle, view, 500);
    const outcome = outcomeOf(ended);
    view?.finish(outcome.status);
    // Terminate runs no compensation: say what that left and when it is undone.
    const cause = outcome.status === 'terminated' ? new ClientError('Terminated', terminatedText(ended.lastPhase)) : ended.error;
    return { ...outcome, cause };
  } finally {
    process.off('SIGINT', onInterrupt);
  }
}

/**
 * A reader that stops reading (`vmsnap ... | head`) closes the pipe: the next write fails with
 * EPIPE. Unix tools end quietly then; without a handler node prints a stack trace and exits 1.
 */
function endQuietlyOnClosedOutput(io: CliIo): void {
  for (const stream of [io.stdout, io.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(EXIT.ok);
      throw err;
    });
  }
}

export async function main(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  endQuietlyOnClosedOutput(io);
  const session = new Session(io);
  const program = buildProgram(session);
  const g = (): GlobalOptions => ({ json: argv.includes('--json'), debug: argv.includes('--debug') });
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not errors; anything else commander refuses is a usage error.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT.ok;
      if (err.code === 'commander.help' || err.code === 'commander.executeSubCommandAsync') return EXIT.usage;
      session.fail(g(), err, EXIT.usage);
    } else {
      session.fail(g(), err);
    }
  } finally {
    await session.close();
  }
  return session.exitCode;
}

// Run when executed (bin/vmsnap), not when imported by a test or a program.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
