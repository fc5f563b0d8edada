// Waiting for a snapshot, restore or rollback to end while showing its progress, and saying how
// it ended.
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmsnapError, type ErrorCode } from '../../shared/errors.js';
import { knownFailure } from '../../shared/failures.js';
import { PHASE } from '../../shared/search-attributes.js';
import type { SnapshotResult } from '../../shared/types.js';
import { ClientError } from '../errors.js';
import { EXIT, exitCodeOf, failureTypeOf, type ExitCode } from '../exit-codes.js';
import { ProgressView, formatBytes, type WorkProgress } from '../progress.js';
import type { RestoreProgressDetails } from '../restores.js';
import { getProgress, oneLine, snapshotResult, type SnapshotHandle } from '../snapshots.js';
import type { GlobalOptions, Session } from './session.js';

/** How a waited-for snapshot ended, as `snapshot --wait --json` and `cancel --wait --json` print it. */
export interface Outcome<R = SnapshotResult> {
  status: string;
  result?: R;
  error?: { type: string; message: string };
}

/**
 * Waits for the snapshot to end, showing its progress (on a terminal one line kept current;
 * otherwise plain lines). Resolves with how it ended; never rejects for a failed snapshot.
 */
export async function follow(
  session: Session,
  handle: SnapshotHandle,
  view: ProgressView | undefined,
  pollMs: number,
): Promise<{ result?: SnapshotResult; error?: unknown; lastPhase?: string }> {
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
        const p = await unlessEnded(
          outcome,
          handle.client.withDeadline(Date.now() + 5000, () => getProgress(handle)),
        );
        if (p === undefined) break;
        misses = 0;
        lastPhase = p.phase;
        if (!settled) view.update(p);
      } catch {
        // No answer now (no worker yet, a worker restarting): say so once, keep waiting.
        if (++misses === 3) {
          const queue = session.getConfig().temporal.taskQueue;
          view.end();
          session.io.stderr.write(
            `vmsnap: no worker answers on task queue ${queue} yet: is a vmsnap worker running with VMSNAP_TASK_QUEUE=${queue}? still waiting\n`,
          );
        }
      }
    }
    await Promise.race([outcome, sleep(pollMs)]);
  }
  return { ...(await outcome), ...(lastPhase ? { lastPhase } : {}) };
}

/**
 * The answer of a progress call, or undefined as soon as the run has ended: a query of a run that
 * just closed can take seconds (a worker replays it), and the end is what the user waits for.
 */
async function unlessEnded<T>(ended: Promise<unknown>, asking: Promise<T>): Promise<T | undefined> {
  asking.catch(() => undefined); // answered after the end: nobody reads it
  return Promise.race([ended.then(() => undefined), asking]);
}

/** ": what to do" for a failure type whose message does not say it already. */
function hintFor(error: { type: string; message: string }): string {
  const hint = knownFailure(error.type)?.hint;
  return hint && !error.message.includes(hint) ? `: ${hint}` : '';
}

/** How a run that did not complete ended, by its failure type. */
const ENDED_AS: Record<string, Outcome['status']> = { Cancelled: 'cancelled', Terminated: 'terminated', TimedOut: 'timed-out' };

export function outcomeOf<R = SnapshotResult>(ended: { result?: R; error?: unknown }): Outcome<R> {
  if (ended.result) return { status: 'completed', result: ended.result };
  const err = ended.error;
  if (err instanceof WorkflowFailedError) {
    const type = failureTypeOf(err);
    const status = ENDED_AS[type] ?? 'failed';
    const message = err.cause instanceof ApplicationFailure ? err.cause.message : (err.cause?.message ?? err.message);
    return { status, error: { type, message: oneLine(message) } };
  }
  throw err;
}

