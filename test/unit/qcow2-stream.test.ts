// The streamed qcow2 writer against QEMU's own tools: disks of many shapes are served by qemu-nbd
// (read-only, unix socket), mapped and read through src/drivers/nbd.ts, streamed into a file, and
// the file must pass `qemu-img check` clean and `qemu-img compare` equal to the source. Needs
// qemu-img, qemu-nbd and libnbd (scripts/setup), no stack.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, open, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { openNbdReader, readAllocationMap } from '../../src/drivers/nbd.js';
import { planQcow2Stream, type Extent, type Qcow2Stream, type Qcow2StreamOptions } from '../../src/drivers/qcow2-stream.js';
import { rejectsWith } from '../support/assertions.js';
import { serveDisk } from '../support/qemu-nbd.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const CLUSTER = 64 * KiB;

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmsnap-qcow2-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let serial = 0;
const fresh = (what: string) => join(dir, `${what}-${++serial}`);

/** A sparse raw file of `size` bytes with `pieces` written at their offsets (allocated on disk). */
async function rawDisk(size: number, pieces: [offset: number, data: Buffer][]): Promise<string> {
  const file = `${fresh('src')}.raw`;
  const fh = await open(file, 'w');
  try {
    for (const [offset, data] of pieces) await fh.write(data, 0, data.length, offset);
  } finally {
    await fh.close();
  }
  await truncate(file, size);
  return file;
}

/** A qcow2 file of `size` bytes shaped by qemu-io commands (`write -P`, `write -z`, `discard`). */
async function qcow2Disk(size: number, commands: string[]): Promise<string> {
  const file = `${fresh('src')}.qcow2`;
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(size)]);
  await execa('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file]);
  return file;
}

async function writeStream(plan: Qcow2Stream, file: string): Promise<void> {
  await pipeline(Readable.from(plan.chunks()), createWriteStream(file));
}

interface Streamed {
  plan: Qcow2Stream;
  out: string;
  bytesRead: number;
  map: { virtualSize: number; extents: Extent[] };
}

/** Serves `source`, streams it as qcow2 into a file and checks the file is exactly `plan.size` long. */
async function streamDisk(source: string, format: 'raw' | 'qcow2', options: Qcow2StreamOptions = {}): Promise<Streamed> {
  const served = await serveDisk(dir, source, format, `nbd-${serial}`);
  try {
    const map = await readAllocationMap(served.uri);
    const reader = await openNbdReader(served.uri);
    try {
      const plan = await planQcow2Stream(map, reader, options);
      const out = `${fresh('out')}.qcow2`;
      await writeStream(plan, out);
      assert.equal((await stat(out)).size, plan.size, 'the stream is exactly as long as announced');
      return { plan, out, bytesRead: reader.bytesRead, map };
    } finally {
      await reader.close();
    }
  } finally {
    await served.stop();
  }
}

interface CheckReport {
  'allocated-clusters'?: number;
  'compressed-clusters'?: number;
}

/** qemu-img check is clean (exit 0: no corruption, no leak) and sees a standalone qcow2 of the source's size. */
async function assertValid(out: string, virtualSize: number): Promise<CheckReport> {
  const check = await execa('qemu-img', ['check', '--output=json', '-f', 'qcow2', out], { reject: false });
  assert.equal(check.exitCode, 0, `qemu-img check: ${check.stdout} ${check.stderr}`);
  const report = JSON.parse(check.stdout) as Record<string, unknown>;
  for (const bad of ['corruptions', 'leaks', 'check-errors', 'corruptions-fixed', 'leaks-fixed']) assert.ok(!report[bad], `${bad}: ${check.stdout}`);
  const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', '-f', 'qcow2', out])).stdout) as Record<string, unknown>;
  assert.equal(info['virtual-size'], virtualSize);
  assert.equal(info['backing-filename'], undefined);
  assert.equal((info['format-specific'] as { data: { compat: string } }).data.compat, '1.1', 'qcow2 version 3');
  return report;
}

