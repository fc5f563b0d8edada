// The Glance side of a restore: is this image one vmsnap may put on this instance? Checked before
// anything else happens, so a refused image changes nothing.
import type { ActivityDeps } from './deps.js';
import { RESTORABLE_FORMATS } from './restore-files.js';
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
}

export function restoreImageActivities({ imageService }: Pick<ActivityDeps, 'imageService'>) {
  return {
    async checkRestoreImage(input: CheckRestoreImageInput): Promise<RestoreImage> {
      const image = await imageService.getImage(input.imageId);
      if (!image) throw new VmsnapError('ImageNotFound', `there is no image ${input.imageId} in Glance (or it is not visible to vmsnap's project)`);
      const refuse = (why: string) => new VmsnapError('InvalidInput', `image ${input.imageId} cannot be restored: ${why}`, { field: 'imageId' });
      if (image.status !== 'active') throw refuse(`it is ${image.status}, not active`);
      if (!image.disk_format || !RESTORABLE_FORMATS.includes(image.disk_format)) {
        throw refuse(`its disk format is ${image.disk_format ?? 'not set'}; vmsnap restores ${RESTORABLE_FORMATS.join(' and ')} images`);
      }
      if (image.container_format && image.container_format !== 'bare') throw refuse(`its container format is ${image.container_format}, not bare`);
      if (image.os_hash_algo !== 'sha512' || !image.os_hash_value || typeof image.size !== 'number') {
        throw refuse(`Glance has no sha512 (os_hash_value) and size for it, so its download could not be verified`);
      }
      if (!input.allowOtherImage && image.instance_uuid !== input.instanceId) {
        const whose = typeof image.instance_uuid === 'string' ? `a snapshot of instance ${image.instance_uuid}` : 'not a snapshot of an instance';
        throw refuse(`it is ${whose}, not of ${input.instanceId}; allow another image explicitly (--allow-other-image) to restore it`);
      }
      return {
        imageId: image.id,
        name: image.name,
        diskFormat: image.disk_format,
        size: image.size,
        sha512: image.os_hash_value,
        virtualSize: typeof image.virtual_size === 'number' ? image.virtual_size : null,
      };
    },
  };
}
