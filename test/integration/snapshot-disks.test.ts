// Every disk of an instance at one point in time (issue 28), on the real stack: a guest with a qcow2
// root, a raw data disk, a read-only disk and a CD-ROM, whose /init writes the same counter to both
// written disks in one step. A snapshot of `disks: 'all'`, cold and live (streamed), makes one image
// per written disk, each active and verified, the data image hidden and naming its root, the root
// carrying the set's manifest, and the counters of the two images no further apart than one step
// (two instants would be many steps apart). A data disk's upload answered 5xx for good leaves no
// image of the set, the guest running, task state None. The CLI refuses a disk the instance has not.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { checkOneInstant, createGuest, guestState, readCounter, removeGuest, type Counter, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { ImageService } from '../../src/drivers/image-service.js';
import { DISK_SET_PROPERTY, manifestOf, type DiskSetEntry } from '../../src/shared/disk-set.js';
import type { SnapshotDiskResult, SnapshotMode, SnapshotResult } from '../../src/shared/types.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { stopLeftoverSnapshots, vmsnap, type CliRun } from '../support/cli.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { startHarness, type Harness } from '../support/harness.js';
import { downloadImage, findImagesByName, observePause } from '../support/images.js';
import { assertAllHeld, checkRunningGuest, counterAdvances, outcomeOf, type Invariants } from '../support/invariants.js';

const tag = process.pid;
const guestName = `vmsnap-test-disks-${tag}`;
const MiB = 1024 * 1024;
const ROOT_MIB = 64;
const DATA_MIB = 16;
let h: Harness;
let proxy: FaultProxy;
let guest: Guest;
/** Every disk's counter, root first, read right after each pause of the guest (by instance). */
const atPause = new Map<string, { dev: string; counter: Counter }[]>();
/** Runs when the workers create an image: lets a test aim a fault at the data disk's upload. */
let onCreate: (image: { id: string; properties: Record<string, string> }) => void = () => undefined;

async function diskCounters(g: Guest): Promise<{ dev: string; counter: Counter }[]> {
  const out = [{ dev: 'vda', counter: await readCounter(g.diskPath, 'qcow2') }];
  for (const d of g.dataDisks) out.push({ dev: d.dev, counter: await readCounter(d.path, d.format) });
  return out;
}

function noTempDirs(): void {
  assert.ok(!existsSync(h.config.snapshotsDir) || readdirSync(h.config.snapshotsDir).length === 0, 'a snapshot temp dir was left behind');
}

/** The images the workers created since `before` (data images are hidden: listing by name would not show them). */
function madeSince(before: Set<string>): string[] {
  return [...h.madeImages].filter((id) => !before.has(id));
}

/** Downloads each image of the set and reads its counter records, in the result's order (root first). */
async function imageCounters(disks: SnapshotDiskResult[]): Promise<{ dev: string; counter: Counter }[]> {
  const out: { dev: string; counter: Counter }[] = [];
  for (const d of disks) {
    const downloaded = await downloadImage(h.glanceUrl, d.imageId);
    try {
      assert.equal(downloaded.sha512, d.sha512, `${d.dev}: the downloaded bytes hash as the result says`);
      out.push({ dev: d.dev, counter: await readCounter(downloaded.path, d.diskFormat) });
    } finally {
      rmSync(downloaded.path, { force: true });
    }
  }
  return out;
}