async function assertSameContent(source: string, format: 'raw' | 'qcow2', out: string): Promise<void> {
  const r = await execa('qemu-img', ['compare', '-f', format, '-F', 'qcow2', source, out], { reject: false });
  assert.equal(r.exitCode, 0, `qemu-img compare: ${r.stdout} ${r.stderr}`);
}

/** Guest ranges the output stores, as qemu-img maps them; `plain` when stored uncompressed (qemu-img gives its offset). */
async function outputData(out: string): Promise<{ start: number; length: number; plain: boolean }[]> {
  const map = JSON.parse((await execa('qemu-img', ['map', '--output=json', '-f', 'qcow2', out])).stdout) as {
    start: number;
    length: number;
    data: boolean;
    offset?: number;
  }[];
  return map.filter((e) => e.data).map((e) => ({ start: e.start, length: e.length, plain: e.offset !== undefined }));
}

const dataBytes = (extents: { length: number }[]) => extents.reduce((n, e) => n + e.length, 0);

/** Clusters that a map's data extents touch (the file system decides how much a write allocates). */
function mappedDataClusters(extents: Extent[]): number {
  const clusters = new Set<number>();
  for (const e of extents.filter((x) => !x.zero)) {
    for (let c = Math.floor(e.offset / CLUSTER); c * CLUSTER < e.offset + e.length; c++) clusters.add(c);
  }
  return clusters.size;
}

/** Streams, then checks validity and content: the common body of every shape. */
async function roundTrip(source: string, format: 'raw' | 'qcow2', options: Qcow2StreamOptions = {}): Promise<Streamed & { check: CheckReport }> {
  const streamed = await streamDisk(source, format, options);
  const check = await assertValid(streamed.out, streamed.map.virtualSize);
  await assertSameContent(source, format, streamed.out);
  assert.equal(check['allocated-clusters'] ?? 0, streamed.plan.storedClusters, 'qemu-img counts the clusters the plan stored');
  assert.equal(check['compressed-clusters'] ?? 0, streamed.plan.compressedClusters, 'qemu-img counts the clusters the plan compressed');
  return { ...streamed, check };
}

