// `vmsnap restore ...`: restore an instance from an image, roll a restore back, and see, list and
// cancel restores as the snapshot commands do for snapshots (same exit codes, --json, text).
import type { Command } from 'commander';
import { VmsnapError } from '../../shared/errors.js';
import type { RestoreRequest, RestoreResult, RollbackResult } from '../../shared/types.js';
import { validateRestoreRequest, validateRollbackRequest } from '../../shared/validation.js';
import { ClientError } from '../errors.js';
import { EXIT_CODES_HELP } from '../exit-codes.js';
import { formatBytes, formatDuration, formatPhases } from '../progress.js';
import * as restores from '../restores.js';
import type { RestoreHandle, RestoreProgressDetails, RestoreSummary } from '../restores.js';
import { acceptRestore } from '../acceptance.js';
import { resolveInstanceId } from '../inventory.js';
import { followWork, outcomeOf } from './follow.js';
import { addListCommand, describeCliProblem, since, type ListKind } from './options.js';
import { addStatusCommand, type StatusKind } from './status.js';
import { addCancelCommand, type CancelKind } from './cancel.js';
import { withGlobals, type Session } from './session.js';

export function registerRestoreCommands(program: Command, session: Session): void {
  const restore = program
    .command('restore')
    .description('restore an instance from a Glance image (its disk replaced, the previous disk kept for rollback); with --wait, follow it')
    .argument('<instance>', 'instance UUID (libvirt domain UUID) or libvirt domain name')
    // Not a required option: commander would then ask it of `restore rollback` too.
    .option('--image <id|name>', 'the image to restore (required): its id, or its name when one image has it')
    .option('--allow-other-image', 'accept an image that is not a snapshot of this instance')
    .option('--allow-grow', "accept an image larger (virtual size) than the instance's disk: the disk grows")
    .option('--force-stop', 'stop the guest at once (destroy) instead of asking it to shut down and waiting (VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS)')
    .option('--as-new <name>', 'restore as a new instance of this name (new UUID, MAC and disk), leaving the instance untouched')
    .option('--wait', 'wait until the restore ends, showing its progress')
    .addHelpText(
      'after',
      `\nrestore status <instance>: the restore's phase while it runs, its result or error after.\nrestore list: restores and rollbacks, latest ` +
        `first.\nrestore cancel <instance>: undo a running restore (the guest runs on its previous disk).\nrestore rollback <instance>: put the ` +
        `pre-restore disk back while it is kept.\n\n${EXIT_CODES_HELP}\n`,
    )
    .action(
      withGlobals(
        async (
          g,
          instance: string,
          opts: { image?: string; allowOtherImage?: boolean; allowGrow?: boolean; forceStop?: boolean; asNew?: string; wait?: boolean },
        ) => {
          if (!opts.image) throw new VmsnapError('InvalidInput', 'restore needs --image <id|name>: the image to restore');
          const config = session.getConfig();
          // Checked before the image is looked up: bad input is refused before any connection.
          const probe = validateRestoreRequest({
            instance,
            imageId: '00000000-0000-4000-8000-000000000000',
            ...(opts.asNew !== undefined ? { asNew: opts.asNew } : {}),
          });
          if (probe.length) throw new VmsnapError('InvalidInput', `invalid request: ${probe.map(describeCliProblem).join('; ')}: correct it and run again`);
          const imageId = await restores.resolveImage(config, opts.image);
          const request: RestoreRequest = {
            instance,
            imageId,
            ...(opts.allowOtherImage ? { allowOtherImage: true } : {}),
            ...(opts.allowGrow ? { allowGrow: true } : {}),
            ...(opts.forceStop ? { forceStop: true } : {}),
            ...(opts.asNew ? { asNew: opts.asNew } : {}),
          };
          // The workflow id comes from the UUID whatever was typed; the answer comes once the task state is
          // taken, or with why not (a busy instance, an image that is missing or not this instance's).
          const instanceId = await resolveInstanceId(config, instance);
          const client = await session.getClient();
          const { handle, accepted } = await acceptRestore(client, request, {
            instanceId,
            taskQueue: config.temporal.taskQueue,
            acceptTimeoutMs: config.acceptTimeoutMs,
          });
          const { runId } = accepted;
          const started = { workflowId: handle.workflowId, runId, instance, imageId };
          if (!opts.wait) {
            if (g.json) session.json({ ...started, status: 'running' });
            session.say(g, `started restore of ${instance} from image ${imageId}: workflow ${handle.workflowId}`);
            const link = session.webUiLink(handle.workflowId, runId);
            session.say(g, `follow it with: vmsnap restore status ${instance}${link ? `, or ${link}` : ''}; cancel it with: vmsnap restore cancel ${instance}`);
            return;
          }
          session.say(g, `restore of ${instance} from image ${imageId}: workflow ${handle.workflowId}`);
          const ended = await followWork(
            session,
            g,
            () => restores.restoreResult(handle),
            () => restores.getRestoreProgress(handle),
            instance,
          );
          if (g.json) session.json({ ...started, ...ended.outcome });
          if (ended.outcome.result) session.say(g, restoreText(instance, ended.outcome.result as RestoreResult, session.webUiLink(handle.workflowId, runId)));
          if (ended.cause) session.fail(g, ended.cause.said, ended.cause.code);
        },
      ),
    );

  restore
    .command('rollback')
    .description('put back the disk an instance had before its last restore (while it is kept), and start the guest as it was')
    .argument('<instance>', 'instance UUID or libvirt domain name')
    .action(
      withGlobals(async (g, instance: string) => {
        const problems = validateRollbackRequest({ instance });
        if (problems.length) throw new VmsnapError('InvalidInput', `invalid request: ${problems.map(describeCliProblem).join('; ')}: correct it and run again`);
        const config = session.getConfig();
        const instanceId = await resolveInstanceId(config, instance);
        const handle = await restores.startRollback(await session.getClient(), { instance: instanceId }, config.temporal.taskQueue);
        const ended = await followWork(session, g, () => handle.result(), undefined, instance);
        if (g.json) session.json({ workflowId: handle.workflowId, runId: handle.firstExecutionRunId, instance, ...ended.outcome });
        const r = ended.outcome.result as RollbackResult | undefined;
        if (r)
          session.say(
            g,
            `rollback of ${instance} completed: ${r.diskPath} is the pre-restore disk again; guest ${r.priorPowerState}, down ${formatDuration(r.downtimeMs)}`,
          );
        if (ended.cause) session.fail(g, ended.cause.said, ended.cause.code);
      }),
    );

  addStatusCommand(restore, session, restoreStatus);
  addListCommand(restore, session, restoreList);
  addCancelCommand(restore, session, restoreCancel);
}

