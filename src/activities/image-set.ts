// The images of a snapshot set in Glance, for those who delete snapshots (retention, backup
// rotation): a set is deleted whole, its data images first and its root last. A delete that fails
// midway leaves the root (the image users see, list and restore), so the next round finds the set
// and deletes the rest; a data image is never left without a root that leads to it.
import type { Image, ImageService } from '../drivers/image-service.js';
import { DISK_SET_PROPERTY, manifestOf } from '../shared/disk-set.js';

/** A data disk's image of a set (hidden in Glance): never counted or deleted on its own, only with its root. */
export function isSetDataImage(image: Image): boolean {
  return typeof image[DISK_SET_PROPERTY.set] === 'string' && image[DISK_SET_PROPERTY.role] === 'data';
}

/**
 * The data images of the set whose root is `root` ([] for a root-disk snapshot): those Glance lists
 * with the set's id, hidden (os_hidden=true: Glance lists hidden images only when asked) or not,
 * and those the manifest names, each only if it carries the set's id.
 */
export async function setDataImages(imageService: Pick<ImageService, 'listImages' | 'getImage'>, root: Image): Promise<Image[]> {
  const setId = root[DISK_SET_PROPERTY.set];
  if (typeof setId !== 'string') return [];
  const found = new Map<string, Image>();
  for (const hidden of ['true', 'false']) {
    for (const image of await imageService.listImages({ [DISK_SET_PROPERTY.set]: setId, os_hidden: hidden })) found.set(image.id, image);
  }
  for (const entry of manifestOf(root)?.disks ?? []) {
    if (found.has(entry.image_id) || entry.image_id === root.id) continue;
    const image = await imageService.getImage(entry.image_id);
    if (image) found.set(image.id, image);
  }
  // Glance may ignore a filter it does not know: the set's id is checked here all the same.
  return [...found.values()].filter((i) => i.id !== root.id && i[DISK_SET_PROPERTY.set] === setId && isSetDataImage(i));
}

/** Deletes a snapshot: a set's data images first, then its root. Returns the data images' ids deleted. */
export async function deleteSnapshotImages(imageService: Pick<ImageService, 'listImages' | 'getImage' | 'deleteImage'>, root: Image): Promise<string[]> {
  const data = await setDataImages(imageService, root);
  for (const image of data) await imageService.deleteImage(image.id);
  await imageService.deleteImage(root.id);
  return data.map((i) => i.id);
}