describe('qcow2 stream from a raw disk over NBD', () => {
  it('empty: no data cluster is read or stored', async () => {
    const source = await rawDisk(1 * GiB, []);
    const { plan, bytesRead, out } = await roundTrip(source, 'raw');
    assert.equal(bytesRead, 0);
    assert.equal(plan.storedClusters, 0);
    assert.deepEqual(await outputData(out), []);
    // Header, L1, refcount table and one refcount block.
    assert.equal(plan.size, 4 * CLUSTER);
  });

  it('full: every cluster stored, in guest order', async () => {
    const data = randomBytes(8 * MiB);
    const source = await rawDisk(data.length, [[0, data]]);
    const { plan, out } = await roundTrip(source, 'raw');
    assert.equal(plan.storedClusters, data.length / CLUSTER);
    assert.deepEqual(await outputData(out), [{ start: 0, length: data.length, plain: true }]);
  });

  it('sparse: only clusters that hold data are read and stored, pieces unaligned and in several L2 ranges', async () => {
    const pieces: [number, Buffer][] = [
      [12345 * 4096, randomBytes(4096)],
      // Crosses a cluster boundary: two clusters.
      [3 * CLUSTER - 100, randomBytes(300)],
      [700 * MiB + 1, randomBytes(1)],
      [1536 * MiB - 4096, randomBytes(4096)],
    ];
    const source = await rawDisk(2 * GiB, pieces);
    const { plan, bytesRead, out, map } = await roundTrip(source, 'raw');
    assert.equal(plan.storedClusters, 5);
    // The measuring pass reads what the map calls data (whole clusters), the stream the five stored clusters.
    assert.equal(plan.plannedBytesRead, mappedDataClusters(map.extents) * CLUSTER);
    assert.equal(bytesRead, plan.plannedBytesRead + 5 * CLUSTER);
    assert.equal(dataBytes(await outputData(out)), 5 * CLUSTER);
  });

  it('allocated zeros: read, found zero and not stored; with scanZeros false stored as data, same content', async () => {
    const data = randomBytes(CLUSTER);
    // 16 MiB of zeros written as data (allocated on disk), then one cluster of data.
    const source = await rawDisk(64 * MiB, [
      [4 * MiB, Buffer.alloc(16 * MiB)],
      [32 * MiB, data],
    ]);
    const scanned = await roundTrip(source, 'raw');
    assert.equal(scanned.plan.storedClusters, 1);
    assert.ok(mappedDataClusters(scanned.map.extents) >= (16 * MiB) / CLUSTER + 1, 'the map calls the zeros data');
    assert.equal(scanned.plan.plannedBytesRead, mappedDataClusters(scanned.map.extents) * CLUSTER, 'the measuring pass reads the allocated zeros');
    assert.deepEqual(await outputData(scanned.out), [{ start: 32 * MiB, length: CLUSTER, plain: true }]);

    const mapOnly = await roundTrip(source, 'raw', { scanZeros: false });
    assert.equal(mapOnly.plan.storedClusters, mappedDataClusters(mapOnly.map.extents));
    assert.equal(mapOnly.bytesRead, mappedDataClusters(mapOnly.map.extents) * CLUSTER, 'one read of what the map calls data');
  });

  it('last cluster partial: the tail of the disk is stored and nothing past it is read', async () => {
    const size = 5 * MiB + 12 * KiB + 512;
    const data = randomBytes(size);
    const source = await rawDisk(size, [[0, data]]);
    const { plan } = await roundTrip(source, 'raw');
    assert.equal(plan.storedClusters, Math.ceil(size / CLUSTER));
  });

  it('data past 4 GiB of a sparse 6 GiB disk, one piece across the 4 GiB boundary', async () => {
    const pieces: [number, Buffer][] = [
      [4 * GiB - 3000, randomBytes(6000)],
      [4 * GiB + 17 * 4096, randomBytes(4096)],
      [5 * GiB + 3 * CLUSTER, randomBytes(2 * CLUSTER)],
      [6 * GiB - 512, randomBytes(512)],
    ];
    const source = await rawDisk(6 * GiB, pieces);
    const { plan } = await roundTrip(source, 'raw');
    assert.equal(plan.storedClusters, 2 + 1 + 2 + 1);
  });

  it('compressed: clusters packed, incompressible ones stored plain, same content', async () => {
    const text = Buffer.from('vmsnap compresses like qemu-img convert -c. '.repeat(30000));
    const source = await rawDisk(256 * MiB, [
      [0, text],
      [100 * MiB, randomBytes(3 * CLUSTER)],
      [200 * MiB + 5, text.subarray(0, 5 * CLUSTER)],
    ]);
    const { plan, out } = await roundTrip(source, 'raw', { compress: true });
    assert.equal(plan.compressedClusters, Math.ceil(text.length / CLUSTER) + 6, 'the text clusters are compressed (roundTrip checks qemu-img agrees)');
    assert.deepEqual(
      (await outputData(out)).filter((e) => e.plain),
      [{ start: 100 * MiB, length: 3 * CLUSTER, plain: true }],
      'random data does not shrink: stored plain',
    );
    const qemus = `${fresh('qemu')}.qcow2`;
    await execa('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', source, qemus]);
    // In guest order, a plain cluster after compressed ones starts on a cluster boundary: at most one
    // cluster of padding per such run (one here) over qemu-img, which packs compressed data apart.
    const qemuSize = (await stat(qemus)).size;
    assert.ok(plan.size <= qemuSize + CLUSTER, `${plan.size} bytes, qemu-img convert -c: ${qemuSize}`);
  });
});

