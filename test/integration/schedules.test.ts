// Scheduled snapshots on the real stack: a real Temporal Schedule on a short interval snapshots a
// real guest into Glance; retention keeps the newest N of the schedule's images (and a protected
// one, and one in use as a base) and deletes the rest; pause, unpause and delete; the CLI with
// --json; the dry run; and the sweeper removing an orphan image planted in Glance by hand.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import {
  createSchedule,
  deleteSchedule,
  describeSchedule,
  listSchedules,
  pauseSchedule,
  previewRetention,
  scheduleIdOf,
  type VmsnapScheduleDetails,
} from '../../src/client/schedules.js';
import { decideRetention, isoWeek, type RetentionPlan } from '../../src/activities/retention.js';
import type { Image, ImageService } from '../../src/drivers/image-service.js';
import { VMSNAP_IMAGE_TAG, reconcileWorkflowId } from '../../src/shared/names.js';
import { ensureReconcileSchedule } from '../../src/worker/reconcile-schedule.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import type { ScheduledSnapshotsReport } from '../../src/workflows/scheduled.js';
import { deleteImages, eventually, stopLeftoverSnapshots, vmsnap, type CliRun } from '../support/cli.js';
import { glanceAuth } from '../support/cloud.js';
import { startHarness, type Harness } from '../support/harness.js';
import { REPLAY_FIXTURES, recordHistory } from '../support/fixtures.js';

const pid = process.pid;
const guestName = `vmsnap-test-sched-${pid}`;
const timed = `test-every-${pid}`;
const cron = `test-cron-${pid}`;
/** In the schedule's selection, but on no host: it fails every run, and the guest's snapshot goes on. */
const missing = `vmsnap-test-sched-missing-${pid}`;
let h: Harness;
let guest: Guest;
/** Images this file made by hand (planted orphans, a derived image): deleted at the end. */
const planted = new Set<string>();
const ours = (id: string) => planted.has(id) || h.madeImages.has(id);

function json<T>(run: CliRun): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    assert.fail(`stdout is not one JSON document:\n${run.stdout}\n--- stderr ---\n${run.stderr}`);
  }
}

function show(run: CliRun): string {
  return `exit ${run.exitCode}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
}

function assertOneLineError(run: CliRun, code: number, pattern: RegExp): void {
  assert.equal(run.exitCode, code, show(run));
  const lines = run.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${run.stderr}`);
  assert.match(lines[0]!, /^vmsnap: /);
  assert.match(lines[0]!, pattern);
}

async function setProtected(imageId: string, value: boolean): Promise<void> {
  const res = await fetch(`${h.glanceUrl}/v2/images/${imageId}`, {
    method: 'PATCH',
    headers: { 'content-type': 'application/openstack-images-v2.1-json-patch', ...(await glanceAuth()) },
    body: JSON.stringify([{ op: 'replace', path: '/protected', value }]),
  });
  assert.equal(res.status, 200, await res.text());
}

/** The schedule's images in Glance, as retention finds them. */
async function scheduleImages(name: string): Promise<{ id: string; status: string; protected: boolean; name: string }[]> {
  return h.glance.listImages({ tag: VMSNAP_IMAGE_TAG, vmsnap_schedule: scheduleIdOf(name) });
}

/** Reports of the schedule's completed runs, oldest first. */
async function reports(d: VmsnapScheduleDetails): Promise<ScheduledSnapshotsReport[]> {
  const done = d.recentRuns.filter((r) => r.status === 'completed');
  return Promise.all(done.map((r) => h.client.workflow.getHandle(r.workflowId, r.runId).result() as Promise<ScheduledSnapshotsReport>));
}

async function reconcileNow(options: { staleImageAfterMs?: number } = {}): Promise<ReconcileReport> {
  return h.client.workflow.execute('reconcile', {
    taskQueue: h.config.temporal.taskQueue,
    workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
    args: [options],
  });
}

