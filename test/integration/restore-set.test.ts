// Restore of a snapshot set (issue 28 item 4) on the real stack, with real worker processes: a
// counting guest with a qcow2 root disk (vda) and a raw data disk (vdb), and a set of two images
// in real Glance as a snapshot of every disk makes it (test/support/disk-set.ts: the root image a
// copy of the guest's disk at one instant, the data image a raw file of another fill, hidden).
// Restored, each disk holds its image; refused (an image missing, a disk added) nothing changes;
// a worker killed between the two disks' swaps leaves both restored or both as they were. And the
// real Glance's os_hidden, as retention and the reconciler rely on it. And a round trip through
// vmsnap's own snapshot of every disk (disks: 'all').
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { execa } from 'execa';
import { createGuest, guestState, LIBVIRT_URI, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { reconcileMainActivities } from '../../src/activities/reconcile.js';
import { readMarker, restoreFiles } from '../../src/activities/restore-files.js';
import { retentionActivities } from '../../src/activities/retention.js';
import { startRestore, startRollback } from '../../src/client/restores.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { eventually } from '../support/cli.js';
import { closeTestCloud, testCloud } from '../support/cloud.js';
import { attachDisk, addDataDisk, rawDisk, setImageIds, uploadDiskSet, type BuiltSet } from '../support/disk-set.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { onlyActivityRun } from '../support/history.js';
import { deleteImagesOfInstances, downloadImage } from '../support/images.js';
import { checkInvariants, outcomeOf } from '../support/invariants.js';
import { STACK_GUESTS } from '../support/slow-guest.js';
import { WorkerProcesses, workerTestEnv } from '../support/worker-process.js';

const guestName = `vmsnap-test-rset-${process.pid}`;
const newName = `${guestName}-new`;
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-rset-'));
const env = {
  ...workerTestEnv('rset', dir),
  // Short enough to take over soon after a kill, long enough for a loaded 2-CPU host's heartbeats.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '6000',
  // The test guest ignores ACPI: a short wait, then destroy.
  VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS: '1000',
};
const workers = new WorkerProcesses(env);
const DATA_MIB = 8;
let guest: Guest;
let dataPath: string;
let store: SqliteStore;
let client: Client;
let set: BuiltSet;
/** The counter the root image holds. */
let atImage: number;
const sets: string[] = [];

async function sha512(path: string): Promise<string> {
  const hash = createHash('sha512');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function virsh(args: string[]): Promise<string> {
  return (await execa('virsh', ['-c', LIBVIRT_URI, ...args])).stdout.trim();
}

async function failureOf(result: Promise<unknown>): Promise<ApplicationFailure> {
  const err = await result.then(
    () => assert.fail('the restore should have been refused'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure, `expected a typed failure, got ${String(err)}`);
  return err.cause;
}

/** The run's events in the workers' store. */
async function eventsOf(handle: { workflowId: string; firstExecutionRunId: string }): Promise<string[]> {
  const owner = `${handle.workflowId}/${handle.firstExecutionRunId}`;
  return (await store.listEvents(guest.uuid)).filter((e) => e.requestId === owner).map((e) => e.event);
}

/** Nothing of a restore in progress beside either disk. */
function leftovers(): string[] {
  return [guest.diskPath, dataPath].flatMap((p) => [restoreFiles(p).download, restoreFiles(p).restored]);
}

/** The guest's disks as libvirt has them: target → source. */
async function domainDisks(name: string): Promise<Record<string, string>> {
  const out = await virsh(['domblklist', name]);
  return Object.fromEntries(
    out
      .split('\n')
      .slice(2)
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length === 2),
  );
}

describe('restore of a disk set on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    guest = await createGuest({ name: guestName, ...STACK_GUESTS, start: false });
    dataPath = await addDataDisk(guest, DATA_MIB, 0x5a);
    await virsh(['start', guestName]);
    await eventually('the guest counting', async () => ((await readCounter(guest.diskPath, 'qcow2')).a > 0 ? true : undefined), 120_000, 200);
    store = new SqliteStore(env.VMSNAP_STORE_PATH);
    await store.migrate();
    client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    await workers.start();
    // The set: the root disk copied at one instant (guest paused), the data disk's image another fill.
    const rootCopy = join(dir, 'root.qcow2');
    await virsh(['suspend', guestName]);
    try {
      await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', guest.diskPath, rootCopy]);
    } finally {
      await virsh(['resume', guestName]);
    }
    atImage = (await readCounter(rootCopy, 'qcow2')).a;
    const dataImage = join(dir, 'data-image.raw');
    await rawDisk(dataImage, DATA_MIB, 0xa5);
    const disks = [
      { dev: 'vda', path: rootCopy, format: 'qcow2' as const },
      { dev: 'vdb', path: dataImage, format: 'raw' as const },
    ];
    set = await uploadDiskSet(guest.uuid, disks, { name: `vmsnap-test-${process.pid}-set` });
    sets.push(set.setId);
  });

  after(async () => {
    await workers.killAll();
    await client?.connection.close();
    await store?.close();
    await removeGuest(newName, STACK_GUESTS.guestsDir).catch(() => undefined);
    await removeGuest(guestName, STACK_GUESTS.guestsDir).catch(() => undefined);
    const glance = (await testCloud()).imageService;
    for (const setId of sets) for (const id of await setImageIds(setId).catch(() => [])) await glance.deleteImage(id).catch(() => undefined);
    if (guest) await deleteImagesOfInstances([guest.uuid]);
    rmSync(dir, { recursive: true, force: true });
    await closeTestCloud();
  });

  it('Glance here hides os_hidden images from lists unless asked; the reconciler and retention find them', async () => {
    const glance = (await testCloud()).imageService;
    const [root, data] = [set.imageIds.vda!, set.imageIds.vdb!];
    const listed = (await glance.listImages({ vmsnap_disk_set: set.setId })).map((i) => i.id);
    const hidden = (await glance.listImages({ vmsnap_disk_set: set.setId, os_hidden: 'true' })).map((i) => i.id);
    assert.deepEqual(listed, [root], 'a default list leaves the hidden data image out');
    assert.deepEqual(hidden, [data], 'os_hidden=true lists the hidden one (only)');
    // The reconciler's sweep of a closed run's images: the hidden data image among them.
    const workflows = { runStatus: async () => 'closed' as const, runningSnapshotImageIds: async () => [] };
    const reconcile = reconcileMainActivities({ store, imageService: glance, workflows } as never);
    const orphans = (await reconcile.findOrphanImages({ staleAfterMs: 0 })).map((o) => o.imageId);
    assert.ok(orphans.includes(data) && orphans.includes(root), `the sweep finds both images of the set: ${orphans.join(', ')}`);
  });

  it("retention on real Glance counts a schedule's sets by their roots and deletes a set whole", async () => {
    const glance = (await testCloud()).imageService;
    const scheduleId = `vmsnap-test-${process.pid}-sets`;
    const disks = [
      { dev: 'vda', path: join(dir, 'root.qcow2'), format: 'qcow2' as const },
      { dev: 'vdb', path: join(dir, 'data-image.raw'), format: 'raw' as const },
    ];
    // Names end in the run's time as a schedule's do: they order two sets made in one second.
    const older = await uploadDiskSet(guest.uuid, disks, { name: `${scheduleId}-1`, schedule: scheduleId });
    sets.push(older.setId);
    const newer = await uploadDiskSet(guest.uuid, disks, { name: `${scheduleId}-2`, schedule: scheduleId });
    sets.push(newer.setId);
    const retention = retentionActivities({ imageService: glance, store });
    const plan = await retention.planScheduleRetention({ scheduleId, policy: { keepLast: 1 } });
    assert.deepEqual(
      plan.decisions.map((d) => [d.imageId, d.action]),
      [
        [newer.rootImageId, 'keep'],
        [older.rootImageId, 'delete'],
      ],
      'one decision per set (its root), the data images never counted',
    );
    const outcome = await retention.deleteExpiredImage({ scheduleId, imageId: older.rootImageId });
    assert.deepEqual(outcome, { deleted: true, dataImages: [older.imageIds.vdb] });
    assert.deepEqual(await setImageIds(older.setId), [], 'the older set is gone whole');
    assert.deepEqual((await setImageIds(newer.setId)).sort(), [newer.rootImageId, newer.imageIds.vdb!].sort(), 'the kept set is whole');
  });

  it('restores every disk of the set: each disk holds its image, the result lists each; rollback puts both back', async () => {
    const dataBefore = await sha512(dataPath);
    // Time for the guest to count well past the image's counter: the restored root then reads lower.
    await eventually('the guest counting on', async () => ((await readCounter(guest.diskPath, 'qcow2')).a > atImage + 200 ? true : undefined), 120_000);
    const handle = await startRestore(client, { instance: guest.uuid, imageId: set.rootImageId }, env.VMSNAP_TASK_QUEUE);
    const result = await handle.result();
    const restoredAt = (await readCounter(guest.diskPath, 'qcow2')).a;
    const oldRoot = (await readCounter(restoreFiles(guest.diskPath).preRestore, 'qcow2')).a;
    const glance = (await testCloud()).imageService;
    const dataImageSha = (await glance.getImage(set.imageIds.vdb!))!.os_hash_value;

    assert.equal(result.diskSetId, set.setId);
    assert.deepEqual(
      result.disks?.map((d) => [d.dev, d.imageId, d.path]),
      [
        ['vda', set.imageIds.vda, guest.diskPath],
        ['vdb', set.imageIds.vdb, dataPath],
      ],
    );
    assert.equal(result.disks?.[1]?.sha512, dataImageSha, "the data disk's download was verified against Glance's sha512");
    assert.equal(await sha512(dataPath), dataImageSha, 'the data disk holds its image, byte for byte');
    assert.equal(await sha512(restoreFiles(dataPath).preRestore), dataBefore, "the data disk's previous contents are kept for rollback");
    assert.ok(restoredAt >= atImage && restoredAt < oldRoot, `the root disk holds its image: counter ${restoredAt} from ${atImage}, the old disk's ${oldRoot}`);
    assert.equal(await guestState(guestName), 'running');
    assert.equal((await store.getInstance(guest.uuid))?.taskState, null);
    assert.deepEqual(leftovers().filter(existsSync), []);

    const rollback = await startRollback(client, { instance: guest.uuid }, env.VMSNAP_TASK_QUEUE);
    await rollback.result();
    assert.equal(await sha512(dataPath), dataBefore, 'rollback put the data disk back');
    assert.ok((await readCounter(guest.diskPath, 'qcow2')).a >= oldRoot, 'rollback put the root disk back');
    assert.ok(!existsSync(restoreFiles(dataPath).preRestore) && !existsSync(restoreFiles(guest.diskPath).preRestore));
    assert.equal(await guestState(guestName), 'running');
  });

  it("round trip: vmsnap's own snapshot of every disk (disks: 'all'), restored, puts each disk back as it was at the snapshot", async () => {
    const dataAtSnapshot = await sha512(dataPath);
    const snap = await startSnapshot(
      client,
      { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-all`, disks: 'all', mode: 'cold' },
      env.VMSNAP_TASK_QUEUE,
    );
    const taken = await snap.result();
    assert.ok(taken.diskSetId, 'the snapshot made a set');
    sets.push(taken.diskSetId);
    assert.deepEqual(
      taken.disks?.map((d) => [d.dev, d.role]),
      [
        ['vda', 'root'],
        ['vdb', 'data'],
      ],
    );
    // The data image may be of another format than the disk (the snapshot's choice): its contents are checked once restored.
    const dataImage = await (await testCloud()).imageService.getImage(taken.disks![1]!.imageId);
    assert.equal(dataImage?.os_hidden, true, "the data disk's image is hidden in Glance");
    // Something else on both disks first (the fixture's set), so the round trip has something to undo.
    await (await startRestore(client, { instance: guest.uuid, imageId: set.rootImageId }, env.VMSNAP_TASK_QUEUE)).result();
    assert.notEqual(await sha512(dataPath), dataAtSnapshot);
    const back = await (await startRestore(client, { instance: guest.uuid, imageId: taken.imageId }, env.VMSNAP_TASK_QUEUE)).result();
    assert.equal(back.diskSetId, taken.diskSetId);
    assert.deepEqual(
      back.disks?.map((d) => [d.dev, d.imageId]),
      taken.disks?.map((d) => [d.dev, d.imageId]),
    );
    assert.equal(await sha512(dataPath), dataAtSnapshot, 'the data disk is back as it was at the snapshot');
    const downloaded = await downloadImage((await testCloud()).glanceUrl, taken.imageId);
    try {
      const atSnapshot = (await readCounter(downloaded.path, 'qcow2')).a;
      const now = (await readCounter(guest.diskPath, 'qcow2')).a;
      const before = (await readCounter(restoreFiles(guest.diskPath).preRestore, 'qcow2')).a;
      // The disk it replaced counted on from the fixture's older counter: below the snapshot's.
      assert.ok(
        before < atSnapshot && now >= atSnapshot,
        `the root disk is back at the snapshot: counter ${now} from ${atSnapshot}, the disk it replaced ${before}`,
      );
    } finally {
      rmSync(downloaded.path, { force: true });
    }
  });

  it('restores a set as a new instance: the new domain gets a new copy of each disk', async () => {
    const dataBefore = await sha512(dataPath);
    const handle = await startRestore(client, { instance: guest.uuid, imageId: set.rootImageId, asNew: newName }, env.VMSNAP_TASK_QUEUE);
    const result = await handle.result();
    try {
      const paths = Object.fromEntries((result.disks ?? []).map((d) => [d.dev, d.path]));
      assert.deepEqual(Object.keys(paths), ['vda', 'vdb']);
      assert.notEqual(paths.vda, guest.diskPath);
      assert.notEqual(paths.vdb, dataPath);
      assert.deepEqual(await domainDisks(newName), paths, 'the new domain runs on its new disks');
      assert.deepEqual(await domainDisks(guestName), { vda: guest.diskPath, vdb: dataPath }, 'the instance keeps its own');
      const dataImageSha = (await (await testCloud()).imageService.getImage(set.imageIds.vdb!))!.os_hash_value;
      assert.equal(await sha512(paths.vdb!), dataImageSha, "the new data disk holds the set's data image");
      assert.equal(await sha512(dataPath), dataBefore, "the instance's data disk is untouched");
      assert.equal(await guestState(newName), 'running');
    } finally {
      await removeGuest(newName, STACK_GUESTS.guestsDir);
      for (const d of result.disks ?? []) rmSync(d.path, { force: true });
    }
  });

  it('refuses a set whose data image is gone: nothing stopped, task state never taken', async () => {
    const broken = await uploadDiskSet(
      guest.uuid,
      [
        { dev: 'vda', path: join(dir, 'root.qcow2'), format: 'qcow2' },
        { dev: 'vdb', path: join(dir, 'data-image.raw'), format: 'raw' },
      ],
      { name: `vmsnap-test-${process.pid}-broken-set` },
    );
    sets.push(broken.setId);
    await (await testCloud()).imageService.deleteImage(broken.imageIds.vdb!);
    const domId = await virsh(['domid', guestName]);
    const handle = await startRestore(client, { instance: guest.uuid, imageId: broken.rootImageId }, env.VMSNAP_TASK_QUEUE);
    const failure = await failureOf(handle.result());
    assert.equal(failure.type, 'ImageNotFound');
    assert.match(failure.message, /disk vdb \(image [0-9a-f-]+\) of snapshot set/);
    assert.equal(await virsh(['domid', guestName]), domId, 'the guest was never stopped');
    assert.equal((await store.getInstance(guest.uuid))?.taskState, null);
    assert.deepEqual(await eventsOf(handle), [], 'the task state was never taken');
    assert.deepEqual(leftovers().filter(existsSync), []);
  });

  it("a worker killed with SIGKILL between the two disks' swaps: a new worker completes the restore of both", async () => {
    await workers.killAll();
    const first = await workers.start();
    const pid = first.proc.pid!;
    const handle = await startRestore(client, { instance: guest.uuid, imageId: set.rootImageId }, env.VMSNAP_TASK_QUEUE);
    // strace delivers SIGKILL to the worker as it links vdb's pre-restore name: the first act of
    // vdb's swap, after vda's swap (link, rename, marker) is whole.
    const vdbPre = restoreFiles(dataPath).preRestore;
    const tracer = execa(
      'strace',
      ['-f', '-p', String(pid), '-o', '/dev/null', '-P', vdbPre, '-e', 'trace=link,linkat', '-e', 'inject=link,linkat:signal=SIGKILL'],
      {
        reject: false,
        buffer: false,
      },
    );
    const traced = async () => (/^TracerPid:\s+[1-9]/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')) ? true : undefined);
    await eventually('strace attached', traced, 30_000, 100);
    const exit = await first.exited().then(() => first.proc.signalCode);
    await tracer;
    const vdaMarker = await readMarker(restoreFiles(guest.diskPath).marker);
    const atKill = { vdbPre: existsSync(vdbPre), vdbMarker: existsSync(restoreFiles(dataPath).marker), events: await eventsOf(handle) };
    const owner = `${handle.workflowId}/${handle.firstExecutionRunId}`;
    await workers.start();
    const outcome = await outcomeOf(handle);
    const result = await handle.result();
    const step = onlyActivityRun(await handle.fetchHistory(), 'stopSwapStart');
    const dataImageSha = (await (await testCloud()).imageService.getImage(set.imageIds.vdb!))!.os_hash_value;
    const dataNow = await sha512(dataPath);
    const rootNow = (await readCounter(guest.diskPath, 'qcow2')).a;
    const rootOld = (await readCounter(restoreFiles(guest.diskPath).preRestore, 'qcow2')).a;
    recordFaultRow({
      fault: "restore of a disk set: worker SIGKILL between the two disks' swaps",
      outcome,
      invariants: await checkInvariants({
        store,
        guest,
        priorState: 'running',
        outcome,
        expectedOutcome: 'completed',
        image: { id: set.rootImageId },
        leftovers: leftovers(),
      }),
      evidence: [
        evidence(`worker ended by ${exit}`, exit === 'SIGKILL'),
        evidence(
          `at the kill: vda swapped (its marker by ${vdaMarker?.owner === owner ? 'this run' : String(vdaMarker?.owner)}), ` +
            `vdb not (pre-restore ${atKill.vdbPre}, marker ${atKill.vdbMarker}); events ${atKill.events.join(', ')}`,
          vdaMarker?.owner === owner && !atKill.vdbPre && !atKill.vdbMarker && !atKill.events.includes('started'),
        ),
        evidence(`stop, swaps and start completed on attempt ${step.attempt}`, step.ended === 'completed' && (step.attempt ?? 0) >= 2),
        evidence(
          `both disks hold the set: vdb's sha512 ${dataNow === dataImageSha ? 'is' : 'is not'} its image's; vda counts from ${rootNow} (old disk ${rootOld})`,
          dataNow === dataImageSha && rootNow < rootOld,
        ),
      ],
      note: `restore result lists ${result.disks?.map((d) => d.dev).join(', ')}; the new worker takes over after the 6 s heartbeat timeout`,
    });
  });

  it('refuses a set when the instance gained a disk since: nothing stopped, the line names the disk', async () => {
    const extra = join(guest.dir, 'extra.raw');
    await rawDisk(extra, 4, 0x11);
    // Attached to the running guest (and its definition): the guest is removed at the end with it.
    await attachDisk(guest, extra, 'vdc', true);
    const domId = await virsh(['domid', guestName]);
    const handle = await startRestore(client, { instance: guest.uuid, imageId: set.rootImageId }, env.VMSNAP_TASK_QUEUE);
    const failure = await failureOf(handle.result());
    assert.equal(failure.type, 'InvalidInput');
    assert.match(failure.message, /its disk vdc .* is not in the set/);
    assert.equal(await virsh(['domid', guestName]), domId, 'the guest was never stopped');
    assert.equal((await store.getInstance(guest.uuid))?.taskState, null);
    assert.deepEqual(await eventsOf(handle), [], 'the task state was never taken');
    assert.deepEqual(leftovers().filter(existsSync), []);
  });
});
