// A standalone qcow2 image (version 3, 64 KiB clusters, 16-bit refcounts, no backing file) written
// as a stream, strictly in order, from a disk's allocation map and a source that reads byte ranges
// of the disk: no seek and no temporary file, so it can go straight into an upload.
//
// Layout, each part cluster-aligned:  header | L1 table | refcount table | refcount blocks |
// L2 tables | data clusters in guest order. Every offset and refcount is computed before the first
// byte, so the stream's size is known up front (`Qcow2Stream.size`: a Content-Length).
//
// Zero clusters: a cluster that the map says reads as zeros is never read; a cluster that is
// allocated but reads all zeros is not stored either (as `qemu-img convert` does). The second needs
// the data before the header, so planning looks at every allocated cluster once (the measuring
// pass) and the stream reads the stored ones: allocated bytes are read twice. A source with
// `nonZeroClusters` (the NBD reader) looks where it reads and hands over one byte per cluster, so the
// pass moves no data. `scanZeros: false` trusts the map alone (one read; allocated zeros stored).
//
// Compression is streamed too, with the same measuring pass: the layout needs each compressed
// cluster's size, so planning deflates every cluster to learn it and the stream deflates it again
// (zlib is deterministic for the same input and settings; a different size means the source changed
// and the stream fails rather than write a broken image). It costs twice the deflate CPU; clusters
// that do not shrink are stored plain, as QEMU does. Kept in guest order, a plain cluster after
// compressed ones starts on the next cluster boundary: on a mixed disk (a tar of /usr: 300 MiB) the
// image came out 1 % larger than `qemu-img convert -c`'s, which packs compressed data apart.
//
// The source must not change between planning and the end of the stream (a point-in-time view,
// such as a backup job's NBD export). A plan can be streamed any number of times (a retried upload).
import { promisify } from 'node:util';
import { constants as zlibConstants, deflateRaw as deflateRawCb } from 'node:zlib';
import { VmsnapError } from '../shared/errors.js';

/** A run of the disk: `zero` when it reads as zeros (a hole or zeroed blocks), else data to read. */
export interface Extent {
  offset: number;
  length: number;
  zero: boolean;
}

/**
 * Reads exactly `length` bytes at `offset` of the guest disk, into `into` (exactly `length` long)
 * when given and the source can: the writer reuses its buffers where it keeps them to itself.
 */
export type ReadRange = (offset: number, length: number, into?: Buffer) => Promise<Buffer>;

/** The disk as the writer reads it. */
export interface DiskSource {
  read: ReadRange;
  /**
   * Optional: one byte per cluster of the range (the last may be partial), 1 when it holds a
   * non-zero byte, else 0, found where the data is: the measuring pass without compression then
   * moves no data. Without it, the writer reads the range and looks itself.
   */
  nonZeroClusters?: (offset: number, length: number, clusterSize: number) => Promise<Uint8Array>;
}

export interface ChunksOptions {
  /** Stops the stream between reads. */
  signal?: AbortSignal;
  /**
   * Read into a few buffers used in turn instead of a fresh one per read (less for the garbage
   * collector): a chunk is then valid only until the next one is pulled, as an upload body that
   * sends each chunk before it pulls the next needs. Not for consumers that queue chunks.
   */
  reuseBuffers?: boolean;
}

export interface Qcow2StreamOptions {
  /** Read allocated clusters once before the stream and leave out those that read all zeros (default true). */
  scanZeros?: boolean;
  /** zlib-compress clusters, as `qemu-img convert -c` (default false). Implies the measuring pass. */
  compress?: boolean;
  /** Largest read handed to `read`, bytes (default 2 MiB; a multiple of the cluster size). */
  requestSize?: number;
  /** Reads in flight (default 4). */
  readAhead?: number;
  /** log2 of the cluster size (default 16: 64 KiB). Other sizes are for tests of the layout's edges. */
  clusterBits?: number;
  signal?: AbortSignal;
}

export interface Qcow2Stream {
  /** Exact size of the image in bytes, known before the first byte is produced. */
  readonly size: number;
  readonly virtualSize: number;
  /** Guest clusters stored in the image (compressed or not). */
  readonly storedClusters: number;
  readonly compressedClusters: number;
  /** Bytes read from the disk while planning (the measuring pass; 0 without it). */
  readonly plannedBytesRead: number;
  /** The image, in order. Each call reads the disk again. */
  chunks(options?: ChunksOptions): AsyncGenerator<Buffer>;
}

