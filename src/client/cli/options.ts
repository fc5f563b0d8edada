// Parsing and wording shared by the commands: option values, request problems in the words of
// the command line, and the few formats of times.
import type { Client } from '@temporalio/client';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { readFileSync } from 'node:fs';
import { VmsnapError } from '../../shared/errors.js';
import { validateSnapshotRequest, type InputProblem } from '../../shared/validation.js';
import { instanceAliases } from '../inventory.js';
import type { DiskSelection } from '../../shared/disk-set.js';
import { formatDuration } from '../progress.js';
import { LISTABLE_STATUSES, type ListableStatus } from '../snapshots.js';
import { withGlobals, type ListView, type Session } from './session.js';

export const SETTINGS_HELP = `Settings (environment, or a JSON file named by VMSNAP_CONFIG_FILE):
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
  disks: '--disks',
  asNew: '--as-new',
};

/** A request problem in the words of the command line: the option, then what is wrong. */
export function describeCliProblem(p: InputProblem): string {
  if (p.field.startsWith('metadata.')) return `--metadata ${p.field.slice('metadata.'.length)} ${p.message}`;
  const flag = FIELD_FLAGS[p.field] ?? p.field;
  return `${flag} (${p.field}) ${p.message}`;
}

export function metadataOption(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`expected key=value, got "${value}"`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`expected a positive whole number, got "${value}"`);
  return n;
}

export function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a whole number, 0 or more, got "${value}"`);
  return n;
}

/** Repeatable, and comma-separated: --instance a --instance b,c. */
export function listOption(value: string, previous: string[] | undefined): string[] {
  return [
    ...(previous ?? []),
    ...value
      .split(',')
      .map((v) => v.trim())
      .filter(Boolean),
  ];
}

export function version(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** How long ago, for figures that may be stale (the inventory's power states). */
export function age(iso: string | undefined): string {
  const ms = iso ? Date.now() - Date.parse(iso) : NaN;
  if (!Number.isFinite(ms)) return '-';
  return `${formatDuration(Math.max(0, ms))} ago`;
}

export function since(iso: string | undefined): string {
  return iso ? `${iso.replace('T', ' ').slice(0, 19)}Z` : '-';
}

/**
 * A list command's --instance: refused unless it is an instance UUID or name, then widened to the
 * names the inventory knows it by (a run started by name is found by UUID, and the other way).
 */
/** What the list commands take: --instance, --status and --limit. */
export interface ListOptions {
  instance?: string;
  status?: ListableStatus;
  limit: number;
}

/** What `list` needs to know of one kind of workflow (snapshot, restore), and how it shows them. */
export interface ListKind<T> extends ListView<T> {
  /** What the list holds, in the options' help: "snapshots". */
  noun: string;
  description: string;
  list(client: Client, filter: ListFilter): Promise<T[]>;
}

type ListFilter = { instance?: string[]; status?: ListableStatus; limit: number };

/** `list` under `parent`: the workflows of this kind that the options select, most recently started first. */
export function addListCommand<T>(parent: Command, session: Session, kind: ListKind<T>): void {
  const list = parent.command('list').description(kind.description);
  addListOptions(list, kind.noun);
  list.action(
    withGlobals(async (g, opts: ListOptions) => {
      const rows = await kind.list(await session.getClient(), await listFilter(session, opts));
      session.showList(g, rows, kind);
    }),
  );
}

function addListOptions(command: Command, noun: string): void {
  command
    .option('--instance <instance>', `only ${noun} of this instance (UUID or name)`)
    .addOption(new Option('--status <status>', `only ${noun} in this state`).choices(Object.keys(LISTABLE_STATUSES)))
    .option('--limit <n>', 'at most this many', positiveInt, 20);
}

/** The list filter as the client takes it: an --instance also matches its other names. */
async function listFilter(session: Session, opts: ListOptions): Promise<ListFilter> {
  return { instance: await instanceFilter(session, opts.instance), status: opts.status, limit: opts.limit };
}

async function instanceFilter(session: Session, instance: string | undefined): Promise<string[] | undefined> {
  if (instance === undefined) return undefined;
  if (validateSnapshotRequest({ instance, imageName: 'x' }).length) {
    throw new VmsnapError('InvalidInput', `--instance "${instance}" is not an instance UUID or name: give one as virsh list shows it`);
  }
  return [instance, ...(await instanceAliases(session.getConfig(), instance))];
}

/** --disks: root, all, or a comma-separated list of target devices (checked with the request). */
export function diskSelection(text: string): DiskSelection {
  const t = text.trim();
  if (t === 'root' || t === 'all') return t;
  return t.split(',').map((d) => d.trim());
}
