// A snapshot set's restore, retention and rotation, with fakes: the image checks refuse a set with
// an image missing, of another set or unfinished (naming the disk); the disk check refuses a
// domain whose disks no longer match the set; the undo of a set's restore that died between two
// disks' swaps puts every disk back (real files, a fake hypervisor); retention and backup rotation
// count roots only and delete a set whole, data images first (a fake Glance that lists os_hidden
// images only when asked, as the real one does: restore-set.test.ts checks that on the stack).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { MockActivityEnvironment } from '@temporalio/testing';
import { backupActivities } from '../../src/activities/backups.js';
import type { ActivityDeps } from '../../src/activities/deps.js';
import { checkRestoreDisks } from '../../src/activities/restore-disks.js';
import { restoreFiles, swapDisk } from '../../src/activities/restore-files.js';
import { restoreImageActivities } from '../../src/activities/restore-image.js';
import { undoRestore } from '../../src/activities/restore-swap.js';
import { retentionActivities } from '../../src/activities/retention.js';
import type { Hypervisor, InstanceDisk, PowerState } from '../../src/drivers/hypervisor.js';
import type { Image, ImageService } from '../../src/drivers/image-service.js';
import { manifestProperties } from '../../src/shared/disk-set.js';
import { VmsnapError } from '../../src/shared/errors.js';

const INSTANCE = '6a535fc0-8993-420b-af4c-16246447e5b5';
const SET = 'a1d2f1de-7c37-4f8e-9d55-bd8d5c3b9a10';
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-disk-set-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function image(id: string, props: Record<string, unknown> = {}): Image {
  return {
    id,
    name: `snap-${id}`,
    status: 'active',
    visibility: 'private',
    size: 10,
    checksum: null,
    os_hash_algo: 'sha512',
    os_hash_value: 'ab',
    disk_format: 'qcow2',
    container_format: 'bare',
    protected: false,
    tags: ['vmsnap'],
    instance_uuid: INSTANCE,
    vmsnap_request_id: 'snapshot-x/run',
    created_at: '2026-12-01T03:00:00Z',
    ...props,
  };
}

/** A set of a root (vda) and a data disk (vdb) as the snapshot makes it. */
function twoDiskSet(rootId: string, dataId: string, setId = SET, extra: Record<string, unknown> = {}): Image[] {
  const manifest = manifestProperties({
    set_id: setId,
    disks: [
      { device_name: 'vda', disk_bus: 'virtio', boot_index: 0, image_id: rootId, disk_format: 'qcow2', virtual_size: 100 },
      { device_name: 'vdb', disk_bus: 'virtio', boot_index: null, image_id: dataId, disk_format: 'raw', virtual_size: 100 },
    ],
  });
  return [
    image(rootId, { ...manifest, vmsnap_disk_role: 'root', vmsnap_disk_device: 'vda', ...extra }),
    image(dataId, {
      vmsnap_disk_set: setId,
      vmsnap_disk_role: 'data',
      vmsnap_disk_device: 'vdb',
      vmsnap_root_image: rootId,
      disk_format: 'raw',
      os_hidden: true,
      ...extra,
    }),
  ];
}

/** Glance as far as these steps use it: filters on fields, hidden images only when asked (os_hidden=true), deletes recorded. */
class FakeGlance implements Pick<ImageService, 'getImage' | 'listImages' | 'deleteImage'> {
  readonly images = new Map<string, Image>();
  readonly deleted: string[] = [];
  constructor(images: Image[]) {
    for (const i of images) this.images.set(i.id, i);
  }
  async getImage(id: string) {
    return this.images.get(id);
  }
  async listImages(filters: Record<string, string>) {
    const hidden = filters.os_hidden === 'true';
    return [...this.images.values()].filter(
      (i) =>
        (i.os_hidden === true) === hidden &&
        Object.entries(filters).every(([k, v]) => k === 'os_hidden' || (k === 'tag' ? (i.tags as string[]).includes(v) : i[k] === v)),
    );
  }
  async deleteImage(id: string) {
    this.deleted.push(id);
    this.images.delete(id);
  }
}

