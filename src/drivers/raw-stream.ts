// A raw image written as a stream from a disk's allocation map and a source that reads byte ranges:
// every byte of the virtual disk in order, zero extents as zeros that are never read. The raw
// counterpart of qcow2-stream.ts, for a snapshot asked for in raw format.
import { VmsnapError } from '../shared/errors.js';
import type { ChunksOptions, DiskSource, Extent } from './qcow2-stream.js';

/** Largest read handed to the source, and the longest run of zeros handed on at once. */
const REQUEST = 2 << 20;
const READ_AHEAD = 4;
const ZEROS = Buffer.alloc(REQUEST);

export interface RawStream {
  /** The virtual disk's size: a raw image is all of it. */
  readonly size: number;
  /** The image, in order. Each call reads the disk again. */
  chunks(options?: Pick<ChunksOptions, 'signal'>): AsyncGenerator<Buffer>;
}

/** The map must cover the disk from 0 to its end, in order, without gaps or overlaps. */
function checkExtents(virtualSize: number, extents: readonly Extent[]): void {
  let pos = 0;
  for (const e of extents) {
    if (e.offset !== pos || e.length < 0 || e.offset + e.length > virtualSize) {
      throw new VmsnapError('InvalidInput', `raw stream: extents must be contiguous from 0 within the disk (at ${pos}: ${JSON.stringify(e)})`);
    }
    pos += e.length;
  }
  if (pos !== virtualSize) throw new VmsnapError('InvalidInput', `raw stream: the extents end at ${pos}, the disk at ${virtualSize}`);
}

/** Pieces of the disk in order: zeros to hand on, or a range to read (at most REQUEST bytes each). */
function* pieces(extents: readonly Extent[]): Generator<{ offset: number; length: number; zero: boolean }> {
  for (const e of extents) {
    for (let at = e.offset; at < e.offset + e.length; at += REQUEST) {
      yield { offset: at, length: Math.min(REQUEST, e.offset + e.length - at), zero: e.zero };
    }
  }
}

export function planRawStream(disk: { virtualSize: number; extents: readonly Extent[] }, source: DiskSource): RawStream {
  // Checked before the first byte, as the qcow2 plan is.
  checkExtents(disk.virtualSize, disk.extents);
  async function* chunks({ signal }: Pick<ChunksOptions, 'signal'> = {}): AsyncGenerator<Buffer> {
    signal?.throwIfAborted();
    // Reads in flight ahead of the one handed on; zeros need none.
    const queue: { length: number; data: Promise<Buffer> | undefined }[] = [];
    const all = pieces(disk.extents);
    const fill = () => {
      while (queue.length < 64 && queue.filter((q) => q.data).length < READ_AHEAD) {
        const n = all.next();
        if (n.done) return;
        const p = n.value.zero ? undefined : source.read(n.value.offset, n.value.length);
        p?.catch(() => undefined); // awaited in turn below
        queue.push({ length: n.value.length, data: p });
      }
    };
    fill();
    while (queue.length) {
      const next = queue.shift()!;
      const buf = next.data ? await next.data : ZEROS.subarray(0, next.length);
      if (buf.length !== next.length) throw new VmsnapError('ConvertFailed', `raw stream: a read of ${next.length} bytes returned ${buf.length}`);
      signal?.throwIfAborted();
      fill();
      yield buf;
    }
  }
  return { size: disk.virtualSize, chunks };
}
