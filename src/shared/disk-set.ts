// A snapshot of several disks of an instance: one Glance image per disk, taken at one point in
// time, and the set they make. The root disk's image carries the set's manifest in its
// properties, as Nova's volume-backed snapshots carry `block_device_mapping`; each data disk's
// image is hidden (os_hidden) so nobody boots it by mistake, and names its root image.
import type { DiskFormat } from './types.js';

/** Which disks a snapshot takes: the root disk only (Nova's createImage), every disk, or these target devices. */
export type DiskSelection = 'root' | 'all' | string[];

/** One disk of a snapshot set, in Nova's block_device_mapping words. */
export interface DiskSetEntry {
  /** The domain's target device: vda, vdb, sda ... */
  device_name: string;
  /** virtio, scsi, sata, ide ... as the domain defines it. */
  disk_bus: string;
  /** 0 for the root disk, null for a data disk (Nova's boot_index). */
  boot_index: 0 | null;
  image_id: string;
  disk_format: DiskFormat;
  /** Bytes the guest sees. */
  virtual_size: number;
}

export interface DiskSetManifest {
  /** One id for the whole set, on every image of it. */
  set_id: string;
  /** Root first, then the data disks in the domain's order. */
  disks: DiskSetEntry[];
}

/** Image properties of a set (all vmsnap_*; os_hidden is Glance's own). */
export const DISK_SET_PROPERTY = {
  /** Every image of a set: the set's id. */
  set: 'vmsnap_disk_set',
  /** Every image of a set: root or data. */
  role: 'vmsnap_disk_role',
  /** Every image of a set: the disk's target device. */
  device: 'vmsnap_disk_device',
  /** The root image: JSON of DiskSetManifest.disks, written once every image is active and verified. */
  manifest: 'vmsnap_disks',
  /** A data image: its set's root image. */
  rootImage: 'vmsnap_root_image',
} as const;

/** The manifest a root image's properties hold; undefined for an image that is not a set's root (a root-disk snapshot). */
export function manifestOf(properties: Record<string, unknown>): DiskSetManifest | undefined {
  const set = properties[DISK_SET_PROPERTY.set];
  const raw = properties[DISK_SET_PROPERTY.manifest];
  if (typeof set !== 'string' || typeof raw !== 'string') return undefined;
  let disks: unknown;
  try {
    disks = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (!Array.isArray(disks) || !disks.every(isEntry)) return undefined;
  return { set_id: set, disks };
}

/** The root image's properties that record the set. */
export function manifestProperties(manifest: DiskSetManifest): Record<string, string> {
  return { [DISK_SET_PROPERTY.set]: manifest.set_id, [DISK_SET_PROPERTY.manifest]: JSON.stringify(manifest.disks) };
}

function isEntry(value: unknown): value is DiskSetEntry {
  const e = value as Partial<DiskSetEntry> | null;
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof e.device_name === 'string' &&
    typeof e.disk_bus === 'string' &&
    (e.boot_index === 0 || e.boot_index === null) &&
    typeof e.image_id === 'string' &&
    (e.disk_format === 'qcow2' || e.disk_format === 'raw') &&
    typeof e.virtual_size === 'number'
  );
}
