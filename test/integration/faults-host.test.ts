// Faults on the hypervisor host, on the real stack: qemu-img failing on a corrupt or missing
// disk, cancellation during the copy and the upload, the instance destroyed mid-copy, the
// snapshots dir full, the pause budget blown, two entry points racing; bad input changing
// nothing; temp files private. Each fault waits for the phase it targets (a qemu-img process
// copying, a PUT under way at the proxy in front of Glance, the guest paused) and its row says
// what showed it landed there (the history's cancelled step, the proxy's byte count).
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
import { snapshotWorkflowId } from '../../src/shared/names.js';
import { eventually } from '../support/cli.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { evidence, recordFaultRow, type Evidence } from '../support/fault-report.js';
import { onlyActivityRun, type History } from '../support/history.js';
import { checkInvariants, outcomeOf, qemuImgProcessesUnder } from '../support/invariants.js';
import { startHarness, type Harness } from '../support/harness.js';
import { createSlowGuest, waitForGuestState, waitForPhase } from '../support/slow-guest.js';

const virsh = (...args: string[]) => execa('virsh', ['-c', 'qemu:///system', ...args]);
const tag = `${process.pid}`;
const modes: { dir: number; file: number }[] = [];
let h: Harness;
let proxy: FaultProxy;
let slow: Guest;
let small: Guest;

type Handle = Awaited<ReturnType<typeof startSnapshot>>;

async function run(
  fault: string,
  opts: {
    guest: Guest;
    request?: object;
    expected: string;
    priorState: DomainState | null;
    note?: string;
    during?: (handle: Handle) => Promise<void>;
    /** What shows the fault fired where it was meant to, from the run's history and the instance's faults. */
    evidence: (seen: { history: History; lastFault: string }) => Evidence[] | Promise<Evidence[]>;
    harness?: Harness;
  },
) {
  const harness = opts.harness ?? h;
  const imageName = `vmsnap-test-${tag}-${fault.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}`;
  const handle = await startSnapshot(harness.client, { instance: opts.guest.uuid, imageName, ...opts.request }, harness.config.temporal.taskQueue);
  await opts.during?.(handle);
  const outcome = await outcomeOf(handle);
  const history = await handle.fetchHistory();
  const lastFault = (await harness.store.listFaults(opts.guest.uuid)).at(-1)?.message ?? '';
  recordFaultRow({
    fault,
    outcome,
    invariants: await checkInvariants({
      store: harness.store,
      snapshotsDir: harness.config.snapshotsDir,
      guest: opts.guest,
      priorState: opts.priorState,
      image: { name: imageName },
      expectedOutcome: opts.expected,
      outcome,
    }),
    evidence: await opts.evidence({ history, lastFault }),
    ...(opts.note ? { note: opts.note } : {}),
  });
  return { handle, outcome, history };
}

/** The copy step was cancelled while it ran: a cancel request in the history, and the step ended cancelled. */
function copyCancelled(history: History, step: string): Evidence {
  const copy = onlyActivityRun(history, step);
  return evidence(`${step}: cancel requested, the step ended ${copy.ended}`, copy.cancelRequested && copy.ended === 'canceled');
}

