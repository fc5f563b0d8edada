// What `vmsnap cancel` and `vmsnap restore cancel` share: ask the workflow to cancel (it undoes
// its own work), and with --wait, wait until it has ended and say how.
import type { Client, WorkflowHandle } from '@temporalio/client';
import type { Command } from 'commander';
import { EXIT } from '../exit-codes.js';
import { instanceAliases } from '../inventory.js';
import type { Outcome } from './follow.js';
import type { GlobalOptions, Session } from './session.js';

/** What `cancel` needs to know of one kind of workflow (snapshot, restore). */
export interface CancelKind<H extends WorkflowHandle> {
  /** The command's help: what a cancellation does, and what --wait waits for. */
  description: string;
  wait: string;
  /** What the messages call it ("snapshot"), and the command that shows one ("vmsnap status"). */
  noun: string;
  statusCommand: string;
  /** Requests the cancellation of the running workflow `ref` names (a workflow id or an instance). */
  cancel(client: Client, ref: string, aliases: string[]): Promise<{ handle: H; runId: string }>;
  /** How it ended, once it has. */
  ended(session: Session, handle: H): Promise<Outcome<unknown>>;
  /** Said when it ended cancelled. */
  cancelled(workflowId: string): string;
}

/** `cancel <instance|workflow-id> [--wait]` under `parent`, for workflows of this kind. */
export function addCancelCommand<H extends WorkflowHandle>(parent: Command, session: Session, kind: CancelKind<H>): void {
  parent
    .command('cancel')
    .description(kind.description)
    .argument('<instance|workflow-id>', 'instance UUID or name, or a workflow id')
    .option('--wait', kind.wait)
    // A parent with a --wait of its own (`restore`) is given the flag by commander: read either.
    .action((ref: string, opts: { wait?: boolean }, cmd: Command) =>
      cancelWorkflow(session, cmd.optsWithGlobals<GlobalOptions>(), ref, opts.wait ?? cmd.optsWithGlobals<{ wait?: boolean }>().wait, kind),
    );
}

async function cancelWorkflow<H extends WorkflowHandle>(
  session: Session,
  g: GlobalOptions,
  ref: string,
  wait: boolean | undefined,
  kind: CancelKind<H>,
): Promise<void> {
  const config = session.getConfig();
  const client = await session.getClient();
  const { handle, runId } = await kind.cancel(client, ref, await instanceAliases(config, ref));
  const doc = { workflowId: handle.workflowId, runId, cancelRequested: true };
  if (!wait) {
    if (g.json) session.json(doc);
    session.say(g, `cancellation of ${handle.workflowId} requested: it undoes its work and ends cancelled; see ${kind.statusCommand} ${ref}`);
    return;
  }
  const outcome = await kind.ended(session, handle);
  if (g.json) session.json({ ...doc, ...outcome });
  if (outcome.status === 'cancelled') {
    session.say(g, kind.cancelled(handle.workflowId));
  } else {
    session.exitCode = EXIT.failed;
    session.io.stderr.write(`vmsnap: the ${kind.noun} ended ${outcome.status} before the cancellation took effect: see ${kind.statusCommand} ${ref}\n`);
  }
}
