// vmsnap schedule: snapshots on a schedule with retention (create, list, describe, pause,
// unpause, trigger, delete, retention --dry-run).
import type { Client } from '@temporalio/client';
import { Option, type Command } from 'commander';
import type { RetentionPlan, RetentionPolicy } from '../../activities/retention.js';
import { VmsnapError } from '../../shared/errors.js';
import * as schedules from '../schedules.js';
import type { CreateScheduleOptions, VmsnapSchedule, VmsnapScheduleDetails } from '../schedules.js';
import { diskSelection, listOption, metadataOption, nonNegativeInt, since } from './options.js';
import { table, withGlobals, type Session } from './session.js';

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
  disks: '--disks',
};

const SCHEDULE_HELP = `Schedules are Temporal Schedules with ids vmsnap-schedule-<name>; each run snapshots the
instances (workflow scheduledSnapshots), then deletes the images its retention does not keep.
Exit codes: 2 a bad cron expression, interval or count, or a name taken; 3 no such schedule.`;

function retentionText(policy: RetentionPolicy): string {
  const rules = [
    ['keep-last', policy.keepLast],
    ['keep-daily', policy.keepDaily],
    ['keep-weekly', policy.keepWeekly],
  ].filter(([, n]) => typeof n === 'number' && n > 0);
  return rules.length ? rules.map(([rule, n]) => `${rule} ${n}`).join(', ') : 'keep all';
}

function whenText(s: Pick<VmsnapSchedule, 'cron' | 'every'>): string {
  if (s.cron) return `cron "${s.cron}" (UTC)`;
  return s.every ? `every ${s.every}` : '-';
}

const KEEPS = {
  last: 'the n newest images of each instance',
  daily: 'the newest image of each of the last n days that have one',
  weekly: 'the newest image of each of the last n weeks that have one',
};

/** --keep-last/daily/weekly, worded the same wherever a retention policy is given. */
function addKeepOptions(command: Command, lead: string): void {
  for (const [unit, what] of Object.entries(KEEPS)) {
    command.addOption(new Option(`--keep-${unit} <n>`, `${lead} ${what}`).argParser(nonNegativeInt));
  }
}

function retentionOf(opts: { keepLast?: number; keepDaily?: number; keepWeekly?: number }): RetentionPolicy | undefined {
  const policy: RetentionPolicy = {
    ...(opts.keepLast !== undefined ? { keepLast: opts.keepLast } : {}),
    ...(opts.keepDaily !== undefined ? { keepDaily: opts.keepDaily } : {}),
    ...(opts.keepWeekly !== undefined ? { keepWeekly: opts.keepWeekly } : {}),
  };
  return Object.keys(policy).length ? policy : undefined;
}