const QCOW2_MAGIC = 0x514649fb;
const HEADER_LENGTH = 112;
const REFCOUNT_ORDER = 4;
const OFLAG_COPIED = 1n << 63n;
const OFLAG_COMPRESSED = 1n << 62n;
const SECTOR = 512;
const DEFAULT_REQUEST = 2 << 20;
const DEFAULT_READ_AHEAD = 4;

const deflateRaw = promisify(deflateRawCb);
// QEMU's settings (qcow2_zlib_compress): raw deflate, 4 KiB window, which its inflate expects.
const DEFLATE = { level: zlibConstants.Z_DEFAULT_COMPRESSION, windowBits: 12, memLevel: 9 };

/** Where every part of the image goes; all offsets in bytes, clusters `c` bytes long. */
interface Layout {
  c: number;
  l1Entries: number;
  l1Offset: number;
  refTableOffset: number;
  refTableClusters: number;
  refBlocksOffset: number;
  refBlocks: number;
  l2Offset: number;
  /** L1 indexes that have an L2 table, ascending; the i-th table is at l2Offset + i * c. */
  l2Tables: number[];
  dataOffset: number;
  /** Refcount of each host cluster from dataOffset on (only when compressed: otherwise all 1). */
  dataRefcounts?: Uint16Array;
  size: number;
}

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);
const alignUp = (a: number, b: number) => ceilDiv(a, b) * b;

function invalid(message: string): VmsnapError {
  return new VmsnapError('InvalidInput', `qcow2 stream: ${message}`);
}

function isAllZero(buf: Buffer, zero: Buffer): boolean {
  return buf.equals(zero.subarray(0, buf.length));
}

/**
 * Guest clusters that must be read, ascending: those not wholly inside zero extents. Extents must
 * be sorted and disjoint within the disk; a range no extent covers is read, to be safe.
 */
function clustersToRead(virtualSize: number, extents: readonly Extent[], c: number): Uint32Array {
  const runs: number[] = [];
  let count = 0;
  let next = 0;
  const add = (from: number, to: number) => {
    if (to <= from) return;
    const first = Math.max(Math.floor(from / c), next);
    const end = ceilDiv(to, c);
    if (end <= first) return;
    runs.push(first, end);
    count += end - first;
    next = end;
  };
  let pos = 0;
  for (const e of extents) {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.offset < 0 || e.length < 0) {
      throw invalid(`extent ${JSON.stringify(e)} is not a non-negative whole number of bytes`);
    }
    if (e.offset < pos) throw invalid(`extents must be sorted and disjoint: ${e.offset} starts before ${pos}`);
    if (e.offset + e.length > virtualSize) throw invalid(`extent ${e.offset}+${e.length} ends past the disk's ${virtualSize} bytes`);
    add(pos, e.offset);
    if (!e.zero) add(e.offset, e.offset + e.length);
    pos = e.offset + e.length;
  }
  add(pos, virtualSize);
  const out = new Uint32Array(count);
  let i = 0;
  for (let r = 0; r < runs.length; r += 2) {
    for (let g = runs[r]!; g < runs[r + 1]!; g++) out[i++] = g;
  }
  return out;
}

interface Unit {
  /** Index of the unit's first cluster in the cluster list. */
  first: number;
  count: number;
  /** Guest offset and length to read (the last cluster of the disk may be partial). */
  offset: number;
  length: number;
}

/** Runs of consecutive guest clusters from a sorted list, at most `max` clusters each. */
function* unitsOf(clusters: Uint32Array, max: number, c: number, virtualSize: number): Generator<Unit> {
  let i = 0;
  while (i < clusters.length) {
    let n = 1;
    while (n < max && i + n < clusters.length && clusters[i + n] === clusters[i]! + n) n++;
    const offset = clusters[i]! * c;
    yield { first: i, count: n, offset, length: Math.min(n * c, virtualSize - offset) };
    i += n;
  }
}

