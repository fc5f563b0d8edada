// The snapshot commands: snapshot (and follow it), status, list, cancel.
import { Option, type Command } from 'commander';
import { VmsnapError } from '../../shared/errors.js';
import type { SnapshotRequest, SnapshotResult } from '../../shared/types.js';
import { validateSnapshotRequest } from '../../shared/validation.js';
import { ClientError } from '../errors.js';
import { EXIT_CODES_HELP } from '../exit-codes.js';
import { formatBytes, formatDuration, formatPhases } from '../progress.js';
import {
  cancelSnapshot,
  findSnapshot,
  getProgress,
  listSnapshots,
  type SnapshotHandle,
  type SnapshotProgressDetails,
  type SnapshotSummary,
} from '../snapshots.js';
import { acceptSnapshot } from '../acceptance.js';
import { resolveInstanceId } from '../inventory.js';
import { follow, outcomeOf, waitAndReport } from './follow.js';
import { addListCommand, describeCliProblem, diskSelection, metadataOption, since, type ListKind } from './options.js';
import { addStatusCommand, type StatusKind } from './status.js';
import { addCancelCommand, type CancelKind } from './cancel.js';
import { withGlobals, type Session } from './session.js';

export function registerSnapshotCommands(program: Command, session: Session): void {
  program
    .command('snapshot')
    .description('snapshot an instance into a new Glance image; with --wait, follow it to the end')
    .argument('<instance>', 'instance UUID (libvirt domain UUID) or libvirt domain name')
    .requiredOption('--name <name>', 'name of the new image (1-255 characters)')
    .option('--metadata <key=value>', 'an image property; repeat for more', metadataOption)
    .addOption(new Option('--format <format>', 'disk format of the image (default qcow2)').choices(['qcow2', 'raw']))
    .option('--compress', 'compress the qcow2 image: smaller upload, slower copy')
    .addOption(
      new Option(
        '--mode <mode>',
        "live: copy while the guest runs; cold: pause it for the copy; auto: live where possible (default: the workers' VMSNAP_DEFAULT_MODE)",
      ).choices(['auto', 'cold', 'live']),
    )
    .addOption(
      new Option('--quiesce <when>', 'live mode: freeze the guest filesystems through the guest agent (default try)').choices(['try', 'require', 'never']),
    )
    .option('--disks <which>', 'root (default, as Nova), all (every disk, one point in time: one image each), or target devices like vda,vdb (root included)')
    .option('--image-id <uuid>', 'id of the new image (default: a new UUID, printed at once)')
    .option('--wait', 'wait until the snapshot ends, showing its progress')
    .addHelpText('after', `\n${EXIT_CODES_HELP}\n`)
    .action(
      withGlobals(
        async (
          g,
          instance: string,
          opts: {
            name: string;
            metadata?: Record<string, string>;
            format?: 'qcow2' | 'raw';
            compress?: boolean;
            mode?: 'auto' | 'cold' | 'live';
            quiesce?: 'try' | 'require' | 'never';
            imageId?: string;
            disks?: string;
            wait?: boolean;
          },
        ) => {
          const request: SnapshotRequest = {
            instance,
            imageName: opts.name,
            // Else the run picks it, and says it in its acceptance (it may replace a record an upload left stuck).
            ...(opts.imageId ? { imageId: opts.imageId } : {}),
            ...(opts.metadata ? { metadata: opts.metadata } : {}),
            ...(opts.format ? { diskFormat: opts.format } : {}),
            ...(opts.compress ? { compress: true } : {}),
            ...(opts.mode ? { mode: opts.mode } : {}),
            ...(opts.quiesce ? { quiesce: opts.quiesce } : {}),
            ...(opts.disks !== undefined ? { disks: diskSelection(opts.disks) } : {}),
          };
          // Bad input is refused before any connection: it is the user's to fix, whatever the stack does.
          const problems = validateSnapshotRequest(request);
          if (problems.length) {
            throw new VmsnapError('InvalidInput', `invalid request: ${problems.map(describeCliProblem).join('; ')}: correct it and run again`, { problems });
          }
          const config = session.getConfig();
          // The workflow id comes from the UUID whatever was typed; the answer comes once the task state is taken.
          const instanceId = await resolveInstanceId(config, instance);
          const client = await session.getClient();
          const { handle, accepted } = await acceptSnapshot(client, request, {
            instanceId,
            taskQueue: config.temporal.taskQueue,
            acceptTimeoutMs: config.acceptTimeoutMs,
          });
          const { runId, imageId } = accepted;
          const started = { workflowId: handle.workflowId, runId, instance, imageId };
          if (!opts.wait) {
            if (g.json) session.json({ ...started, status: 'running' });
            session.say(g, `started snapshot of ${instance}: workflow ${handle.workflowId}, image ${imageId}`);
            session.say(
              g,
              `follow it with: vmsnap status ` +
                `${instance}${session.webUiLink(handle.workflowId, runId) ? `, or ${session.webUiLink(handle.workflowId, runId)}` : ''}`,
            );
            return;
          }
          session.say(g, `snapshot of ${instance}: workflow ${handle.workflowId}, image ${imageId}`);
          const { cause, ...outcome } = await waitAndReport(session, g, handle, instance);
          if (g.json) session.json({ ...started, ...outcome });
          if (outcome.result) session.say(g, resultText(instance, outcome.result, session.webUiLink(handle.workflowId, runId)));
          // After the JSON document, so that stdout holds that one document (with the error in it).
          if (cause) session.fail(g, cause);
        },
      ),
    );

  addStatusCommand(program, session, snapshotStatus);
  addListCommand(program, session, snapshotList);
  addCancelCommand(program, session, snapshotCancel);
}