describe('host faults on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    // Plain forwarding: the proxy shows how far the upload had come when it was cancelled.
    proxy = await startFaultProxy(await stackGlanceUrl());
    h = await startHarness({
      name: 'faults-host',
      glanceUrl: proxy.url,
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
    await proxy?.close();
  });

  it('keeps temp dirs 0700 and temp files 0600', async () => {
    await run('none (baseline)', {
      guest: small,
      expected: 'completed',
      priorState: 'running',
      evidence: ({ history }) => [evidence('no fault injected; the copy step ran once', onlyActivityRun(history, 'coldCopyDisk').ended === 'completed')],
    });
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
        await eventually('qemu-img copying', async () => (qemuImgProcessesUnder(h.config.snapshotsDir).length > 0 ? true : undefined), 60_000, 50);
        await handle.cancel();
        await waitForPhase(handle, 'cancelled', 60_000);
        assert.deepEqual(qemuImgProcessesUnder(h.config.snapshotsDir), [], 'qemu-img was killed');
      },
      evidence: ({ history }) => [copyCancelled(history, 'coldCopyDisk')],
    });
  });

  it('cancel during the upload: the unfinished image is deleted', async () => {
    proxy.requests.length = 0;
    let atCancel = 0;
    const { history } = await run('cancel during upload', {
      guest: slow,
      expected: 'Cancelled',
      priorState: 'running',
      async during(handle) {
        // Cancelled once bytes are on their way to Glance.
        const put = await proxy.until('PUT with data', (r) => r.method === 'PUT' && r.bytesIn > 0);
        atCancel = put.bytesIn;
        await handle.cancel();
      },
      evidence: ({ history }) => {
        const put = proxy.requests.find((r) => r.method === 'PUT');
        return [
          copyCancelled(history, 'uploadImage'),
          evidence(
            `the PUT had sent ${atCancel} bytes at the cancel and ended unanswered (${put?.bytesIn} sent)`,
            put !== undefined && atCancel > 0 && put.status !== 204,
          ),
        ];
      },
    });
    assert.equal(onlyActivityRun(history, 'coldCopyDisk').ended, 'completed', 'the copy was done before the upload');
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
        note: 'budget 1.5 s, a compressed copy of 512 MiB',
        evidence: async ({ history }) => {
          // The guest ran again when the budget was spent, not when the copy was done: the pause guard
          // (which makes the copy) gave it back, and its resume event carries QEMU's measure of the pause.
          const resume = (await budgeted.store.listEvents(slow.uuid)).filter((e) => e.event === 'resume').at(-1);
          const { by, outcome, pausedMs } = resume?.details ?? {};
          const copy = onlyActivityRun(history, 'coldCopyDisk');
          return [
            evidence(
              `the ${String(by)} gave up its copy and resumed the guest (${String(outcome)}) ${String(pausedMs)} ms after QEMU's STOP`,
              by === 'pause guard' && outcome === 'resumed' && typeof pausedMs === 'number' && pausedMs >= 1500,
            ),
            // The workflow's backup timer (budget + 2 s from the step's start) may cancel the step as well on a slow host.
            evidence(
              `the copy step ended ${copy.ended}${copy.cancelRequested ? ", cancelled by the workflow's backup timer too" : " with the guard's failure"}`,
              copy.ended === 'failed' || copy.ended === 'canceled',
            ),
          ];
        },
      });
      const events = (await budgeted.store.listEvents(slow.uuid)).filter((e) => e.event === 'pause' || e.event === 'resume');
      assert.deepEqual(
        events.slice(-2).map((e) => e.event),
        ['pause', 'resume'],
      );
      // Not cut early: recorded before the pause, the pause event is at least the budget before the resume.
      const paused = Date.parse(events.at(-1)!.createdAt) - Date.parse(events.at(-2)!.createdAt);
      assert.ok(paused >= 1500, `the guest was resumed ${paused} ms after its pause, within the 1500 ms budget`);
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
    const outcome = [byClient, cliOutcome].sort().join(' + ');
    // A race: each run started before the other ended.
    const a = await h.client.workflow.getHandle(snapshotWorkflowId(small.uuid)).describe();
    const b = await h.client.workflow.getHandle(`snapshot-${small.name}`).describe();
    const overlapped = a.startTime < (b.closeTime ?? new Date()) && b.startTime < (a.closeTime ?? new Date());
    recordFaultRow({
      fault: 'two requests racing (client by UUID, temporal CLI by name)',
      outcome,
      invariants: await checkInvariants({
        store: h.store,
        snapshotsDir: h.config.snapshotsDir,
        guest: small,
        priorState: 'running',
        image: { name: imageName, made: true },
        outcome,
        expectedOutcome: 'InstanceBusy + completed',
        // The loser is refused before it changes anything: no fault of the instance.
        expectedFault: null,
      }),
      evidence: [evidence(`two runs of ${small.name} at once: ${a.workflowId} and ${b.workflowId}`, overlapped)],
      note: 'one image; the loser is refused InstanceBusy',
    });
  });

  it('bad input is refused with a clear error and changes nothing', async () => {
    // Images of this instance only: other tests may make images meanwhile.
    const imagesOfSmall = async () => (await h.glance.listImages({ instance_uuid: small.uuid })).length;
    const before = { events: (await h.store.listEvents(small.uuid)).length, images: await imagesOfSmall() };
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
    assert.equal(await imagesOfSmall(), before.images, 'no image created');
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
      await run('qemu-img: corrupt disk', {
        guest: broken,
        expected: 'ImageCorrupt',
        priorState: 'shut off',
        evidence: ({ history, lastFault }) => {
          const copy = onlyActivityRun(history, 'coldCopyDisk');
          return [evidence(`the copy step failed on attempt ${copy.attempt} (not retried): ${lastFault}`, copy.ended === 'failed' && copy.attempt === 1)];
        },
      });
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
      await run('qemu-img: missing disk', {
        guest: broken,
        expected: 'DiskNotFound',
        priorState: 'shut off',
        evidence: ({ lastFault }) => [evidence(`fault: ${lastFault}`, lastFault.includes(broken.diskPath))],
      });
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
        evidence: ({ lastFault }) => [evidence(`fault: ${lastFault}`, lastFault.includes(full))],
      });
    } finally {
      await cramped.close();
      await execa('umount', [full]);
      rmSync(full, { recursive: true, force: true });
    }
  });

  it('instance destroyed in the middle: a clear outcome, the image removed', async () => {
    let copying = 0;
    await run('instance destroyed during convert', {
      guest: slow,
      request: { compress: true },
      expected: 'InstanceNotFound',
      priorState: null,
      async during(handle) {
        await waitForPhase(handle, 'converting');
        await waitForGuestState(slow.name, 'paused');
        await eventually('qemu-img copying', async () => (qemuImgProcessesUnder(h.config.snapshotsDir).length > 0 ? true : undefined), 60_000, 50);
        copying = qemuImgProcessesUnder(h.config.snapshotsDir).length;
        await virsh('destroy', slow.name);
        await virsh('undefine', slow.name);
      },
      evidence: ({ lastFault }) => [
        evidence(`destroyed while paused with ${copying} qemu-img copying`, copying > 0),
        evidence(`fault: ${lastFault}`, /destroyed during the snapshot/.test(lastFault)),
      ],
    });
  });
});