/** Loads items with up to `depth` loads in flight, handing results on in order. */
async function* prefetch<T, R>(items: Iterator<T>, depth: number, load: (item: T) => Promise<R>): AsyncGenerator<[T, R]> {
  const queue: [T, Promise<R>][] = [];
  const fill = () => {
    while (queue.length < depth) {
      const n = items.next();
      if (n.done) return;
      const p = load(n.value);
      // Awaited in turn below; a load left behind when the consumer stops must not be unhandled.
      p.catch(() => undefined);
      queue.push([n.value, p]);
    }
  };
  fill();
  while (queue.length) {
    const [item, p] = queue.shift()!;
    const result = await p;
    fill();
    yield [item, result];
  }
}

/**
 * Buffers for reads through prefetch(), used in turn: the (depth + 1)th read ahead is issued only
 * once the result of the first was handed on and the next one pulled, so depth + 1 buffers suffice.
 */
function bufferRing(depth: number, size: number): () => Buffer {
  const ring = Array.from({ length: depth + 1 }, () => Buffer.allocUnsafeSlow(size));
  let turn = 0;
  return () => ring[turn++ % ring.length]!;
}

/** Reads a unit (into `into` if given), padded with zeros to whole clusters, and checks the source kept its word. */
async function readUnit(read: ReadRange, u: Unit, c: number, into?: Buffer): Promise<Buffer> {
  const buf = await read(u.offset, u.length, into?.subarray(0, u.length));
  if (buf.length !== u.length) {
    throw new VmsnapError('ConvertFailed', `qcow2 stream: reading ${u.length} bytes at ${u.offset} returned ${buf.length}`);
  }
  const whole = u.count * c;
  return buf.length === whole ? buf : Buffer.concat([buf, Buffer.alloc(whole - buf.length)]);
}

/** Host offset and stored length of each stored cluster, in order, from `dataOffset` (a multiple of c). */
function* placements(dataOffset: number, stored: number, c: number, compressedLength?: Uint32Array): Generator<[offset: number, length: number]> {
  let at = dataOffset;
  for (let i = 0; i < stored; i++) {
    const len = compressedLength?.[i] ?? 0;
    if (len > 0) {
      yield [at, len];
      at += len;
    } else {
      at = alignUp(at, c);
      yield [at, c];
      at += c;
    }
  }
}

function layOut(virtualSize: number, stored: Uint32Array, c: number, compressedLength?: Uint32Array): Layout {
  const l2Entries = c / 8;
  const l1Entries = ceilDiv(ceilDiv(virtualSize, c), l2Entries);
  const l2Tables: number[] = [];
  for (const g of stored) {
    const l1 = Math.floor(g / l2Entries);
    if (l2Tables.at(-1) !== l1) l2Tables.push(l1);
  }
  // The data's own span does not depend on where it starts, as long as that is a cluster boundary.
  let dataEnd = 0;
  for (const [offset, length] of placements(0, stored.length, c, compressedLength)) dataEnd = offset + length;
  const dataClusters = ceilDiv(dataEnd, c);
  let dataRefcounts: Uint16Array | undefined;
  if (compressedLength) {
    dataRefcounts = new Uint16Array(dataClusters);
    for (const [offset, length] of placements(0, stored.length, c, compressedLength)) {
      for (let h = Math.floor(offset / c); h <= Math.floor((offset + length - 1) / c); h++) {
        if (dataRefcounts[h] === 0xffff) throw new VmsnapError('ConvertFailed', 'qcow2 stream: a host cluster holds too many compressed clusters');
        dataRefcounts[h]!++;
      }
    }
  }
  // Refcount blocks count every cluster, themselves included: grow until they cover the whole image.
  const perRefBlock = (c * 8) / (1 << REFCOUNT_ORDER);
  const l1Clusters = Math.max(1, ceilDiv(l1Entries * 8, c));
  let refBlocks = 1;
  for (;;) {
    const refTableClusters = ceilDiv(refBlocks * 8, c);
    const total = 1 + l1Clusters + refTableClusters + refBlocks + l2Tables.length + dataClusters;
    const need = ceilDiv(total, perRefBlock);
    if (need <= refBlocks) {
      const l1Offset = c;
      const refTableOffset = l1Offset + l1Clusters * c;
      const refBlocksOffset = refTableOffset + refTableClusters * c;
      const l2Offset = refBlocksOffset + refBlocks * c;
      const dataOffset = l2Offset + l2Tables.length * c;
      return {
        c,
        l1Entries,
        l1Offset,
        refTableOffset,
        refTableClusters,
        refBlocksOffset,
        refBlocks,
        l2Offset,
        l2Tables,
        dataOffset,
        dataRefcounts,
        size: dataOffset + dataClusters * c,
      };
    }
    refBlocks = need;
  }
}