/** What happened to the instance: untouched (as new), or its downtime and how it stopped and came back. */
function instanceLine(r: RestoreResult): string {
  const where = `${r.instanceId} on ${r.host}, was ${r.priorPowerState}`;
  if (r.newInstance) return `${where}, untouched (the image runs as ${r.newInstance.name}${r.confirmedBy ? `, confirmed by ${r.confirmedBy}` : ''})`;
  if (r.stoppedBy === 'none') return `${where}: it was off, so no downtime; left off`;
  // A wait under a second is no wait: the guest was destroyed at once (--force-stop) or shut down at once.
  const waited = (r.shutdownWaitMs ?? 0) >= 1000 ? ` after ${formatDuration(r.shutdownWaitMs!)} of shutdown wait` : '';
  const stopped = r.stoppedBy === 'shutdown' ? `shut down by itself${waited}` : `destroyed${waited}`;
  return `${where}, down ${formatDuration(r.downtimeMs)} (${stopped}${r.confirmedBy ? `, running again: confirmed by ${r.confirmedBy}` : ''})`;
}

function restoreText(instance: string, r: RestoreResult, link: string | undefined): string {
  return [
    `restore of ${instance} completed`,
    `  image        ${r.imageId}, ${formatBytes(r.downloadedBytes)} downloaded, sha512 verified`,
    `  disk         ${r.diskPath} (${r.diskFormat}, virtual ${formatBytes(r.virtualSize)})`,
    ...(r.diskSetId && r.disks ? [`  set          ${r.diskSetId}: ${r.disks.length} disks, all restored`] : []),
    ...(r.diskSetId && r.disks ? r.disks.map((d) => `  ${d.dev.padEnd(12)} ${d.path} ← image ${d.imageId}, ${formatBytes(d.downloadedBytes)}`) : []),
    ...(r.newInstance ? [`  new instance ${r.newInstance.name} (${r.newInstance.id}); ${instance} untouched`] : []),
    ...(r.preRestorePath ? [`  pre-restore  ${r.preRestorePath}, kept until ${r.preRestoreKeptUntil} (vmsnap restore rollback ${instance})`] : []),
    `  instance     ${instanceLine(r)}`,
    `  phases       ${formatPhases(r.phaseDurationsMs)}`,
    ...(link ? [`  web UI       ${link}`] : []),
  ].join('\n');
}

