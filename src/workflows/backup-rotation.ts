// Nova's createBackup, the part after the upload (its compute manager's _rotate_backups): the
// oldest backups of the instance and backup type past the rotation are deleted. A step of the
// snapshot workflow, run only for a request with `backup`; it never fails the snapshot (the backup
// is made), and the rotation runs again with the next backup. Deterministic code only.
import { isCancellation, log, type ActivityOptions } from '@temporalio/workflow';
import { messageOf } from './failures.js';
import { onMain } from './steps.js';

export async function rotateBackups(options: ActivityOptions, backup: { instanceId: string; imageId: string; type: string; rotation: number }): Promise<void> {
  const { instanceId, imageId, type, rotation } = backup;
  try {
    const { deleted, failed } = await onMain(options, `rotate backups of type "${type}": keep the ${rotation} newest`).rotateBackups({
      instanceId,
      backupType: type,
      rotation,
    });
    log.info('backups rotated', { instanceId, imageId, backupType: type, rotation, deleted, failed });
  } catch (err) {
    if (isCancellation(err)) throw err;
    log.warn('backups were not rotated: the next backup rotates them', { instanceId, imageId, backupType: type, error: messageOf(err) });
  }
}
