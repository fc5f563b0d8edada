// GlanceImageService against the real Glance of the test stack, with the fault proxy in front of
// it where a failure has to be produced. Every test deletes the images it made.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createReadStream, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { GlanceImageService } from '../../src/drivers/glance.js';
import type { Image, NewImage } from '../../src/drivers/image-service.js';
import { VmsnapError } from '../../src/shared/errors.js';
import type { Identity } from '../../src/drivers/identity.js';
import { closeTestCloud, glanceAuth, testCloud } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';

const MiB = 1024 * 1024;

const dir = mkdtempSync(join(tmpdir(), 'vmsnap-glance-test-'));
// The real Glance behind the real Keystone of the test stack, as the test user.
let GLANCE_URL: string;
let identity: Identity;
let glance: GlanceImageService;
const services: GlanceImageService[] = [];
const made = new Set<string>();
let proxy: FaultProxy;

function service(url: string, opts: { requestTimeoutMs?: number; uploadStallMs?: number } = {}): GlanceImageService {
  const s = new GlanceImageService({ url, identity, ...opts });
  services.push(s);
  return s;
}

function newImage(): NewImage {
  const id = randomUUID();
  made.add(id);
  return {
    id,
    name: `vmsnap-test-${id.slice(0, 8)}`,
    visibility: 'private',
    min_disk: 2,
    min_ram: 512,
    properties: { image_type: 'snapshot', instance_uuid: randomUUID(), vmsnap_test: 'glance.test' },
  };
}

async function hashFile(path: string): Promise<{ sha512: string }> {
  const sha512 = createHash('sha512');
  for await (const chunk of createReadStream(path)) sha512.update(chunk as Buffer);
  return { sha512: sha512.digest('hex') };
}

