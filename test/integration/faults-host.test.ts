// Faults on the hypervisor host, on the real stack: qemu-img failing on a corrupt or missing
// disk, cancellation during the copy and the upload, the instance destroyed mid-copy, the
// snapshots dir full, the pause budget blown, two entry points racing; bad input changing
// nothing; temp files private.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { createGuest, guestState, removeGuest, type DomainState, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { ImageService } from '../../src/drivers/image-service.js';
import { recordFaultRow } from '../support/fault-report.js';
import { checkInvariants, outcomeOf, qemuImgProcessesUnder, type Invariants } from '../support/invariants.js';
import { startHarness, type Harness } from '../support/harness.js';
import { createSlowGuest, waitForGuestState, waitForPhase } from '../support/slow-guest.js';

const virsh = (...args: string[]) => execa('virsh', ['-c', 'qemu:///system', ...args]);
const tag = `${process.pid}`;
const modes: { dir: number; file: number }[] = [];
let h: Harness;
let slow: Guest;
let small: Guest;

function allHeld(invariants: Invariants): void {
  assert.deepEqual(
    Object.values(invariants),
    Object.values(invariants).map(() => true),
    JSON.stringify(invariants),
  );
}

async function run(
  fault: string,
  opts: {
    guest: Guest;
    request?: object;
    expected: string;
    priorState: DomainState | null;
    note?: string;
    during?: (handle: Awaited<ReturnType<typeof startSnapshot>>) => Promise<void>;
    harness?: Harness;
  },
) {
  const harness = opts.harness ?? h;
  const imageName = `vmsnap-test-${tag}-${fault.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}`;
  const handle = await startSnapshot(harness.client, { instance: opts.guest.uuid, imageName, ...opts.request }, harness.config.temporal.taskQueue);
  await opts.during?.(handle);
  const outcome = await outcomeOf(handle);
  const invariants = await checkInvariants({
    store: harness.store,
    glanceUrl: harness.glanceUrl,
    snapshotsDir: harness.config.snapshotsDir,
    guest: opts.guest,
    priorState: opts.priorState,
    imageName,
    expectedOutcome: opts.expected,
    outcome,
  });
  recordFaultRow({ fault, outcome, invariants, ...(opts.note ? { note: opts.note } : {}) });
  assert.equal(outcome, opts.expected);
  allHeld(invariants);
  return { handle, outcome };
}

