// src/drivers/nbd.ts against qemu-nbd (QEMU's NBD server, as in the pull backup job's export) on a
// unix socket: the allocation map, reads of byte ranges, what is read for a sparse disk, and how
// failures show. Needs qemu-img, qemu-nbd and libnbd (scripts/setup), no stack.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { nbdUnixUri, openNbdReader, readAllocationMap } from '../../src/drivers/nbd.js';
import { planQcow2Stream } from '../../src/drivers/qcow2-stream.js';
import { rejectsWith } from '../support/assertions.js';
import { serveDisk, type ServedDisk } from '../support/qemu-nbd.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmsnap-nbd-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let serial = 0;

async function rawDisk(size: number, pieces: [number, Buffer][]): Promise<string> {
  const file = join(dir, `disk-${++serial}.raw`);
  const fh = await open(file, 'w');
  try {
    for (const [offset, data] of pieces) await fh.write(data, 0, data.length, offset);
  } finally {
    await fh.close();
  }
  await truncate(file, size);
  return file;
}

async function withServed<T>(file: string, format: 'raw' | 'qcow2', body: (served: ServedDisk) => Promise<T>, at = dir): Promise<T> {
  const served = await serveDisk(at, file, format, `nbd-${++serial}`);
  try {
    return await body(served);
  } finally {
    await served.stop();
  }
}

describe('NBD allocation map', () => {
  it('data where the disk holds data, zero elsewhere, covering the export', async () => {
    const file = await rawDisk(1 * GiB, [
      [8 * MiB, randomBytes(MiB)],
      [900 * MiB, randomBytes(4096)],
    ]);
    const map = await withServed(file, 'raw', (s) => readAllocationMap(s.uri));
    assert.equal(map.virtualSize, GiB);
    assert.deepEqual(map.extents, [
      { offset: 0, length: 8 * MiB, zero: true },
      { offset: 8 * MiB, length: MiB, zero: false },
      { offset: 9 * MiB, length: 891 * MiB, zero: true },
      { offset: 900 * MiB, length: 4096, zero: false },
      { offset: 900 * MiB + 4096, length: GiB - 900 * MiB - 4096, zero: true },
    ]);
  });

  it("a qcow2 disk's zero clusters are zero, its data is data", async () => {
    const file = join(dir, `disk-${++serial}.qcow2`);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', file, '64M']);
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 1M', '-c', 'write -z 1M 1M', '-c', 'write -P 2 2M 64k', file]);
    const map = await withServed(file, 'qcow2', (s) => readAllocationMap(s.uri));
    assert.deepEqual(map.extents, [
      { offset: 0, length: MiB, zero: false },
      { offset: MiB, length: MiB, zero: true },
      { offset: 2 * MiB, length: 64 * 1024, zero: false },
      { offset: 2 * MiB + 64 * 1024, length: 62 * MiB - 64 * 1024, zero: true },
    ]);
  });

  it('allocated clusters that read as zeros (NBD "zero", not a hole) are zero', async () => {
    // Metadata preallocation: every cluster allocated, over a sparse file: QEMU says zero, not hole.
    const file = join(dir, `disk-${++serial}.qcow2`);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', file, '8M']);
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 3 1M 64k', file]);
    const map = await withServed(file, 'qcow2', (s) => readAllocationMap(s.uri));
    assert.deepEqual(map.extents, [
      { offset: 0, length: MiB, zero: true },
      { offset: MiB, length: 64 * 1024, zero: false },
      { offset: MiB + 64 * 1024, length: 7 * MiB - 64 * 1024, zero: true },
    ]);
  });

  it('no server on the socket: ConvertFailed naming the export', async () => {
    const uri = nbdUnixUri(join(dir, 'nobody.sock'));
    const err = await rejectsWith(readAllocationMap(uri), 'ConvertFailed');
    assert.ok(err.message.includes(uri), err.message);
  });
});