function header(virtualSize: number, clusterBits: number, l: Layout): Buffer {
  const h = Buffer.alloc(l.c);
  h.writeUInt32BE(QCOW2_MAGIC, 0);
  h.writeUInt32BE(3, 4);
  // 8: backing file offset, 16: its length: none.
  h.writeUInt32BE(clusterBits, 20);
  // The size is in 512-byte sectors for QEMU: a disk of another size is rounded up (the tail reads zeros).
  h.writeBigUInt64BE(BigInt(alignUp(virtualSize, SECTOR)), 24);
  // 32: no encryption.
  h.writeUInt32BE(l.l1Entries, 36);
  h.writeBigUInt64BE(BigInt(l.l1Offset), 40);
  h.writeBigUInt64BE(BigInt(l.refTableOffset), 48);
  h.writeUInt32BE(l.refTableClusters, 56);
  // 60: no snapshots; 72..95: no incompatible, compatible or autoclear features.
  h.writeUInt32BE(REFCOUNT_ORDER, 96);
  h.writeUInt32BE(HEADER_LENGTH, 100);
  // 104: compression type 0 (zlib). No header extensions: the zeros after the header end them.
  return h;
}

/** Big-endian 64-bit table entries, one cluster-multiple buffer. */
function table(entries: bigint[], clusters: number, c: number): Buffer {
  const buf = Buffer.alloc(clusters * c);
  entries.forEach((e, i) => buf.writeBigUInt64BE(e, i * 8));
  return buf;
}

function* metadata(virtualSize: number, clusterBits: number, l: Layout, stored: Uint32Array, compressedLength?: Uint32Array): Generator<Buffer> {
  const c = l.c;
  yield header(virtualSize, clusterBits, l);

  const l1 = new Array<bigint>(l.l1Entries).fill(0n);
  l.l2Tables.forEach((index, i) => (l1[index] = BigInt(l.l2Offset + i * c) | OFLAG_COPIED));
  yield table(l1, (l.refTableOffset - l.l1Offset) / c, c);

  const refTable = Array.from({ length: l.refBlocks }, (_, i) => BigInt(l.refBlocksOffset + i * c));
  yield table(refTable, l.refTableClusters, c);

  const perRefBlock = c / 2;
  const metaClusters = l.dataOffset / c;
  const totalClusters = l.size / c;
  for (let b = 0; b < l.refBlocks; b++) {
    const block = Buffer.alloc(c);
    const first = b * perRefBlock;
    const end = Math.min(first + perRefBlock, totalClusters);
    for (let h = first; h < end; h++) {
      const refcount = h < metaClusters ? 1 : (l.dataRefcounts?.[h - metaClusters] ?? 1);
      block.writeUInt16BE(refcount, (h - first) * 2);
    }
    yield block;
  }

  // One walk over the stored clusters fills the L2 tables in order.
  const l2Entries = c / 8;
  const csizeShift = BigInt(62 - (clusterBits - 8));
  const where = placements(l.dataOffset, stored.length, c, compressedLength);
  let i = 0;
  for (const index of l.l2Tables) {
    const l2 = Buffer.alloc(c);
    for (; i < stored.length && Math.floor(stored[i]! / l2Entries) === index; i++) {
      const [offset, length] = where.next().value as [number, number];
      let entry: bigint;
      if (compressedLength?.[i]) {
        // Extra 512-byte sectors the compressed bytes reach into past their first one.
        const sectors = Math.floor((offset + length - 1) / SECTOR) - Math.floor(offset / SECTOR);
        entry = OFLAG_COMPRESSED | (BigInt(sectors) << csizeShift) | BigInt(offset);
      } else {
        entry = OFLAG_COPIED | BigInt(offset);
      }
      l2.writeBigUInt64BE(entry, (stored[i]! % l2Entries) * 8);
    }
    yield l2;
  }
}