describe('host faults on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    h = await startHarness({
      name: 'faults-host',
      env: { VMSNAP_HEARTBEAT_TIMEOUT_MS: '5000' },
      // The copy as the upload reads it (a cold copy is made by the pause guard, a process of its own).
      wrapImageService: (real) => {
        const observed = Object.create(real) as ImageService;
        observed.uploadFile = async (id, path, ...rest) => {
          modes.push({ dir: statSync(join(path, '..')).mode & 0o777, file: statSync(path).mode & 0o777 });
          return real.uploadFile(id, path, ...rest);
        };
        return observed;
      },
    });
    slow = await createSlowGuest({ name: `vmsnap-test-fh-slow-${tag}`, guestsDir: h.guestsDir, assetsDir: h.assetsDir, dataMiB: 512 });
    small = await createGuest({ name: `vmsnap-test-fh-small-${tag}`, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
  });

  after(async () => {
    for (const g of [slow, small]) if (g) await removeGuest(g.name, h.guestsDir).catch(() => undefined);
    await h?.close();
  });

  it('keeps temp dirs 0700 and temp files 0600', async () => {
    await run('none (baseline)', { guest: small, expected: 'completed', priorState: 'running' });
    assert.deepEqual(modes.at(-1), { dir: 0o700, file: 0o600 });
  });

  it('cancel during the copy: qemu-img dies, the guest runs again', async () => {
    await run('cancel during convert', {
      guest: slow,
      request: { compress: true },
      expected: 'Cancelled',
      priorState: 'running',
      async during(handle) {
        await waitForPhase(handle, 'converting');
        await waitForGuestState(slow.name, 'paused');
        for (const deadline = Date.now() + 30_000; !qemuImgProcessesUnder(h.config.snapshotsDir).length; await new Promise((r) => setTimeout(r, 50))) {
          assert.ok(Date.now() < deadline, 'qemu-img is copying within 30 s of the pause');
        }
        await handle.cancel();
        await waitForPhase(handle, 'cancelled', 30_000);
        assert.deepEqual(qemuImgProcessesUnder(h.config.snapshotsDir), [], 'qemu-img was killed');
      },
    });
  });

  it('cancel during the upload: the unfinished image is deleted', async () => {
    await run('cancel during upload', {
      guest: slow,
      expected: 'Cancelled',
      priorState: 'running',
      async during(handle) {
        await waitForPhase(handle, 'uploading');
        await handle.cancel();
      },
    });
  });

  it('pause budget exceeded: the copy is cancelled and the guest resumed in time', async () => {
    const budgeted = await startHarness({
      name: 'faults-host-budget',
      env: { VMSNAP_PAUSE_BUDGET_MS: '1500', VMSNAP_HEARTBEAT_TIMEOUT_MS: '5000' },
    });
    try {
      await run('pause budget exceeded', {
        guest: slow,
        harness: budgeted,
        request: { compress: true },
        expected: 'PauseBudgetExceeded',
        priorState: 'running',
        note: 'budget 1.5 s, copy of 512 MiB compressed takes ~8 s',
      });
      const events = (await budgeted.store.listEvents(slow.uuid)).filter((e) => e.event === 'pause' || e.event === 'resume');
      const paused = Date.parse(events.at(-1)!.createdAt) - Date.parse(events.at(-2)!.createdAt);
      assert.ok(paused < 1500 + 4000, `the guest was paused ${paused} ms for a 1500 ms budget`);
      assert.deepEqual(qemuImgProcessesUnder(budgeted.config.snapshotsDir), []);
    } finally {
      await budgeted.close();
    }
  });

  it('two snapshot requests racing through different entry points: exactly one runs', async () => {
    const imageName = `vmsnap-test-${tag}-race`;
    // The client by UUID, and `temporal workflow start` by name: different workflow ids, so only
    // the task state's compare-and-swap can keep them apart.
    const [byClient, byCli] = await Promise.all([
      startSnapshot(h.client, { instance: small.uuid, imageName }, h.config.temporal.taskQueue).then(outcomeOf),
      execa(
        '.tools/bin/temporal',
        [
          'workflow',
          'execute',
          '--output',
          'json',
          '--address',
          h.config.temporal.address,
          '--task-queue',
          h.config.temporal.taskQueue,
          '--type',
          'snapshotInstance',
          '--workflow-id',
          `snapshot-${small.name}`,
          '--input',
          JSON.stringify({ instance: small.name, imageName }),
        ],
        { reject: false },
      ),
    ]);
    const cliOutcome = byCli.exitCode === 0 ? 'completed' : /InstanceBusy/.test(byCli.stdout + byCli.stderr) ? 'InstanceBusy' : `other: ${byCli.stderr}`;
    assert.deepEqual([byClient, cliOutcome].sort(), ['InstanceBusy', 'completed']);
    const invariants = await checkInvariants({
      store: h.store,
      glanceUrl: h.glanceUrl,
      snapshotsDir: h.config.snapshotsDir,
      guest: small,
      priorState: 'running',
      imageName,
      expectedOutcome: 'completed',
      outcome: 'completed',
    });
    recordFaultRow({
      fault: 'two requests racing (client by UUID, temporal CLI by name)',
      outcome: `${byClient} + ${cliOutcome}`,
      invariants,
      note: 'one image; the loser is refused InstanceBusy',
    });
    allHeld(invariants);
  });

  it('bad input is refused with a clear error and changes nothing', async () => {
    const before = { events: (await h.store.listEvents(small.uuid)).length, images: (await h.glance.listImagesByTag('vmsnap')).length };
    const cases: [unknown, string, RegExp][] = [
      [{ instance: randomUUID(), imageName: 'x' }, 'InstanceNotFound', /no instance/],
      [{ instance: '123e4567-e89b-12d3-a456-42661417400', imageName: 'x' }, 'InstanceNotFound', /no instance/], // malformed UUID: a name nobody has
      [{ instance: small.uuid, imageName: 'n'.repeat(256) }, 'InvalidInput', /imageName: must be at most 255/],
      [{ instance: small.uuid, imageName: 'x', metadata: { image_type: 'base' } }, 'InvalidInput', /metadata.image_type: is reserved/],
      [{ instance: small.uuid, imageName: 'x', metadata: { os_glance_import_task: 'x' } }, 'InvalidInput', /metadata.os_glance_import_task: is reserved/],
      [{ instance: '../../etc/passwd', imageName: 'x' }, 'InvalidInput', /instance: must be a UUID or a name/],
      [{ instance: 'vm; rm -rf /', imageName: 'x' }, 'InvalidInput', /instance: must be a UUID or a name/],
      [{ instance: '$(reboot)', imageName: 'x' }, 'InvalidInput', /instance: must be a UUID or a name/],
      [
        {
          instance: small.uuid,
          imageName: 'x',
          metadata: Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`k${i}`, 'v'.repeat(200)])),
        },
        'InvalidInput',
        /metadata: at most 96 entries/,
      ],
      ['just a string', 'InvalidInput', /must be a JSON object/],
    ];
    for (const [input, type, message] of cases) {
      const handle = await h.client.workflow.start('snapshotInstance', {
        taskQueue: h.config.temporal.taskQueue,
        workflowId: `vmsnap-test-bad-${randomUUID()}`,
        args: [input],
      });
      const err = await handle.result().then(
        () => undefined,
        (e: { cause?: { type?: string; message?: string } }) => e,
      );
      assert.equal(err?.cause?.type, type, JSON.stringify(input).slice(0, 80));
      assert.match(err?.cause?.message ?? '', message);
    }
    assert.equal((await h.store.listEvents(small.uuid)).length, before.events, 'no action recorded');
    assert.equal((await h.glance.listImagesByTag('vmsnap')).length, before.images, 'no image created');
    assert.equal((await h.store.getInstance(small.uuid))?.taskState, null);
    assert.equal(await guestState(small.name), 'running');
  });

  it('qemu-img failing on a corrupt disk: non-retryable, compensated', async () => {
    const broken = await createGuest({
      name: `vmsnap-test-fh-corrupt-${tag}`,
      guestsDir: h.guestsDir,
      assetsDir: h.assetsDir,
      start: false,
    });
    try {
      await execa('dd', ['if=/dev/urandom', `of=${broken.diskPath}`, 'bs=512', 'count=8', 'conv=notrunc']);
      const { handle } = await run('qemu-img: corrupt disk', { guest: broken, expected: 'ImageCorrupt', priorState: 'shut off' });
      const history = await handle.fetchHistory();
      const copies = history.events?.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'coldCopyDisk') ?? [];
      const attempts = history.events?.filter((e) => e.activityTaskStartedEventAttributes && Number(e.activityTaskStartedEventAttributes.attempt) > 1) ?? [];
      assert.equal(copies.length, 1);
      assert.equal(attempts.length, 0, 'a corrupt disk is not retried');
    } finally {
      await removeGuest(broken.name, h.guestsDir);
    }
  });

  it('qemu-img failing on a missing disk: non-retryable, compensated', async () => {
    const broken = await createGuest({
      name: `vmsnap-test-fh-nodisk-${tag}`,
      guestsDir: h.guestsDir,
      assetsDir: h.assetsDir,
      start: false,
    });
    try {
      rmSync(broken.diskPath);
      await run('qemu-img: missing disk', { guest: broken, expected: 'DiskNotFound', priorState: 'shut off' });
    } finally {
      await removeGuest(broken.name, h.guestsDir);
    }
  });

  it('snapshots dir full: a clean NoSpace failure, nothing left', async () => {
    const full = join(tmpdir(), `vmsnap-full-${tag}`);
    mkdirSync(full, { recursive: true });
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', full]);
    const cramped = await startHarness({ name: 'faults-host-full', env: { VMSNAP_SNAPSHOTS_DIR: full } });
    try {
      await run('snapshots dir full', {
        guest: slow,
        harness: cramped,
        expected: 'NoSpace',
        priorState: 'running',
        note: '4 MiB tmpfs for a 512 MiB copy',
      });
    } finally {
      await cramped.close();
      await execa('umount', [full]);
      rmSync(full, { recursive: true, force: true });
    }
  });

  it('instance destroyed in the middle: a clear outcome, the image removed', async () => {
    await run('instance destroyed during convert', {
      guest: slow,
      request: { compress: true },
      expected: 'InstanceNotFound',
      priorState: null,
      async during(handle) {
        await waitForPhase(handle, 'converting');
        await waitForGuestState(slow.name, 'paused');
        await virsh('destroy', slow.name);
        await virsh('undefine', slow.name);
      },
    });
  });
});