/** A snapshot of several disks: each image, and the disks left out. */
function diskLines(result: SnapshotResult): string[] {
  if (!result.diskSetId || !result.disks) return [];
  const images = result.disks.map((d) => `  disk      ${d.dev} (${d.role}) → image ${d.imageId}, ${formatBytes(d.size)}, sha512 ${d.sha512.slice(0, 16)}…`);
  const skipped = (result.skippedDisks ?? []).map((d) => `  skipped   ${d.dev}: ${d.reason}`);
  return [`  set       ${result.diskSetId} (${result.disks.length} images; restore it from the root image)`, ...images, ...skipped];
}

function resultText(instance: string, result: SnapshotResult, link: string | undefined): string {
  const total = Object.values(result.phaseDurationsMs).reduce((a: number, b) => a + (b ?? 0), 0);
  return [
    `snapshot of ${instance} completed in ${formatDuration(total)}`,
    `  image     ${result.imageId} "${result.imageName}", active in Glance`,
    `  size      ${formatBytes(result.size)} ${result.diskFormat} (virtual ${formatBytes(result.virtualSize)})`,
    `  sha512    ${result.sha512}`,
    `  instance  ${result.instanceId} on ${result.host}, was ${result.priorPowerState}, guest paused ${formatDuration(result.guestPauseMs)}`,
    `  mode      ${modeText(result)}`,
    ...diskLines(result),
    ...(result.guestWriteStallMs !== undefined ? [`  writes    the guest's longest disk write during the copy took ${result.guestWriteStallMs} ms`] : []),
    `  phases    ${formatPhases(result.phaseDurationsMs)}`,
    ...(link ? [`  web UI    ${link}`] : []),
  ].join('\n');
}

/** The mode and consistency of the copy, with why where the mode was not the one asked for. */
function modeText(r: SnapshotResult): string {
  return `${r.mode}${r.modeReason ? ` (${r.modeReason})` : ''}, ${r.consistency}${r.quiesceNote ? ` (${r.quiesceNote})` : ''}`;
}

const snapshotStatus: StatusKind<SnapshotSummary, SnapshotProgressDetails, SnapshotResult> = {
  description: "show a snapshot's state: phase, percent and bytes while it runs, its result or error after",
  argument: 'instance UUID or name (its latest snapshot), or a workflow id',
  find: findSnapshot,
  notFound: (ref) => new ClientError('SnapshotNotFound', `no snapshot of ${ref} found: check the instance UUID or name, or see vmsnap list`),
  progress: () => (handle) => getProgress(handle as SnapshotHandle),
  rows: (_found, { result: r }) => ({
    image: r?.imageId,
    middle: [
      ...(r ? [['size', `${formatBytes(r.size)} ${r.diskFormat}, sha512 ${r.sha512.slice(0, 16)}…`]] : []),
      ...(r ? [['mode', modeText(r)]] : []),
      ...(r ? [['paused', formatDuration(r.guestPauseMs)]] : []),
      ...(r?.guestWriteStallMs !== undefined ? [['writes held', `${r.guestWriteStallMs} ms at most (live copy)`]] : []),
    ],
  }),
};

const snapshotList: ListKind<SnapshotSummary> = {
  noun: 'snapshots',
  description: 'list snapshots, most recently started first (from Temporal visibility)',
  list: listSnapshots,
  empty: 'no snapshots found',
  header: ['WORKFLOW ID', 'STATUS', 'PHASE', 'IMAGE', 'STARTED', 'CLOSED'],
  row: (r) => [r.workflowId, r.status, r.phase ?? '-', r.imageId ?? '-', since(r.startTime), since(r.closeTime)],
};

const snapshotCancel: CancelKind<SnapshotHandle> = {
  description: 'cancel a running snapshot: it resumes the guest, deletes the unfinished image and ends cancelled',
  wait: 'wait until the snapshot has undone its work and ended',
  noun: 'snapshot',
  statusCommand: 'vmsnap status',
  cancel: cancelSnapshot,
  ended: async (session, handle) => outcomeOf(await follow(session, handle, undefined, 1000)),
  cancelled: (workflowId) => `snapshot ${workflowId} cancelled: the guest is back in its prior state and no image was kept`,
};
