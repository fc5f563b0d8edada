// OpenStack Glance v2 as vmsnap's image service, over undici.
// Every failure becomes a VmsnapError whose code says whether a retry can help and whose message
// says what to check. Requests are authenticated by the identity (Keystone) and sent once more
// with a new token when Glance answers 401 and the body can be sent again. The token is only ever
// put in a request header: messages and details are built from method, path and status, and
// scrubbed of the token as a second line of defence.
import { createHash, type Hash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm, stat, type FileHandle } from 'node:fs/promises';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'undici';
import { StallWatchdog } from './stall-watchdog.js';
import { VmsnapError } from '../shared/errors.js';
import { errorCode, readCa, tlsError } from './http-errors.js';
import { NoAuth, type Identity } from './identity.js';
import { hashing, readChunks } from './upload-body.js';
import type { DownloadOptions, DownloadResult, Image, ImageService, NewImage, UploadResult, UploadStream } from './image-service.js';

export interface GlanceOptions {
  /** Glance endpoint, e.g. http://glance:9292 (a path prefix is kept, a trailing /v2 dropped). */
  url: string;
  /** Who the requests act for (Keystone); none for a standalone Glance. */
  identity?: Identity;
  /** A CA bundle (PEM) that signs Glance's certificate, when it is not the system's. */
  cacert?: string;
  /**
   * How long Glance may stay silent: to connect, to answer after a request (or a stalled upload
   * chunk) was sent, and between chunks of an answer. Not a limit on a whole upload.
   */
  requestTimeoutMs?: number;
  /**
   * How long an upload may make no progress (no byte taken, or no answer that long after the
   * last byte) before it is cut off and retried (VMSNAP_GLANCE_STALL_MS); default requestTimeoutMs.
   */
  uploadStallMs?: number;
}

const PATCH_CONTENT_TYPE = 'application/openstack-images-v2.1-json-patch';
const PROGRESS_INTERVAL_MS = 500;

// Fields createImage sets itself; a property of the same name would silently replace them.
const CREATE_FIELDS = new Set(['id', 'name', 'visibility', 'min_disk', 'min_ram']);

