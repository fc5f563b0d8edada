// Backup rotation, as Nova's compute manager rotates backups (_rotate_backups): list the images of
// type backup with this backup_type of this instance, newest first, and delete those past the
// rotation. A delete that fails is logged and the rest go on, as in Nova.
import { Context } from '@temporalio/activity';
import type { Image } from '../drivers/image-service.js';
import type { ActivityDeps } from './deps.js';
import { deleteSnapshotImages, isSetDataImage } from './image-set.js';

export interface RotateBackupsInput {
  instanceId: string;
  backupType: string;
  rotation: number;
}

/** Newest first, by Glance's created_at; the id breaks a tie, so the order is the same every time. */
function newestFirst(a: Image, b: Image): number {
  return String(b.created_at ?? '').localeCompare(String(a.created_at ?? '')) || b.id.localeCompare(a.id);
}

export function backupActivities({ imageService }: Pick<ActivityDeps, 'imageService'>) {
  return {
    async rotateBackups(input: RotateBackupsInput): Promise<{ kept: string[]; deleted: string[]; failed: string[] }> {
      const filters = { image_type: 'backup', backup_type: input.backupType, instance_uuid: input.instanceId };
      // Glance filters on extra properties; the filter is checked again here all the same, since a
      // filter Glance does not apply (an empty value) must not make other images look like backups.
      const backups = (await imageService.listImages(filters))
        .filter((i) => i.image_type === 'backup' && i.backup_type === input.backupType && i.instance_uuid === input.instanceId && !isSetDataImage(i))
        .sort(newestFirst);
      const excess = backups.slice(input.rotation);
      const deleted: string[] = [];
      const failed: string[] = [];
      for (const image of excess) {
        try {
          // A backup of several disks goes whole: its data images, then the root.
          await deleteSnapshotImages(imageService, image);
          deleted.push(image.id);
        } catch (err) {
          failed.push(image.id);
          Context.current().log.warn('a backup past the rotation could not be deleted; going on with the next', {
            imageId: image.id,
            error: (err as Error).message,
          });
        }
      }
      return { kept: backups.slice(0, input.rotation).map((i) => i.id), deleted, failed };
    },
  };
}