/** What every snapshot of the whole set must show: the result, the images in Glance, the manifest. */
async function assertImageSet(result: SnapshotResult): Promise<SnapshotDiskResult[]> {
  const disks = result.disks ?? [];
  assert.deepEqual(
    disks.map((d) => [d.dev, d.role, d.bus]),
    [
      ['vda', 'root', 'virtio'],
      ['vdb', 'data', 'virtio'],
    ],
    'one image per written disk, root first',
  );
  const [root, data] = disks as [SnapshotDiskResult, SnapshotDiskResult];
  assert.equal(root.imageId, result.imageId);
  assert.equal(root.sha512, result.sha512);
  assert.equal(root.size, result.size);
  assert.notEqual(data.imageId, root.imageId);
  assert.equal(root.virtualSize, ROOT_MIB * MiB);
  assert.equal(data.virtualSize, DATA_MIB * MiB);
  assert.ok(result.diskSetId, 'the set has an id');
  assert.deepEqual(
    [...(result.skippedDisks ?? [])].sort((a, b) => a.dev.localeCompare(b.dev)).map((s) => s.dev),
    ['hdc', 'vdc'],
    `the CD-ROM and the read-only disk are skipped: ${JSON.stringify(result.skippedDisks)}`,
  );
  const reasons = Object.fromEntries((result.skippedDisks ?? []).map((s) => [s.dev, s.reason]));
  assert.match(reasons.hdc ?? '', /cdrom/);
  assert.match(reasons.vdc ?? '', /read-only/);

  for (const d of disks) {
    const image = await h.glance.getImage(d.imageId);
    assert.ok(image, `${d.dev}: image ${d.imageId} in Glance`);
    assert.equal(image.status, 'active', `${d.dev}: active`);
    assert.equal(image.os_hash_value, d.sha512, `${d.dev}: Glance's os_hash_value is the result's sha512`);
    assert.equal(image.size, d.size, `${d.dev}: size`);
    assert.equal(image.disk_format, d.diskFormat, `${d.dev}: disk_format`);
    assert.equal(image[DISK_SET_PROPERTY.set], result.diskSetId, `${d.dev}: in the set`);
    assert.equal(image[DISK_SET_PROPERTY.role], d.role, `${d.dev}: its role`);
    assert.equal(image[DISK_SET_PROPERTY.device], d.dev, `${d.dev}: its device`);
  }
  const dataImage = await h.glance.getImage(data.imageId);
  assert.equal(dataImage?.os_hidden, true, 'the data image is hidden from default lists');
  assert.equal(dataImage?.[DISK_SET_PROPERTY.rootImage], root.imageId, 'the data image names its root image');
  const rootImage = await h.glance.getImage(root.imageId);
  assert.equal(rootImage?.os_hidden, false, 'the root image is bootable and listed');
  const expected: DiskSetEntry[] = disks.map((d) => ({
    device_name: d.dev,
    disk_bus: d.bus,
    boot_index: d.role === 'root' ? 0 : null,
    image_id: d.imageId,
    disk_format: d.diskFormat,
    virtual_size: d.virtualSize,
  }));
  assert.deepEqual(manifestOf(rootImage ?? {}), { set_id: result.diskSetId, disks: expected }, 'the root image carries the manifest');
  // Only the root image shows in a default list, by its name.
  assert.deepEqual(
    (await findImagesByName(h.glanceUrl, rootImage?.name ?? '')).map((i) => i.id),
    [root.imageId],
  );
  return disks;
}

function runEvents(events: { event: string; requestId?: string | null }[], handle: { workflowId: string; firstExecutionRunId: string }): string[] {
  return events.filter((e) => e.requestId === `${handle.workflowId}/${handle.firstExecutionRunId}`).map((e) => e.event);
}

/** The invariants after a failed snapshot of the set, the image check widened to every image the run made (hidden ones too). */
async function setInvariants(imageName: string, outcome: string, expectedOutcome: string, made: string[]): Promise<Invariants> {
  const invariants = await checkRunningGuest(h, guest, imageName, outcome, expectedOutcome);
  const left = [];
  for (const id of made) {
    const image = await h.glance.getImage(id);
    if (image && image.status !== 'deleted') left.push(`${id} ${image.status}`);
  }
  return { ...invariants, 'no unfinished image': invariants['no unfinished image'] && made.length > 0 && left.length === 0 };
}

