// The `vmsnap` command line as an operator runs it: a child process through bin/vmsnap, pointed
// at real workers (in this process), real guests, real Glance and Temporal. Exit codes, one-line
// errors, one JSON document with --json, and progress lines in a pipe are what is checked.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { WorkflowNotFoundError } from '@temporalio/client';
import { execa } from 'execa';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { createGuest, guestState, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { getProgress, type SnapshotHandle } from '../../src/client/snapshots.js';
import { syncInventory } from '../../src/activities/inventory.js';
import { snapshotWorkflowId } from '../../src/shared/names.js';
import { PHASE } from '../../src/shared/search-attributes.js';
import { VMSNAP_BIN, cliEnv, createBusyGuest, deleteImages, eventually, stopLeftoverSnapshots, vmsnap, vmsnapRunning, type CliRun } from '../support/cli.js';
import { startHarness, type Harness } from '../support/harness.js';

const small = `vmsnap-test-cli-${process.pid}`;
const busy = `vmsnap-test-cli-big-${process.pid}`;
let h: Harness;
let guest: Guest;
let bigGuest: Guest;
const images = new Set<string>();

/** Parses stdout as the one JSON document --json promises (JSON.parse refuses anything more). */
function json<T>(run: CliRun): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    assert.fail(`stdout is not one JSON document:\n${run.stdout}\n--- stderr ---\n${run.stderr}`);
  }
}

/** One line `vmsnap: ...` on stderr, no stack trace. */
function assertOneLineError(run: CliRun, pattern: RegExp): void {
  const lines = run.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${run.stderr}`);
  assert.match(lines[0]!, /^vmsnap: /);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(run.stderr, /\n\s+at /, 'no stack trace');
}

function show(run: CliRun): string {
  return `exit ${run.exitCode}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
}