export function describeProgress(view: ProgressView, p: WorkProgress): string {
  const line = view.line(p);
  if (line.percent === undefined) return line.note ? `${line.phase}: ${line.note}` : line.phase;
  return `${line.phase} ${Math.floor(line.percent)}% (${formatBytes(line.bytesDone ?? 0)} of ${formatBytes(line.bytesTotal ?? 0)})`;
}

/** Follows a restore or rollback to its end (progress as for snapshots); never rejects for a failed one. */
export async function followWork(
  session: Session,
  g: GlobalOptions,
  result: () => Promise<unknown>,
  progress: (() => Promise<RestoreProgressDetails>) | undefined,
  instance: string,
): Promise<{
  outcome: { status: string; result?: unknown; error?: { type: string; message: string } };
  cause?: { said: unknown; code: ExitCode };
}> {
  const { io } = session;
  const stream = g.json ? io.stderr : io.stdout;
  const view = !progress || (g.json && !io.stderr.isTTY) ? undefined : new ProgressView(stream, stream.isTTY ? 'tty' : 'plain');
  const onInterrupt = () => {
    view?.end();
    io.stderr.write(
      `vmsnap: stopped waiting; the restore of ${instance} goes on: follow it with vmsnap restore status ${instance}, stop it with vmsnap restore ` +
        `cancel ${instance}\n`,
    );
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
        const p = await unlessEnded(
          ended,
          session.getClient().then((c) => c.withDeadline(Date.now() + 5000, progress)),
        );
        if (p === undefined) break;
        if (!settled) view.update(p);
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
    const said = outcome.error
      ? new VmsnapError(
          outcome.error.type as ErrorCode,
          `${progress ? 'restore' : 'rollback'} of ${instance} ${outcome.status === 'failed' ? `failed (${outcome.error.type})` : outcome.status}: ` +
            `${outcome.error.message}${hintFor(outcome.error)}`,
        )
      : error;
    return {
      outcome: { status: outcome.status, ...(outcome.error ? { error: outcome.error } : {}) },
      cause: { said, code: exitCodeOf(error) },
    };
  } finally {
    process.off('SIGINT', onInterrupt);
  }
}

/** The phase in which a cold snapshot holds the guest paused. */
const PAUSED_PHASES = new Set(['converting']);

/**
 * The phase a run ended in, as its search attribute recorded it: what the progress query would have
 * said, when no query was answered in time (a loaded worker) before the run ended.
 */
async function phaseAtEnd(handle: SnapshotHandle): Promise<string | undefined> {
  return (await handle.describe().catch(() => undefined))?.typedSearchAttributes.get(PHASE);
}

function terminatedText(lastPhase: string | undefined): string {
  const rest =
    'the reconciler removes its unfinished image and frees the task state within a minute (VMSNAP_RECONCILE_INTERVAL_MS): see vmsnap instances, then ' +
    'snapshot again';
  if (lastPhase && PAUSED_PHASES.has(lastPhase)) {
    return (
      `the snapshot workflow was terminated while the guest was paused (phase ${lastPhase}): its host worker resumes it within seconds ` +
      `(VMSNAP_PAUSE_WATCH_MS, 2 s by default); ${rest}`
    );
  }
  const where = lastPhase ? ` in phase ${lastPhase}` : '';
  return (
    `the snapshot workflow was terminated${where}${lastPhase ? ', with the guest not paused by it' : ''}: a guest it had paused runs again ` +
    `within seconds (its host worker resumes it); ${rest}`
  );
}

/** `snapshot --wait`: follows the snapshot and sets the exit code from how it ended. */
export async function waitAndReport(session: Session, g: GlobalOptions, handle: SnapshotHandle, instance: string): Promise<Outcome & { cause?: unknown }> {
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
    if (outcome.status !== 'terminated') return { ...outcome, cause: ended.error };
    return { ...outcome, cause: new ClientError('Terminated', terminatedText(ended.lastPhase ?? (await phaseAtEnd(handle)))) };
  } finally {
    process.off('SIGINT', onInterrupt);
  }
}