describe('qcow2 stream from a qcow2 disk over NBD', () => {
  // Data, zero clusters (write -z: the map says zero), zeros written as data, and a discarded range.
  const commands = [
    'write -P 0xab 0 1M',
    'write -P 0x11 1000k 100k',
    'write -z 2M 1M',
    'write -P 0 4M 256k',
    'write -P 0xcd 600M 64k',
    'write -P 0xef 3071M 1M',
    'discard 3071M 512k',
  ];

  it('streams the guest-visible content, not the source layout', async () => {
    const source = await qcow2Disk(3 * GiB, commands);
    const { plan, out } = await roundTrip(source, 'qcow2');
    // 0..1100 KiB of data (18 clusters: 1 MiB + the 100 KiB write past it), 600 MiB (1), the last 512 KiB (8).
    assert.equal(plan.storedClusters, 18 + 1 + 8);
    assert.equal(dataBytes(await outputData(out)), 27 * CLUSTER);
  });

  it('compressed', async () => {
    const source = await qcow2Disk(3 * GiB, commands);
    const { plan } = await roundTrip(source, 'qcow2', { compress: true });
    assert.equal(plan.compressedClusters, 27, 'pattern clusters all shrink');
  });

  it('small clusters: many L1, L2 and refcount-table clusters and refcount blocks', async () => {
    // 512-byte clusters: an L2 table maps 32 KiB, a refcount block 128 KiB of image, a refcount
    // table cluster 8 MiB: 20 MiB of data spans every kind of table several times.
    const source = await qcow2Disk(64 * MiB, ['write -P 0x5a 1M 20M', 'write -P 0 30M 1M', 'write -P 0x77 63M 1M']);
    const { plan } = await roundTrip(source, 'qcow2', { clusterBits: 9, requestSize: 256 * KiB });
    assert.equal(plan.storedClusters, (21 * MiB) / 512);
  });

  it('small clusters compressed: tens of compressed clusters share each host cluster', async () => {
    // A deflate per 512-byte cluster is slow: 1 MiB of data is 2048 of them, twice.
    const source = await qcow2Disk(64 * MiB, ['write -P 0x5a 1M 512k', 'write -P 0x77 63M 512k']);
    const { plan } = await roundTrip(source, 'qcow2', { clusterBits: 9, requestSize: 256 * KiB, compress: true });
    assert.equal(plan.compressedClusters, MiB / 512);
  });
});

/** An in-memory disk: a buffer and a map that may claim more data than there is. */
function memoryDisk(content: Buffer) {
  const reads: [number, number][] = [];
  const read = async (offset: number, length: number, into?: Buffer) => {
    reads.push([offset, length]);
    if (!into) return Buffer.from(content.subarray(offset, offset + length));
    content.copy(into, 0, offset, offset + length);
    return into;
  };
  return { source: { read }, reads };
}

async function collect(plan: Qcow2Stream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of plan.chunks()) parts.push(Buffer.from(chunk));
  return Buffer.concat(parts);
}