describe('vmsnap CLI on the real stack', { timeout: 600_000 }, () => {
  before(async () => {
    h = await startHarness({ name: 'cli' });
    [guest, bigGuest] = await Promise.all([
      createGuest({ name: small, guestsDir: h.guestsDir, assetsDir: h.assetsDir, intervalMs: 100 }),
      createBusyGuest(h, busy),
    ]);
  });

  after(async () => {
    if (h) await stopLeftoverSnapshots(h);
    await Promise.all([small, busy].map((n) => removeGuest(n, h.guestsDir).catch(() => undefined)));
    if (h) await deleteImages(h, images);
    await h?.close();
  });

  it('snapshot --wait --json: exit 0, one JSON document, the image active in Glance; status and list show it', async () => {
    // --mode live on top of the harness's cold default: the flag must reach the workflow.
    const run = await vmsnap(h, [
      'snapshot',
      guest.uuid,
      '--name',
      `vmsnap-test-cli-${process.pid}`,
      '--metadata',
      'purpose=cli-test',
      '--mode',
      'live',
      '--wait',
      '--json',
    ]);
    assert.equal(run.exitCode, 0, show(run));
    const doc = json<{
      workflowId: string;
      imageId: string;
      status: string;
      result: { imageId: string; sha512: string; instanceId: string; mode: string; guestPauseMs: number; guestWriteStallMs?: number };
    }>(run);
    assert.equal(doc.result.mode, 'live');
    // Beside QEMU's STOP/RESUME figure (0: the vCPUs never stop), what the guest's writes felt.
    assert.equal(doc.result.guestPauseMs, 0);
    assert.ok(typeof doc.result.guestWriteStallMs === 'number' && doc.result.guestWriteStallMs >= 0, JSON.stringify(doc.result));
    images.add(doc.imageId);
    assert.equal(doc.status, 'completed');
    assert.equal(doc.workflowId, snapshotWorkflowId(guest.uuid));
    assert.equal(doc.result.imageId, doc.imageId);
    assert.equal(doc.result.instanceId, guest.uuid);
    const image = await h.glance.getImage(doc.imageId);
    assert.equal(image?.status, 'active');
    assert.equal(image?.os_hash_value, doc.result.sha512);
    assert.equal(image?.purpose, 'cli-test');
    // Done means done: no step (the host slot holder included) is left pending, cancel requested.
    const described = await h.client.workflow.getHandle(doc.workflowId).describe();
    assert.deepEqual(
      (described.raw.pendingActivities ?? []).map((a) => a.activityType?.name),
      [],
    );

    const status = await vmsnap(h, ['status', guest.uuid, '--json']);
    assert.equal(status.exitCode, 0, show(status));
    const s = json<{ workflowId: string; status: string; phase: string; imageId: string; result: { imageId: string } }>(status);
    assert.equal(s.workflowId, doc.workflowId);
    assert.equal(s.status, 'completed');
    assert.equal(s.phase, 'completed');
    assert.equal(s.result.imageId, doc.imageId);
    // The same in words, found by the instance's name through the store.
    const byName = await vmsnap(h, ['status', small]);
    assert.equal(byName.exitCode, 0, show(byName));
    assert.match(byName.stdout, /^status\s+completed$/m);
    assert.match(byName.stdout, new RegExp(`^image\\s+${doc.imageId}$`, 'm'));

    // Visibility is eventually consistent: the closed workflow may take a moment to show.
    const listed = await eventually('the snapshot in vmsnap list', async () => {
      const list = await vmsnap(h, ['list', '--instance', guest.uuid, '--status', 'completed', '--json']);
      assert.equal(list.exitCode, 0, show(list));
      const rows = json<{ workflowId: string; imageId: string; phase: string; status: string; instanceId: string }[]>(list);
      return rows.find((r) => r.imageId === doc.imageId);
    });
    assert.equal(listed.workflowId, doc.workflowId);
    assert.equal(listed.status, 'completed');
    assert.equal(listed.phase, 'completed');
    assert.equal(listed.instanceId, guest.uuid);
    const table = await vmsnap(h, ['list', '--instance', small]);
    assert.equal(table.exitCode, 0, show(table));
    assert.match(table.stdout, new RegExp(`^${doc.workflowId}\\s+completed\\s+completed\\s+${doc.imageId}`, 'm'));
    const running = await vmsnap(h, ['list', '--instance', guest.uuid, '--status', 'running', '--json']);
    assert.deepEqual(json(running), [], 'no running snapshot of it');
  });

  it('snapshot --wait without --json in a pipe: plain lines, one per phase, then the result', async () => {
    const run = await vmsnap(h, ['snapshot', small, '--name', `vmsnap-test-cli-plain-${process.pid}`, '--format', 'raw', '--wait']);
    assert.equal(run.exitCode, 0, show(run));
    const imageId = /^ {2}image\s+([0-9a-f-]{36}) /m.exec(run.stdout)?.[1];
    assert.ok(imageId, show(run));
    images.add(imageId);
    assert.ok(!run.stdout.includes('\r') && !run.stdout.includes('\x1b['), 'no terminal control characters in a pipe');
    const phases = run.stdout.split('\n').flatMap((l) => /^\d\d:\d\d:\d\d (\S+)$/.exec(l)?.[1] ?? []);
    // A phase shorter than a poll can go unseen; those seen come once each, in the workflow's order.
    const order = ['starting', 'creating-image', 'waiting-for-host', 'converting', 'copying', 'uploading', 'finishing', 'completed'];
    assert.ok(phases.length >= 3, show(run));
    assert.equal(phases.at(-1), 'completed');
    assert.deepEqual(
      phases,
      order.filter((p) => phases.includes(p)),
      show(run),
    );
    assert.match(run.stdout, /^snapshot of vmsnap-test-cli-\d+ completed in /m);
    // The summary says how the copy was taken: mode and consistency.
    assert.match(run.stdout, /^ {2}mode\s+cold, crash-consistent$/m, show(run));
    assert.equal((await h.glance.getImage(imageId))?.disk_format, 'raw');
  });

  it('a snapshot of an instance with a task in progress: exit 4 (InstanceBusy) at the prompt, with or without --wait; status passes over it', async () => {
    // The latest run that took the instance: the first test's.
    const took = json<{ runId: string; status: string }>(await vmsnap(h, ['status', guest.uuid, '--json']));
    assert.equal(took.status, 'completed');
    const imageName = `vmsnap-test-cli-busy-${process.pid}`;
    assert.ok(await h.store.compareAndSwapTaskState(guest.uuid, null, 'image_uploading', 'someone-else'));
    try {
      const waited = await vmsnap(h, ['snapshot', guest.uuid, '--name', imageName, '--wait', '--json']);
      assert.equal(waited.exitCode, 4, show(waited));
      assertOneLineError(waited, /refused \(InstanceBusy\): .*task in progress.*: wait for the running snapshot or task to end/);
      assert.equal(json<{ error: { type: string } }>(waited).error.type, 'InstanceBusy');
      // Without --wait, by name: it used to say "started snapshot ..." and exit 0 for a run that then failed.
      const plain = await vmsnap(h, ['snapshot', small, '--name', imageName]);
      assert.equal(plain.exitCode, 4, show(plain));
      assertOneLineError(plain, /refused \(InstanceBusy\)/);
      assert.doesNotMatch(plain.stdout, /started/);
    } finally {
      await h.store.releaseTaskState(guest.uuid, 'someone-else');
    }
    assert.deepEqual(await h.glance.listImages({ name: imageName }), [], 'no image was made');
    // The refused runs ran under the UUID's workflow id and say so in their phase; status shows the run that took the instance.
    const latest = await h.client.workflow.getHandle(snapshotWorkflowId(guest.uuid)).describe();
    assert.notEqual(latest.runId, took.runId);
    assert.equal(latest.typedSearchAttributes.get(PHASE), 'refused');
    const status = json<{ runId: string; status: string }>(await vmsnap(h, ['status', small, '--json']));
    assert.equal(status.runId, took.runId, 'status shows the run that took the instance, not the refused one');
    assert.equal(status.status, 'completed');
  });

  it('--mode live of a shut-off instance is refused at the prompt (exit 2), nothing changed; status shows the mode', async () => {
    const off = await createGuest({ name: `${small}-off`, guestsDir: h.guestsDir, assetsDir: h.assetsDir, start: false });
    try {
      const imageName = `vmsnap-test-cli-off-${process.pid}`;
      const run = await vmsnap(h, ['snapshot', off.uuid, '--name', imageName, '--mode', 'live']);
      assert.equal(run.exitCode, 2, show(run));
      assertOneLineError(run, /refused \(InvalidInput\): a live snapshot of .* needs a running guest, and it is shutdown: ask for mode "cold" or "auto"/);
      assert.deepEqual(await h.glance.listImages({ name: imageName }), [], 'no image was made');
      assert.equal((await h.store.getInstance(off.uuid))?.taskState, null);
      assert.equal(await guestState(off.name), 'shut off');
    } finally {
      await removeGuest(off.name, h.guestsDir);
    }
    // The mode the latest snapshot was taken in (the plain test's: the harness's default, cold).
    const status = await vmsnap(h, ['status', guest.uuid]);
    assert.match(status.stdout, /^mode\s+cold, crash-consistent$/m, show(status));
  });

  it('a live copy reports percent and bytes of the backup job from its first heartbeat on', async () => {
    // The copy rate-limited, so that it lasts long enough to be sampled (unlimited it can end in under a second);
    // copied, not streamed: the copy's heartbeat is what this is about (a stream's progress is its upload's).
    const slowed = await startHarness({ name: 'cli-live-64mibps', env: { VMSNAP_LIVE_BANDWIDTH_MIBPS: '64', VMSNAP_LIVE_TRANSFER: 'copy' } });
    const run = vmsnapRunning(slowed, ['snapshot', bigGuest.uuid, '--name', `vmsnap-test-cli-live-${process.pid}`, '--mode', 'live', '--wait']);
    const handle = slowed.client.workflow.getHandle(snapshotWorkflowId(bigGuest.uuid)) as SnapshotHandle;
    const copying: { percent?: number; bytesDone?: number; bytesTotal?: number }[] = [];
    try {
      // Sampled as the CLI does (query + describe), as often as the stack answers.
      let phase = '';
      while (phase !== 'completed' && phase !== 'failed' && run.proc.exitCode === null) {
        const p = await getProgress(handle).catch(() => undefined);
        phase = p?.phase ?? phase;
        if (p?.phase === 'copying' && p.step?.activityType === 'exportLiveDisk' && p.bytesTotal !== undefined) copying.push(p);
        await sleep(100);
      }
      const ended = await run.proc;
      assert.equal(ended.exitCode, 0, run.output().stdout + run.output().stderr);
    } finally {
      run.proc.kill();
      const imageId = /image ([0-9a-f-]{36})/.exec(run.output().stdout)?.[1];
      if (imageId) images.add(imageId);
      await slowed.close();
    }
    assert.ok(copying.length > 0, 'the copy was seen with its heartbeat');
    // Before: the first heartbeats said "0 B of 0 B" until the job's first poll came through.
    for (const p of copying) assert.equal(p.bytesTotal, 1024 * 1024 * 1024, JSON.stringify(copying));
  });

  it('a running snapshot shows progress lines in a pipe, refuses a second snapshot (exit 4), and cancel stops it', async () => {
    const imageName = `vmsnap-test-cli-cancel-${process.pid}`;
    const waiting = vmsnapRunning(h, ['snapshot', bigGuest.uuid, '--name', imageName, '--compress', '--wait']);
    try {
      // A progress line (percent, bytes, speed) at most every few seconds while qemu-img copies.
      await eventually(
        'a converting progress line',
        async () => (/^\d\d:\d\d:\d\d converting \d+% \([\d.]+ [KMG]iB of 1\.0 GiB, [\d.]+ [KMG]iB\/s, ETA /m.test(waiting.output().stdout) ? true : undefined),
        60_000,
      );
      const imageId = /image ([0-9a-f-]{36})/.exec(waiting.output().stdout)?.[1];
      assert.ok(imageId, waiting.output().stdout);
      images.add(imageId);

      // Busy: by name too, Temporal refuses a second workflow of the same instance at once (both ids come from the UUID).
      const second = await vmsnap(h, ['snapshot', busy, '--name', `${imageName}-2`]);
      assert.equal(second.exitCode, 4, show(second));
      assertOneLineError(second, /has a snapshot running \(workflow snapshot-[0-9a-f-]{36}\): wait for it to end/);

      // While it copies, status shows the phase with percent and bytes (from the copy's heartbeat).
      const s = await eventually(
        "status with the copy's percent and bytes",
        async () => {
          const status = await vmsnap(h, ['status', busy, '--json']);
          assert.equal(status.exitCode, 0, show(status));
          const doc = json<{ status: string; progress: { phase: string; percent?: number; bytesTotal?: number } }>(status);
          return typeof doc.progress?.percent === 'number' ? doc : undefined;
        },
        60_000,
        500,
      );
      assert.equal(s.status, 'running');
      assert.equal(s.progress.phase, 'converting', JSON.stringify(s.progress));
      assert.equal(s.progress.bytesTotal, 1024 * 1024 * 1024, JSON.stringify(s.progress));

      const cancel = await vmsnap(h, ['cancel', bigGuest.uuid]);
      assert.equal(cancel.exitCode, 0, show(cancel));
      assert.match(cancel.stdout, /cancellation of snapshot-\S+ requested/);

      const ended = await waiting.proc;
      const out = waiting.output();
      assert.equal(ended.exitCode, 1, `the waiting snapshot ends with 1\n${out.stdout}\n${out.stderr}`);
      assert.match(out.stderr, /^vmsnap: the snapshot was cancelled/m);
      const description = await h.client.workflow.getHandle(snapshotWorkflowId(bigGuest.uuid)).describe();
      assert.equal(description.status.name, 'CANCELLED');
      // Its status says cancelled, in the phase too (it said "failed").
      const cancelled = json<{ status: string; phase: string }>(await vmsnap(h, ['status', bigGuest.uuid, '--json']));
      assert.equal(cancelled.status, 'cancelled');
      assert.equal(cancelled.phase, 'cancelled');
      // Undone: no image, the guest runs, no task state.
      assert.equal(await h.glance.getImage(imageId), undefined);
      assert.equal(await guestState(busy), 'running');
      assert.equal((await h.store.getInstance(bigGuest.uuid))?.taskState, null);

      // Nothing left to cancel now.
      const again = await vmsnap(h, ['cancel', busy]);
      assert.equal(again.exitCode, 3, show(again));
      assertOneLineError(again, /no running snapshot of .*is cancelled/);
      // Done with the big guest: its emulated CPU is better spent on the tests that follow.
      await removeGuest(busy, h.guestsDir);
    } finally {
      waiting.proc.kill();
    }
  });

  it('bad input exits 2 with one line naming the field, before anything starts', async () => {
    // The instance's latest snapshot run, if any (this test does not need one).
    const latestRun = () =>
      h.client.workflow
        .getHandle(snapshotWorkflowId(guest.uuid))
        .describe()
        .then(
          (d) => d.runId,
          (e: unknown) => {
            if (e instanceof WorkflowNotFoundError) return 'none';
            throw e;
          },
        );
    const before = await latestRun();
    // Independent runs, side by side: each CLI start costs about a second.
    const [run, reserved, usage, format, limit, emoji] = await Promise.all([
      vmsnap(h, ['snapshot', guest.uuid, '--name', 'x'.repeat(300)]),
      vmsnap(h, ['snapshot', guest.uuid, '--name', 'ok', '--metadata', 'owner=me', '--json']),
      vmsnap(h, ['snapshot', guest.uuid]),
      vmsnap(h, ['snapshot', guest.uuid, '--name', 'x', '--format', 'vmdk']),
      vmsnap(h, ['list', '--limit', '0']),
      // Glance answers 400 to 4-byte UTF-8; it used to be found out after the snapshot had started.
      vmsnap(h, ['snapshot', guest.uuid, '--name', 'ok', '--metadata', 'note=backup \u{1F4BE}', '--json']),
    ]);
    assert.equal(run.exitCode, 2, show(run));
    assertOneLineError(run, /--name \(imageName\) must be at most 255 characters/);
    assert.equal(reserved.exitCode, 2, show(reserved));
    assertOneLineError(reserved, /--metadata owner is reserved/);
    assert.equal(json<{ error: { type: string } }>(reserved).error.type, 'InvalidInput');
    assert.equal(usage.exitCode, 2, show(usage));
    assertOneLineError(usage, /required option '--name <name>' not specified/);
    assert.equal(format.exitCode, 2, show(format));
    assertOneLineError(format, /--format/);
    assert.equal(limit.exitCode, 2, show(limit));
    assertOneLineError(limit, /--limit/);
    assert.equal(emoji.exitCode, 2, show(emoji));
    assertOneLineError(emoji, /--metadata note must not contain characters outside the Basic Multilingual Plane/);
    assert.equal(json<{ error: { type: string } }>(emoji).error.type, 'InvalidInput');
    // Refused before Temporal: none of them started a workflow.
    assert.equal(await latestRun(), before);
  });

  it('an unknown instance exits 3', async () => {
    const [run, status, cancel] = await Promise.all([
      vmsnap(h, ['snapshot', randomUUID(), '--name', `vmsnap-test-cli-unknown-${process.pid}`, '--wait']),
      vmsnap(h, ['status', randomUUID()]),
      vmsnap(h, ['cancel', `vmsnap-test-nonexistent-${process.pid}`]),
    ]);
    assert.equal(run.exitCode, 3, show(run));
    assertOneLineError(run, /InstanceNotFound.*no instance/);
    for (const r of [status, cancel]) {
      assert.equal(r.exitCode, 3, show(r));
      assertOneLineError(r, /no (running )?snapshot of/);
    }
  });

  it('a config error exits 5 naming the setting; so does an unreachable Temporal', async () => {
    const [bad, json5, down] = await Promise.all([
      vmsnap(h, ['list'], { TEMPORAL_ADDRESS: 'nonsense' }),
      vmsnap(h, ['status', small, '--json'], { TEMPORAL_ADDRESS: 'nonsense' }),
      vmsnap(h, ['list'], { TEMPORAL_ADDRESS: '127.0.0.1:1' }),
    ]);
    assert.equal(bad.exitCode, 5, show(bad));
    assertOneLineError(bad, /TEMPORAL_ADDRESS must be host:port .*correct TEMPORAL_ADDRESS/);
    assert.equal(json5.exitCode, 5);
    assert.equal(json<{ error: { type: string; exitCode: number } }>(json5).error.exitCode, 5);
    assert.equal(down.exitCode, 5, show(down));
    assertOneLineError(down, /cannot reach Temporal at 127\.0\.0\.1:1 .*TEMPORAL_ADDRESS/);
  });

  it('instances lists the inventory from the store; a missing store says how to fix it', async () => {
    // An instance of its own that leaves its host: discovery marks it deleted, --all still lists it.
    const gone = await createGuest({ name: `${small}-gone`, guestsDir: h.guestsDir, assetsDir: h.assetsDir, start: false });
    const discover = () => syncInventory({ hypervisor: h.hypervisor, store: h.store, host: h.config.host });
    await discover();
    await removeGuest(gone.name, h.guestsDir);
    await discover();
    const run = await vmsnap(h, ['instances', '--all', '--json']);
    assert.equal(run.exitCode, 0, show(run));
    const rows = json<{ id: string; name: string; host: string; taskState: string | null; deletedAt?: string | null }[]>(run);
    for (const g of [guest, gone]) {
      const row = rows.find((r) => r.id === g.uuid);
      assert.equal(row?.name, g.name);
      assert.equal(row?.host, h.config.host);
      assert.equal(row?.taskState, null);
    }
    assert.ok(rows.find((r) => r.id === gone.uuid)?.deletedAt, 'the instance gone from its host is marked deleted');
    assert.ok(!rows.find((r) => r.id === guest.uuid)?.deletedAt);
    const current = json<{ id: string }[]>(await vmsnap(h, ['instances', '--json']));
    assert.ok(!current.some((r) => r.id === gone.uuid), 'without --all a deleted instance is not listed');
    const text = await vmsnap(h, ['instances']);
    assert.match(text.stdout, new RegExp(`^${guest.uuid}\\s+${small}\\s+${h.config.host}\\s+running\\s+None`, 'm'));
    // How old the power state is shows: it is read from libvirt every discovery interval only.
    assert.match(text.stdout, new RegExp(`^${guest.uuid}\\s.*\\s(\\d+(\\.\\d)? s|\\d+ min \\d+ s) ago$`, 'm'), text.stdout);
    assert.ok(
      rows.every((r) => typeof (r as { powerStateAt?: string }).powerStateAt === 'string'),
      'powerStateAt in --json',
    );
    const missing = await vmsnap(h, ['instances'], { VMSNAP_STORE_PATH: `/nonexistent/${process.pid}/vmsnap.sqlite` });
    assert.equal(missing.exitCode, 5, show(missing));
    assertOneLineError(missing, /no vmsnap store at .*: start a host worker/);
  });

  it('a closed stdout ends the CLI quietly (vmsnap snapshot --help | head -5)', async () => {
    const child = execa(VMSNAP_BIN, ['snapshot', '--help'], {
      env: cliEnv(h),
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
      buffer: { stdout: false },
    });
    // The reader is gone before the CLI writes a byte: every write fails with EPIPE.
    child.stdout?.destroy();
    const ended = await child;
    assert.equal(ended.stderr, '', 'no stack trace');
    assert.equal(ended.exitCode, 0);
  });

  it('--help lists the commands and the exit codes', async () => {
    const run = await vmsnap(h, ['--help']);
    assert.equal(run.exitCode, 0);
    for (const word of ['snapshot', 'status', 'list', 'cancel', 'instances', 'Exit codes:', 'InstanceBusy', 'ConfigError'])
      assert.ok(run.stdout.includes(word), word);
    const unknownOption = await vmsnap(h, ['list', '--frobnicate']);
    assert.equal(unknownOption.exitCode, 2);
    assertOneLineError(unknownOption, /unknown option '--frobnicate'/);
    assert.equal(cliEnv(h).VMSNAP_TASK_QUEUE, h.config.temporal.taskQueue);
  });
});