function sourceChanged(offset: number, was: number, now: number): VmsnapError {
  return new VmsnapError(
    'ConvertFailed',
    `qcow2 stream: the disk changed while it was streamed (the cluster at ${offset} compressed to ${was} bytes when planned, ${now} now): ` +
      'stream from a point-in-time view such as the backup job export',
  );
}

interface MeasuringPass {
  source: DiskSource;
  candidates: Uint32Array;
  c: number;
  maxUnit: number;
  virtualSize: number;
  readAhead: number;
  signal?: AbortSignal;
}

interface Measured {
  /** Guest clusters to store, ascending. */
  stored: Uint32Array;
  /** Compressed size of each stored cluster (0: stored plain), when compressing. */
  compressedLength?: Uint32Array;
  bytesRead: number;
}

/** The measuring pass where the source finds the zero clusters itself: no data moves. */
async function measureAtSource(pass: MeasuringPass, nonZeroClusters: NonNullable<DiskSource['nonZeroClusters']>): Promise<Measured> {
  const { candidates, c } = pass;
  const stored = new Uint32Array(candidates.length);
  let n = 0;
  let bytesRead = 0;
  const units = unitsOf(candidates, pass.maxUnit, c, pass.virtualSize);
  for await (const [u, flags] of prefetch(units, pass.readAhead, (u) => nonZeroClusters(u.offset, u.length, c))) {
    pass.signal?.throwIfAborted();
    if (flags.length !== u.count) throw new VmsnapError('ConvertFailed', `qcow2 stream: ${flags.length} zero flags for ${u.count} clusters`);
    bytesRead += u.length;
    for (let k = 0; k < u.count; k++) if (flags[k]) stored[n++] = candidates[u.first + k]!;
  }
  return { stored: stored.subarray(0, n), bytesRead };
}

/** The measuring pass that reads the data: zero clusters found here, and each cluster's compressed size when compressing. */
async function measureByReading(pass: MeasuringPass, compress: boolean): Promise<Measured> {
  const { candidates, c } = pass;
  const zero = Buffer.alloc(c);
  const stored = new Uint32Array(candidates.length);
  const lengths = compress ? new Uint32Array(candidates.length) : undefined;
  let n = 0;
  let bytesRead = 0;
  const units = unitsOf(candidates, pass.maxUnit, c, pass.virtualSize);
  const into = bufferRing(pass.readAhead, Math.min(pass.maxUnit, candidates.length) * c);
  for await (const [u, buf] of prefetch(units, pass.readAhead, (u) => readUnit(pass.source.read, u, c, into()))) {
    pass.signal?.throwIfAborted();
    bytesRead += u.length;
    const first = n;
    for (let k = 0; k < u.count; k++) {
      if (!isAllZero(buf.subarray(k * c, (k + 1) * c), zero)) stored[n++] = candidates[u.first + k]!;
    }
    if (lengths) {
      const kept = Array.from({ length: n - first }, (_, j) => buf.subarray((stored[first + j]! - candidates[u.first]!) * c).subarray(0, c));
      lengths.set(await compressedSizes(kept, c), first);
    }
  }
  return { stored: stored.subarray(0, n), compressedLength: lengths?.subarray(0, n), bytesRead };
}

/**
 * Plans a qcow2 image of a disk of `virtualSize` bytes whose allocation is `extents`, read from
 * `source`. With the measuring pass (the default), this reads every allocated cluster once.
 */
