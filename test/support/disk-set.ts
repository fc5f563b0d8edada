// A snapshot set as vmsnap's snapshot of several disks makes it (shared/disk-set.ts), built by a
// test without it: one Glance image per disk file, the data images hidden (os_hidden) and naming
// their root, the root carrying the manifest. And a second disk for a test guest.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { execa } from 'execa';
import type { Guest } from '../../scripts/lib/guest.js';
import { LIBVIRT_URI } from '../../scripts/lib/guest.js';
import { DISK_SET_PROPERTY, manifestProperties, type DiskSetEntry } from '../../src/shared/disk-set.js';
import { VMSNAP_IMAGE_TAG } from '../../src/shared/names.js';
import { testCloud } from './cloud.js';

export interface SetDisk {
  dev: string;
  /** The image's file and its format. */
  path: string;
  format: 'qcow2' | 'raw';
}

export interface BuiltSet {
  setId: string;
  rootImageId: string;
  /** Image id by device, root included. */
  imageIds: Record<string, string>;
}

/** A raw disk file of `sizeMiB` filled with byte `fill`, made with qemu-img and qemu-io. */
export async function rawDisk(path: string, sizeMiB: number, fill: number): Promise<void> {
  await execa('qemu-img', ['create', '-q', '-f', 'raw', path, `${sizeMiB}M`]);
  await execa('qemu-io', ['-f', 'raw', '-c', `write -P ${fill} 0 ${sizeMiB}M`, path]);
}

/** Attaches a raw file as disk `dev` (virtio) to a defined guest: `live` also to the running domain. */
export async function attachDisk(guest: Pick<Guest, 'name'>, path: string, dev: string, live = false): Promise<void> {
  const how = live ? ['--live', '--config'] : ['--config'];
  await execa('virsh', ['-c', LIBVIRT_URI, 'attach-disk', guest.name, path, dev, '--driver', 'qemu', '--subdriver', 'raw', '--targetbus', 'virtio', ...how]);
}

export async function detachDisk(guest: Pick<Guest, 'name'>, dev: string): Promise<void> {
  await execa('virsh', ['-c', LIBVIRT_URI, 'detach-disk', guest.name, dev, '--live', '--config']);
}

/** A guest's second disk: a raw file of `sizeMiB` filled with `fill`, beside its root disk, attached as vdb before it starts. */
export async function addDataDisk(guest: Guest, sizeMiB: number, fill: number): Promise<string> {
  const path = join(guest.dir, 'data.raw');
  await rawDisk(path, sizeMiB, fill);
  await attachDisk(guest, path, 'vdb');
  return path;
}

async function virtualSize(path: string, format: string): Promise<number> {
  const { stdout } = await execa('qemu-img', ['info', '--output=json', '-U', '-f', format, path]);
  return (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
}

/**
 * Uploads one image per disk (root first) and writes the root's manifest last, as the snapshot
 * does once every image is active. `omit`: devices whose image is made and then deleted again (a
 * set with an image missing). `schedule`: the schedule the snapshot was taken for.
 */
export async function uploadDiskSet(instanceId: string, disks: SetDisk[], opts: { name: string; schedule?: string; requestId?: string }): Promise<BuiltSet> {
  const glance = (await testCloud()).imageService;
  const setId = randomUUID();
  const ids = Object.fromEntries(disks.map((d) => [d.dev, randomUUID()]));
  const rootImageId = ids[disks[0]!.dev]!;
  const entries: DiskSetEntry[] = [];
  for (const [i, disk] of disks.entries()) {
    const role = i === 0 ? 'root' : 'data';
    const properties: Record<string, string> = {
      image_type: 'snapshot',
      instance_uuid: instanceId,
      vmsnap_request_id: opts.requestId ?? `test-set/${setId}`,
      [DISK_SET_PROPERTY.set]: setId,
      [DISK_SET_PROPERTY.role]: role,
      [DISK_SET_PROPERTY.device]: disk.dev,
      ...(role === 'data' ? { [DISK_SET_PROPERTY.rootImage]: rootImageId } : {}),
      ...(opts.schedule ? { vmsnap_schedule: opts.schedule } : {}),
    };
    await glance.createImage({
      id: ids[disk.dev]!,
      name: role === 'root' ? opts.name : `${opts.name}-${disk.dev}`,
      visibility: 'private',
      min_disk: 0,
      min_ram: 0,
      disk_format: disk.format,
      container_format: 'bare',
      properties,
      tags: [VMSNAP_IMAGE_TAG],
      ...(role === 'data' ? { hidden: true } : {}),
    });
    await glance.uploadFile(ids[disk.dev]!, disk.path);
    entries.push({
      device_name: disk.dev,
      disk_bus: 'virtio',
      boot_index: role === 'root' ? 0 : null,
      image_id: ids[disk.dev]!,
      disk_format: disk.format,
      virtual_size: await virtualSize(disk.path, disk.format),
    });
  }
  const manifest = manifestProperties({ set_id: setId, disks: entries });
  await glance.updateImage(rootImageId, { [DISK_SET_PROPERTY.manifest]: manifest[DISK_SET_PROPERTY.manifest]! });
  return { setId, rootImageId, imageIds: ids };
}

/** Every image of a set, hidden ones too. */
export async function setImageIds(setId: string): Promise<string[]> {
  const glance = (await testCloud()).imageService;
  const ids = new Set<string>();
  for (const hidden of ['true', 'false']) {
    for (const image of await glance.listImages({ [DISK_SET_PROPERTY.set]: setId, os_hidden: hidden })) ids.add(image.id);
  }
  return [...ids];
}
