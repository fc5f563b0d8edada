// Upload of the image to Glance, and the end-to-end integrity check: the bytes vmsnap hashed while
// sending must be the bytes Glance stored (size, and sha512: Glance's os_hash_value). The data is a
// copy in the snapshot's temp dir (uploadImage) or an image made as it is sent from a live
// snapshot's point in time (live-export.ts: uploadLiveExport); both go through sendAndVerify.
import { Context } from '@temporalio/activity';
import { stat } from 'node:fs/promises';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import type { Image, UploadResult } from '../drivers/image-service.js';
import { bootId } from '../drivers/files.js';
import { hashFile } from '../drivers/upload-body.js';
import { VmsnapError } from '../shared/errors.js';
import type { DiskFormat, StepProgress } from '../shared/types.js';

/** The image an upload fills, and what is set on it after the data. */
export interface UploadTarget {
  imageId: string;
  diskFormat: DiskFormat;
  virtualSize: number;
  /** Properties known only after the copy (mode, consistency), set after the data with min_disk. */
  properties?: Record<string, string>;
  /** The record was made with its formats (createImageRecord's diskFormat); older runs set them here. */
  formatsSet?: boolean;
  /**
   * The request named the image id (the API's caller was answered with it): an image left stuck
   * saving is waited for through the retries, never replaced by a record the caller does not know.
   */
  keepImageId?: boolean;
  /** A set's disk (target device), named in the progress the step reports. */
  dev?: string;
}

export interface UploadImageInput extends UploadTarget {
  path: string;
  /** The host's boot the copy was made in: a copy from another boot is refused (CopyLost). */
  copyBootId?: string;
}

const GiB = 1024 ** 3;

function verify(image: Image, sent: UploadResult): void {
  const problems: string[] = [];
  if (image.size !== sent.size) problems.push(`size ${image.size} != ${sent.size}`);
  if (image.os_hash_algo === 'sha512' && image.os_hash_value !== sent.sha512) problems.push('sha512 differs');
  if (image.os_hash_algo !== 'sha512') problems.push(`Glance hashed with ${image.os_hash_algo ?? 'nothing'}, not sha512`);
  if (problems.length) {
    throw new VmsnapError('ImageCorrupt', `image ${image.id} in Glance does not match what was sent: ${problems.join(', ')}`, {
      glance: { size: image.size, os_hash_algo: image.os_hash_algo, os_hash_value: image.os_hash_value },
      sent,
    });
  }
}

/** The image record as createImageRecord leaves it: queued, with its formats or without. */
function newRecord(id: string, diskFormat: DiskFormat | null): Image {
  const none = { size: null, checksum: null, os_hash_algo: null, os_hash_value: null };
  const formats = { disk_format: diskFormat, container_format: diskFormat ? 'bare' : null };
  return { id, name: '', status: 'queued', visibility: 'private', protected: false, ...none, ...formats };
}

/** What was sent, and how long sending it and checking it against Glance took (the benchmark reads it from the history). */
export interface UploadedImage extends UploadResult {
  /** From the PUT's start (or the re-hash of an image already active) to the verified record. */
  sendAndVerifyMs: number;
}

/** What an upload sends: `size` bytes, sent (with progress) or hashed again as an upload reads them. */
export interface ImageData {
  size: number;
  send(onProgress: (bytesSent: number) => void, signal: AbortSignal): Promise<UploadResult>;
  hash(): Promise<UploadResult>;
}

/**
 * Sends the data to the image unless an earlier attempt did, sets what is known only now, and
 * checks Glance's record against what was sent. Heartbeats with the upload's progress throughout.
 */