export function registerScheduleCommands(program: Command, session: Session): void {
  const schedule = program
    .command('schedule')
    .description('snapshots on a schedule (cron or interval), with retention: create, list, describe, pause, unpause, trigger, delete; retention --dry-run')
    .addHelpText('after', `\n${SCHEDULE_HELP}\n`);

  const create = schedule
    .command('create')
    .description('create a schedule that snapshots one instance or a selection, then applies its retention')
    .argument('<name>', 'name of the schedule (letters, digits, "_", "." and "-")')
    .requiredOption('--instance <instance>', 'instance UUID or name; repeat, or separate with commas, for a selection', listOption)
    .option('--cron <expression>', 'when, as a cron expression in UTC, e.g. "0 3 * * *"')
    .option('--every <duration>', 'when, as an interval, e.g. 6h, 30m, 1d');
  addKeepOptions(create, 'retention: keep');
  create
    .option('--catchup-window <duration>', 'how late a run missed while Temporal was away may still start', schedules.DEFAULT_CATCHUP_WINDOW)
    .option('--image-prefix <prefix>', 'images are named <prefix>-<instance>-<time> (default: the schedule name)')
    .option('--metadata <key=value>', 'an image property; repeat for more', metadataOption)
    .addOption(new Option('--format <format>', 'disk format of the images (default qcow2)').choices(['qcow2', 'raw']))
    .option('--compress', 'compress the qcow2 images')
    .option('--disks <which>', 'root (default), all, or target devices like vda,vdb: each snapshot takes these disks, one image each')
    .option('--paused', 'create it paused')
    .option('--note <text>', "the schedule's note, e.g. why it is paused")
    .action(
      withGlobals(
        async (
          g,
          name: string,
          opts: {
            instance: string[];
            cron?: string;
            every?: string;
            keepLast?: number;
            keepDaily?: number;
            keepWeekly?: number;
            catchupWindow: string;
            imagePrefix?: string;
            metadata?: Record<string, string>;
            format?: 'qcow2' | 'raw';
            compress?: boolean;
            disks?: string;
            paused?: boolean;
            note?: string;
          },
        ) => {
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
            ...(opts.disks !== undefined ? { disks: diskSelection(opts.disks) } : {}),
            ...(opts.paused ? { paused: true } : {}),
            ...(opts.note !== undefined ? { note: opts.note } : {}),
          };
          // Refused before any connection, in the words of the command line.
          const problems = schedules.validateScheduleOptions(options);
          if (problems.length) {
            const words = problems.map((p) => {
              if (p.field === 'cron' && options.cron === undefined) return 'give --cron <expression> or --every <duration>, one of the two';
              if (p.field.startsWith('metadata.')) return `--metadata ${p.field.slice('metadata.'.length)} ${p.message}`;
              return `${SCHEDULE_FLAGS[p.field] ?? p.field} ${p.message}`;
            });
            throw new VmsnapError('InvalidInput', `invalid schedule: ${words.join('; ')}`, { problems });
          }
          const created = await schedules.createSchedule(await session.getClient(), options, session.getConfig().temporal.taskQueue);
          session.show(g, created, () =>
            [
              `created schedule ${created.name} (${created.scheduleId}): ${whenText(created)}, instances ${created.instances.join(', ')}; ` +
                `${retentionText(created.retention)}`,
              created.paused
                ? `it is paused: start it with vmsnap schedule unpause ${name}`
                : `next run ${since(created.nextRuns[0])}; see it with vmsnap schedule describe ${name}`,
            ].join('\n'),
          );
        },
      ),
    );

  schedule
    .command('list')
    .description("list vmsnap's schedules")
    .action(
      withGlobals(async (g) => {
        const rows = await schedules.listSchedules(await session.getClient());
        session.showList(g, rows, {
          empty: 'no vmsnap schedules: create one with vmsnap schedule create',
          header: ['NAME', 'WHEN', 'INSTANCES', 'RETENTION', 'STATE', 'NEXT RUN'],
          row: (r) => [
            r.name,
            whenText(r),
            r.instances.join(','),
            retentionText(r.retention),
            r.paused ? 'paused' : 'active',
            r.paused ? '-' : since(r.nextRuns[0]),
          ],
        });
      }),
    );

  /** A command on one schedule by name: it runs, then shows its document (--json) or its text. */
  const onOne = <T>(
    verb: string,
    description: string,
    run: (client: Client, name: string) => Promise<T>,
    text: (doc: T, name: string) => string,
    nameHelp = 'the schedule name',
  ) =>
    schedule
      .command(verb)
      .description(description)
      .argument('<name>', nameHelp)
      .action(
        withGlobals(async (g, name: string) => {
          const doc = await run(await session.getClient(), name);
          session.show(g, doc, () => text(doc, name));
        }),
      );

  onOne(
    'describe',
    'show a schedule: settings, state, next runs and its latest runs with their outcome',
    schedules.describeSchedule,
    describeText,
    'the schedule name (or its id, vmsnap-schedule-<name>)',
  );

  const stateCommand = (verb: 'pause' | 'unpause', description: string) =>
    schedule
      .command(verb)
      .description(description)
      .argument('<name>', 'the schedule name')
      .option('--note <text>', 'why (shown by describe)')
      .action(
        withGlobals(async (g, name: string, opts: { note?: string }) => {
          const client = await session.getClient();
          const d = verb === 'pause' ? await schedules.pauseSchedule(client, name, opts.note) : await schedules.unpauseSchedule(client, name, opts.note);
          session.show(g, d, () => `schedule ${d.name} ${d.paused ? 'paused' : 'active'}${d.note ? `: ${d.note}` : ''}`);
        }),
      );
  stateCommand('pause', 'pause a schedule: no runs until unpaused (a run going on goes on)');
  stateCommand('unpause', 'unpause a schedule: it runs again at its next time');

  onOne(
    'trigger',
    'run a schedule now (skipped if a run is going on)',
    async (client, name) => {
      await schedules.triggerSchedule(client, name);
      return { name, triggered: true };
    },
    (_doc, name) => `started a run of schedule ${name}; see it with vmsnap schedule describe ${name}`,
  );
  onOne(
    'delete',
    'delete a schedule; a run going on goes on, and its images stay',
    schedules.deleteSchedule,
    (_doc, name) => `deleted schedule ${name}; the images it made stay in Glance`,
  );

  const retention = schedule
    .command('retention')
    .description("show what the schedule's retention would keep and delete now, and why (nothing is deleted)")
    .argument('<name>', 'the schedule name')
    .option('--dry-run', 'required: only show, delete nothing');
  addKeepOptions(retention, "what if, instead of the schedule's: keep");
  retention.action(
    withGlobals(async (g, name: string, opts: { dryRun?: boolean; keepLast?: number; keepDaily?: number; keepWeekly?: number }) => {
      if (!opts.dryRun) {
        throw new VmsnapError(
          'InvalidInput',
          `retention is applied by each run of the schedule: add --dry-run to see what it would keep and delete now (vmsnap schedule trigger ${name} runs it)`,
        );
      }
      const policy = retentionOf(opts);
      const plan = await schedules.previewRetention(await session.getClient(), session.getConfig(), name, policy ? { policy } : {});
      session.show(g, { ...plan, dryRun: true }, () => retentionPlanText(name, plan));
    }),
  );
}

function describeText(d: VmsnapScheduleDetails): string {
  const settings = table([
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
  ]);
  if (!d.recentRuns.length) return settings;
  const runs = table([
    ['RUN', 'STARTED', 'STATUS', 'SNAPSHOTS', 'DELETED'],
    ...[...d.recentRuns]
      .reverse()
      .map((r) => [
        r.workflowId,
        since(r.startedAt),
        r.status ?? '-',
        r.completed === undefined ? '-' : `${r.completed} ok, ${r.busy} busy, ${r.failed} failed`,
        r.deletedImages === undefined ? '-' : String(r.deletedImages),
      ]),
  ]);
  return `${settings}\n\n${runs}`;
}

function retentionPlanText(name: string, plan: RetentionPlan): string {
  const doomed = plan.decisions.filter((d) => d.action === 'delete').length;
  const head = `retention of schedule ${name} (${retentionText(plan.policy)}), dry run: ${plan.decisions.length - doomed} kept, ${doomed} would be deleted`;
  if (!plan.decisions.length) return head;
  const rows = plan.decisions.map((d) => [d.action, d.imageId, since(d.createdAt || undefined), d.name, d.reason]);
  return `${head}\n${table([['ACTION', 'IMAGE', 'CREATED', 'NAME', 'WHY'], ...rows])}`;
}