const restoreStatus: StatusKind<RestoreSummary, RestoreProgressDetails, RestoreResult | RollbackResult> = {
  description: "show a restore's (or rollback's) state: phase, percent and bytes while it runs, its result or error after",
  argument: 'instance UUID or name (its latest restore), or a workflow id',
  find: restores.findRestore,
  notFound: (ref) => new ClientError('RestoreNotFound', `no restore of ${ref} found: check the instance UUID or name, or see vmsnap restore list`),
  // A rollback answers no progress query: while it runs, visibility's phase is all there is.
  progress: (found) => (found.action === 'restore' ? (handle) => restores.getRestoreProgress(handle as RestoreHandle) : undefined),
  rows: (found, status) => {
    const r = found.action === 'restore' ? (status.result as RestoreResult | undefined) : undefined;
    return {
      image: r?.imageId,
      middle: [
        ...(r ? [['downtime', `${formatDuration(r.downtimeMs)} (stopped by ${r.stoppedBy}${r.confirmedBy ? `, confirmed by ${r.confirmedBy}` : ''})`]] : []),
        ...(r?.newInstance ? [['new instance', `${r.newInstance.name} (${r.newInstance.id})`]] : []),
        ...(r?.preRestorePath ? [['pre-restore', `${r.preRestorePath}, kept until ${r.preRestoreKeptUntil}`]] : []),
      ],
      what: `, ${found.action}`,
    };
  },
};

const restoreList: ListKind<RestoreSummary> = {
  noun: 'restores',
  description: 'list restores and rollbacks, most recently started first (from Temporal visibility)',
  list: restores.listRestores,
  empty: 'no restores found',
  header: ['WORKFLOW ID', 'ACTION', 'STATUS', 'PHASE', 'INSTANCE', 'IMAGE', 'STARTED', 'CLOSED'],
  row: (r) => [r.workflowId, r.action, r.status, r.phase ?? '-', r.instanceId ?? '-', r.imageId ?? '-', since(r.startTime), since(r.closeTime)],
};

const restoreCancel: CancelKind<RestoreHandle> = {
  description: 'cancel a running restore: before the swap the instance is left as it was; after it, the previous disk goes back and the guest is started',
  wait: 'wait until the restore has undone its work and ended',
  noun: 'restore',
  statusCommand: 'vmsnap restore status',
  cancel: restores.cancelRestore,
  ended: async (_session, handle) =>
    outcomeOf(
      await handle.result().then(
        (result) => ({ result }),
        (error: unknown) => ({ error }),
      ),
    ),
  cancelled: (workflowId) =>
    `restore ${workflowId} cancelled: the instance runs on its previous disk, in its prior power state, and nothing of the restore is left beside it`,
};
