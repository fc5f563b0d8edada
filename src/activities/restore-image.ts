// The Glance side of a restore: is this image one vmsnap may put on this instance? Checked before
// anything else happens, so a refused image changes nothing. A set's root image (its properties
// hold the set's manifest) brings every image of the set: each must be there, active, of this set
// and restorable, or the whole restore is refused.
import type { ActivityDeps } from './deps.js';
import { RESTORABLE_FORMATS } from './restore-files.js';
import type { Image } from '../drivers/image-service.js';
import { DISK_SET_PROPERTY, manifestOf } from '../shared/disk-set.js';
import { VmsnapError } from '../shared/errors.js';

export interface CheckRestoreImageInput {
  imageId: string;
  instanceId: string;
  allowOtherImage: boolean;
}

export interface RestoreImage {
  imageId: string;
  name: string;
  diskFormat: string;
  size: number;
  sha512: string;
  /** Glance's virtual_size, when it computed one. */
  virtualSize: number | null;
  /** The image is a set's root: every disk of the set, root first (absent for a root-disk snapshot). */
  set?: RestoreSet;
}

export interface RestoreSet {
  setId: string;
  disks: RestoreSetDisk[];
}

/** One disk of a set, with its image as Glance has it. */
export interface RestoreSetDisk {
  /** The domain's target device (the manifest's device_name). */
  dev: string;
  role: 'root' | 'data';
  image: Omit<RestoreImage, 'set'>;
}

/** What a restore needs of any image: active, a format vmsnap writes, a sha512 to verify against. */
function restorable(image: Image, refuse: (why: string) => VmsnapError): Omit<RestoreImage, 'set'> {
  if (image.status !== 'active') throw refuse(`it is ${image.status}, not active`);
  if (!image.disk_format || !RESTORABLE_FORMATS.includes(image.disk_format)) {
    throw refuse(`its disk format is ${image.disk_format ?? 'not set'}; vmsnap restores ${RESTORABLE_FORMATS.join(' and ')} images`);
  }
  if (image.container_format && image.container_format !== 'bare') throw refuse(`its container format is ${image.container_format}, not bare`);
  if (image.os_hash_algo !== 'sha512' || !image.os_hash_value || typeof image.size !== 'number') {
    throw refuse(`Glance has no sha512 (os_hash_value) and size for it, so its download could not be verified`);
  }
  return {
    imageId: image.id,
    name: image.name,
    diskFormat: image.disk_format,
    size: image.size,
    sha512: image.os_hash_value,
    virtualSize: typeof image.virtual_size === 'number' ? image.virtual_size : null,
  };
}

export function restoreImageActivities({ imageService }: Pick<ActivityDeps, 'imageService'>) {
  /** Every image of the root's set, checked; refused naming the disk and image that fail. */
  async function setOf(root: Image, rootChecked: Omit<RestoreImage, 'set'>): Promise<RestoreSet | undefined> {
    const setId = root[DISK_SET_PROPERTY.set];
    const role = root[DISK_SET_PROPERTY.role];
    const refuse = (why: string) => new VmsnapError('InvalidInput', `image ${root.id} cannot be restored: ${why}`, { field: 'imageId' });
    if (typeof setId !== 'string') return undefined;
    if (role === 'data') {
      const rootId = root[DISK_SET_PROPERTY.rootImage];
      const dev = String(root[DISK_SET_PROPERTY.device] ?? '?');
      throw refuse(`it is the data disk ${dev} of snapshot set ${setId}; restore the set's root image${typeof rootId === 'string' ? ` ${rootId}` : ''}`);
    }
    const manifest = manifestOf(root);
    if (!manifest) {
      throw refuse(`it is the root of snapshot set ${setId}, but has no readable manifest (${DISK_SET_PROPERTY.manifest}): the set never completed`);
    }
    const first = manifest.disks[0];
    if (!first || first.boot_index !== 0 || first.image_id !== root.id) {
      throw refuse(`the manifest of snapshot set ${setId} does not name this image as its root disk`);
    }
    const disks: RestoreSetDisk[] = [{ dev: first.device_name, role: 'root', image: rootChecked }];
    for (const entry of manifest.disks.slice(1)) {
      const what = `disk ${entry.device_name} (image ${entry.image_id}) of snapshot set ${setId}`;
      const image = await imageService.getImage(entry.image_id);
      if (!image) {
        throw new VmsnapError('ImageNotFound', `${what} is not in Glance (deleted?): the set cannot be restored whole; restore another snapshot`, {
          imageId: entry.image_id,
          disk: entry.device_name,
        });
      }
      const refuseDisk = (why: string) =>
        new VmsnapError('InvalidInput', `image ${root.id} cannot be restored: ${what}: ${why}`, { field: 'imageId', disk: entry.device_name });
      const itsSet = image[DISK_SET_PROPERTY.set];
      if (itsSet !== setId) throw refuseDisk(`the image is not of this set (its ${DISK_SET_PROPERTY.set} is ${String(itsSet)})`);
      disks.push({ dev: entry.device_name, role: 'data', image: restorable(image, refuseDisk) });
    }
    return { setId, disks };
  }

  return {
    async checkRestoreImage(input: CheckRestoreImageInput): Promise<RestoreImage> {
      const image = await imageService.getImage(input.imageId);
      if (!image) throw new VmsnapError('ImageNotFound', `there is no image ${input.imageId} in Glance (or it is not visible to vmsnap's project)`);
      const refuse = (why: string) => new VmsnapError('InvalidInput', `image ${input.imageId} cannot be restored: ${why}`, { field: 'imageId' });
      const checked = restorable(image, refuse);
      if (!input.allowOtherImage && image.instance_uuid !== input.instanceId) {
        const whose = typeof image.instance_uuid === 'string' ? `a snapshot of instance ${image.instance_uuid}` : 'not a snapshot of an instance';
        throw refuse(`it is ${whose}, not of ${input.instanceId}; allow another image explicitly (--allow-other-image) to restore it`);
      }
      const set = await setOf(image, checked);
      return { ...checked, ...(set ? { set } : {}) };
    },
  };
}