export async function sendAndVerify({ imageService }: Pick<ActivityDeps, 'imageService'>, input: UploadTarget, data: ImageData): Promise<UploadedImage> {
  const bytesTotal = data.size;
  let bytesSent = 0;
  // From the first Glance call to the last: a Glance slow to answer (a loaded Keystone behind
  // it) must not look like a dead worker.
  const stop = keepHeartbeating((): StepProgress => ({
    phase: 'uploading',
    ...(input.dev ? { dev: input.dev } : {}),
    percent: bytesTotal ? (100 * bytesSent) / bytesTotal : 100,
    bytesDone: bytesSent,
    bytesTotal,
    // Every byte is out: what is left is Glance storing them and answering.
    ...(bytesSent >= bytesTotal ? { note: 'waiting for Glance to confirm' } : {}),
  }));
  const progress = (n: number) => {
    const done = n >= bytesTotal && bytesSent < bytesTotal;
    bytesSent = n;
    if (done) stop.beat();
  };
  try {
    // The first attempt follows the record this snapshot has just made (queued): no need to read it
    // first. A retry reads it: an earlier attempt may have sent the data.
    let image =
      Context.current().info.attempt === 1 ? newRecord(input.imageId, input.formatsSet ? input.diskFormat : null) : await imageService.getImage(input.imageId);
    if (!image) throw new VmsnapError('ImageNotFound', `image ${input.imageId} was deleted from Glance during the snapshot`);

    let sent: UploadResult;
    let started = performance.now();
    if (image.status === 'active') {
      // An earlier attempt's PUT went through but its result was lost: verify what is there.
      sent = await data.hash();
    } else if (image.status === 'queued') {
      // Glance takes data only once both formats are set (a record made with them has them).
      if (image.disk_format !== input.diskFormat || image.container_format !== 'bare') {
        await imageService.updateImage(input.imageId, { disk_format: input.diskFormat, container_format: 'bare' });
      }
      started = performance.now();
      sent = await data.send(progress, Context.current().cancellationSignal);
    } else if ((image.status === 'saving' || image.status === 'uploading') && input.keepImageId) {
      throw new VmsnapError(
        'ImageServiceUnavailable',
        `image ${input.imageId} is still ${image.status} in Glance from an earlier upload attempt that was cut off; its id was given to the ` +
          'requester, so the upload waits for Glance to give that attempt up instead of making a new record',
        { imageId: input.imageId, status: image.status },
      );
    } else if (image.status === 'saving' || image.status === 'uploading') {
      // An earlier attempt's PUT was cut off, and Glance keeps the image so until its side of that
      // connection times out (minutes). Waiting would hold the instance that long: the workflow
      // makes a new record instead (ImageStuck stops the retries at once).
      throw new VmsnapError(
        'ImageStuck',
        `image ${input.imageId} is still ${image.status} in Glance from an earlier upload attempt that was cut off: it cannot take data until ` +
          `Glance gives that attempt up`,
        { imageId: input.imageId, status: image.status },
      );
    } else {
      throw new VmsnapError('ImageServiceError', `image ${input.imageId} is ${image.status} in Glance and cannot take data`);
    }

    // What is known only now goes on after the data; Glance answers the PATCH with the whole
    // record, the one the check reads (no GET of its own). A retry sets the same values again.
    const minDisk = Math.ceil(input.virtualSize / GiB);
    image = await imageService.updateImage(input.imageId, { ...input.properties, min_disk: minDisk });
    if (image.status !== 'active') throw new VmsnapError('ImageServiceUnavailable', `image ${input.imageId} is ${image.status} after the upload`);
    verify(image, sent);
    return { ...sent, sendAndVerifyMs: Math.round(performance.now() - started) };
  } finally {
    stop();
  }
}

export function uploadActivities(deps: ActivityDeps) {
  const { imageService } = deps;
  return {
    async uploadImage(input: UploadImageInput): Promise<UploadedImage> {
      // The copy is a temp file, never fsynced: like bare's, it is read back from the page cache
      // and deleted, mostly before the kernel would write it back (fsyncing it cost the large
      // disk's upload 0.8 s here). Only a crash of the host loses it, and leaves it torn.
      if (input.copyBootId && input.copyBootId !== (await bootId())) {
        throw new VmsnapError(
          'CopyLost',
          `the copy ${input.path} was made before this host restarted and may be torn (it was not yet on disk): it is not uploaded`,
        );
      }
      const size = (await stat(input.path)).size;
      return sendAndVerify(deps, input, {
        size,
        send: (progress, signal) => imageService.uploadFile(input.imageId, input.path, progress, signal),
        hash: () => hashFile(input.path),
      });
    },
  };
}
