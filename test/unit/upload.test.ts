// uploadImage's Glance requests, against a fake image service that behaves as Glance does for
// what the step relies on (no data before both formats, formats fixed once active, PATCH answers
// with the whole record): the first attempt sends PUT then PATCH and reads nothing else; a retry
// reads the record first; a record that does not match what was sent fails ImageCorrupt.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { MockActivityEnvironment } from '@temporalio/testing';
import type { ActivityDeps } from '../../src/activities/deps.js';
import { uploadActivities, type UploadedImage, type UploadImageInput } from '../../src/activities/upload.js';
import { bootId } from '../../src/drivers/files.js';
import { hashFile } from '../../src/drivers/upload-body.js';
import type { Image, ImageService } from '../../src/drivers/image-service.js';
import { VmsnapError } from '../../src/shared/errors.js';

const root = mkdtempSync(join(tmpdir(), 'vmsnap-upload-'));
after(() => rmSync(root, { recursive: true, force: true }));
const file = join(root, 'disk.qcow2');
const data = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
writeFileSync(file, data);
const sha512 = createHash('sha512').update(data).digest('hex');

/** Glance as far as the upload sees it; `stored` lets a test make Glance keep other bytes. */
function fakeGlance(record: Partial<Image>, stored = { size: data.length, sha512 }) {
  const calls: string[] = [];
  let image: Image = {
    id: 'img',
    name: 'snap',
    status: 'queued',
    visibility: 'private',
    protected: false,
    size: null,
    checksum: null,
    os_hash_algo: null,
    os_hash_value: null,
    disk_format: null,
    container_format: null,
    ...record,
  };
  const service: Partial<ImageService> = {
    async getImage() {
      calls.push('GET');
      return { ...image };
    },
    async updateImage(_id, changes) {
      calls.push(`PATCH ${Object.keys(changes).sort().join(',')}`);
      if (image.status !== 'queued' && ('disk_format' in changes || 'container_format' in changes)) throw new Error('formats are fixed once active');
      image = { ...image, ...changes };
      return { ...image };
    },
    async uploadFile(_id, path, onProgress) {
      calls.push('PUT');
      if (!image.disk_format || !image.container_format) throw new Error('Glance takes no data before both formats are set');
      const sent = await hashFile(path);
      onProgress?.(sent.size, sent.size);
      image = { ...image, status: 'active', size: stored.size, os_hash_algo: 'sha512', os_hash_value: stored.sha512 };
      return sent;
    },
  };
  return { calls, service: service as ImageService, image: () => image };
}

const input = (more: Partial<UploadImageInput> = {}): UploadImageInput => ({
  imageId: 'img',
  path: file,
  diskFormat: 'qcow2',
  virtualSize: 3 * 1024 ** 3,
  properties: { vmsnap_mode: 'live', vmsnap_consistency: 'crash-consistent' },
  ...more,
});

async function uploadOnce(service: ImageService, upload: UploadImageInput, attempt = 1): Promise<UploadedImage> {
  const env = new MockActivityEnvironment({ attempt });
  const steps = uploadActivities({ imageService: service } as ActivityDeps);
  return (await env.run(steps.uploadImage, upload)) as UploadedImage;
}

describe('uploadImage', () => {
  it('first attempt on a record made with its formats: PUT, then one PATCH whose answer is checked', async () => {
    const glance = fakeGlance({ disk_format: 'qcow2', container_format: 'bare' });
    const result = await uploadOnce(glance.service, input({ formatsSet: true }));
    assert.deepEqual(glance.calls, ['PUT', 'PATCH min_disk,vmsnap_consistency,vmsnap_mode']);
    assert.equal(result.sha512, sha512);
    assert.equal(result.size, data.length);
    assert.equal(glance.image().min_disk, 3);
    assert.equal(glance.image().vmsnap_mode, 'live');
  });

  it('a record made without formats (a run from before) gets them before the data', async () => {
    const glance = fakeGlance({});
    await uploadOnce(glance.service, input());
    assert.deepEqual(glance.calls, ['PATCH container_format,disk_format', 'PUT', 'PATCH min_disk,vmsnap_consistency,vmsnap_mode']);
  });

  it('a retry reads the record first, and an image already active is re-hashed, not sent again', async () => {
    const glance = fakeGlance({
      status: 'active',
      disk_format: 'qcow2',
      container_format: 'bare',
      size: data.length,
      os_hash_algo: 'sha512',
      os_hash_value: sha512,
    });
    const result = await uploadOnce(glance.service, input({ formatsSet: true }), 2);
    assert.deepEqual(glance.calls, ['GET', 'PATCH min_disk,vmsnap_consistency,vmsnap_mode']);
    assert.equal(result.sha512, sha512);
  });

  it('a copy made in this boot of the host is uploaded; one from an earlier boot is refused before Glance is asked (CopyLost)', async () => {
    const now = fakeGlance({ disk_format: 'qcow2', container_format: 'bare' });
    await uploadOnce(now.service, input({ formatsSet: true, copyBootId: await bootId() }));
    assert.deepEqual(now.calls, ['PUT', 'PATCH min_disk,vmsnap_consistency,vmsnap_mode']);

    const before = fakeGlance({ disk_format: 'qcow2', container_format: 'bare' });
    await assert.rejects(
      uploadOnce(before.service, input({ formatsSet: true, copyBootId: '00000000-0000-4000-8000-000000000000' })),
      (err: unknown) => err instanceof VmsnapError && err.code === 'CopyLost',
    );
    assert.deepEqual(before.calls, []);
  });

  it('a retry that finds the image still saving from a cut-off attempt fails ImageStuck at once, sending nothing', async () => {
    const glance = fakeGlance({ status: 'saving', disk_format: 'qcow2', container_format: 'bare' });
    await assert.rejects(
      uploadOnce(glance.service, input({ formatsSet: true }), 2),
      (err: unknown) => err instanceof VmsnapError && err.code === 'ImageStuck' && !err.retryable,
    );
    assert.deepEqual(glance.calls, ['GET']);
  });

  it('an image id the requester was given (keepImageId) is waited for through the retries, never given up for a new record', async () => {
    const glance = fakeGlance({ status: 'saving', disk_format: 'qcow2', container_format: 'bare' });
    await assert.rejects(
      uploadOnce(glance.service, input({ formatsSet: true, keepImageId: true }), 2),
      (err: unknown) =>
        err instanceof VmsnapError && err.code === 'ImageServiceUnavailable' && err.retryable && /its id was given to the requester/.test(err.message),
    );
    assert.deepEqual(glance.calls, ['GET']);
  });

  it('Glance keeping other bytes than were sent fails ImageCorrupt', async () => {
    const glance = fakeGlance({ disk_format: 'qcow2', container_format: 'bare' }, { size: data.length, sha512: 'f'.repeat(128) });
    await assert.rejects(uploadOnce(glance.service, input({ formatsSet: true })), (err: unknown) => err instanceof VmsnapError && err.code === 'ImageCorrupt');
  });
});