// Transport failures where the same request can succeed later (Glance restarting, network blip).
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ENOTFOUND',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);
const TIMEOUT_CODES = new Set(['ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

const ACTIONS: Record<string, string> = {
  POST: 'create images',
  PUT: 'upload image data',
  PATCH: 'update images',
  DELETE: 'delete images',
  GET: 'read images',
};

/** What a PUT sends: `size` bytes, as chunks that are hashed into `hash` and counted by `onChunk` on their way. */
interface Body {
  size: number;
  /** What the data is, for messages: a file's path, a stream's description. */
  what: string;
  chunks(hash: Hash, onChunk: (chunk: Buffer) => void): AsyncIterable<Buffer>;
}

interface Reply {
  status: number;
  text: string;
}

export class GlanceImageService implements ImageService {
  private readonly pool: Pool;
  private readonly prefix: string;
  /** The endpoint as shown in messages: no credentials, no query. */
  private readonly shownUrl: string;
  private readonly identity: Identity;
  private readonly cacert: string | undefined;
  /** Tokens sent lately: scrubbed from anything Glance echoes back. */
  private readonly sentTokens = new Set<string>();
  private readonly timeoutMs: number;
  private readonly stallMs: number;

  constructor(opts: GlanceOptions) {
    const url = new URL(opts.url);
    this.prefix = url.pathname.replace(/\/+$/, '').replace(/\/v2$/, '');
    this.shownUrl = `${url.origin}${this.prefix}`;
    this.identity = opts.identity ?? new NoAuth();
    this.cacert = opts.cacert;
    this.timeoutMs = opts.requestTimeoutMs ?? 60_000;
    this.stallMs = opts.uploadStallMs ?? this.timeoutMs;
    const ca = readCa(opts.cacert);
    this.pool = new Pool(url.origin, {
      connections: 8,
      connect: { timeout: this.timeoutMs, ...(ca ? { ca } : {}) },
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
    });
  }

  /** Closes the connections; the service cannot be used afterwards. */
  async close(): Promise<void> {
    await this.pool.close();
  }

  async createImage(image: NewImage): Promise<{ image: Image; created: boolean }> {
    const clash = Object.keys(image.properties).filter((k) => CREATE_FIELDS.has(k));
    if (clash.length > 0) {
      throw new VmsnapError('InvalidInput', `createImage: properties may not set ${clash.join(', ')}: those are fields of the image itself`, {
        properties: clash,
      });
    }
    const path = '/v2/images';
    const body = {
      ...image.properties,
      id: image.id,
      name: image.name,
      visibility: image.visibility,
      min_disk: image.min_disk,
      min_ram: image.min_ram,
      ...(image.disk_format ? { disk_format: image.disk_format } : {}),
      ...(image.container_format ? { container_format: image.container_format } : {}),
      ...(image.tags ? { tags: image.tags } : {}),
      ...(image.hidden ? { os_hidden: true } : {}),
    };
    const reply = await this.send('POST', path, { 'content-type': 'application/json' }, JSON.stringify(body));
    if (reply.status >= 200 && reply.status < 300) return { image: this.parseImage('POST', path, reply), created: true };
    if (reply.status !== 409) throw this.httpError('POST', path, reply);

    // 409 on create: an image with this id is known. A retried create finds its own image here.
    const existing = await this.getImage(image.id);
    if (existing) return { image: existing, created: false };
    // Glance keeps the rows of deleted images and never hands their ids out again.
    throw new VmsnapError(
      'ImageConflict',
      `Glance POST ${path} answered 409 for image id ${image.id}, but there is no such image: the id belonged to an image that was deleted, and ` +
        `Glance never reuses an image id. Create the snapshot under a new id.`,
      { method: 'POST', path, status: 409, url: this.shownUrl, glanceMessage: this.glanceMessage(reply.text) },
    );
  }

  async getImage(id: string): Promise<Image | undefined> {
    const path = this.imagePath(id);
    const reply = await this.send('GET', path);
    if (reply.status === 404) return undefined;
    if (reply.status !== 200) throw this.httpError('GET', path, reply);
    return this.parseImage('GET', path, reply);
  }

  async listImagesByTag(tag: string): Promise<Image[]> {
    return this.listImages({ tag });
  }

  async listImages(filters: Record<string, string>): Promise<Image[]> {
    const query = new URLSearchParams({ ...filters, limit: '200' });
    const images: Image[] = [];
    // Glance pages with a `next` link (marker based); follow it until there is none.
    let path: string | undefined = `/v2/images?${query.toString()}`;
    while (path) {
      const reply = await this.send('GET', path);
      if (reply.status !== 200) throw this.httpError('GET', path, reply);
      const page = JSON.parse(reply.text) as { images: Image[]; next?: string };
      images.push(...page.images);
      path = page.next;
    }
    return images;
  }

  async updateImage(id: string, changes: Record<string, string | number | null>): Promise<Image> {
    const path = this.imagePath(id);
    const keys = Object.keys(changes);
    // Glance answers 409 to a remove of a property the image does not have; look first so such
    // removes can be left out (a field that is present but null is "not set" as well).
    let current: Image | undefined;
    if (keys.length === 0 || keys.some((k) => changes[k] === null)) {
      current = await this.getImage(id);
      if (!current) throw this.httpError('GET', path, { status: 404, text: '' });
    }
    const ops: { op: 'add' | 'remove'; path: string; value?: string | number }[] = [];
    for (const key of keys) {
      const value = changes[key];
      const pointer = `/${key.replace(/~/g, '~0').replace(/\//g, '~1')}`;
      if (value === null || value === undefined) {
        if (current && current[key] !== undefined && current[key] !== null) ops.push({ op: 'remove', path: pointer });
      } else {
        // Glance's "add" also overwrites an existing property or core field (checked on Zed), so
        // one op serves both, without knowing whether the key is set already.
        ops.push({ op: 'add', path: pointer, value });
      }
    }
    if (ops.length === 0 && current) return current;

    const reply = await this.send('PATCH', path, { 'content-type': PATCH_CONTENT_TYPE }, JSON.stringify(ops));
    if (reply.status !== 200) throw this.httpError('PATCH', path, reply);
    return this.parseImage('PATCH', path, reply);
  }

  async uploadFile(id: string, path: string, onProgress?: (bytesSent: number, bytesTotal: number) => void, signal?: AbortSignal): Promise<UploadResult> {
    signal?.throwIfAborted();
    let size: number;
    try {
      const st = await stat(path);
      if (!st.isFile()) throw Object.assign(new Error('not a regular file'), { code: 'EINVAL' });
      size = st.size;
    } catch (err) {
      throw this.localFileError(path, err);
    }
    // A read error must stay distinguishable from a network one: undici reports both alike.
    let readError: unknown;
    const files = new Set<FileHandle>();
    const body: Body = {
      size,
      what: path,
      chunks: (hash, onChunk) => readChunks(path, size, hash, files, (err) => (readError = err), onChunk),
    };
    try {
      return await this.sendData(id, body, onProgress, signal);
    } catch (err) {
      if (readError) throw this.localFileError(path, readError);
      throw err;
    } finally {
      await Promise.all([...files].map((f) => f.close().catch(() => undefined)));
    }
  }

  async uploadStream(
    id: string,
    data: UploadStream,
    onProgress?: (bytesSent: number, bytesTotal: number) => void,
    signal?: AbortSignal,
  ): Promise<UploadResult> {
    // An error of the stream itself (its source failed) is the stream's, not a network one.
    let streamError: unknown;
    const body: Body = {
      size: data.size,
      what: data.description,
      chunks: (hash, onChunk) => hashing(data.chunks(), hash, onChunk, (err) => (streamError = err)),
    };
    try {
      return await this.sendData(id, body, onProgress, signal);
    } catch (err) {
      if (streamError !== undefined && !signal?.aborted) throw streamError;
      throw err;
    }
  }

  /**
   * PUT of the image data. One pass over the bytes: each chunk is hashed (sha512, Glance's
   * os_hash_value) and counted on its way to the socket, so the result describes exactly what
   * Glance was sent. A second sending (after a 401) starts over.
   */
  private async sendData(id: string, body: Body, onProgress?: (bytesSent: number, bytesTotal: number) => void, signal?: AbortSignal): Promise<UploadResult> {
    const urlPath = `${this.imagePath(id)}/file`;
    const { size } = body;
    signal?.throwIfAborted();
    let hash = createHash('sha512');
    let sent = 0;
    let lastReport = 0;
    const report = (): void => {
      if (!onProgress) return;
      lastReport = Date.now();
      try {
        onProgress(sent, size);
      } catch {
        // Progress is advisory; a failing callback must not break the upload.
      }
    };
    // No byte taken for stallMs, or no answer that long after the last one, cuts the upload.
    const watchdog = new StallWatchdog(
      this.stallMs,
      () =>
        new VmsnapError(
          'ImageServiceUnavailable',
          `Glance PUT ${urlPath}: no progress for ${this.stallMs} ms ` +
            `(${sent === size ? `all ${size} bytes sent, no answer` : `${sent} of ${size} bytes sent, no more taken`}; VMSNAP_GLANCE_STALL_MS). Is ` +
            `Glance at ${this.shownUrl} overloaded or stuck?`,
          { method: 'PUT', path: urlPath, url: this.shownUrl, sent },
        ),
    );
    const open = (): AsyncIterable<Buffer> => {
      watchdog.arm();
      hash = createHash('sha512');
      sent = 0;
      return body.chunks(hash, (chunk) => {
        sent += chunk.length;
        watchdog.arm();
        // The last byte is reported at once: from then on the wait is Glance's answer.
        if (sent === size || Date.now() - lastReport >= PROGRESS_INTERVAL_MS) report();
      });
    };

    let sha512: string;
    try {
      const both = watchdog.signal(signal);
      const reply = await this.send('PUT', urlPath, { 'content-type': 'application/octet-stream', 'content-length': String(size) }, open, both);
      if (reply.status < 200 || reply.status >= 300) throw this.httpError('PUT', urlPath, reply);
      if (sent !== size) {
        throw new VmsnapError(
          'ImageServiceError',
          `upload of ${body.what}: it changed size while it was uploaded (${size} bytes expected, ${sent} sent); nothing may write to a snapshot ` +
            `file while it is uploaded.`,
          { expected: size, sent },
        );
      }
      sha512 = hash.digest('hex');
    } finally {
      watchdog.stop();
    }
    report();
    return { size: sent, sha512 };
  }

  async downloadFile(id: string, path: string, opts: DownloadOptions): Promise<DownloadResult> {
    const urlPath = `${this.imagePath(id)}/file`;
    const { expected, onProgress, signal } = opts;
    signal?.throwIfAborted();
    // As for uploads: no byte for timeoutMs (from Glance or onto the disk) cuts it.
    let received = 0;
    const watchdog = new StallWatchdog(
      this.timeoutMs,
      () =>
        new VmsnapError(
          'ImageServiceUnavailable',
          `Glance GET ${urlPath}: no progress for ${this.timeoutMs} ms after ${received} bytes. Is Glance at ${this.shownUrl} overloaded or stuck?`,
          { method: 'GET', path: urlPath, url: this.shownUrl, received },
        ),
    );
    const both = watchdog.signal(signal);
    const sha512 = createHash('sha512');
    let lastReport = 0;
    const report = (): void => {
      lastReport = Date.now();
      try {
        onProgress?.(received);
      } catch {
        // Progress is advisory.
      }
    };
    const corrupt = (why: string) =>
      new VmsnapError('ImageCorrupt', `image ${id}: the data Glance sent does not match the image record (${why}); nothing was changed on the instance`, {
        imageId: id,
        expected,
        received,
      });
    try {
      watchdog.arm();
      const body = await this.openDownload(urlPath, both);
      const tap = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          received += chunk.length;
          // More bytes than the record says: stop at once rather than fill the disk.
          if (received > expected.size) {
            callback(corrupt(`more than ${expected.size} bytes`));
            return;
          }
          sha512.update(chunk);
          watchdog.arm();
          if (Date.now() - lastReport >= PROGRESS_INTERVAL_MS) report();
          callback(null, chunk);
        },
      });
      try {
        await pipeline(body, tap, createWriteStream(path, { mode: 0o600 }), { signal: both });
      } catch (err) {
        if (err instanceof VmsnapError) throw err;
        if (both.aborted) throw both.reason ?? err;
        const code = errorCode(err);
        if (code && ['ENOSPC', 'EDQUOT'].includes(code)) throw new VmsnapError('NoSpace', `no space left for the download of image ${id} to ${path}`, { path });
        if (code && code.startsWith('E') && !TRANSIENT_CODES.has(code))
          throw new VmsnapError('InvalidInput', `cannot write ${path}: ${(err as Error).message}`, { path, code });
        throw this.transportError('GET', urlPath, err);
      }
      const sum = sha512.digest('hex');
      if (received !== expected.size) throw corrupt(`${received} bytes received, ${expected.size} expected`);
      if (sum !== expected.sha512) throw corrupt('sha512 differs from os_hash_value');
      report();
      return { size: received, sha512: sum };
    } catch (err) {
      await rm(path, { force: true });
      throw err;
    } finally {
      watchdog.stop();
    }
  }

  /** GET of the image data, once more with a new token after a 401; the body is the caller's to read. */
  private async openDownload(path: string, signal: AbortSignal): Promise<Readable> {
    for (let attempt = 1; ; attempt++) {
      const auth = await this.identity.authHeaders();
      const token = auth['x-auth-token'];
      if (token) this.rememberToken(token);
      let res;
      try {
        res = await this.pool.request({
          method: 'GET',
          path: `${this.prefix}${path}`,
          headers: { accept: 'application/octet-stream', 'user-agent': 'vmsnap', ...auth },
          signal,
        });
      } catch (err) {
        if (signal.aborted) throw signal.reason ?? err;
        throw tlsError(err, 'Glance', this.shownUrl, this.cacert) ?? this.transportError('GET', path, err);
      }
      if (res.statusCode === 200) return res.body;
      const text = await res.body.text().catch(() => '');
      if (res.statusCode === 401 && attempt === 1) {
        this.identity.invalidate(auth);
        continue;
      }
      if (res.statusCode === 204) {
        throw new VmsnapError('ImageServiceError', `Glance GET ${path} answered 204: the image has no data`, {
          method: 'GET',
          path,
          status: 204,
        });
      }
      throw this.httpError('GET', path, { status: res.statusCode, text });
    }
  }

  async deleteImage(id: string): Promise<void> {
    const path = this.imagePath(id);
    const reply = await this.send('DELETE', path);
    if (reply.status === 204 || reply.status === 200 || reply.status === 404) return;
    if (reply.status === 403) {
      const image = await this.getImage(id).catch(() => undefined);
      if (image?.protected) {
        throw new VmsnapError(
          'ImageServiceError',
          `Glance DELETE ${path} answered 403: image ${id} is protected and Glance refuses to delete it. Unset its 'protected' flag first (openstack ` +
            `image set --unprotected ${id}) if it really is to be deleted.`,
          { method: 'DELETE', path, status: 403, url: this.shownUrl, protected: true },
        );
      }
    }
    throw this.httpError('DELETE', path, reply);
  }

  private imagePath(id: string): string {
    return `/v2/images/${encodeURIComponent(id)}`;
  }

  /**
   * One request; HTTP statuses come back as replies, transport failures as VmsnapErrors. A 401
   * means the token was refused (revoked, or expired on the way): the request goes once more
   * with a new token. `body` is a function for bodies that must be made anew for each sending.
   */
  private async send(
    method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE',
    path: string,
    headers: Record<string, string> = {},
    body?: string | (() => AsyncIterable<Buffer>),
    signal?: AbortSignal,
  ): Promise<Reply> {
    for (let attempt = 1; ; attempt++) {
      // An upload starts with a fresh token: Glance checks it when the request begins.
      const auth = await this.identity.authHeaders({ fresh: typeof body === 'function' });
      const token = auth['x-auth-token'];
      if (token) this.rememberToken(token);
      const reply = await this.sendOnce(method, path, { ...headers, ...auth }, typeof body === 'function' ? body() : body, signal);
      if (reply.status !== 401 || attempt === 2) return reply;
      this.identity.invalidate(auth);
    }
  }

  private async sendOnce(
    method: string,
    path: string,
    headers: Record<string, string>,
    body: string | AsyncIterable<Buffer> | undefined,
    signal?: AbortSignal,
  ): Promise<Reply> {
    const all: Record<string, string> = { accept: 'application/json', 'user-agent': 'vmsnap', ...headers };
    try {
      const res = await this.pool.request({
        method: method as 'GET',
        path: `${this.prefix}${path}`,
        headers: all,
        // undici sends an async iterable chunk by chunk (its types name only streams).
        body: body as string | Readable | undefined,
        signal,
        // A streamed body is watched by its sender (uploadFile's watchdog), not by a deadline.
        ...(body !== undefined && typeof body !== 'string' ? { headersTimeout: 0 } : {}),
      });
      const text = await res.body.text();
      return { status: res.statusCode, text };
    } catch (err) {
      // An abort is the caller's decision, not a Glance failure: hand back its reason unchanged.
      if (signal?.aborted) throw signal.reason ?? err;
      throw tlsError(err, 'Glance', this.shownUrl, this.cacert) ?? this.transportError(method, path, err);
    }
  }

  private rememberToken(token: string): void {
    this.sentTokens.add(token);
    // Only the last few can still come back in an answer.
    if (this.sentTokens.size > 8) this.sentTokens.delete(this.sentTokens.values().next().value as string);
  }

  private parseImage(method: string, path: string, reply: Reply): Image {
    let value: unknown;
    try {
      value = JSON.parse(reply.text);
    } catch {
      value = undefined;
    }
    const image = value as Partial<Image> | undefined;
    if (!image || typeof image !== 'object' || typeof image.id !== 'string' || typeof image.status !== 'string') {
      throw new VmsnapError(
        'ImageServiceError',
        `Glance ${method} ${path} answered ${reply.status} with something that is not an image: ${this.scrub(reply.text.slice(0, 200))}. Is ` +
          `${this.shownUrl} really a Glance v2 endpoint?`,
        { method, path, status: reply.status, url: this.shownUrl },
      );
    }
    return image as Image;
  }

  private httpError(method: string, path: string, reply: Reply): VmsnapError {
    const { status } = reply;
    const said = this.glanceMessage(reply.text);
    const head = `Glance ${method} ${path} answered ${status}${said ? ` (${said})` : ''}`;
    const details = { method, path, status, url: this.shownUrl, glanceMessage: said };
    if (status >= 500) {
      return new VmsnapError(
        'ImageServiceUnavailable',
        `${head}: Glance or its image store is failing or overloaded. Check glance-api and its log at ${this.shownUrl}.`,
        details,
      );
    }
    if (status === 408 || status === 429) {
      // Timeouts and rate limiting by Glance or a proxy in front of it pass with time.
      return new VmsnapError('ImageServiceUnavailable', `${head}: Glance (or a proxy in front of it) is busy or timed out.`, details);
    }
    if (status === 404) {
      return new VmsnapError('ImageNotFound', `${head}: there is no such image. Check the image id, and whether somebody deleted the image.`, details);
    }
    if (status === 409 && /transition from (saving|uploading|importing)/i.test(said)) {
      // An earlier upload of this image is still in Glance's hands (its client died a moment
      // ago): a retry finds out whether Glance gave it up (queued) or keeps it (saving).
      return new VmsnapError('ImageServiceUnavailable', `${head}: an earlier upload of this image, cut off, is still in Glance's hands.`, details);
    }
    if (status === 409) {
      return new VmsnapError(
        'ImageConflict',
        `${head}: the image's state does not allow this (for instance data uploaded to an image that is active or being uploaded already). Check the ` +
          `image status in Glance.`,
        details,
      );
    }
    if (status === 413) {
      return new VmsnapError(
        'ImageServiceError',
        `${head}: the image exceeds Glance's size limit (image_size_cap) or the owner's image storage quota. Raise the limit or quota, or free ` +
          `space, then snapshot again.`,
        details,
      );
    }
    if (status === 401) {
      // Refused twice, the second time with a token just issued: Glance and Keystone disagree.
      return new VmsnapError(
        'ImageServiceError',
        `${head}: Glance did not accept a token just issued to ${this.identity.description}. Check that Glance's [keystone_authtoken] points at the ` +
          `same Keystone, and its service user.`,
        details,
      );
    }
    if (status === 403) {
      const caller = this.identity.knownCaller();
      const who = caller
        ? `user ${caller.userName} (${caller.userId}) lacks a role on project ${caller.projectName} (${caller.projectId})`
        : `${this.identity.description} lacks a role`;
      return new VmsnapError(
        'ImageServiceError',
        `${head}: ${who} that lets it ${ACTIONS[method] ?? 'do this'}. Grant the role (usually member) on the project, or check Glance's policy.`,
        details,
      );
    }
    return new VmsnapError(
      'ImageServiceError',
      `${head}: Glance rejected the request. Check the values sent (names, formats, properties) against Glance's schema and configuration.`,
      details,
    );
  }

  private transportError(method: string, path: string, err: unknown): VmsnapError {
    const code = errorCode(err);
    const reason = this.scrub(err instanceof Error ? err.message : String(err));
    const details = { method, path, url: this.shownUrl, code };
    if (code !== undefined && TRANSIENT_CODES.has(code)) {
      const what = TIMEOUT_CODES.has(code) ? `no answer within ${this.timeoutMs} ms` : reason || code;
      return new VmsnapError(
        'ImageServiceUnavailable',
        `Glance ${method} ${path} failed: ${code} (${what}). Is Glance running and reachable at ${this.shownUrl}?`,
        details,
      );
    }
    if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') {
      return new VmsnapError(
        'ImageServiceError',
        `Glance ${method} ${path}: the file changed size while it was uploaded; nothing may write to a snapshot file while it is uploaded.`,
        details,
      );
    }
    return new VmsnapError(
      'ImageServiceError',
      `Glance ${method} ${path} failed: ${code ?? 'error'} (${reason}). Check the Glance URL ${this.shownUrl} and its TLS setup.`,
      details,
    );
  }

  private localFileError(path: string, err: unknown): VmsnapError {
    const code = errorCode(err);
    const reason = err instanceof Error ? err.message : String(err);
    return new VmsnapError('InvalidInput', `uploadFile: cannot read ${path}: ${reason}. Check that the snapshot file exists and is readable.`, {
      path,
      code,
    });
  }

  /** Glance's own words from an error body (HTML or JSON), short and without the token. */
  private glanceMessage(text: string): string {
    // Glance answers JSON ({"message": ...}) when asked for it, webob's HTML page otherwise.
    let source = text;
    if (text.trimStart().startsWith('{')) {
      try {
        const parsed = JSON.parse(text) as { message?: unknown };
        if (typeof parsed.message === 'string') source = parsed.message;
      } catch {
        // Not JSON after all: use the text as it is.
      }
    }
    const plain = source
      .replace(/<head>[\s\S]*?<\/head>/i, '')
      .replace(/<h1>[\s\S]*?<\/h1>/i, '')
      .replace(/<[^>]*>/g, ' ')
      .replace(/&#x27;|&#39;/g, "'")
      .replace(/&quot;/g, '"')
      .replace(/&lt;/g, '<')
      .replace(/&gt;/g, '>')
      .replace(/&amp;/g, '&')
      .replace(/\s+/g, ' ')
      .trim();
    return this.scrub(plain.length > 300 ? `${plain.slice(0, 300)}...` : plain);
  }

  private scrub(text: string): string {
    let out = text;
    for (const token of this.sentTokens) out = out.split(token).join('***');
    return out;
  }
}
