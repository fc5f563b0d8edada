// The restore commands: restore (and follow it), restore rollback.
import type { Command } from 'commander';
import { VmsnapError } from '../../shared/errors.js';
import type { RestoreRequest, RestoreResult, RollbackResult } from '../../shared/types.js';
import { validateRestoreRequest, validateRollbackRequest } from '../../shared/validation.js';
import { EXIT_CODES_HELP } from '../exit-codes.js';
import { formatBytes, formatDuration } from '../progress.js';
import { getRestoreProgress, resolveImage, restoreResult, startRestore, startRollback } from '../restores.js';
import { followWork } from './follow.js';
import { describeCliProblem } from './options.js';
import { withGlobals, type Session } from './session.js';

export function registerRestoreCommands(program: Command, session: Session): void {
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
    .action(withGlobals(async (g, instance: string, opts: { image?: string; allowOtherImage?: boolean; allowGrow?: boolean; asNew?: string; wait?: boolean }) => {
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
    }));

  restore
    .command('rollback')
    .description('put back the disk an instance had before its last restore (while it is kept), and start the guest as it was')
    .argument('<instance>', 'instance UUID or libvirt domain name')
    .action(withGlobals(async (g, instance: string) => {
      const problems = validateRollbackRequest({ instance });
      if (problems.length) throw new VmsnapError('InvalidInput', `invalid request: ${problems.map(describeCliProblem).join('; ')}: correct it and run again`);
      const config = session.getConfig();
      const handle = await startRollback(await session.getClient(), { instance }, config.temporal.taskQueue);
      const ended = await followWork(session, g, () => handle.result(), undefined, instance);
      if (g.json) session.json({ workflowId: handle.workflowId, runId: handle.firstExecutionRunId, instance, ...ended.outcome });
      const r = ended.outcome.result as RollbackResult | undefined;
      if (r) session.say(g, `rollback of ${instance} completed: ${r.diskPath} is the pre-restore disk again; guest ${r.priorPowerState}, down ${formatDuration(r.downtimeMs)}`);
      if (ended.cause) session.fail(g, ended.cause.said, ended.cause.code);
    }));

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