describe("a set's images, checked before a restore", () => {
  const check = (glance: FakeGlance, imageId: string) =>
    restoreImageActivities({ imageService: glance as unknown as ImageService }).checkRestoreImage({ imageId, instanceId: INSTANCE, allowOtherImage: false });

  it("brings every disk of the set, root first, each image's size and sha512", async () => {
    const got = await check(new FakeGlance(twoDiskSet('r1', 'd1')), 'r1');
    assert.deepEqual(
      got.set?.disks.map((d) => [d.dev, d.role, d.image.imageId, d.image.diskFormat]),
      [
        ['vda', 'root', 'r1', 'qcow2'],
        ['vdb', 'data', 'd1', 'raw'],
      ],
    );
    assert.equal(got.set?.setId, SET);
  });

  it('a root-disk snapshot has no set', async () => {
    assert.equal((await check(new FakeGlance([image('r0')]), 'r0')).set, undefined);
  });

  it('refuses a set whose data image is gone, naming the disk (ImageNotFound)', async () => {
    const glance = new FakeGlance(twoDiskSet('r1', 'd1'));
    glance.images.delete('d1');
    await assert.rejects(check(glance, 'r1'), (e: VmsnapError) => e.code === 'ImageNotFound' && /disk vdb \(image d1\) of snapshot set/.test(e.message));
  });

  it('refuses a data image of another set, one not active, and a data image asked for itself', async () => {
    const other = twoDiskSet('r1', 'd1');
    other[1]!.vmsnap_disk_set = 'another-set';
    await assert.rejects(check(new FakeGlance(other), 'r1'), (e: VmsnapError) => e.code === 'InvalidInput' && /disk vdb .*not of this set/.test(e.message));
    const saving = twoDiskSet('r1', 'd1');
    saving[1]!.status = 'saving';
    await assert.rejects(check(new FakeGlance(saving), 'r1'), (e: VmsnapError) => e.code === 'InvalidInput' && /disk vdb .*saving, not active/.test(e.message));
    await assert.rejects(check(new FakeGlance(twoDiskSet('r1', 'd1')), 'd1'), /data disk vdb of snapshot set .*restore the set's root image r1/);
  });

  it('refuses a root whose set never completed (no manifest)', async () => {
    const unfinished = twoDiskSet('r1', 'd1');
    delete unfinished[0]!.vmsnap_disks;
    await assert.rejects(check(new FakeGlance(unfinished), 'r1'), /the set never completed/);
  });
});

describe("the domain's disks against the set", () => {
  const files = { vda: join(dir, 'vda.qcow2'), vdb: join(dir, 'vdb.raw'), vdc: join(dir, 'vdc.raw') };
  for (const f of Object.values(files)) writeFileSync(f, 'x');
  const disk = (dev: string, more: Partial<InstanceDisk> = {}): InstanceDisk => ({
    dev,
    device: 'disk',
    type: 'file',
    bus: 'virtio',
    path: files[dev as keyof typeof files],
    format: dev === 'vda' ? 'qcow2' : 'raw',
    readonly: false,
    shareable: false,
    ...more,
  });
  const check = (disks: InstanceDisk[]) =>
    checkRestoreDisks(
      { hypervisor: { disks: async () => disks } as unknown as Hypervisor },
      {
        instanceId: INSTANCE,
        setId: SET,
        disks: [
          { dev: 'vda', role: 'root' },
          { dev: 'vdb', role: 'data' },
        ],
      },
    );

  it('passes when they match (a CD-ROM beside them is not part of any set)', async () => {
    await check([disk('vda'), disk('vdb'), disk('hdc', { device: 'cdrom', readonly: true })]);
  });

  it('refuses a disk added since, naming it', async () => {
    await assert.rejects(
      check([disk('vda'), disk('vdb'), disk('vdc')]),
      (e: VmsnapError) => e.code === 'InvalidInput' && /its disk vdc .* is not in the set/.test(e.message),
    );
  });

  it('refuses a disk of the set the domain no longer has, or no longer writes', async () => {
    await assert.rejects(check([disk('vda')]), /the set has a disk vdb, the instance has none/);
    await assert.rejects(check([disk('vda'), disk('vdb', { readonly: true })]), /its disk vdb is in the set, but is now read-only/);
  });
});

describe("the undo of a set's restore that died between two disks' swaps", () => {
  it('puts every disk it swapped back and starts the guest', async () => {
    const paths = { vda: join(dir, 'undo-vda.qcow2'), vdb: join(dir, 'undo-vdb.raw') };
    for (const [dev, p] of Object.entries(paths)) {
      writeFileSync(p, `old ${dev}`);
      writeFileSync(restoreFiles(p).restored, `new ${dev}`);
    }
    let power: PowerState = 'running';
    const hypervisor = {
      disks: async () => Object.entries(paths).map(([dev, path]) => ({ dev, device: 'disk', type: 'file', bus: 'virtio', path, format: 'raw' })),
      stop: async () => {
        power = 'shutdown';
        return { stoppedBy: 'destroy', runningUntil: Date.now(), shutdownWaitMs: 0 };
      },
      start: async () => {
        power = 'running';
      },
      getInstance: async () => ({ powerState: power }),
      hasGuestAgent: async () => false,
    };
    const deps = {
      hypervisor,
      store: { recordEvent: async () => undefined },
      settings: { restoreShutdownTimeoutMs: 0, restoreStartTimeoutMs: 5000, preRestoreRetentionMs: 60_000 },
    } as unknown as ActivityDeps;
    const owner = 'restore-x/run-1';
    // The guest stopped and vda swapped; the worker died before vdb's swap.
    power = 'shutdown';
    await swapDisk(deps, { instanceId: INSTANCE, owner, imageId: 'r1', diskPath: paths.vda });
    assert.equal(readFileSync(paths.vda, 'utf8'), 'new vda');
    const undone = await new MockActivityEnvironment().run(() => undoRestore(deps, { instanceId: INSTANCE, owner, priorPowerState: 'running' }));
    assert.deepEqual(undone, { swappedBack: true });
    assert.equal(readFileSync(paths.vda, 'utf8'), 'old vda');
    assert.equal(readFileSync(paths.vdb, 'utf8'), 'old vdb');
    for (const p of Object.values(paths)) {
      const f = restoreFiles(p);
      for (const leftover of [f.restored, f.preRestore, f.marker]) assert.throws(() => readFileSync(leftover), `${leftover} removed`);
    }
    assert.equal(power, 'running');
  });
});

describe('retention and backup rotation of sets', () => {
  const scheduled = (rootId: string, dataId: string, setId: string, createdAt: string) =>
    twoDiskSet(rootId, dataId, setId, { vmsnap_schedule: 'nightly', created_at: createdAt, image_type: 'backup', backup_type: 'daily' });

  it('counts a set once (its root) and deletes it whole, its data image first', async () => {
    const glance = new FakeGlance([
      ...scheduled('r-new', 'd-new', 'set-new', '2026-12-02T03:00:00Z'),
      ...scheduled('r-old', 'd-old', 'set-old', '2026-12-01T03:00:00Z'),
    ]);
    const retention = retentionActivities({ imageService: glance as unknown as ImageService, store: { listInstances: async () => [] } as never });
    const plan = await retention.planScheduleRetention({ scheduleId: 'nightly', policy: { keepLast: 1 } });
    assert.deepEqual(
      plan.decisions.map((d) => [d.imageId, d.action]),
      [
        ['r-new', 'keep'],
        ['r-old', 'delete'],
      ],
    );
    assert.deepEqual(await retention.deleteExpiredImage({ scheduleId: 'nightly', imageId: 'r-old' }), { deleted: true, dataImages: ['d-old'] });
    assert.deepEqual(glance.deleted, ['d-old', 'r-old']);
    assert.deepEqual([...glance.images.keys()].sort(), ['d-new', 'r-new']);
  });

  it('a data image is never a candidate on its own, even when Glance lists it', async () => {
    const images = scheduled('r1', 'd1', 'set-1', '2026-12-01T03:00:00Z');
    images[1]!.os_hidden = false; // a Glance that ignores os_hidden
    const glance = new FakeGlance(images);
    const retention = retentionActivities({ imageService: glance as unknown as ImageService, store: { listInstances: async () => [] } as never });
    const plan = await retention.planScheduleRetention({ scheduleId: 'nightly', policy: { keepLast: 1 } });
    assert.deepEqual(
      plan.decisions.map((d) => d.imageId),
      ['r1'],
    );
  });

  it("backup rotation deletes a set past the rotation whole, as Nova's rotation deletes a backup", async () => {
    const glance = new FakeGlance([
      ...scheduled('r-new', 'd-new', 'set-new', '2026-12-02T03:00:00Z'),
      ...scheduled('r-old', 'd-old', 'set-old', '2026-12-01T03:00:00Z'),
    ]);
    const env = new MockActivityEnvironment();
    const rotated = await env.run(() =>
      backupActivities({ imageService: glance as unknown as ImageService }).rotateBackups({ instanceId: INSTANCE, backupType: 'daily', rotation: 1 }),
    );
    assert.deepEqual(rotated, { kept: ['r-new'], deleted: ['r-old'], failed: [] });
    assert.deepEqual(glance.deleted, ['d-old', 'r-old']);
  });
});
