// The invariants every fault test checks afterwards (issue 5):
//  1. the VM is in its prior power state, and a running guest's counter advances;
//  2. the instance's task state is None;
//  3. no temp files of the snapshot remain;
//  4. no image of the snapshot is left queued or saving: it is active and verified, or gone;
//  5. the outcome says what happened, and a failed snapshot recorded a fault.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestState, readCounter, type DomainState, type Guest } from '../../scripts/lib/guest.js';
import { failureTypeOfCause } from '../../src/shared/failures.js';
import type { Store } from '../../src/store/store.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import type { Harness } from './harness.js';
import { findImagesByName } from './images.js';

export interface Invariants {
  'prior power state': boolean;
  'task state None': boolean;
  'no temp files': boolean;
  'no unfinished image': boolean;
  'outcome and fault': boolean;
}

export async function checkInvariants(ctx: {
  store: Store;
  glanceUrl: string;
  snapshotsDir: string;
  guest: Guest;
  /** The state it must be in again; null: it must be gone (destroyed during the snapshot). */
  priorState: DomainState | null;
  imageName: string;
  /** 'completed', or the failure type the outcome must carry. */
  expectedOutcome: string;
  /** What the snapshot ended with: 'completed', or its failure type. */
  outcome: string;
}): Promise<Invariants> {
  let vm = (await guestState(ctx.guest.name)) === ctx.priorState;
  if (vm && ctx.priorState === 'running') {
    const first = await readCounter(ctx.guest.diskPath, 'qcow2');
    await sleep(1000);
    vm = (await readCounter(ctx.guest.diskPath, 'qcow2')).a > first.a;
  }
  const record = await ctx.store.getInstance(ctx.guest.uuid);
  const images = await findImagesByName(ctx.glanceUrl, ctx.imageName);
  const imagesOk = ctx.outcome === 'completed' ? images.length === 1 && images[0]?.status === 'active' : images.length === 0;
  const faults = await ctx.store.listFaults(ctx.guest.uuid);
  const faultOk = ctx.outcome === 'completed' || faults.at(-1)?.code === ctx.outcome;
  return {
    'prior power state': vm,
    'task state None': record?.taskState === null,
    'no temp files': !existsSync(ctx.snapshotsDir) || readdirSync(ctx.snapshotsDir).length === 0,
    'no unfinished image': imagesOk,
    'outcome and fault': ctx.outcome === ctx.expectedOutcome && faultOk,
  };
}

/** The invariants after a snapshot of `guest`, running before it, on a harness's stack. */
export function checkRunningGuest(
  h: Pick<Harness, 'store' | 'glanceUrl' | 'config'>,
  guest: Guest,
  imageName: string,
  outcome: string,
  expectedOutcome = 'completed',
): Promise<Invariants> {
  return checkInvariants({
    store: h.store,
    glanceUrl: h.glanceUrl,
    snapshotsDir: h.config.snapshotsDir,
    guest,
    priorState: 'running',
    imageName,
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
