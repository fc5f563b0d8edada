// What every command shares: the settings and the Temporal client (made on first use), and the
// output: one JSON document in --json mode, text otherwise, and errors as one line on stderr.
import type { Client } from '@temporalio/client';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { CommanderError, type Command } from 'commander';
import { loadConfig, type Config } from '../../shared/config.js';
import { VmsnapError } from '../../shared/errors.js';
import { OUTCOMES, knownFailure } from '../../shared/failures.js';
import { ClientError, ScheduleError } from '../errors.js';
import { EXIT, exitCodeOf, failureTypeOf, type ExitCode } from '../exit-codes.js';
import { connectClient, oneLine } from '../snapshots.js';

export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  env: Record<string, string | undefined>;
}

export interface GlobalOptions {
  json?: boolean;
  debug?: boolean;
}

/**
 * A command's action with the global options (--json, --debug) first, then what commander passes:
 * its arguments and its options (the Command itself, last, is taken off).
 */
export function withGlobals<A extends unknown[]>(action: (g: GlobalOptions, ...args: A) => Promise<void>): (...args: unknown[]) => Promise<void> {
  return (...args) => {
    const cmd = args.at(-1) as Command;
    return action(cmd.optsWithGlobals<GlobalOptions>(), ...(args.slice(0, -1) as A));
  };
}

/** A list as a command answers it: its columns, one row per item, and what to say when there is none. */
export interface ListView<T> {
  empty: string;
  /** A line before the table. */
  note?: string;
  header: string[];
  row: (item: T) => string[];
}

export class Session {
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

  /** A command's answer: the document in --json mode, else the text (made only then). */
  show(global: GlobalOptions, doc: unknown, text: () => string): void {
    if (global.json) this.json(doc);
    else this.say(global, text());
  }

  /** A list: the rows in --json mode, else a table, or what to say when there are none. */
  showList<T>(global: GlobalOptions, rows: T[], view: ListView<T>): void {
    if (global.json) return this.json(rows);
    if (!rows.length) return this.say(global, view.empty);
    if (view.note) this.say(global, view.note);
    this.say(global, table([view.header, ...rows.map(view.row)]));
  }

  /** One line on stderr; in --json mode also an error document on stdout if none was printed. */
  fail(global: GlobalOptions, err: unknown, code = err instanceof ScheduleError ? err.exitCode : exitCodeOf(err)): void {
    this.exitCode = code;
    const message = errorLine(err, this.config);
    this.io.stderr.write(`vmsnap: ${message}\n`);
    if (global.debug && err instanceof Error && err.stack) this.io.stderr.write(`${err.stack}\n`);
    if (global.json && !this.jsonWritten) {
      const type = errorType(err);
      const hint = knownFailure(type)?.hint;
      this.json({ error: { type, message, exitCode: code, ...(hint ? { hint } : {}) } });
    }
  }

  webUiLink(workflowId: string, runId?: string): string | undefined {
    const ui = this.io.env.VMSNAP_TEMPORAL_UI_URL?.replace(/\/+$/, '');
    if (!ui) return undefined;
    const ns = encodeURIComponent(this.getConfig().temporal.namespace);
    return `${ui}/namespaces/${ns}/workflows/${encodeURIComponent(workflowId)}${runId ? `/${runId}` : ''}`;
  }
}

/** Columns padded to their widest cell; the last one is not padded. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

function errorType(err: unknown): string {
  if (err instanceof ClientError || err instanceof VmsnapError || err instanceof ScheduleError) return err.code;
  if (err instanceof WorkflowFailedError) return failureTypeOf(err);
  if (err instanceof CommanderError) return 'Usage';
  return err instanceof Error ? err.name : 'Error';
}

/** The failure type's "what to do" after the line, unless the message says it already. */
function withHint(line: string, type: string): string {
  const hint = knownFailure(type)?.hint;
  return hint && !line.includes(hint) ? `${line}: ${hint}` : line;
}

/** `<what happened>: <what to do>` on one line. */
function errorLine(err: unknown, config: Config | undefined): string {
  if (err instanceof VmsnapError && err.code === 'ConfigError') {
    const setting = String(err.details.setting ?? 'the setting');
    const where = setting.startsWith('OS_') ? 'clouds.yaml, secure.yaml' : 'the file VMSNAP_CONFIG_FILE names';
    return `${oneLine(err.message)}: correct ${setting} in the environment (or in ${where})`;
  }
  if (err instanceof VmsnapError && err.details.refusedByRun) return withHint(`refused (${err.code}): ${oneLine(err.message)}`, err.code);
  if (err instanceof ClientError || err instanceof VmsnapError || err instanceof ScheduleError) return oneLine(err.message);
  if (err instanceof WorkflowFailedError) {
    const type = failureTypeOf(err);
    if (type === 'Cancelled') return `the snapshot was cancelled: ${OUTCOMES.Cancelled.hint}`;
    if (type === 'Terminated') return `the snapshot workflow was terminated: ${OUTCOMES.Terminated.hint}`;
    const cause = err.cause instanceof ApplicationFailure ? err.cause.message : (err.cause?.message ?? err.message);
    return withHint(`snapshot failed (${type}): ${oneLine(cause)}`, type);
  }
  if (err instanceof CommanderError) return `${oneLine(err.message.replace(/^error: /, '')).replace(/\.$/, '')}: see vmsnap --help`;
  const grpc = err as { code?: unknown; details?: unknown };
  if (exitCodeOf(err) === EXIT.unavailable && typeof grpc.code === 'number') {
    return (
      `lost Temporal at ${config?.temporal.address ?? 'TEMPORAL_ADDRESS'} (${oneLine(String(grpc.details ?? (err as Error).message))}): is the ` +
      `Temporal server running?`
    );
  }
  return `${oneLine(err instanceof Error ? err.message : String(err))}: run again with --debug for details`;
}
