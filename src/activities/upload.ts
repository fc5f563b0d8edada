// Upload of the converted disk to Glance, and the end-to-end integrity check: the bytes vmsnap
// hashed while sending must be the bytes Glance stored (size, md5 checksum, sha512 multihash).
import { Context } from '@temporalio/activity';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import type { Image, UploadResult } from '../drivers/image-service.js';
import { VmsnapError } from '../shared/errors.js';
import type { DiskFormat, StepProgress } from '../shared/types.js';

export interface UploadImageInput {
  imageId: string;
  path: string;
  diskFormat: DiskFormat;
  virtualSize: number;
  /** Properties known only after the copy (mode, consistency), set with the formats. */
  properties?: Record<string, string>;
}

const GiB = 1024 ** 3;

/** sha512 and md5 of a file in one streaming pass. */
export async function hashFile(path: string): Promise<UploadResult> {
  const sha512 = createHash('sha512');
  const md5 = createHash('md5');
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    const bytes = chunk as Buffer;
    sha512.update(bytes);
    md5.update(bytes);
    size += bytes.length;
  }
  return { size, sha512: sha512.digest('hex'), md5: md5.digest('hex') };
}

function verify(image: Image, sent: UploadResult): void {
  const problems: string[] = [];
  if (image.size !== sent.size) problems.push(`size ${image.size} != ${sent.size}`);
  if (image.checksum !== sent.md5) problems.push(`md5 ${image.checksum} != ${sent.md5}`);
  if (image.os_hash_algo === 'sha512' && image.os_hash_value !== sent.sha512) problems.push('sha512 differs');
  if (image.os_hash_algo !== 'sha512') problems.push(`Glance hashed with ${image.os_hash_algo ?? 'nothing'}, not sha512`);
  if (problems.length) {
    throw new VmsnapError('ImageCorrupt', `image ${image.id} in Glance does not match what was sent: ${problems.join(', ')}`, {
      glance: { size: image.size, checksum: image.checksum, os_hash_value: image.os_hash_value },
      sent,
    });
  }
}

export function uploadActivities({ imageService }: ActivityDeps) {
  return {
    async uploadImage(input: UploadImageInput): Promise<UploadResult> {
      let bytesTotal: number | undefined;
      let bytesSent = 0;
      // From the first Glance call to the last, not only while the data goes: a Glance slow to
      // answer (tens of seconds under a fleet's load) must not look like a lost worker, or every
      // retry adds its requests to the queue that made it slow.
      const heartbeat = keepHeartbeating((): StepProgress => {
        if (bytesTotal === undefined)
          return { phase: 'uploading', percent: 0, bytesDone: 0, bytesTotal: 0, note: 'asking Glance for the image' };
        return {
          phase: 'uploading',
          percent: bytesTotal ? (100 * bytesSent) / bytesTotal : 100,
          bytesDone: bytesSent,
          bytesTotal,
          // Every byte is out: what is left is Glance storing them and answering.
          ...(bytesSent >= bytesTotal ? { note: 'waiting for Glance to confirm' } : {}),
        };
      });
      try {
        let image = await imageService.getImage(input.imageId);
        if (!image) throw new VmsnapError('ImageNotFound', `image ${input.imageId} was deleted from Glance during the snapshot`);

        let sent: UploadResult;
        if (image.status === 'active') {
          // An earlier attempt's PUT went through but its result was lost: verify what is there.
          sent = await hashFile(input.path);
        } else if (image.status === 'queued') {
          const queued = image;
          const minDisk = Math.ceil(input.virtualSize / GiB);
          const properties = input.properties ?? {};
          const stale = Object.entries(properties).some(([k, v]) => queued[k] !== v);
          if (stale || queued.disk_format !== input.diskFormat || queued.container_format !== 'bare' || queued.min_disk !== minDisk) {
            // Formats are set before the data, as Nova does.
            await imageService.updateImage(input.imageId, {
              ...properties,
              disk_format: input.diskFormat,
              container_format: 'bare',
              min_disk: minDisk,
            });
          }
          const total = (bytesTotal = (await stat(input.path)).size);
          const progress = (n: number) => {
            const done = n >= total && bytesSent < total;
            bytesSent = n;
            if (done) heartbeat.beat();
          };
          sent = await imageService.uploadFile(input.imageId, input.path, progress, Context.current().cancellationSignal);
        } else if (image.status === 'saving' || image.status === 'uploading') {
          // Glance puts an interrupted PUT back to queued once the old connection dies: try again soon.
          throw new VmsnapError('ImageServiceUnavailable', `image ${input.imageId} is still ${image.status} from an earlier attempt`);
        } else {
          throw new VmsnapError('ImageServiceError', `image ${input.imageId} is ${image.status} in Glance and cannot take data`);
        }

        image = await imageService.getImage(input.imageId);
        if (!image) throw new VmsnapError('ImageNotFound', `image ${input.imageId} was deleted from Glance during the upload`);
        if (image.status !== 'active')
          throw new VmsnapError('ImageServiceUnavailable', `image ${input.imageId} is ${image.status} after the upload`);
        verify(image, sent);
        return sent;
      } finally {
        heartbeat.stop();
      }
    },
  };
}