/** A vmsnap-tagged image made by hand, as if by a run Temporal does not know. */
async function plantImage(opts: { active: boolean }): Promise<string> {
  const id = randomUUID();
  planted.add(id);
  await h.glance.createImage({
    id,
    name: `vmsnap-test-sched-orphan-${pid}`,
    visibility: 'private',
    min_disk: 0,
    min_ram: 0,
    properties: { vmsnap_request_id: `snapshot-${randomUUID()}/${randomUUID()}` },
    tags: [VMSNAP_IMAGE_TAG],
  });
  if (opts.active) {
    const dir = await mkdtemp(join(tmpdir(), 'vmsnap-sched-'));
    try {
      await writeFile(join(dir, 'data'), Buffer.alloc(64 * 1024, 1));
      await h.glance.updateImage(id, { disk_format: 'raw', container_format: 'bare' });
      await h.glance.uploadFile(id, join(dir, 'data'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  return id;
}

describe('scheduled snapshots on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    h = await startHarness({
      name: 'sched',
      // The sweeper of this file sees this file's images only (those it planted, those its workers
      // made): with staleImageAfterMs 0 it would otherwise delete any other test's unfinished image.
      wrapImageService: (real) => {
        const scoped = Object.create(real) as ImageService;
        scoped.listImagesByTag = async (tag) => (await real.listImagesByTag(tag)).filter((i) => ours(i.id));
        return scoped;
      },
    });
    guest = await createGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir, intervalMs: 100 });
  });

  after(async () => {
    if (h) {
      for (const name of [timed, cron]) await deleteSchedule(h.client, name).catch(() => undefined);
      await stopLeftoverSnapshots(h);
      for (const name of [timed, cron]) {
        for (const image of await scheduleImages(name).catch(() => [])) {
          if (image.protected) await setProtected(image.id, false).catch(() => undefined);
          planted.add(image.id);
        }
      }
      await deleteImages(h, planted);
    }
    if (h) await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    await h?.close();
  });

  it('retention follows Proxmox: per instance, rules in order, a period kept by an earlier rule does not count again', () => {
    const a = randomUUID();
    const b = randomUUID();
    const image = (id: string, createdAt: string, extra: Partial<Image> = {}): Image => ({
      id,
      name: `img-${id}`,
      status: 'active',
      visibility: 'private',
      size: 1,
      checksum: null,
      os_hash_algo: null,
      os_hash_value: null,
      disk_format: 'qcow2',
      container_format: 'bare',
      protected: false,
      created_at: createdAt,
      instance_uuid: a,
      ...extra,
    });
    // 2026-11-23 is a Monday (ISO week 48); the 17th is in week 47, the 10th in 46, the 3rd in 45.
    const images = [
      image('a-25-09', '2026-11-25T09:00:00Z'),
      image('a-25-10', '2026-11-25T10:00:00Z'),
      image('a-24-09', '2026-11-24T09:00:00Z'),
      image('a-24-10', '2026-11-24T10:00:00Z'),
      image('a-23', '2026-11-23T12:00:00Z'),
      image('a-17', '2026-11-17T12:00:00Z'),
      image('a-10', '2026-11-10T12:00:00Z'),
      image('a-03', '2026-11-03T12:00:00Z'),
      image('a-old-protected', '2026-10-01T12:00:00Z', { protected: true }),
      image('a-queued', '2026-11-25T11:00:00Z', { status: 'queued' }),
      image('b-01', '2026-11-01T12:00:00Z', { instance_uuid: b }),
    ];
    const decisions = decideRetention(images, { keepLast: 1, keepDaily: 2, keepWeekly: 2 });
    const verdicts = Object.fromEntries(decisions.map((d) => [d.imageId, `${d.action} ${d.rule}`]));
    assert.deepEqual(verdicts, {
      'a-queued': 'keep not-active',
      'a-25-10': 'keep keep-last',
      // The 25th holds the image keep-last kept: keep-daily 2 reaches back to the 24th and 23rd.
      'a-25-09': 'delete prune',
      'a-24-10': 'keep keep-daily',
      'a-24-09': 'delete prune',
      'a-23': 'keep keep-daily',
      // Week 48 is covered by then: keep-weekly 2 keeps weeks 47 and 46.
      'a-17': 'keep keep-weekly',
      'a-10': 'keep keep-weekly',
      'a-03': 'delete prune',
      'a-old-protected': 'keep protected',
      // Another instance counts on its own.
      'b-01': 'keep keep-last',
    });
    assert.deepEqual(decisions.map((d) => d.imageId).slice(0, 3), ['a-queued', 'a-25-10', 'a-25-09'], 'newest first');
    assert.match(decisions.find((d) => d.imageId === 'a-03')!.reason, /^kept by none of keep-last 1, keep-daily 2, keep-weekly 2$/);
    // No rule: everything is kept.
    assert.ok(decideRetention(images, {}).every((d) => d.action === 'keep'));
    assert.deepEqual(
      ['2026-12-28', '2027-01-01', '2027-01-04', '2026-01-01'].map((d) => isoWeek(`${d}T00:00:00.000Z`)),
      ['2026-W53', '2026-W53', '2027-W01', '2026-W01'],
    );
  });

  it('the sweeper removes a stale orphan image of an unknown run, and keeps young and active ones', async () => {
    const orphan = await plantImage({ active: false });
    const active = await plantImage({ active: true });
    assert.equal((await h.glance.getImage(orphan))?.status, 'queued');
    assert.equal((await h.glance.getImage(active))?.status, 'active');

    // The default threshold (10 minutes) leaves an orphan that was made a moment ago alone.
    const young = await reconcileNow();
    assert.ok(!young.deletedImages.includes(orphan), JSON.stringify(young));
    assert.ok(await h.glance.getImage(orphan), 'a young orphan stays');

    const report = await reconcileNow({ staleImageAfterMs: 0 });
    assert.deepEqual(
      report.deletedImages.filter((id) => !ours(id)),
      [],
      'the sweep touched only images of this file',
    );
    const swept = report.sweptImages.find((s) => s.imageId === orphan);
    assert.ok(swept, JSON.stringify(report));
    assert.equal(swept.status, 'queued');
    assert.match(swept.reason, /queued for \d+ s, its run unknown to Temporal/);
    assert.ok(report.deletedImages.includes(orphan));
    assert.equal(await h.glance.getImage(orphan), undefined, 'the orphan is gone from Glance');
    // An active image of an unknown run is most likely a snapshot whose history Temporal dropped.
    assert.ok(!report.deletedImages.includes(active));
    assert.equal((await h.glance.getImage(active))?.status, 'active');
  });

  it("an interval schedule first runs one interval after it was made, not on the epoch's grid (--every 24h ran at midnight UTC)", async () => {
    const name = `${timed}-daily`;
    const day = 24 * 3600 * 1000;
    const madeFrom = Date.now();
    try {
      const created = await createSchedule(h.client, { name, instances: [guestName], every: '24h' }, h.config.temporal.taskQueue);
      const madeBy = Date.now();
      const next = Date.parse(created.nextRuns[0] ?? '');
      // Temporal keeps schedule times to the second.
      assert.ok(next >= madeFrom + day - 1000 && next <= madeBy + day + 1000, `first run ${created.nextRuns[0]}, made at ${new Date(madeFrom).toISOString()}`);
    } finally {
      await deleteSchedule(h.client, name).catch(() => undefined);
    }
  });

  it('a schedule snapshots the guest on its interval; retention keeps the newest 2, a protected one, and deletes the rest', async () => {
    const ofGuest = (r: ScheduledSnapshotsReport) => r.snapshots.find((s) => s.instance === guestName);
    const created = await createSchedule(
      h.client,
      { name: timed, instances: [guestName, missing], every: '6s', retention: { keepLast: 2 } },
      h.config.temporal.taskQueue,
    );
    assert.equal(created.scheduleId, `vmsnap-schedule-${timed}`);
    assert.equal(created.every, '6s');
    assert.deepEqual(created.retention, { keepLast: 2 });
    assert.equal(created.paused, false);

    // The first image made is protected: retention must keep it for good.
    const first = await eventually(
      'the first scheduled snapshot',
      async () => (await reports(await describeSchedule(h.client, timed))).find((r) => ofGuest(r)?.status === 'completed'),
      180_000,
      300,
    );
    const protectedId = ofGuest(first)!.imageId!;
    // The run that made it: lookups, a completed and a failed child snapshot, retention.
    if (process.env.VMSNAP_RECORD_HISTORY === '1') {
      const run = (await describeSchedule(h.client, timed)).recentRuns.find((r) => r.status === 'completed');
      if (run) await recordHistory(h.config.temporal.address, run, REPLAY_FIXTURES.scheduledSnapshots);
    }
    await setProtected(protectedId, true);

    // Several runs: each makes an image, then prunes the schedule's images to the newest 2. Under
    // load a run outlasts the 6 s interval and the next ones are skipped: allow for slow runs.
    await eventually(
      'four completed runs',
      async () => ((await describeSchedule(h.client, timed)).recentRuns.filter((r) => r.completed === 1).length >= 4 ? true : undefined),
      240_000,
      500,
    );
    const paused = await pauseSchedule(h.client, timed, 'test: looking at what retention kept');
    assert.equal(paused.paused, true);
    assert.equal(paused.note, 'test: looking at what retention kept');
    const settled = await eventually(
      'no run going on',
      async () => {
        const d = await describeSchedule(h.client, timed);
        return d.running.length === 0 ? d : undefined;
      },
      60_000,
    );

    const runs = await reports(settled);
    const made = runs.map((r) => ofGuest(r)!);
    assert.ok(made.length >= 4, JSON.stringify(runs));
    // One failing instance does not stop the others: the missing one fails in every run.
    for (const r of runs) {
      const failed = r.snapshots.find((x) => x.instance === missing);
      assert.deepEqual([failed?.status, failed?.error?.type, r.snapshots.length], ['failed', 'InstanceNotFound', 2], JSON.stringify(r));
    }
    for (const [i, s] of made.entries()) {
      assert.equal(s.status, 'completed', JSON.stringify(s));
      assert.equal(s.instanceId, guest.uuid);
      assert.equal(s.workflowId, `snapshot-${guest.uuid}`);
      assert.equal(s.imageName, `${timed}-${guestName}-${runs[i]!.startedAt}`);
      assert.match(runs[i]!.startedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    }
    const ids = made.map((s) => s.imageId!);
    const unprotected = ids.filter((id) => id !== protectedId);
    const kept = new Set([protectedId, ...unprotected.slice(-2)]);
    // Glance holds exactly these: the protected one and the newest two; the others are deleted.
    const inGlance = await scheduleImages(timed);
    assert.deepEqual(new Set(inGlance.map((i) => i.id)), kept);
    for (const image of inGlance) assert.equal(image.status, 'active');
    for (const id of ids.filter((i) => !kept.has(i))) assert.equal(await h.glance.getImage(id), undefined, `image ${id} was deleted`);
    const image = await h.glance.getImage(unprotected.at(-1)!);
    assert.equal(image?.vmsnap_schedule, scheduleIdOf(timed));
    assert.equal(image?.instance_uuid, guest.uuid);
    // The reports say what was deleted, and why the rest was kept.
    const deleted = runs.flatMap((r) => r.retention?.deleted ?? []);
    assert.deepEqual(new Set(deleted), new Set(ids.filter((i) => !kept.has(i))));
    const last = runs.at(-1)!.retention!;
    assert.deepEqual(last.errors, []);
    assert.equal(last.decisions.find((d) => d.imageId === protectedId)?.rule, 'protected');
    assert.deepEqual(
      last.decisions.filter((d) => d.rule === 'keep-last').map((d) => d.imageId),
      unprotected.slice(-2).reverse(),
    );
    assert.equal(settled.lastReport?.startedAt, runs.at(-1)!.startedAt);

    // Dry run with the schedule's own rules: all is as it should be, nothing to delete.
    const own = await previewRetention(h.client, h.config, timed);
    assert.deepEqual(
      own.decisions.filter((d) => d.action === 'delete'),
      [],
    );

    // Dry run "what if keep-last 1" from the CLI: it would delete the older of the two, but does not.
    const [newest, older] = unprotected.slice(-2).reverse() as [string, string];
    const dry = await vmsnap(h, ['schedule', 'retention', timed, '--dry-run', '--keep-last', '1', '--json']);
    assert.equal(dry.exitCode, 0, show(dry));
    const plan = json<RetentionPlan & { dryRun: boolean }>(dry);
    assert.equal(plan.dryRun, true);
    assert.deepEqual(plan.policy, { keepLast: 1 });
    const verdict = (p: RetentionPlan, id: string) => p.decisions.find((d) => d.imageId === id);
    assert.deepEqual([verdict(plan, newest)?.action, verdict(plan, newest)?.rule], ['keep', 'keep-last']);
    assert.deepEqual([verdict(plan, older)?.action, verdict(plan, older)?.rule], ['delete', 'prune']);
    assert.equal(verdict(plan, protectedId)?.rule, 'protected');
    assert.equal((await h.glance.getImage(older))?.status, 'active', 'a dry run deletes nothing');
    const text = await vmsnap(h, ['schedule', 'retention', timed, '--dry-run', '--keep-last', '1']);
    assert.match(text.stdout, /dry run: 2 kept, 1 would be deleted/);
    assert.match(text.stdout, new RegExp(`^delete\\s+${older}\\s.*kept by none of keep-last 1$`, 'm'));
    const notDry = await vmsnap(h, ['schedule', 'retention', timed]);
    assertOneLineError(notDry, 2, /add --dry-run/);

    // An image in use as a base is never deleted: made into another image (base_image_ref) ...
    const derived = randomUUID();
    planted.add(derived);
    await h.glance.createImage({
      id: derived,
      name: `vmsnap-test-sched-derived-${pid}`,
      visibility: 'private',
      min_disk: 0,
      min_ram: 0,
      properties: { base_image_ref: older },
    });
    const withDerived = await previewRetention(h.client, h.config, timed, { policy: { keepLast: 1 } });
    assert.deepEqual([verdict(withDerived, older)?.action, verdict(withDerived, older)?.rule], ['keep', 'in-use']);
    assert.match(verdict(withDerived, older)!.reason, new RegExp(`base image of image ${derived}`));
    await h.glance.deleteImage(derived);
    // ... or booted from by an instance of the inventory.
    const fakeHost = `test-sched-fake-${pid}`;
    await h.store.syncHostInstances(fakeHost, [{ id: randomUUID(), name: `vmsnap-test-sched-booted-${pid}`, powerState: 'shutdown', baseImageRef: older }]);
    try {
      const withInstance = await previewRetention(h.client, h.config, timed, { policy: { keepLast: 1 } });
      assert.equal(verdict(withInstance, older)?.rule, 'in-use');
      assert.match(verdict(withInstance, older)!.reason, new RegExp(`base image of instance vmsnap-test-sched-booted-${pid}`));
    } finally {
      await h.store.syncHostInstances(fakeHost, []);
    }

    // A busy instance is reported, not fatal: a run triggered while another task holds the guest.
    const runAfter = async (what: string, previous: VmsnapScheduleDetails) =>
      eventually(
        what,
        async () => {
          const d = await describeSchedule(h.client, timed);
          const latest = d.recentRuns.at(-1);
          return latest && latest.workflowId !== previous.recentRuns.at(-1)?.workflowId && latest.status === 'completed' ? d : undefined;
        },
        60_000,
        500,
      );
    assert.ok(await h.store.compareAndSwapTaskState(guest.uuid, null, 'image_uploading', 'test-someone-else'));
    let busyRun: VmsnapScheduleDetails;
    try {
      const trigger = await vmsnap(h, ['schedule', 'trigger', timed, '--json']);
      assert.equal(trigger.exitCode, 0, show(trigger));
      busyRun = await runAfter('the triggered run', settled);
    } finally {
      await h.store.releaseTaskState(guest.uuid, 'test-someone-else');
    }
    const busy = ofGuest(busyRun.lastReport!);
    assert.deepEqual([busy?.status, busy?.error?.type, busy?.imageId], ['busy', 'InstanceBusy', undefined], JSON.stringify(busy));
    assert.equal(busyRun.recentRuns.at(-1)?.busy, 1);
    assert.deepEqual(new Set((await scheduleImages(timed)).map((i) => i.id)), kept, 'a busy run makes and deletes nothing');

    // Unpaused from the CLI, it runs again, and that run prunes to the newest two again.
    const unpause = await vmsnap(h, ['schedule', 'unpause', timed, '--note', 'test: on again', '--json']);
    assert.equal(unpause.exitCode, 0, show(unpause));
    assert.deepEqual([json<VmsnapScheduleDetails>(unpause).paused, json<VmsnapScheduleDetails>(unpause).note], [false, 'test: on again']);
    const again = await runAfter('a run after unpause', busyRun);
    const newer = ofGuest((await reports(again)).at(-1)!)!;
    assert.equal(newer.status, 'completed');
    // Paused again before looking: on a loaded machine the next 6 s tick may already have run
    // and pruned once more, so the newest two are read from the runs, not assumed.
    await pauseSchedule(h.client, timed, 'test: looking again');
    const quiet = await eventually(
      'no run going on after unpause',
      async () => {
        const d = await describeSchedule(h.client, timed);
        return d.running.length === 0 ? d : undefined;
      },
      60_000,
    );
    const madeSince = (await reports(quiet))
      .map(ofGuest)
      .filter((s) => s?.status === 'completed')
      .map((s) => s!.imageId!);
    assert.ok(madeSince.includes(newer.imageId!), `the run after unpause is among the reports: ${JSON.stringify(madeSince)}`);
    const newestTwo = madeSince.slice(-2);
    assert.deepEqual(new Set((await scheduleImages(timed)).map((i) => i.id)), new Set([protectedId, ...newestTwo]));
    assert.equal(await h.glance.getImage(older), undefined);

    // Deleted from the CLI: gone from Temporal, describe then says so (exit 3); its images stay.
    const del = await vmsnap(h, ['schedule', 'delete', timed, '--json']);
    assert.equal(del.exitCode, 0, show(del));
    assert.deepEqual(json(del), { scheduleId: scheduleIdOf(timed), deleted: true });
    const gone = await vmsnap(h, ['schedule', 'describe', timed]);
    assertOneLineError(gone, 3, new RegExp(`no vmsnap schedule ${timed}: see vmsnap schedule list`));
    for (const id of [protectedId, ...newestTwo]) assert.ok(await h.glance.getImage(id), `deleting a schedule keeps its images (${id})`);
  });

  it('the CLI: create with cron, list, describe, pause and unpause with a note, delete; bad input exits 2', async () => {
    const create = await vmsnap(h, [
      'schedule',
      'create',
      cron,
      '--instance',
      guest.uuid,
      '--instance',
      `${guestName}`,
      '--cron',
      '0 3 * * *',
      '--keep-last',
      '3',
      '--keep-daily',
      '7',
      '--keep-weekly',
      '4',
      '--json',
    ]);
    assert.equal(create.exitCode, 0, show(create));
    const doc = json<VmsnapScheduleDetails>(create);
    assert.equal(doc.scheduleId, scheduleIdOf(cron));
    assert.equal(doc.cron, '0 3 * * *');
    assert.equal(doc.catchupWindow, '10m');
    assert.deepEqual(doc.instances, [guest.uuid, guestName]);
    assert.deepEqual(doc.retention, { keepLast: 3, keepDaily: 7, keepWeekly: 4 });
    assert.equal(doc.taskQueue, h.config.temporal.taskQueue);
    assert.match(doc.nextRuns[0]!, /T03:00:00\.000Z$/);

    const list = await eventually('the schedule in the list', async () => {
      const run = await vmsnap(h, ['schedule', 'list', '--json']);
      assert.equal(run.exitCode, 0, show(run));
      const rows = json<{ name: string; scheduleId: string; paused: boolean }[]>(run);
      return rows.some((r) => r.name === cron) ? rows : undefined;
    });
    assert.ok(
      list.every((r) => r.scheduleId.startsWith('vmsnap-schedule-')),
      'only vmsnap schedules are listed',
    );
    // The reconciler's schedule (another kind of schedule in the same namespace) is not one of them:
    // one is made here, seen in the namespace's own list, and left out of vmsnap's.
    const reconcileId = reconcileWorkflowId(h.config.temporal.taskQueue);
    await ensureReconcileSchedule(h.client, h.config.temporal.taskQueue, 3600_000);
    try {
      await eventually('the reconciler schedule in the namespace', async () => {
        for await (const s of h.client.schedule.list()) if (s.scheduleId === reconcileId) return true;
        return undefined;
      });
      assert.ok(!(await listSchedules(h.client)).some((s) => s.scheduleId === reconcileId), 'the reconciler schedule is not listed');
      const cliList = json<{ scheduleId: string }[]>(await vmsnap(h, ['schedule', 'list', '--json']));
      assert.ok(!cliList.some((s) => s.scheduleId === reconcileId));
    } finally {
      await h.client.schedule.getHandle(reconcileId).delete();
    }
    const table = await vmsnap(h, ['schedule', 'list']);
    assert.match(
      table.stdout,
      new RegExp(`^${cron}\\s+cron "0 3 \\* \\* \\*" \\(UTC\\)\\s+${guest.uuid},${guestName}\\s+keep-last 3, keep-daily 7, keep-weekly 4\\s+active\\s`, 'm'),
    );

    const pause = await vmsnap(h, ['schedule', 'pause', cron, '--note', 'maintenance window', '--json']);
    assert.equal(pause.exitCode, 0, show(pause));
    const described = await vmsnap(h, ['schedule', 'describe', cron]);
    assert.equal(described.exitCode, 0, show(described));
    assert.match(described.stdout, /^state\s+paused \(maintenance window\)$/m);
    assert.match(described.stdout, /^retention\s+keep-last 3, keep-daily 7, keep-weekly 4$/m);
    assert.match(described.stdout, /^when\s+cron "0 3 \* \* \*" \(UTC\), catch-up window 10m, overlapping runs skipped$/m);
    const unpause = await vmsnap(h, ['schedule', 'unpause', cron, '--json']);
    assert.equal(unpause.exitCode, 0, show(unpause));
    assert.equal(json<VmsnapScheduleDetails>(unpause).paused, false);
    assert.equal((await describeSchedule(h.client, cron)).paused, false);

    // Bad input: exit 2, one line that says what to do, nothing created.
    const [badCron, badRange, badEvery, neither, both, negative, taken, badName] = await Promise.all([
      vmsnap(h, ['schedule', 'create', `${cron}-x`, '--instance', guestName, '--cron', 'every night']),
      vmsnap(h, ['schedule', 'create', `${cron}-x`, '--instance', guestName, '--cron', '99 3 * * *', '--json']),
      vmsnap(h, ['schedule', 'create', `${cron}-x`, '--instance', guestName, '--every', 'sometimes']),
      vmsnap(h, ['schedule', 'create', `${cron}-x`, '--instance', guestName]),
      vmsnap(h, ['schedule', 'create', `${cron}-x`, '--instance', guestName, '--cron', '@daily', '--every', '1h']),
      vmsnap(h, ['schedule', 'create', `${cron}-x`, '--instance', guestName, '--every', '1h', '--keep-last', '-1']),
      vmsnap(h, ['schedule', 'create', cron, '--instance', guestName, '--every', '1h']),
      vmsnap(h, ['schedule', 'create', 'bad/name', '--instance', guestName, '--every', '1h']),
    ]);
    assertOneLineError(badCron, 2, /--cron "every night" is not a cron expression: give 5 fields, .*or use --every 6h/);
    assertOneLineError(badRange, 2, /Temporal refused the schedule \(.*\): correct the cron expression/);
    assert.equal(json<{ error: { type: string; exitCode: number } }>(badRange).error.type, 'InvalidInput');
    assertOneLineError(badEvery, 2, /--every "sometimes" is not an interval: give a duration like 30m, 6h or 1d/);
    assertOneLineError(neither, 2, /give --cron <expression> or --every <duration>, one of the two/);
    assertOneLineError(both, 2, /one of the two/);
    assertOneLineError(negative, 2, /--keep-last/);
    assertOneLineError(taken, 2, new RegExp(`a schedule named ${cron} exists already: choose another name`));
    assertOneLineError(badName, 2, /<name> must be 1-100 letters/);
    await assert.rejects(describeSchedule(h.client, `${cron}-x`), { name: 'ScheduleNotFound' });
    const unknown = await vmsnap(h, ['schedule', 'pause', `${cron}-nonexistent`, '--json']);
    assertOneLineError(unknown, 3, /no vmsnap schedule/);
    assert.equal(json<{ error: { type: string } }>(unknown).error.type, 'ScheduleNotFound');

    const del = await vmsnap(h, ['schedule', 'delete', cron]);
    assert.equal(del.exitCode, 0, show(del));
    assert.match(del.stdout, /deleted schedule .*; the images it made stay in Glance/);
    await assert.rejects(describeSchedule(h.client, cron), { name: 'ScheduleNotFound' });
  });
});