describe('NBD reader', () => {
  it('reads the bytes at each range; overlapping requests are answered in order', async () => {
    const content = randomBytes(4 * MiB);
    const file = await rawDisk(16 * MiB, [[MiB, content]]);
    const whole = await readFile(file);
    await withServed(file, 'raw', async (s) => {
      const reader = await openNbdReader(s.uri);
      try {
        assert.equal(reader.size, 16 * MiB);
        const ranges: [number, number][] = [
          [0, 4096],
          [MiB - 100, 200],
          [MiB, 2 * MiB],
          [5 * MiB - 1, 1],
          [16 * MiB - 512, 512],
          [3 * MiB + 7, 777777],
        ];
        const got = await Promise.all(ranges.map(([offset, length]) => reader.read(offset, length)));
        got.forEach((buf, i) => {
          const [offset, length] = ranges[i]!;
          assert.ok(buf.equals(whole.subarray(offset, offset + length)), `range ${offset}+${length}`);
        });
        assert.equal(
          reader.bytesRead,
          ranges.reduce((n, [, length]) => n + length, 0),
        );
      } finally {
        await reader.close();
      }
    });
  });

  it('finds the clusters that hold a non-zero byte without sending the data', async () => {
    const cluster = 64 * 1024;
    // Clusters 1 and 3 (one byte at its end) hold data; cluster 2 and the partial last one hold written zeros.
    const size = 5 * cluster + 4096;
    const file = await rawDisk(size, [
      [cluster + 5, randomBytes(100)],
      [2 * cluster, Buffer.alloc(cluster)],
      [4 * cluster - 1, Buffer.from([7])],
      [5 * cluster, Buffer.alloc(4096)],
    ]);
    await withServed(file, 'raw', async (s) => {
      const reader = await openNbdReader(s.uri);
      try {
        assert.deepEqual([...(await reader.nonZeroClusters(0, size, cluster))], [0, 1, 0, 1, 0, 0]);
        assert.deepEqual([...(await reader.nonZeroClusters(3 * cluster, 2 * cluster + 4096, cluster))], [1, 0, 0]);
        assert.equal(reader.bytesRead, size + 2 * cluster + 4096, 'counted as read from the export');
        await rejectsWith(reader.nonZeroClusters(0, cluster, 0), 'InvalidInput');
      } finally {
        await reader.close();
      }
    });
  });

  it('a socket path with spaces and URI characters works', async () => {
    const odd = join(dir, 'a dir?with #odd %20 chars');
    await mkdir(odd);
    const data = randomBytes(4096);
    const file = await rawDisk(MiB, [[4096, data]]);
    await withServed(
      file,
      'raw',
      async (s) => {
        const map = await readAllocationMap(s.uri);
        assert.equal(map.virtualSize, MiB);
        const reader = await openNbdReader(s.uri);
        try {
          assert.ok((await reader.read(4096, 4096)).equals(data));
        } finally {
          await reader.close();
        }
      },
      odd,
    );
  });

  it('a 10 GiB sparse disk with 100 MiB of data: 100 MiB read per pass, nothing else', async () => {
    const pieces: [number, Buffer][] = [
      [0, randomBytes(40 * MiB)],
      [5 * GiB, randomBytes(50 * MiB)],
      [10 * GiB - 10 * MiB, randomBytes(10 * MiB)],
    ];
    const file = await rawDisk(10 * GiB, pieces);
    await withServed(file, 'raw', async (s) => {
      const map = await readAllocationMap(s.uri);
      for (const scanZeros of [false, true]) {
        const reader = await openNbdReader(s.uri);
        try {
          const plan = await planQcow2Stream(map, reader, { scanZeros });
          let streamed = 0;
          for await (const chunk of plan.chunks()) streamed += chunk.length;
          assert.equal(streamed, plan.size);
          // Once without the measuring pass, twice with it.
          assert.equal(reader.bytesRead, (scanZeros ? 2 : 1) * 100 * MiB, `scanZeros ${scanZeros}`);
        } finally {
          await reader.close();
        }
      }
    });
  });

  it('bad reads are refused; a closed reader and a server gone fail the reads waiting', async () => {
    const file = await rawDisk(MiB, [[0, randomBytes(MiB)]]);
    await withServed(file, 'raw', async (s) => {
      const reader = await openNbdReader(s.uri);
      await rejectsWith(reader.read(MiB - 10, 11), 'InvalidInput');
      await rejectsWith(reader.read(-1, 10), 'InvalidInput');
      await rejectsWith(reader.read(0, 0), 'InvalidInput');
      assert.equal((await reader.read(0, 10)).length, 10, 'still usable after refused reads');
      await reader.close();
      await rejectsWith(reader.read(0, 10), 'ConvertFailed');
    });

    const served = await serveDisk(dir, file, 'raw', `nbd-${++serial}`);
    const reader = await openNbdReader(served.uri);
    try {
      await served.stop();
      const err = await rejectsWith(reader.read(0, MiB), 'ConvertFailed');
      assert.ok(err.message.includes(served.uri), err.message);
    } finally {
      await reader.close();
    }
  });

  it('no server on the socket: the open fails with ConvertFailed', async () => {
    await rejectsWith(openNbdReader(nbdUnixUri(join(dir, 'nobody.sock'))), 'ConvertFailed');
  });
});
