// Integration test of the qemu-img driver against the real qemu-img/qemu-io on this host (no
// mocks), plus one real test guest for the image-lock case. Needs root, libvirtd and qemu-utils.
// Env: VMSNAP_DATA_DIR (default .data/test). Scratch files go to a temp dir that is removed.
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { createGuest, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { check, convert, info } from '../../src/drivers/qemu-img.js';
import { rejectsWith } from '../support/assertions.js';

const dataDir = path.resolve(process.env.VMSNAP_DATA_DIR ?? '.data/test');
const assetsDir = path.join(dataDir, 'guest-assets');
const guestsDir = path.join(dataDir, 'guests');
const guestName = `vmsnap-test-qi-${process.pid}-${Date.now().toString(36)}`;
const MiB = 1024 * 1024;

let dir = '';
const p = (name: string) => path.join(dir, name);

async function qemuImg(...args: string[]): Promise<void> {
  await execa('qemu-img', args);
}

/** qemu-io commands on an image; throws when qemu-io reports a failed or mismatching read. */
async function qemuIo(file: string, format: string, ...cmds: string[]): Promise<void> {
  const r = await execa('qemu-io', ['-f', format, ...cmds.flatMap((c) => ['-c', c]), file], { reject: false });
  // qemu-io exits 0 even when a pattern does not match: read its output too.
  if (r.failed || /fail|error|mismatch/i.test(r.stdout + r.stderr)) {
    throw new Error(`qemu-io ${cmds.join('; ')} on ${file}: ${r.stdout}\n${r.stderr}`);
  }
}

/** Writes `dataBytes` of random data at the start of a sparse file of `size` bytes. */
async function randomFile(file: string, size: number, dataBytes: number): Promise<void> {
  const fh = await fs.open(file, 'w');
  try {
    const chunk = Buffer.alloc(8 * MiB);
    for (let off = 0; off < dataBytes; off += chunk.length) {
      randomFillSync(chunk);
      await fh.write(chunk, 0, Math.min(chunk.length, dataBytes - off), off);
    }
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

/** Pids of live qemu-img processes whose command line mentions `needle`. */
async function qemuImgProcesses(needle: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const argv = cmdline.split('\0');
    if (argv[0] && path.basename(argv[0]) === 'qemu-img' && argv.includes(needle)) pids.push(Number(entry));
  }
  return pids;
}

describe('qemu-img driver', { timeout: 300_000 }, () => {
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmsnap-test-qemu-img-'));
    // base: 1 MiB of 0x5a at 0; overlay on it: 1 MiB of 0xa5 at 4 MiB.
    await qemuImg('create', '-q', '-f', 'qcow2', p('base.qcow2'), '64M');
    await qemuIo(p('base.qcow2'), 'qcow2', 'write -P 0x5a 0 1M');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('overlay.qcow2'));
    await qemuIo(p('overlay.qcow2'), 'qcow2', 'write -P 0xa5 4M 1M');
  });

  after(async () => {
    await removeGuest(guestName, guestsDir);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test("info shows the overlay's backing file", async () => {
    const i = await info(p('overlay.qcow2'), { format: 'qcow2' });
    assert.equal(i.format, 'qcow2');
    assert.equal(i.virtualSize, 64 * MiB);
    assert.equal(i.backingFile, 'base.qcow2');
    assert.ok(i.actualSize > 0);
  });

  for (const fmt of ['qcow2', 'raw'] as const) {
    test(`convert flattens a backing chain into a standalone ${fmt}`, async () => {
      const out = p(`flat.${fmt}`);
      await convert({ source: p('overlay.qcow2'), sourceFormat: 'qcow2', target: out, targetFormat: fmt });
      const i = await info(out, { format: fmt });
      assert.equal(i.format, fmt);
      assert.equal(i.backingFile, undefined);
      assert.equal(i.virtualSize, 64 * MiB);
      // Same guest-visible content, and the data of both layers really is in the output.
      await qemuImg('compare', '-q', '-f', 'qcow2', '-F', fmt, p('overlay.qcow2'), out);
      await qemuIo(out, fmt, 'read -P 0x5a 0 1M', 'read -P 0xa5 4M 1M', 'read -P 0 1M 3M');
      assert.deepEqual(await check(out, fmt), {
        ok: true,
        message: fmt === 'raw' ? 'raw image: no metadata to check' : 'no errors found',
      });
      await fs.rm(out);
    });
  }

  test('a sparse source gives a sparse target (raw and qcow2)', async () => {
    await qemuImg('create', '-q', '-f', 'raw', p('sparse.raw'), '1G');
    await qemuIo(p('sparse.raw'), 'raw', 'write -P 0x11 100M 8M');
    assert.ok((await info(p('sparse.raw'), { format: 'raw' })).actualSize < 16 * MiB, 'source is not sparse');
    for (const fmt of ['raw', 'qcow2'] as const) {
      const out = p(`sparse-out.${fmt}`);
      await convert({ source: p('sparse.raw'), sourceFormat: 'raw', target: out, targetFormat: fmt });
      const i = await info(out, { format: fmt });
      assert.equal(i.virtualSize, 1024 * MiB);
      assert.ok(i.actualSize < 64 * MiB, `${fmt} target allocates ${i.actualSize} bytes`);
      await qemuIo(out, fmt, 'read -P 0x11 100M 8M');
      await fs.rm(out);
    }
    await fs.rm(p('sparse.raw'));
  });

  test('progress: increasing percentages ending at 100', async () => {
    await randomFile(p('r64.raw'), 64 * MiB, 64 * MiB);
    const seen: number[] = [];
    await convert({
      source: p('r64.raw'),
      sourceFormat: 'raw',
      target: p('r64.qcow2'),
      targetFormat: 'qcow2',
      onProgress: (pct) => seen.push(pct),
    });
    assert.ok(seen.length >= 3, `only ${seen.length} progress reports: ${seen.join(', ')}`);
    for (let i = 1; i < seen.length; i++) {
      assert.ok((seen[i] as number) > (seen[i - 1] as number), `not increasing: ${seen.join(', ')}`);
    }
    assert.equal(seen.at(-1), 100);
    await qemuImg('compare', '-q', '-f', 'raw', '-F', 'qcow2', p('r64.raw'), p('r64.qcow2'));
    await fs.rm(p('r64.raw'));
    await fs.rm(p('r64.qcow2'));
  });

  test('compressed qcow2 output has the same content', async () => {
    await convert({
      source: p('overlay.qcow2'),
      sourceFormat: 'qcow2',
      target: p('compressed.qcow2'),
      targetFormat: 'qcow2',
      compress: true,
    });
    await qemuImg('compare', '-q', '-f', 'qcow2', '-F', 'qcow2', p('overlay.qcow2'), p('compressed.qcow2'));
    await fs.rm(p('compressed.qcow2'));
    await rejectsWith(convert({ source: p('overlay.qcow2'), sourceFormat: 'qcow2', target: p('x.raw'), targetFormat: 'raw', compress: true }), 'InvalidInput');
  });

  test('abort kills qemu-img, waits for it and removes the partial target', async () => {
    // 2 GiB with 512 MiB of random data, compressed: takes seconds, so the abort lands mid-copy.
    await randomFile(p('big.raw'), 2048 * MiB, 512 * MiB);
    const target = p('big.qcow2');
    const ac = new AbortController();
    const seen: number[] = [];
    let aborted = false;
    const run = convert({
      source: p('big.raw'),
      sourceFormat: 'raw',
      target,
      targetFormat: 'qcow2',
      compress: true,
      signal: ac.signal,
      onProgress: (pct) => {
        seen.push(pct);
        if (pct >= 2 && !ac.signal.aborted) {
          aborted = true;
          ac.abort();
        }
      },
    });
    await assert.rejects(run, (e: Error) => e.name === 'AbortError');
    assert.ok(aborted, 'never aborted: the convert finished first');
    assert.ok((seen.at(-1) ?? 100) < 100, `convert had finished: ${seen.join(', ')}`);
    // In order: the abort landed mid-copy, and the promise settled only once qemu-img was gone.
    assert.deepEqual(await qemuImgProcesses(target), [], 'qemu-img still running');
    assert.ok(!existsSync(target), 'partial target left behind');
    // Already aborted: nothing is started at all.
    await assert.rejects(
      convert({ source: p('big.raw'), sourceFormat: 'raw', target, targetFormat: 'qcow2', signal: ac.signal }),
      (e: Error) => e.name === 'AbortError',
    );
    assert.ok(!existsSync(target));
    await fs.rm(p('big.raw'));
  });

  test('missing source or backing file: DiskNotFound', async () => {
    const e = await rejectsWith(convert({ source: p('nope.qcow2'), sourceFormat: 'qcow2', target: p('out.qcow2'), targetFormat: 'qcow2' }), 'DiskNotFound');
    assert.equal(e.retryable, false);
    await rejectsWith(info(p('nope.qcow2')), 'DiskNotFound');
    await rejectsWith(check(p('nope.qcow2'), 'qcow2'), 'DiskNotFound');

    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', '-u', p('orphan.qcow2'), '64M');
    const b = await rejectsWith(convert({ source: p('orphan.qcow2'), sourceFormat: 'qcow2', target: p('out.qcow2'), targetFormat: 'qcow2' }), 'DiskNotFound');
    assert.match(b.message, /backing file/);
    assert.ok(!existsSync(p('out.qcow2')));
    await fs.rm(p('orphan.qcow2'));
  });

  test('garbage over a qcow2 header: ImageCorrupt', async () => {
    await fs.copyFile(p('base.qcow2'), p('bad.qcow2'));
    const fh = await fs.open(p('bad.qcow2'), 'r+');
    await fh.write(Buffer.from('this is not a qcow2 header at all'.repeat(16)), 0, undefined, 0);
    await fh.close();
    const e = await rejectsWith(convert({ source: p('bad.qcow2'), sourceFormat: 'qcow2', target: p('out.raw'), targetFormat: 'raw' }), 'ImageCorrupt');
    assert.equal(e.retryable, false);
    assert.match(e.message, /not in qcow2 format/);
    assert.ok(!existsSync(p('out.raw')));
    await rejectsWith(info(p('bad.qcow2'), { format: 'qcow2' }), 'ImageCorrupt');
    const c = await check(p('bad.qcow2'), 'qcow2');
    assert.equal(c.ok, false);
    await fs.rm(p('bad.qcow2'));
  });

  test('check finds broken refcounts that still open fine', async () => {
    await fs.copyFile(p('base.qcow2'), p('refs.qcow2'));
    // Zero the first refcount entries: header, refcount table and L1 now claim to be free.
    const fh = await fs.open(p('refs.qcow2'), 'r+');
    const header = Buffer.alloc(72);
    await fh.read(header, 0, 72, 0);
    const table = Buffer.alloc(8);
    await fh.read(table, 0, 8, Number(header.readBigUInt64BE(48)));
    await fh.write(Buffer.alloc(8), 0, 8, Number(table.readBigUInt64BE(0)));
    await fh.close();
    const c = await check(p('refs.qcow2'), 'qcow2');
    assert.equal(c.ok, false);
    assert.match(c.message, /corruptions/);
    await fs.rm(p('refs.qcow2'));
  });

  test("a running guest's disk: locked without forceShare, readable with it", async () => {
    const guest: Guest = await createGuest({ name: guestName, guestsDir, assetsDir });
    const target = p('live.qcow2');
    const e = await rejectsWith(convert({ source: guest.diskPath, sourceFormat: 'qcow2', target, targetFormat: 'qcow2' }), 'InstanceInvalidState');
    assert.match(e.message, /lock/);
    assert.ok(!existsSync(target));
    await rejectsWith(info(guest.diskPath, { format: 'qcow2' }), 'InstanceInvalidState');

    await convert({ source: guest.diskPath, sourceFormat: 'qcow2', target, targetFormat: 'qcow2', forceShare: true });
    const i = await info(target, { format: 'qcow2' });
    assert.equal(i.backingFile, undefined);
    assert.equal((await check(target, 'qcow2')).ok, true);
    // The guest was not paused, so this copy is only crash-consistent-ish; it is still its disk.
    const c = await readCounter(target, 'qcow2');
    assert.ok(c.a > 0);
    await removeGuest(guestName, guestsDir);
  });
});
