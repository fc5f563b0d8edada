// The body of an image upload: a file read in large chunks, each hashed (sha512) on its way to
// the socket. Chunk N+1 is read and hashed while chunk N is on the wire, so the hash costs the
// socket nothing as long as a CPU is free. (A hashing thread measured no faster here and held
// hundreds of MiB: shared chunks are freed only when both threads collect them.)
import { createHash, type Hash } from 'node:crypto';
import { open, stat, type FileHandle } from 'node:fs/promises';

/** 4 MiB reads: few syscalls, few hash calls, and at most a few chunks in memory at once. */
const READ_CHUNK = 4 << 20;

/**
 * The first `size` bytes of a file as chunks, each added to `hash` as soon as it is read, the
 * next one read and hashed while the current one is sent. `onChunk` (count, progress) sees each
 * as it is handed on. The handle is added to `files` so the caller closes it whatever happens; a
 * read error goes to `onReadError` first.
 */
export async function* readChunks(
  path: string,
  size: number,
  hash: Hash,
  files: Set<FileHandle>,
  onReadError: (err: unknown) => void,
  onChunk: (chunk: Buffer) => void,
): AsyncGenerator<Buffer> {
  let file: FileHandle;
  try {
    file = await open(path, 'r');
  } catch (err) {
    onReadError(err);
    throw err;
  }
  files.add(file);
  let closing = false;
  // Two buffers, used in turn. A fresh one per chunk would hand V8 gigabytes of short-lived
  // external memory, and its collections cost more CPU than the hash. Reuse is safe because undici
  // pulls the next chunk only once the socket has drained (every 4 MiB chunk exceeds its
  // buffer), and buffer X is read into again only after the chunk in it was yielded and the next
  // one pulled. Were that ever not so, Glance's sha512 would differ from ours: ImageCorrupt.
  const buffers = [Buffer.allocUnsafeSlow(Math.min(READ_CHUNK, size)), Buffer.allocUnsafeSlow(Math.min(READ_CHUNK, size))];
  let turn = 0;
  const read = async (at: number): Promise<Buffer | undefined> => {
    if (at >= size) return undefined;
    const buf = buffers[turn++ % 2]!.subarray(0, Math.min(READ_CHUNK, size - at));
    let bytesRead: number;
    try {
      ({ bytesRead } = await file.read(buf, 0, buf.length, at));
    } catch (err) {
      // A read ahead cut by the close below is not a read error.
      if (!closing) onReadError(err);
      throw err;
    }
    // A file that shrank ends early: the caller sees fewer bytes sent than announced.
    if (bytesRead === 0) return undefined;
    const chunk = bytesRead < buf.length ? buf.subarray(0, bytesRead) : buf;
    hash.update(chunk);
    return chunk;
  };
  try {
    let at = 0;
    let next = read(at);
    for (;;) {
      const chunk = await next;
      if (!chunk) return;
      at += chunk.length;
      next = read(at);
      // A read ahead that fails is reported when it is awaited, not as an unhandled rejection.
      next.catch(() => undefined);
      onChunk(chunk);
      yield chunk;
    }
  } finally {
    closing = true;
    files.delete(file);
    await file.close().catch(() => undefined);
  }
}

/** Size and sha512 of a file, read as an upload reads it. */
export async function hashFile(path: string): Promise<{ size: number; sha512: string }> {
  const { size } = await stat(path);
  const hash = createHash('sha512');
  let bytes = 0;
  for await (const chunk of readChunks(
    path,
    size,
    hash,
    new Set(),
    () => undefined,
    () => undefined,
  ))
    bytes += chunk.length;
  return { size: bytes, sha512: hash.digest('hex') };
}

/**
 * The chunks of a stream (an image made on the fly), each added to `hash` and seen by `onChunk` as
 * it is handed on. An error of the source goes to `onSourceError` first: the upload then reports it
 * as the stream's, not as a network failure. Stopping early ends the source too.
 */
export async function* hashing(
  source: AsyncIterable<Buffer>,
  hash: Hash,
  onChunk: (chunk: Buffer) => void,
  onSourceError: (err: unknown) => void,
): AsyncGenerator<Buffer> {
  const chunks = source[Symbol.asyncIterator]();
  try {
    for (;;) {
      let next: IteratorResult<Buffer>;
      try {
        next = await chunks.next();
      } catch (err) {
        onSourceError(err);
        throw err;
      }
      if (next.done) return;
      hash.update(next.value);
      onChunk(next.value);
      yield next.value;
    }
  } finally {
    await chunks.return?.();
  }
}

/** Size and sha512 of a stream, read as an upload reads it. */
export async function hashStream(source: AsyncIterable<Buffer>): Promise<{ size: number; sha512: string }> {
  const hash = createHash('sha512');
  let size = 0;
  for await (const chunk of source) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { size, sha512: hash.digest('hex') };
}