export async function planQcow2Stream(
  disk: { virtualSize: number; extents: readonly Extent[] },
  source: DiskSource,
  options: Qcow2StreamOptions = {},
): Promise<Qcow2Stream> {
  const clusterBits = options.clusterBits ?? 16;
  if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21) throw invalid(`clusterBits ${clusterBits} is not within 9..21`);
  const c = 1 << clusterBits;
  const { virtualSize } = disk;
  if (!Number.isSafeInteger(virtualSize) || virtualSize <= 0) throw invalid(`the disk's size ${virtualSize} is not a positive whole number of bytes`);
  if (ceilDiv(virtualSize, c) > 0xffffffff) throw invalid(`a disk of ${virtualSize} bytes has more than 2^32 clusters`);
  const requestSize = options.requestSize ?? DEFAULT_REQUEST;
  if (!Number.isInteger(requestSize) || requestSize < c || requestSize % c !== 0) throw invalid(`requestSize ${requestSize} is not a multiple of ${c}`);
  const readAhead = options.readAhead ?? DEFAULT_READ_AHEAD;
  if (!Number.isInteger(readAhead) || readAhead < 1) throw invalid(`readAhead ${readAhead} is not a positive whole number`);
  const compress = options.compress ?? false;
  const maxUnit = requestSize / c;
  options.signal?.throwIfAborted();

  const candidates = clustersToRead(virtualSize, disk.extents, c);
  let stored = candidates;
  let compressedLength: Uint32Array | undefined;
  let plannedBytesRead = 0;
  if (compress || (options.scanZeros ?? true)) {
    const pass: MeasuringPass = { source, candidates, c, maxUnit, virtualSize, readAhead, signal: options.signal };
    const measured = !compress && source.nonZeroClusters ? await measureAtSource(pass, source.nonZeroClusters) : await measureByReading(pass, compress);
    ({ stored, compressedLength, bytesRead: plannedBytesRead } = measured);
  }
  const layout = layOut(virtualSize, stored, c, compressedLength);
  const compressedClusters = compressedLength?.reduce((sum, len) => sum + (len > 0 ? 1 : 0), 0) ?? 0;

  async function* chunks({ signal, reuseBuffers = false }: ChunksOptions = {}): AsyncGenerator<Buffer> {
    signal?.throwIfAborted();
    let sent = 0;
    for (const part of metadata(virtualSize, clusterBits, layout, stored, compressedLength)) {
      sent += part.length;
      yield part;
    }
    let at = layout.dataOffset;
    const units = unitsOf(stored, maxUnit, c, virtualSize);
    const into = reuseBuffers ? bufferRing(readAhead, Math.min(requestSize, stored.length * c)) : () => undefined;
    for await (const [u, buf] of prefetch(units, readAhead, (u) => readUnit(source.read, u, c, into()))) {
      signal?.throwIfAborted();
      const part = compressedLength ? await compressedUnit(buf, u, at, c, compressedLength) : buf;
      at += part.length;
      sent += part.length;
      yield part;
    }
    // Compressed data ends anywhere: the file ends on a cluster boundary, as QEMU leaves it.
    const pad = layout.size - sent;
    if (pad < 0 || pad >= c || (pad > 0 && !compressedLength)) {
      throw new VmsnapError('ConvertFailed', `qcow2 stream: produced ${sent} bytes of a planned ${layout.size} (a bug)`);
    }
    if (pad > 0) yield Buffer.alloc(pad);
  }

  return {
    size: layout.size,
    virtualSize,
    storedClusters: stored.length,
    compressedClusters,
    plannedBytesRead,
    chunks,
  };
}

/** Compressed size of each cluster, or 0 for one stored plain (it does not shrink). Deflates run on libuv's thread pool. */
async function compressedSizes(clusters: Buffer[], c: number): Promise<number[]> {
  const out = await Promise.all(clusters.map((cluster) => deflateRaw(cluster, DEFLATE)));
  return out.map((z) => (z.length < c ? z.length : 0));
}

/**
 * The bytes of one unit of stored clusters as the layout placed them from host offset `at`:
 * compressed ones packed, plain ones on cluster boundaries (zeros in between).
 */
async function compressedUnit(buf: Buffer, u: Unit, at: number, c: number, compressedLength: Uint32Array): Promise<Buffer> {
  const deflated = await Promise.all(
    Array.from({ length: u.count }, (_, k) => (compressedLength[u.first + k]! > 0 ? deflateRaw(buf.subarray(k * c, (k + 1) * c), DEFLATE) : undefined)),
  );
  const parts: Buffer[] = [];
  let cursor = at;
  deflated.forEach((z, k) => {
    const planned = compressedLength[u.first + k]!;
    if (z) {
      if (z.length !== planned) throw sourceChanged(u.offset + k * c, planned, z.length);
      parts.push(z);
      cursor += z.length;
      return;
    }
    const aligned = alignUp(cursor, c);
    if (aligned > cursor) parts.push(Buffer.alloc(aligned - cursor));
    parts.push(buf.subarray(k * c, (k + 1) * c));
    cursor = aligned + c;
  });
  return Buffer.concat(parts);
}
