// Test helpers around images: download from Glance, look images up by name, observe pauses.
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { Hypervisor } from '../../src/drivers/hypervisor.js';
import { glanceAuth, testCloud } from './cloud.js';

/** Downloads an image's data to a temp file, hashing it on the way. */
export async function downloadImage(glanceUrl: string, imageId: string): Promise<{ path: string; sha512: string }> {
  const res = await fetch(`${glanceUrl}/v2/images/${imageId}/file`, { headers: await glanceAuth() });
  if (!res.ok || !res.body) throw new Error(`download of image ${imageId} failed: HTTP ${res.status}`);
  const path = join(await mkdtemp(join(tmpdir(), 'vmsnap-download-')), 'image');
  const hash = createHash('sha512');
  const tap = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done(null, chunk);
    },
  });
  await pipeline(Readable.fromWeb(res.body as WebReadableStream), tap, createWriteStream(path));
  return { path, sha512: hash.digest('hex') };
}

export async function findImagesByName(glanceUrl: string, name: string): Promise<{ id: string; status: string }[]> {
  const res = await fetch(`${glanceUrl}/v2/images?name=${encodeURIComponent(name)}`, { headers: await glanceAuth() });
  if (!res.ok) throw new Error(`image list failed: HTTP ${res.status}`);
  return ((await res.json()) as { images: { id: string; status: string }[] }).images;
}

/**
 * Deletes every image of these instances (their snapshots carry instance_uuid): for tests whose
 * worker processes made them, where no harness saw them being created.
 */
export async function deleteImagesOfInstances(instanceIds: string[]): Promise<void> {
  const glance = (await testCloud()).imageService;
  for (const instance of instanceIds) {
    for (const image of await glance.listImages({ instance_uuid: instance })) await glance.deleteImage(image.id).catch(() => undefined);
  }
}

/** The real hypervisor, with a hook that runs right after each successful pause. */
export function observePause(real: Hypervisor, afterPause: (id: string) => Promise<void>): Hypervisor {
  // Everything else goes to the real driver (its prototype chain), whatever methods it grows.
  const observed = Object.create(real) as Hypervisor;
  observed.pause = async (id) => {
    await real.pause(id);
    await afterPause(id);
  };
  return observed;
}
