// The Glance image record of a snapshot: created first (status queued), as Nova does, and
// deleted again when the snapshot fails before the image is active and verified.
import type { ActivityDeps } from './deps.js';
import type { Image } from '../drivers/image-service.js';
import { VmsnapError } from '../shared/errors.js';
import { VMSNAP_IMAGE_TAG } from '../shared/names.js';
import { RESERVED_PROPERTY_KEYS, isNeverInherited } from '../shared/validation.js';

export interface CreateImageRecordInput {
  imageId: string;
  imageName: string;
  instanceId: string;
  baseImageRef: string | null;
  metadata: Record<string, string>;
  userId?: string;
  projectId?: string;
  /** The snapshot workflow's id: marks the image as made by vmsnap, for sweeping and retention. */
  requestId: string;
  /** The schedule that asked for the snapshot, if any. */
  scheduleId?: string;
}

/** Base image properties a snapshot inherits, as Nova copies the image_* system metadata. */
function inheritedProperties(base: Image): Record<string, string> {
  const inherited: Record<string, string> = {};
  for (const [key, value] of Object.entries(base)) {
    if (typeof value !== 'string' || RESERVED_PROPERTY_KEYS.has(key) || isNeverInherited(key)) continue;
    inherited[key] = value;
  }
  return inherited;
}

export function imageRecordActivities({ imageService }: Pick<ActivityDeps, 'imageService'>) {
  return {
    async createImageRecord(input: CreateImageRecordInput): Promise<{ imageId: string; created: boolean }> {
      const base = input.baseImageRef ? await imageService.getImage(input.baseImageRef) : undefined;
      const properties: Record<string, string> = {
        ...(base ? inheritedProperties(base) : {}),
        ...input.metadata,
        image_type: 'snapshot',
        instance_uuid: input.instanceId,
        image_location: 'snapshot',
        image_state: 'available',
        vmsnap_request_id: input.requestId,
        ...(input.scheduleId ? { vmsnap_schedule: input.scheduleId } : {}),
        ...(input.baseImageRef ? { base_image_ref: input.baseImageRef } : {}),
        ...(input.userId ? { user_id: input.userId } : {}),
        ...(input.projectId ? { owner: input.projectId, owner_id: input.projectId } : {}),
      };
      const { image, created } = await imageService.createImage({
        id: input.imageId,
        name: input.imageName,
        visibility: 'private',
        min_disk: base ? Number(base.min_disk ?? 0) : 0,
        min_ram: base ? Number(base.min_ram ?? 0) : 0,
        properties,
        tags: [VMSNAP_IMAGE_TAG],
      });
      // A retried create finds its own image; anything else with this id is not ours to touch.
      if (!created && image.vmsnap_request_id !== input.requestId) {
        throw new VmsnapError('ImageConflict', `image ${input.imageId} exists already and was not made by this snapshot: choose another imageId`);
      }
      return { imageId: image.id, created };
    },

    /** Deletes the snapshot's image: the workflow calls this for an image not active and verified. */
    async deleteImageRecord(imageId: string): Promise<{ deleted: boolean; status?: string }> {
      const image = await imageService.getImage(imageId);
      if (!image) return { deleted: false };
      await imageService.deleteImage(imageId);
      return { deleted: true, status: image.status };
    },
  };
}