function show(run: CliRun): string {
  return `exit ${run.exitCode}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
}

describe('snapshots of every disk of an instance, at one point in time, on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    proxy = await startFaultProxy(await stackGlanceUrl());
    h = await startHarness({
      name: 'disks',
      glanceUrl: proxy.url,
      // A retry budget small enough for a test: 4 attempts within ~4 s.
      env: {
        VMSNAP_DEFAULT_MODE: 'auto',
        VMSNAP_GLANCE_RETRY_ATTEMPTS: '4',
        VMSNAP_GLANCE_RETRY_INITIAL_MS: '500',
        VMSNAP_GLANCE_RETRY_MAX_MS: '2000',
      },
      wrapHypervisor: (real) =>
        observePause(real, async (id) => {
          if (id === guest?.uuid) atPause.set(id, await diskCounters(guest));
        }),
      wrapImageService: (real: ImageService) => {
        const seen = Object.create(real) as ImageService;
        seen.createImage = async (image) => {
          onCreate(image);
          return real.createImage(image);
        };
        return seen;
      },
    });
    guest = await createGuest({
      name: guestName,
      guestsDir: h.guestsDir,
      assetsDir: h.assetsDir,
      diskSizeMiB: ROOT_MIB,
      dataDisks: [{ format: 'raw', sizeMiB: DATA_MIB }],
      readonlyDisk: true,
      cdrom: true,
    });
  });

  after(async () => {
    if (h) await stopLeftoverSnapshots(h);
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    await h?.close();
    await proxy?.close();
  });

  it('cold: one pause for both disks, one image per disk, their counters from one instant', async () => {
    atPause.delete(guest.uuid);
    const handle = await startSnapshot(
      h.client,
      { instance: guest.uuid, imageName: `vmsnap-test-${tag}-disks-cold`, mode: 'cold', disks: 'all' },
      h.config.temporal.taskQueue,
    );
    const result = await handle.result();
    assert.equal(result.mode, 'cold');
    assert.ok(result.guestPauseMs > 0, 'the running guest was paused');
    const disks = await assertImageSet(result);
    assert.deepEqual(runEvents(await h.store.listEvents(guest.uuid), handle), ['start', 'pause', 'resume', 'finish'], 'one pause for every disk');

    // Each image holds what its disk held at the one pause; together they span one step at most.
    const paused = atPause.get(guest.uuid);
    assert.ok(paused, 'the counters at pause were read');
    assert.equal(checkOneInstant(paused), undefined, 'the guest wrote both disks in one step');
    const images = await imageCounters(disks);
    assert.deepEqual(images, paused, 'the images hold the counters of the moment of pause');
    assert.equal(checkOneInstant(images), undefined);

    assert.equal(await guestState(guest.name), 'running');
    assert.ok(await counterAdvances(guest), 'the guest counts on');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    noTempDirs();
  });

  it('live (streamed): one backup job over both disks, the guest never paused, counters from one instant', async () => {
    const before = await diskCounters(guest);
    const handle = await startSnapshot(
      h.client,
      { instance: guest.uuid, imageName: `vmsnap-test-${tag}-disks-live`, mode: 'live', disks: 'all' },
      h.config.temporal.taskQueue,
    );
    const result = await handle.result();
    const afterRun = await diskCounters(guest);
    assert.equal(result.mode, 'live');
    assert.equal(result.transfer, 'streamed', result.transferNote);
    assert.ok(result.guestPauseMs <= 50, `QEMU reported a ${result.guestPauseMs} ms pause`);
    const disks = await assertImageSet(result);
    assert.ok(!runEvents(await h.store.listEvents(guest.uuid), handle).includes('pause'), 'no pause recorded');

    const images = await imageCounters(disks);
    assert.equal(checkOneInstant(images), undefined, 'one backup job: one instant for both disks');
    const rootA = images[0]?.counter.a ?? 0;
    const [beforeA, afterA] = [before[0]?.counter.a ?? 0, afterRun[0]?.counter.a ?? 0];
    assert.ok(rootA >= beforeA && rootA <= afterA, `taken while the snapshot ran: ${beforeA} <= ${rootA} <= ${afterA}`);

    assert.equal(await guestState(guest.name), 'running');
    assert.ok(await counterAdvances(guest), 'the guest counts on');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    noTempDirs();
  });

  for (const mode of ['cold', 'live'] as const satisfies readonly SnapshotMode[]) {
    it(`${mode}: the data disk's upload answered 5xx for good: no image of the set left, the guest running, task state None`, async () => {
      const before = new Set(h.madeImages);
      const imageName = `vmsnap-test-${tag}-disks-${mode}-5xx`;
      let aimedAt: { id: string; how: string } | undefined;
      let created = 0;
      proxy.requests.length = 0;
      // The data image is known by its device when its record says it, else as the set's second image.
      onCreate = (image) => {
        created += 1;
        const device = image.properties[DISK_SET_PROPERTY.device];
        const isData = device === 'vdb' || (device === undefined && created === 2);
        if (aimedAt || !isData) return;
        aimedAt = { id: image.id, how: device ? `its record names ${device}` : 'the second image of the set' };
        proxy.setRule({ method: 'PUT', path: new RegExp(`^/v2/images/${image.id}/file$`), kind: 'status', status: 500, body: 'Internal Server Error' });
      };
      try {
        const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName, mode, disks: 'all' }, h.config.temporal.taskQueue);
        const outcome = await outcomeOf(handle);
        const made = madeSince(before);
        const refused = proxy.requests.filter((r) => r.fault === 'status' && r.method === 'PUT');
        const otherPuts = proxy.requests.filter((r) => r.method === 'PUT' && !r.fault && /\/file$/.test(r.path));
        const invariants = await setInvariants(imageName, outcome, 'ImageServiceUnavailable', made);
        recordFaultRow({
          fault: `a data disk's upload answered 5xx for good (${mode}, all disks)`,
          outcome,
          invariants,
          evidence: [
            evidence(
              `${refused.length} PUTs of the data image's data answered 500 (aimed at ${aimedAt?.id.slice(0, 8) ?? 'nothing'}: ${aimedAt?.how ?? 'no data image was created'})`,
              aimedAt !== undefined && refused.length > 0 && refused.every((r) => r.path === `/v2/images/${aimedAt?.id}/file`),
            ),
            evidence(`${made.length} images made by the run (root and data), ${otherPuts.length} other PUT(s) of image data answered`, made.length >= 2),
          ],
          note: 'Glance retries: 4 attempts within ~4 s (VMSNAP_GLANCE_RETRY_*)',
        });
        assertAllHeld(invariants);
        noTempDirs();
      } finally {
        onCreate = () => undefined;
        proxy.setRule(undefined);
      }
    });
  }

  /** Runs `vmsnap snapshot ... --disks <value> --wait` and checks the refusal changed nothing; returns the run. */
  async function refusedDisks(value: string, imageName: string): Promise<CliRun> {
    const before = new Set(h.madeImages);
    const faultsBefore = (await h.store.listFaults(guest.uuid)).length;
    const run = await vmsnap(h, ['snapshot', guest.uuid, '--name', imageName, '--disks', value, '--wait']);
    assert.equal(run.exitCode, 2, show(run));
    const lines = run.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `one line on stderr:\n${run.stderr}`);
    assert.match(lines[0] ?? '', /^vmsnap: /);
    assert.doesNotMatch(run.stderr, /\n\s+at /, 'no stack trace');
    assert.deepEqual(madeSince(before), [], 'no image was made');
    assert.deepEqual(await findImagesByName(h.glanceUrl, imageName), []);
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    assert.equal((await h.store.listFaults(guest.uuid)).length, faultsBefore, 'a refused request is no fault of the instance');
    assert.equal(await guestState(guest.name), 'running');
    return run;
  }

  it('--disks naming a disk the instance has not: exit 2, one line naming it, nothing changed', async () => {
    const run = await refusedDisks('vda,vdz', `vmsnap-test-${tag}-disks-unknown`);
    assert.match(run.stderr, /\bvdz\b/, 'the line names the disk');
  });

  it('an empty --disks: exit 2, one line naming the option, nothing changed (not a root-disk snapshot)', async () => {
    const run = await refusedDisks('', `vmsnap-test-${tag}-disks-empty`);
    assert.match(run.stderr, /--disks/);
  });
});