describe('qcow2 stream, the writer alone', () => {
  const size = 4 * MiB;
  const content = Buffer.alloc(size);
  randomBytes(CLUSTER).copy(content, MiB);

  it('a plan streams the same bytes each time (a retried upload sends the same image)', async () => {
    const disk = memoryDisk(content);
    const plan = await planQcow2Stream({ virtualSize: size, extents: [{ offset: 0, length: size, zero: false }] }, disk.source);
    const first = await collect(plan);
    const second = await collect(plan);
    assert.equal(first.length, plan.size);
    assert.equal(createHash('sha512').update(first).digest('hex'), createHash('sha512').update(second).digest('hex'));
    assert.equal(plan.storedClusters, 1);
    const out = `${fresh('mem')}.qcow2`;
    await writeStream(plan, out);
    await assertValid(out, size);
    const raw = await rawDisk(size, [[0, content]]);
    await assertSameContent(raw, 'raw', out);
  });

  it('reused buffers give the same bytes to a consumer that is done with each chunk before it pulls the next', async () => {
    const mixed = Buffer.alloc(size);
    for (let at = 0; at < size; at += 3 * CLUSTER) randomBytes(CLUSTER).copy(mixed, at);
    const plan = await planQcow2Stream({ virtualSize: size, extents: [{ offset: 0, length: size, zero: false }] }, memoryDisk(mixed).source, {
      requestSize: 2 * CLUSTER,
      readAhead: 2,
    });
    const hashOf = async (reuseBuffers: boolean) => {
      const hash = createHash('sha512');
      for await (const chunk of plan.chunks({ reuseBuffers })) hash.update(chunk);
      return hash.digest('hex');
    };
    assert.equal(await hashOf(true), await hashOf(false));
  });

  it('reads nothing the map calls zero, and reads in guest order', async () => {
    const disk = memoryDisk(content);
    const extents: Extent[] = [
      { offset: 0, length: MiB, zero: true },
      { offset: MiB, length: CLUSTER, zero: false },
      { offset: MiB + CLUSTER, length: size - MiB - CLUSTER, zero: true },
    ];
    const plan = await planQcow2Stream({ virtualSize: size, extents }, disk.source);
    await collect(plan);
    assert.deepEqual(disk.reads, [
      [MiB, CLUSTER],
      [MiB, CLUSTER],
    ]);
  });

  it('a disk that changes between the measuring pass and the stream fails instead of writing a broken image', async () => {
    const changing = Buffer.from(content);
    Buffer.from('a compressible cluster '.repeat(3000)).copy(changing, 2 * MiB, 0, CLUSTER);
    const plan = await planQcow2Stream(
      { virtualSize: size, extents: [{ offset: 0, length: size, zero: false }] },
      { read: async (offset, length) => Buffer.from(changing.subarray(offset, offset + length)) },
      { compress: true },
    );
    assert.equal(plan.compressedClusters, 1);
    randomBytes(CLUSTER).copy(changing, 2 * MiB);
    const err = await rejectsWith(collect(plan), 'ConvertFailed');
    assert.match(err.message, /changed while it was streamed/);
  });

  it('an abort stops planning and streaming between reads', async () => {
    const disk = memoryDisk(content);
    const whole = { virtualSize: size, extents: [{ offset: 0, length: size, zero: false }] };
    await assert.rejects(planQcow2Stream(whole, disk.source, { signal: AbortSignal.abort() }), { name: 'AbortError' });
    const plan = await planQcow2Stream(whole, disk.source, { scanZeros: false, requestSize: CLUSTER });
    const controller = new AbortController();
    const chunks: Buffer[] = [];
    await assert.rejects(
      (async () => {
        for await (const chunk of plan.chunks({ signal: controller.signal })) {
          chunks.push(chunk);
          // The sixth chunk is the first data cluster (after the header, L1, refcount table and block, and the L2 table).
          if (chunks.length === 6) controller.abort();
        }
      })(),
      { name: 'AbortError' },
    );
    assert.equal(chunks.length, 6);
  });

  it('a read error ends the stream with that error', async () => {
    const plan = await planQcow2Stream(
      { virtualSize: size, extents: [{ offset: MiB, length: CLUSTER, zero: false }] },
      {
        read: async () => {
          throw new Error('export gone');
        },
      },
      { scanZeros: false },
    );
    await assert.rejects(collect(plan), /export gone/);
  });

  it('bad input is refused with what to correct, before any read', async () => {
    const disk = memoryDisk(content);
    const bad: [string, Parameters<typeof planQcow2Stream>[0], Qcow2StreamOptions][] = [
      [
        'unsorted',
        {
          virtualSize: size,
          extents: [
            { offset: MiB, length: 10, zero: false },
            { offset: 0, length: 10, zero: false },
          ],
        },
        {},
      ],
      ['past the end', { virtualSize: size, extents: [{ offset: size - 10, length: 11, zero: false }] }, {}],
      ['zero size', { virtualSize: 0, extents: [] }, {}],
      ['request size', { virtualSize: size, extents: [] }, { requestSize: 1000 }],
      ['cluster bits', { virtualSize: size, extents: [] }, { clusterBits: 22 }],
    ];
    for (const [what, input, options] of bad) {
      const err = await rejectsWith(planQcow2Stream(input, disk.source, options), 'InvalidInput');
      assert.match(err.message, /qcow2 stream: /, what);
    }
    assert.deepEqual(disk.reads, []);
  });
});
