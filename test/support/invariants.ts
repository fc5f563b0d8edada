// The invariants every fault test checks afterwards (issue 5), for a snapshot or a restore:
//  1. the VM is in its prior power state, and a running guest's counter advances;
//  2. the instance's task state is None;
//  3. no temp files of the snapshot (or restore) remain;
//  4. no image of the snapshot is left queued or saving: it is active and verified, or gone (a
//     restore's image is left active, untouched);
//  5. the outcome is the one expected, and the instance recorded the fault expected of it.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestState, readCounter, type DomainState, type Guest } from '../../scripts/lib/guest.js';
import { failureTypeOfCause } from '../../src/shared/failures.js';
import type { Store } from '../../src/store/store.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { stackGlanceUrl, testCloud } from './cloud.js';
import type { Harness } from './harness.js';
import { findImagesByName } from './images.js';

export interface Invariants {
  'prior power state': boolean;
  'task state None': boolean;
  'no temp files': boolean;
  'no unfinished image': boolean;
  'outcome and fault': boolean;
}

export interface InvariantContext {
  store: Store;
  guest: Guest;
  /** The state it must be in again; null: it must be gone (destroyed during the snapshot). */
  priorState: DomainState | null;
  /** What the run ended with: 'completed', its failure type, 'Terminated', or a combination the test names. */
  outcome: string;
  expectedOutcome: string;
  /**
   * The fault the instance must have recorded last; null: none is asked for. Default: the outcome,
   * for a run that did not complete; none for a completed one.
   */
  expectedFault?: string | null;
  /**
   * A snapshot's image, by name: one active image when the run made one (by default when its outcome
   * is 'completed'), none otherwise: nothing queued or saving either way. Or the image a restore read, by id: it stays active.
   */
  image: { name: string; made?: boolean } | { id: string };
  /** A snapshots dir that must be empty (or absent), and files that must not exist (a restore's). */
  snapshotsDir?: string;
  leftovers?: string[];
}

/** The guest's counter moves on: polled until it does, for up to `timeoutMs` (a loaded host's TCG guest is slow). */
export async function counterAdvances(guest: Guest, timeoutMs = 60_000): Promise<boolean> {
  const first = (await readCounter(guest.diskPath, 'qcow2')).a;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    await sleep(200);
    if ((await readCounter(guest.diskPath, 'qcow2')).a > first) return true;
  }
  return false;
}

export async function checkInvariants(ctx: InvariantContext): Promise<Invariants> {
  let vm = (await guestState(ctx.guest.name)) === ctx.priorState;
  if (vm && ctx.priorState === 'running') vm = await counterAdvances(ctx.guest);
  const record = await ctx.store.getInstance(ctx.guest.uuid);
  let imageOk: boolean;
  if ('id' in ctx.image) {
    imageOk = (await (await testCloud()).imageService.getImage(ctx.image.id))?.status === 'active';
  } else {
    const images = await findImagesByName(await stackGlanceUrl(), ctx.image.name);
    const made = ctx.image.made ?? ctx.outcome === 'completed';
    imageOk = made ? images.length === 1 && images[0]?.status === 'active' : images.length === 0;
  }
  let expectedFault = ctx.expectedFault;
  if (expectedFault === undefined) expectedFault = ctx.expectedOutcome === 'completed' ? null : ctx.expectedOutcome;
  const faults = await ctx.store.listFaults(ctx.guest.uuid);
  const faultOk = expectedFault === null || faults.at(-1)?.code === expectedFault;
  const dirEmpty = !ctx.snapshotsDir || !existsSync(ctx.snapshotsDir) || readdirSync(ctx.snapshotsDir).length === 0;
  return {
    'prior power state': vm,
    'task state None': record?.taskState === null,
    'no temp files': dirEmpty && !(ctx.leftovers ?? []).some((f) => existsSync(f)),
    'no unfinished image': imageOk,
    'outcome and fault': ctx.outcome === ctx.expectedOutcome && faultOk,
  };
}

/** The invariants after a snapshot of `guest`, running before it, on a harness's stack. */
export function checkRunningGuest(
  h: Pick<Harness, 'store' | 'config'>,
  guest: Guest,
  imageName: string,
  outcome: string,
  expectedOutcome = 'completed',
): Promise<Invariants> {
  return checkInvariants({
    store: h.store,
    snapshotsDir: h.config.snapshotsDir,
    guest,
    priorState: 'running',
    image: { name: imageName },
    expectedOutcome,
    outcome,
  });
}

/** Asserts that every invariant held; the message names them all, so a failure shows which did not. */
export function assertAllHeld(invariants: object): void {
  assert.deepEqual(
    Object.values(invariants),
    Object.values(invariants).map(() => true),
    JSON.stringify(invariants),
  );
}

/** How a snapshot ended: 'completed', its failure type, or 'Cancelled' / 'Terminated'. */
export async function outcomeOf(handle: { result: () => Promise<unknown> }): Promise<string> {
  try {
    await handle.result();
    return 'completed';
  } catch (err) {
    if (!(err instanceof WorkflowFailedError)) throw err;
    return failureTypeOfCause(err.cause);
  }
}

/** How a snapshot ended, asked again (a second apart) while the client's long poll fails in a Temporal outage. */
export async function outcomeAcrossOutage(handle: { result: () => Promise<unknown> }, attempts: number): Promise<string> {
  let outcome = '';
  for (let i = 0; i < attempts && !outcome; i++) {
    outcome = await outcomeOf(handle).catch(async () => {
      await sleep(1000);
      return '';
    });
  }
  return outcome;
}

/** Pids of qemu-img processes whose command line mentions the dir. */
export function qemuImgProcessesUnder(dir: string): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        return cmd.includes('qemu-img') && cmd.includes(dir);
      } catch {
        return false;
      }
    })
    .map(Number);
}

/**
 * Once the service that was away is back: the snapshot's image is still queued, and one run of
 * the reconciler deletes it.
 */
export async function reconcilerRemovesQueuedImage(h: Pick<Harness, 'client' | 'config' | 'glanceUrl'>, imageName: string): Promise<void> {
  const [image] = await findImagesByName(h.glanceUrl, imageName);
  assert.equal(image?.status, 'queued');
  const report: ReconcileReport = await h.client.workflow.execute('reconcile', {
    taskQueue: h.config.temporal.taskQueue,
    workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
  });
  assert.ok(report.deletedImages.includes(image.id), 'the reconciler deleted the orphan image');
}
