// Restore of a guest with a QEMU guest agent (Debian's qemu-ga in the test initramfs) on the real
// stack: the restored guest counts as running only once its agent answers, and a restore as a new
// instance terminated while the new guest boots is cleaned up by the reconciler.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { createGuest, guestState, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startRestore } from '../../src/client/restores.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { Hypervisor } from '../../src/drivers/hypervisor.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { eventually } from '../support/cli.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { startHarness, type Harness } from '../support/harness.js';
import { checkInvariants, outcomeOf } from '../support/invariants.js';
import { waitForPhase } from '../support/slow-guest.js';

const guestName = `vmsnap-test-ragent-${process.pid}`;
const newName = `${guestName}-new`;
let h: Harness;
let guest: Guest;
let imageId: string;
/** Every guest agent ping of the workers, in order: did the agent answer? */
const pings: { id: string; answered: boolean }[] = [];

async function virsh(...args: string[]) {
  return execa('virsh', ['-c', h.config.libvirtUri, ...args], { reject: false });
}

describe('restore with a guest agent, on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    h = await startHarness({
      name: 'restore-agent',
      env: { VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS: '1000' },
      wrapHypervisor: (real: Hypervisor) =>
        Object.assign(Object.create(real) as Hypervisor, {
          async pingGuestAgent(id: string) {
            const answered = await real.pingGuestAgent(id);
            pings.push({ id, answered });
            return answered;
          },
        }),
    });
    guest = await createGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir, guestAgent: true });
    const snap = await startSnapshot(
      h.client,
      { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-ragent`, mode: 'cold' },
      h.config.temporal.taskQueue,
    );
    imageId = (await snap.result()).imageId;
  });

  after(async () => {
    await virsh('destroy', newName);
    await virsh('undefine', newName);
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    await h?.glance.deleteImage(imageId).catch(() => undefined);
    await h?.close();
  });

  it('confirms the restored guest by its agent: running is not enough until the agent answers', async () => {
    pings.length = 0;
    const handle = await startRestore(h.client, { instance: guest.uuid, imageId }, h.config.temporal.taskQueue);
    const result = await handle.result();
    assert.equal(result.confirmedBy, 'guest-agent');
    const mine = pings.filter((p) => p.id === guest.uuid);
    // Right after the start the kernel is still booting: the agent does not answer yet, and the
    // restore waited for it rather than taking "running" for done.
    assert.ok(
      mine.some((p) => !p.answered),
      `the restore asked before the agent was up (${JSON.stringify(mine)})`,
    );
    assert.equal(mine.at(-1)?.answered, true, 'it ended on an answer');
    // The agent answers now, as the restore said.
    const time = await virsh('domtime', guestName);
    assert.equal(time.exitCode, 0, time.stderr);
    assert.equal(await guestState(guestName), 'running');
    const first = (await readCounter(guest.diskPath, 'qcow2')).a;
    await eventually('the restored guest counts', async () => ((await readCounter(guest.diskPath, 'qcow2')).a > first ? true : undefined), 120_000);
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    rmSync(result.preRestorePath ?? '', { force: true });
  });

  it('a restore as a new instance terminated while the new guest boots: the reconciler removes the new domain and its disk', async () => {
    const idBefore = (await virsh('domid', guestName)).stdout.trim();
    const handle = await startRestore(h.client, { instance: guest.uuid, imageId, asNew: newName }, h.config.temporal.taskQueue);
    // The new domain is defined and starting: its confirmation waits for its agent, seconds under TCG.
    await waitForPhase(handle, 'starting-guest', 300_000);
    await eventually('the new domain is defined', async () => ((await virsh('domuuid', newName)).exitCode === 0 ? true : undefined), 60_000, 100);
    await handle.terminate('test: a restore as new lost mid-way');
    const disk = join(guest.dir, `${newName}.vmsnap-new.qcow2`);
    const diskBefore = existsSync(disk);
    assert.ok(diskBefore, 'the new disk is there before the reconciler runs');

    const report: ReconcileReport = await h.client.workflow.execute('reconcile', {
      taskQueue: h.config.temporal.taskQueue,
      workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
    });
    assert.deepEqual(report.removedNewInstances, [newName], JSON.stringify(report));
    assert.equal((await virsh('domuuid', newName)).exitCode, 1, 'the new domain is gone');
    assert.ok(!existsSync(disk) && !existsSync(`${disk}.vmsnap-download`), 'its disk is gone');
    assert.deepEqual(
      readdirSync(join(h.config.snapshotsDir, 'new-instances')).filter((f) => f.startsWith(newName)),
      [],
      'its claim is gone',
    );
    // The original was never touched.
    assert.equal((await virsh('domid', guestName)).stdout.trim(), idBefore);
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    // A second round finds nothing left.
    const again: ReconcileReport = await h.client.workflow.execute('reconcile', {
      taskQueue: h.config.temporal.taskQueue,
      workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
    });
    assert.deepEqual(again.removedNewInstances, []);
    const outcome = await outcomeOf(handle);
    recordFaultRow({
      fault: 'restore as new: workflow terminated while the new guest boots',
      outcome: `${outcome}, reconciled`,
      invariants: await checkInvariants({
        store: h.store,
        guest,
        priorState: 'running',
        outcome,
        expectedOutcome: 'Terminated',
        // The original instance was never the restore's to change: no fault of it.
        expectedFault: null,
        image: { id: imageId },
        leftovers: [disk, `${disk}.vmsnap-download`],
      }),
      evidence: [
        evidence(`terminated with the new domain ${newName} defined and its disk there`, diskBefore),
        evidence(`the reconciler removed ${report.removedNewInstances.join(', ')}`, report.removedNewInstances.includes(newName)),
      ],
      note: 'the original ran on untouched (same domain id)',
    });
  });
});