/** Glance sets an interrupted upload back to queued on its side of the connection; wait for it. */
async function waitForStatus(id: string, status: string, timeoutMs = 15_000): Promise<Image> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const image = await glance.getImage(id);
    assert.ok(image, `image ${id} vanished`);
    if (image.status === status || Date.now() > deadline) {
      assert.equal(image.status, status);
      return image;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function rejection(promise: Promise<unknown>): Promise<VmsnapError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof VmsnapError, `expected a VmsnapError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a rejection');
}

function randomFile(name: string, bytes: number): string {
  const path = join(dir, name);
  writeFileSync(path, randomBytes(bytes));
  return path;
}

describe('GlanceImageService against a real Glance', { timeout: 300_000 }, () => {
  before(async () => {
    const cloud = await testCloud();
    GLANCE_URL = cloud.glanceUrl;
    identity = cloud.identity;
    glance = cloud.imageService;
    proxy = await startFaultProxy(GLANCE_URL);
  });

  afterEach(async () => {
    proxy.setRule(undefined);
    for (const id of made) {
      // Tests may leave an image protected; Glance would refuse to delete it.
      await fetch(`${GLANCE_URL}/v2/images/${id}`, {
        method: 'PATCH',
        headers: { 'content-type': 'application/openstack-images-v2.1-json-patch', ...(await glanceAuth()) },
        body: JSON.stringify([{ op: 'replace', path: '/protected', value: false }]),
      });
      await glance.deleteImage(id);
      assert.equal(await glance.getImage(id), undefined);
    }
    made.clear();
  });

  after(async () => {
    await proxy.close();
    for (const s of services) await s.close();
    await closeTestCloud();
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates a queued image with its properties, and recognises a retried create', async () => {
    const spec = newImage();
    const first = await glance.createImage(spec);
    assert.equal(first.created, true);
    assert.equal(first.image.id, spec.id);
    assert.equal(first.image.name, spec.name);
    assert.equal(first.image.status, 'queued');
    assert.equal(first.image.visibility, 'private');
    assert.equal(first.image.min_disk, 2);
    assert.equal(first.image.min_ram, 512);
    for (const [k, v] of Object.entries(spec.properties)) assert.equal(first.image[k], v);

    const again = await glance.createImage(spec);
    assert.equal(again.created, false);
    assert.equal(again.image.id, spec.id);
    assert.equal(again.image.instance_uuid, spec.properties.instance_uuid);
  });

  it('refuses the id of a deleted image with ImageConflict (Glance never reuses ids)', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    await glance.deleteImage(spec.id);
    const err = await rejection(glance.createImage(spec));
    assert.equal(err.code, 'ImageConflict');
    assert.equal(err.retryable, false);
    assert.match(err.message, /deleted/);
  });

  it('refuses properties that would override the image fields', async () => {
    const spec = { ...newImage(), properties: { id: 'x' } };
    const err = await rejection(glance.createImage(spec));
    assert.equal(err.code, 'InvalidInput');
  });

  it('updates formats and properties: add sets and overwrites, null removes, a missing remove is ignored', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    let image = await glance.updateImage(spec.id, { disk_format: 'qcow2', container_format: 'bare', image_state: 'creating' });
    assert.equal(image.disk_format, 'qcow2');
    assert.equal(image.container_format, 'bare');
    assert.equal(image.image_state, 'creating');

    image = await glance.updateImage(spec.id, {
      disk_format: 'raw',
      image_state: 'available',
      image_type: null,
      never_set: null,
      min_disk: 5,
    });
    assert.equal(image.disk_format, 'raw');
    assert.equal(image.image_state, 'available');
    assert.equal(image.min_disk, 5);
    assert.equal('image_type' in image, false);

    const fetched = await glance.getImage(spec.id);
    assert.equal(fetched?.image_state, 'available');
    assert.equal(fetched && 'image_type' in fetched, false);

    const err = await rejection(glance.updateImage(randomUUID(), { disk_format: 'raw' }));
    assert.equal(err.code, 'ImageNotFound');
    assert.equal(err.details.status, 404);
  });

  it('uploads a 20 MiB file: hashes of the bytes sent equal node:crypto and Glance, image active', async (t) => {
    const spec = newImage();
    await glance.createImage(spec);
    await glance.updateImage(spec.id, { disk_format: 'raw', container_format: 'bare' });
    const path = randomFile('data-20m.bin', 20 * MiB);
    const progress: number[] = [];

    const started = process.hrtime.bigint();
    const result = await glance.uploadFile(spec.id, path, (n) => progress.push(n));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;

    const expected = await hashFile(path);
    assert.equal(result.size, 20 * MiB);
    assert.equal(result.sha512, expected.sha512);
    assert.match(result.sha512, /^[0-9a-f]{128}$/);

    const image = await glance.getImage(spec.id);
    assert.ok(image);
    assert.equal(image.status, 'active');
    assert.equal(image.size, result.size);
    assert.equal(image.os_hash_algo, 'sha512');
    assert.equal(image.os_hash_value, result.sha512);

    assert.equal(progress.at(-1), 20 * MiB);
    for (let i = 1; i < progress.length; i++) assert.ok(progress[i]! >= progress[i - 1]!);

    // An active image takes no second upload.
    const err = await rejection(glance.uploadFile(spec.id, path));
    assert.equal(err.code, 'ImageConflict');
    t.diagnostic(`upload 20 MiB: ${(20 / seconds).toFixed(0)} MiB/s`);
  });

  it('getImage of an unknown id is undefined; deleteImage twice is fine', async () => {
    assert.equal(await glance.getImage(randomUUID()), undefined);
    const spec = newImage();
    await glance.createImage(spec);
    await glance.deleteImage(spec.id);
    await glance.deleteImage(spec.id);
    assert.equal(await glance.getImage(spec.id), undefined);
  });

  it('says so when Glance refuses to delete a protected image', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    const res = await fetch(`${GLANCE_URL}/v2/images/${spec.id}`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/openstack-images-v2.1-json-patch', ...(await glanceAuth()) },
      body: JSON.stringify([{ op: 'replace', path: '/protected', value: true }]),
    });
    assert.equal(res.status, 200);
    const err = await rejection(glance.deleteImage(spec.id));
    assert.equal(err.code, 'ImageServiceError');
    assert.equal(err.retryable, false);
    assert.equal(err.details.status, 403);
    assert.match(err.message, /protected/);
  });

  it('a PUT answered 503 is ImageServiceUnavailable; the image stays queued and a second upload succeeds', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    await glance.updateImage(spec.id, { disk_format: 'raw', container_format: 'bare' });
    const path = randomFile('data-503.bin', 4 * MiB);
    proxy.setRule({ method: 'PUT', path: /\/file$/, kind: 'status', status: 503 });

    const err = await rejection(service(proxy.url).uploadFile(spec.id, path));
    assert.equal(err.code, 'ImageServiceUnavailable');
    assert.equal(err.retryable, true);
    assert.equal(err.details.status, 503);
    assert.match(err.message, /PUT \/v2\/images\/[0-9a-f-]+\/file answered 503/);
    assert.ok(proxy.requests.some((r) => r.method === 'PUT' && r.status === 503));

    assert.equal((await glance.getImage(spec.id))?.status, 'queued');
    const result = await glance.uploadFile(spec.id, path);
    const image = await glance.getImage(spec.id);
    assert.equal(image?.status, 'active');
    assert.equal(image?.os_hash_value, result.sha512);
  });

  it('an upload cut off halfway is retryable, and Glance takes the image back to queued', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    await glance.updateImage(spec.id, { disk_format: 'raw', container_format: 'bare' });
    const path = randomFile('data-cut.bin', 8 * MiB);
    proxy.setRule({ method: 'PUT', path: /\/file$/, kind: 'reset', afterBytes: 3 * MiB, times: 1 });

    const err = await rejection(service(proxy.url).uploadFile(spec.id, path));
    assert.equal(err.code, 'ImageServiceUnavailable');
    assert.equal(err.retryable, true);

    await waitForStatus(spec.id, 'queued');
    // The rule applied once: the retry goes through the proxy untouched. Glance may still be
    // busy with the cut-off request (409 "saving to saving", retryable): retry as the activity does.
    let result;
    for (let attempt = 1; !result; attempt++) {
      try {
        result = await service(proxy.url).uploadFile(spec.id, path);
      } catch (e) {
        if (!(e instanceof VmsnapError && e.retryable) || attempt === 10) throw e;
        await sleep(500);
      }
    }
    assert.equal((await waitForStatus(spec.id, 'active')).os_hash_value, result.sha512);
  });

  it('413 is ImageServiceError, not retryable, and says the image is too large', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    const path = randomFile('data-413.bin', 2 * MiB);
    proxy.setRule({ method: 'PUT', path: /\/file$/, kind: 'status', status: 413 });
    const err = await rejection(service(proxy.url).uploadFile(spec.id, path));
    assert.equal(err.code, 'ImageServiceError');
    assert.equal(err.retryable, false);
    assert.equal(err.details.status, 413);
    assert.match(err.message, /size limit|quota/);
  });

  it('other 5xx and 4xx answers map to their codes', async () => {
    const through = service(proxy.url);
    proxy.setRule({ method: 'GET', path: /^\/v2\/images\//, kind: 'status', status: 500 });
    let err = await rejection(through.getImage(randomUUID()));
    assert.equal(err.code, 'ImageServiceUnavailable');
    assert.equal(err.retryable, true);
    proxy.setRule({ method: 'GET', path: /^\/v2\/images\//, kind: 'status', status: 400 });
    err = await rejection(through.getImage(randomUUID()));
    assert.equal(err.code, 'ImageServiceError');
    assert.equal(err.retryable, false);
    proxy.setRule({ method: 'PATCH', path: /^\/v2\/images\//, kind: 'status', status: 409 });
    err = await rejection(through.updateImage(randomUUID(), { a: 'b' }));
    assert.equal(err.code, 'ImageConflict');
    assert.equal(err.retryable, false);
  });

  it('Glance unreachable is ImageServiceUnavailable, retryable, and names the URL', async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const down = service(url);
    const err = await rejection(down.getImage(randomUUID()));
    assert.equal(err.code, 'ImageServiceUnavailable');
    assert.equal(err.retryable, true);
    assert.match(err.message, /ECONNREFUSED/);
    assert.ok(err.message.includes(url));

    const path = randomFile('data-down.bin', MiB);
    const upErr = await rejection(down.uploadFile(randomUUID(), path));
    assert.equal(upErr.code, 'ImageServiceUnavailable');
    const delErr = await rejection(down.deleteImage(randomUUID()));
    assert.equal(delErr.code, 'ImageServiceUnavailable');
  });

  it('a connection reset and a Glance that does not answer in time are ImageServiceUnavailable', async () => {
    proxy.setRule({ path: /^\/v2\/images\//, kind: 'reset' });
    let err = await rejection(service(proxy.url).getImage(randomUUID()));
    assert.equal(err.code, 'ImageServiceUnavailable');
    assert.equal(err.retryable, true);

    proxy.setRule({ path: /^\/v2\/images\//, kind: 'delay', delayMs: 2_000 });
    err = await rejection(service(proxy.url, { requestTimeoutMs: 300 }).getImage(randomUUID()));
    assert.equal(err.code, 'ImageServiceUnavailable');
    assert.match(err.message, /no answer within 300 ms/);
  });

  it('an upload Glance stops reading is cut off after requestTimeoutMs, retryable', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    const path = randomFile('data-stall.bin', 64 * MiB);
    // Held by the proxy unread: the socket fills up and the upload stalls.
    proxy.requests.length = 0;
    proxy.setRule({ method: 'PUT', path: /\/file$/, kind: 'delay', delayMs: 60_000 });
    const err = await rejection(service(proxy.url, { requestTimeoutMs: 500 }).uploadFile(spec.id, path));
    // Cut off while the proxy still held it: not a byte of the body had been read.
    const held = proxy.requests.find((r) => r.method === 'PUT');
    assert.equal(held?.bytesIn, 0, 'the upload ended while the proxy still held it');
    proxy.setRule(undefined);
    assert.equal(err.code, 'ImageServiceUnavailable');
    assert.equal(err.retryable, true);
    assert.match(err.message, /no progress for 500 ms/, 'the cut-off names the timeout that fired');
    assert.equal((await glance.getImage(spec.id))?.status, 'queued');
  });

  it('an upload Glance takes in full but never answers is cut off after uploadStallMs, having said all bytes were sent', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    const path = randomFile('data-silent.bin', 8 * MiB);
    proxy.requests.length = 0;
    proxy.setRule({ method: 'PUT', path: /\/file$/, kind: 'silent' });
    const reports: [number, number][] = [];
    // requestTimeoutMs stays at its minute: the stall setting alone must cut the upload.
    const err = await rejection(service(proxy.url, { uploadStallMs: 1_000 }).uploadFile(spec.id, path, (n, total) => reports.push([n, total])));
    proxy.setRule(undefined);
    assert.equal(err.code, 'ImageServiceUnavailable');
    assert.equal(err.retryable, true);
    // The stall setting, not the minute's request timeout, cut it: the message names it.
    assert.match(err.message, /no progress for 1000 ms \(all 8388608 bytes sent, no answer; VMSNAP_GLANCE_STALL_MS\)/);
    // The proxy had every byte and never answered; the client closed the connection.
    const silent = await proxy.until('the silent PUT closed by the client', (r) => r.method === 'PUT' && r.endedAt !== undefined, 30_000);
    assert.deepEqual([silent.bytesIn, silent.status, silent.complete], [8 * MiB, 0, false]);
    // The last byte is reported as soon as it is out, so the heartbeat can say what is awaited.
    assert.deepEqual(reports.at(-1), [8 * MiB, 8 * MiB]);
    assert.equal((await glance.getImage(spec.id))?.status, 'queued');
  });

  it('a snapshot file that cannot be read is InvalidInput, and nothing is sent', async () => {
    const before = proxy.requests.length;
    const err = await rejection(service(proxy.url).uploadFile(randomUUID(), join(dir, 'no-such-file')));
    assert.equal(err.code, 'InvalidInput');
    assert.equal(err.retryable, false);
    assert.equal(proxy.requests.length, before);
  });

  it('never puts the token in an error message or its details', async () => {
    const withToken = service(proxy.url);
    const spec = newImage();
    const created = await withToken.createImage(spec);
    assert.equal(created.created, true);
    const token = proxy.requests.at(-1)?.headers['x-auth-token'];
    assert.ok(typeof token === 'string' && token.length > 20, 'the Keystone token was sent as X-Auth-Token');

    const path = randomFile('data-token.bin', MiB);
    const errors: VmsnapError[] = [];
    for (const status of [503, 413, 401, 403]) {
      // Glance behind a proxy that echoes the token back must not leak it either.
      proxy.setRule({ kind: 'status', status, path: /./, body: `rejected token ${token}` });
      errors.push(await rejection(withToken.uploadFile(spec.id, path)));
      errors.push(await rejection(withToken.getImage(spec.id)));
    }
    proxy.setRule({ kind: 'reset', path: /./ });
    errors.push(await rejection(withToken.updateImage(spec.id, { a: 'b' })));
    proxy.setRule(undefined);
    errors.push(await rejection(withToken.updateImage(randomUUID(), { a: 'b' })));
    errors.push(await rejection(service(`http://127.0.0.1:${await closedPort()}`).getImage(spec.id)));

    const tokens = new Set(proxy.requests.map((r) => r.headers['x-auth-token']).filter((t): t is string => typeof t === 'string'));
    for (const err of errors) {
      const all = `${err.message} ${err.stack ?? ''} ${JSON.stringify(err.details)}`;
      for (const t of tokens) {
        assert.equal(all.includes(t), false, `token leaked: ${err.message}`);
        assert.equal(all.includes(t.slice(0, 16)), false);
      }
    }
  });

  it('a token Glance refuses (401) is replaced and the request sent once more, uploads included', async () => {
    const through = service(proxy.url);
    const spec = newImage();
    await through.createImage(spec);
    await through.updateImage(spec.id, { disk_format: 'raw', container_format: 'bare' });
    proxy.requests.length = 0;
    // Glance refuses the first token of each request kind once, as it does a revoked token.
    proxy.setRules([
      { kind: 'status', status: 401, path: /\/v2\/images\/[^/]+$/, method: 'GET', times: 1, body: 'Authentication required' },
      { kind: 'status', status: 401, path: /\/file$/, method: 'PUT', times: 1, body: 'Authentication required' },
    ]);
    const image = await through.getImage(spec.id);
    assert.equal(image?.id, spec.id);
    const path = randomFile('data-401.bin', 3 * MiB);
    const sent = await through.uploadFile(spec.id, path);
    const expected = await hashFile(path);
    assert.equal(sent.sha512, expected.sha512, 'the second sending was hashed from its start');
    assert.equal(sent.size, 3 * MiB);
    const stored = await waitForStatus(spec.id, 'active');
    assert.equal(stored.os_hash_value, expected.sha512);

    const statuses = proxy.requests.map((r) => `${r.method} ${r.status}`);
    assert.deepEqual(statuses, ['GET 401', 'GET 200', 'PUT 401', 'PUT 204'], statuses.join(', '));
    const tokens = proxy.requests.map((r) => r.headers['x-auth-token']);
    assert.notEqual(tokens[0], tokens[1], 'a refused token is not sent again');
    assert.notEqual(tokens[2], tokens[3], 'a refused token is not sent again');
  });

  it('refused twice, or forbidden: a clear error that names the user and the project', async () => {
    const through = service(proxy.url);
    const caller = await identity.caller();
    assert.ok(caller, 'the test stack authenticates through Keystone');
    proxy.setRule({ kind: 'status', status: 401, path: /./, body: 'Authentication required' });
    let err = await rejection(through.getImage(randomUUID()));
    assert.equal(err.code, 'ImageServiceError');
    assert.match(err.message, /Glance did not accept a token just issued to user vmsnap on project vmsnap/);
    proxy.setRule({ kind: 'status', status: 403, path: /./, method: 'POST', body: 'Forbidden' });
    err = await rejection(through.createImage(newImage()));
    assert.equal(err.code, 'ImageServiceError');
    assert.match(
      err.message,
      new RegExp(
        `user ${caller.userName} \\(${caller.userId}\\) lacks a role on project ${caller.projectName} \\(${caller.projectId}\\) that lets it create images`,
      ),
    );
  });

  it('an aborted upload rejects promptly with the abort reason, and Glance takes the image back to queued', async () => {
    const spec = newImage();
    await glance.createImage(spec);
    await glance.updateImage(spec.id, { disk_format: 'raw', container_format: 'bare' });
    const path = join(dir, 'sparse-abort.img');
    writeFileSync(path, '');
    truncateSync(path, 2048 * MiB);
    // 2 GiB: far more than can be sent before the abort, which comes once 32 MiB are on their way
    // (the PUT has reached the proxy by then).
    const controller = new AbortController();
    proxy.requests.length = 0;
    const upload = service(proxy.url).uploadFile(
      spec.id,
      path,
      (n) => {
        if (n >= 32 * MiB && !controller.signal.aborted) controller.abort(new Error('cancelled by test'));
      },
      controller.signal,
    );
    await assert.rejects(upload, /cancelled by test/);
    // The abort stopped the upload: the PUT ended with most of the 2 GiB never sent.
    const put = await proxy.until('the PUT ended', (r) => r.method === 'PUT' && r.endedAt !== undefined, 30_000);
    assert.ok(put.bytesIn < 1024 * MiB && !put.complete, `the PUT sent ${put.bytesIn} bytes of 2 GiB and ended unanswered`);
    await waitForStatus(spec.id, 'queued');
  });

  it('streams: a 200 MiB sparse file uploads with RSS growth well under 100 MiB', async (t) => {
    const spec = newImage();
    await glance.createImage(spec);
    await glance.updateImage(spec.id, { disk_format: 'raw', container_format: 'bare' });
    const path = join(dir, 'sparse-200m.img');
    writeFileSync(path, '');
    truncateSync(path, 200 * MiB);

    const baseline = process.memoryUsage.rss();
    let peak = baseline;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage.rss());
    }, 10);
    const started = process.hrtime.bigint();
    let result;
    try {
      result = await glance.uploadFile(spec.id, path, () => {
        peak = Math.max(peak, process.memoryUsage.rss());
      });
    } finally {
      clearInterval(sampler);
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    peak = Math.max(peak, process.memoryUsage.rss());
    const growthMiB = (peak - baseline) / MiB;
    t.diagnostic(
      `upload 200 MiB sparse: ${(200 / seconds).toFixed(0)} MiB/s, RSS growth ${growthMiB.toFixed(1)} MiB (baseline ${(baseline / MiB).toFixed(0)} MiB)`,
    );

    assert.equal(result.size, 200 * MiB);
    const image = await glance.getImage(spec.id);
    assert.equal(image?.status, 'active');
    assert.equal(image?.os_hash_value, result.sha512);
    assert.ok(growthMiB < 100, `RSS grew by ${growthMiB.toFixed(1)} MiB`);
  });
});
