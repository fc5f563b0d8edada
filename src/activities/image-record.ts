// The Glance image record of a snapshot: created first (status queued), as Nova does, and
// deleted again when the snapshot fails before the image is active and verified.
import type { ActivityDeps } from './deps.js';
import type { Identity } from '../drivers/identity.js';
import type { Image } from '../drivers/image-service.js';
import { DISK_SET_PROPERTY, manifestProperties, type DiskSetManifest } from '../shared/disk-set.js';
import { VmsnapError } from '../shared/errors.js';
import type { DiskFormat } from '../shared/types.js';
import { VMSNAP_IMAGE_TAG } from '../shared/names.js';
import { RESERVED_PROPERTY_KEYS, isNeverInherited } from '../shared/validation.js';

export interface CreateImageRecordInput {
  imageId: string;
  imageName: string;
  /** The image's disk format, set on the record with container format bare (older runs set them at upload). */
  diskFormat?: DiskFormat;
  instanceId: string;
  baseImageRef: string | null;
  metadata: Record<string, string>;
  userId?: string;
  projectId?: string;
  /** The snapshot workflow's id: marks the image as made by vmsnap, for sweeping and retention. */
  requestId: string;
  /** The schedule that asked for the snapshot, if any. */
  scheduleId?: string;
  /** Nova's createBackup: the image is a backup of this type (image_type backup, backup_type). */
  backupType?: string;
  /** One image of a set of disks (shared/disk-set.ts): a data disk's image is hidden and names its root image. */
  diskSet?: { setId: string; role: 'root' | 'data'; dev: string; rootImageId: string };
}

/** The properties that tie an image to its set. */
function setProperties(set: NonNullable<CreateImageRecordInput['diskSet']>): Record<string, string> {
  return {
    [DISK_SET_PROPERTY.set]: set.setId,
    [DISK_SET_PROPERTY.role]: set.role,
    [DISK_SET_PROPERTY.device]: set.dev,
    ...(set.role === 'data' ? { [DISK_SET_PROPERTY.rootImage]: set.rootImageId } : {}),
  };
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

/**
 * Owner and user of a new image, as Nova records them: the token's project and user. A request
 * may name others only when the token may act for them (the admin role); Glance would refuse
 * the owner anyway, after the fact.
 */
async function ownership(identity: Identity, input: CreateImageRecordInput): Promise<{ userId?: string; projectId?: string }> {
  const caller = await identity.caller();
  if (!caller) return { userId: input.userId, projectId: input.projectId };
  const others = [
    input.projectId && input.projectId !== caller.projectId ? `project ${input.projectId}` : undefined,
    input.userId && input.userId !== caller.userId ? `user ${input.userId}` : undefined,
  ].filter(Boolean);
  if (others.length && !caller.roles.includes('admin')) {
    throw new VmsnapError(
      'InvalidInput',
      `the request names ${others.join(' and ')} as the image's owner, but vmsnap acts as user ${caller.userName} on project ${caller.projectName} ` +
        `without the admin role: leave projectId and userId out, or give vmsnap's user the admin role`,
      { field: input.projectId !== caller.projectId ? 'projectId' : 'userId' },
    );
  }
  return { userId: input.userId ?? caller.userId, projectId: input.projectId ?? caller.projectId };
}

/**
 * The instance owner's names, as Nova keeps them in the instance's system metadata at boot and
 * passes them on to its snapshots (owner_project_name, owner_user_name).
 */
async function ownerNames(store: ActivityDeps['store'], instanceId: string): Promise<Record<string, string>> {
  const instance = await store.getInstance(instanceId);
  return {
    ...(instance?.projectName ? { owner_project_name: instance.projectName } : {}),
    ...(instance?.userName ? { owner_user_name: instance.userName } : {}),
  };
}

export function imageRecordActivities({ imageService, identity, store }: Pick<ActivityDeps, 'imageService' | 'identity' | 'store'>) {
  return {
    async createImageRecord(input: CreateImageRecordInput): Promise<{ imageId: string; created: boolean }> {
      const { userId, projectId } = await ownership(identity, input);
      const base = input.baseImageRef ? await imageService.getImage(input.baseImageRef) : undefined;
      const properties: Record<string, string> = {
        ...(base ? inheritedProperties(base) : {}),
        ...(await ownerNames(store, input.instanceId)),
        ...input.metadata,
        image_type: input.backupType === undefined ? 'snapshot' : 'backup',
        ...(input.backupType === undefined ? {} : { backup_type: input.backupType }),
        instance_uuid: input.instanceId,
        image_location: 'snapshot',
        image_state: 'available',
        vmsnap_request_id: input.requestId,
        ...(input.scheduleId ? { vmsnap_schedule: input.scheduleId } : {}),
        ...(input.baseImageRef ? { base_image_ref: input.baseImageRef } : {}),
        ...(userId ? { user_id: userId } : {}),
        ...(projectId ? { owner: projectId, owner_id: projectId } : {}),
        ...(input.diskSet ? setProperties(input.diskSet) : {}),
      };
      const { image, created } = await imageService.createImage({
        id: input.imageId,
        name: input.imageName,
        visibility: 'private',
        min_disk: base ? Number(base.min_disk ?? 0) : 0,
        min_ram: base ? Number(base.min_ram ?? 0) : 0,
        ...(input.diskFormat ? { disk_format: input.diskFormat, container_format: 'bare' } : {}),
        properties,
        tags: [VMSNAP_IMAGE_TAG],
        ...(input.diskSet?.role === 'data' ? { hidden: true } : {}),
      });
      // A retried create finds its own image; anything else with this id is not ours to touch.
      if (!created && image.vmsnap_request_id !== input.requestId) {
        throw new VmsnapError('ImageConflict', `image ${input.imageId} exists already and was not made by this snapshot: choose another imageId`);
      }
      return { imageId: image.id, created };
    },

    /** Writes a set's manifest on its root image, once every image of the set is active and verified. */
    async sealDiskSet(input: { rootImageId: string; manifest: DiskSetManifest }): Promise<void> {
      await imageService.updateImage(input.rootImageId, manifestProperties(input.manifest));
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
