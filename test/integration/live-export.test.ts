// Integration test of the live export driver part (LibvirtHypervisor.startLiveExport /
// liveExportRunning / abortLiveCopy) against the real libvirt/QEMU on this host, with the counter
// test guest: the pull backup job's point in time stays served over NBD until it is ended, however
// long and however often it is read, while the guest writes on and QEMU keeps the old data of what
// it overwrites in the scratch image. The image is made from the export by vmsnap's stream and
// checked with qemu-img against the export itself. Needs root, libvirtd, qemu-utils, libnbd-bin
// and python3-libnbd.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { createGuest, readCounter, removeGuest, type Counter, type Guest } from '../../scripts/lib/guest.js';
import { qemuUser } from '../../src/drivers/files.js';
import type { LiveExport } from '../../src/drivers/hypervisor.js';
import { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import { nbdUnixUri, openNbdReader, readAllocationMap } from '../../src/drivers/nbd.js';
import { planQcow2Stream } from '../../src/drivers/qcow2-stream.js';
import { rejectsWith } from '../support/assertions.js';

const uri = process.env.VMSNAP_LIBVIRT_URI ?? 'qemu:///system';
const dataDir = path.resolve(process.env.VMSNAP_DATA_DIR ?? '.data/test');
const assetsDir = path.join(dataDir, 'guest-assets');
const guestsDir = path.join(dataDir, 'guests');
const prefix = `vmsnap-test-export-${process.pid}`;
const outDir = path.join(dataDir, `live-export-${process.pid}`);
const MiB = 1024 * 1024;
const BULK_OFFSET = 64 * MiB;
const BULK_MIB = 64;

const hv = new LibvirtHypervisor({ uri });

async function virsh(...args: string[]): Promise<string> {
  return (await execa('virsh', ['-c', uri, ...args], { env: { LC_ALL: 'C' } })).stdout;
}

async function jobType(name: string): Promise<string> {
  return /Job type:\s*(\S+)/.exec(await virsh('domjobinfo', name))?.[1] ?? '?';
}

async function exists(file: string): Promise<boolean> {
  return fs.lstat(file).then(
    () => true,
    () => false,
  );
}

/** A fresh export dir, QEMU's own, as the snapshot's temp dir is. */
async function exportDir(name: string): Promise<string> {
  const dir = path.join(outDir, name);
  await fs.rm(dir, { recursive: true, force: true });
  await fs.mkdir(dir, { mode: 0o700 });
  const qemu = await qemuUser();
  if (qemu) await fs.chown(dir, qemu.uid, qemu.gid);
  return dir;
}

/** The image vmsnap's stream makes from the export, written to a file; its sha512. */
async function streamToFile(exp: LiveExport, file: string): Promise<string> {
  const nbd = nbdUnixUri(exp.socket, exp.exportName);
  const reader = await openNbdReader(nbd);
  try {
    const plan = await planQcow2Stream(await readAllocationMap(nbd), reader, { scanZeros: false });
    const hash = createHash('sha512');
    const out = createWriteStream(file);
    for await (const chunk of plan.chunks()) {
      hash.update(chunk);
      if (!out.write(chunk)) await once(out, 'drain');
    }
    out.end();
    await once(out, 'close');
    return hash.digest('hex');
  } finally {
    await reader.close();
  }
}

function assertConsistent(c: Counter, what: string): void {
  assert.ok(c.a === c.b || c.a === c.b + 1, `${what}: records disagree: A=${c.a} B=${c.b}`);
}

/** Waits until the guest's counter on its disk is past `value`. */
async function counterPast(g: Guest, value: number): Promise<number> {
  const until = Date.now() + 30_000;
  for (;;) {
    const now = (await readCounter(g.diskPath, 'qcow2')).a;
    if (now > value) return now;
    assert.ok(Date.now() < until, `counter stuck at ${now}: is the guest still running?`);
    await sleep(100);
  }
}

/** Writes through the guest's disk device in QEMU, as the guest's own writes go (copy-before-write included). */
async function deviceWrite(name: string, pattern: number, offset: number, length: number): Promise<void> {
  await virsh('qemu-monitor-command', name, '--hmp', `qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P ${pattern} ${offset} ${length}"`);
}

describe('live export (pull backup job left running)', { timeout: 600_000 }, () => {
  let g: Guest | undefined;

  before(async () => {
    await fs.mkdir(outDir, { recursive: true });
    await fs.chmod(outDir, 0o711);
    g = await createGuest({
      name: `${prefix}-main`,
      guestsDir,
      assetsDir,
      diskSizeMiB: 256,
      beforeStart: async (guest) => {
        await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a ${BULK_OFFSET} ${BULK_MIB}M`, guest.diskPath]);
      },
    });
  });

  after(async () => {
    if (g) await execa('virsh', ['-c', uri, 'domjobabort', g.name], { reject: false });
    await removeGuest(`${prefix}-main`, guestsDir);
    await fs.rm(outDir, { recursive: true, force: true });
  });

  test('one point in time, served until the job is ended: read twice, the same image, while the guest writes on and its overwritten data goes to the scratch image', async () => {
    assert.ok(g);
    const dir = await exportDir('pit');
    const started = await hv.startLiveExport(g.uuid, { dir, quiesce: 'never' });
    assert.ok(started.started, JSON.stringify(started));
    assert.equal(started.exportName, 'vda');
    assert.equal(started.consistency, 'crash-consistent');
    assert.ok(await hv.liveExportRunning(g.uuid, started.socket));
    assert.equal(await jobType(g.name), 'Unbounded');

    const first = path.join(outDir, 'first.qcow2');
    const sha = await streamToFile(started, first);
    const check = await execa('qemu-img', ['check', '-f', 'qcow2', first], { reject: false });
    assert.equal(check.exitCode, 0, check.stdout + check.stderr);
    // Byte for byte the export, as QEMU's own NBD client reads it.
    const nbd = `nbd+unix:///vda?socket=${started.socket}`;
    const same = await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', first, nbd], { reject: false });
    assert.equal(same.exitCode, 0, same.stdout + same.stderr);
    const pit = await readCounter(first, 'qcow2');
    assertConsistent(pit, 'the image');

    // The guest writes on, and overwrites bulk data: the export still serves the point in time.
    await counterPast(g, pit.a + 5);
    const scratchBefore = (await fs.stat(started.scratch)).blocks * 512;
    await deviceWrite(g.name, 0x33, BULK_OFFSET, 8 * MiB);
    const scratchAfter = (await fs.stat(started.scratch)).blocks * 512;
    assert.ok(scratchAfter - scratchBefore >= 8 * MiB, `the overwritten data's old copy is kept: scratch ${scratchBefore} -> ${scratchAfter} bytes`);
    const second = path.join(outDir, 'second.qcow2');
    assert.equal(await streamToFile(started, second), sha, 'a second read of the export makes the same image');
    const pattern = await execa('qemu-io', ['-r', '-f', 'qcow2', '-c', `read -P 0x5a ${BULK_OFFSET} ${BULK_MIB}M`, second], { reject: false });
    assert.doesNotMatch(pattern.stdout + pattern.stderr, /fail/i, 'the old data, not what the guest wrote since');

    assert.equal(await hv.abortLiveCopy(g.uuid, dir), true);
    assert.equal(await hv.liveExportRunning(g.uuid, started.socket), false);
    assert.equal(await jobType(g.name), 'None');
    assert.ok(!(await exists(started.scratch)) && !(await exists(path.dirname(started.socket))), 'scratch image and socket removed');
    assert.equal(await hv.abortLiveCopy(g.uuid, dir), false, 'nothing left to end');
    assert.equal((await virsh('domstate', g.name)).trim(), 'running');
    await counterPast(g, pit.a + 10);
  });

  test("a start that finds its own dir's job (a retry after a dead worker) ends it and starts anew; a job elsewhere is refused", async () => {
    assert.ok(g);
    const dir = await exportDir('again');
    const first = await hv.startLiveExport(g.uuid, { dir, quiesce: 'never' });
    assert.ok(first.started);
    const second = await hv.startLiveExport(g.uuid, { dir, quiesce: 'never' });
    assert.ok(second.started);
    assert.ok(await hv.liveExportRunning(g.uuid, second.socket));
    const other = await exportDir('other');
    const e = await rejectsWith(hv.startLiveExport(g.uuid, { dir: other, quiesce: 'never' }), 'HypervisorError');
    assert.match(e.message, /already has a pull-mode backup job/);
    assert.ok(!(await exists(path.join(other, 'export.scratch'))));
    assert.equal(await hv.abortLiveCopy(g.uuid, dir), true);
    assert.equal(await jobType(g.name), 'None');
  });

  test('push asked for: nothing started and why; quiesce required without an agent: refused, no job left', async () => {
    assert.ok(g);
    const dir = await exportDir('refused');
    assert.deepEqual(await hv.startLiveExport(g.uuid, { dir, method: 'push' }), {
      started: false,
      reason: 'VMSNAP_LIVE_METHOD is push: QEMU copies the disk itself',
    });
    await rejectsWith(hv.startLiveExport(g.uuid, { dir, quiesce: 'require' }), 'InstanceInvalidState');
    await rejectsWith(hv.startLiveExport(g.uuid, { dir: 'relative/dir' }), 'InvalidInput');
    assert.equal(await jobType(g.name), 'None');
    assert.deepEqual(await fs.readdir(dir), []);
  });

  test('a root disk served by an iothread is never exported (ending a pull job there makes QEMU abort): auto says why, pull is refused', async () => {
    const name = `${prefix}-iothread`;
    try {
      const io = await createGuest({
        name,
        guestsDir,
        assetsDir,
        beforeStart: async (guest) => {
          const xml = await virsh('dumpxml', '--inactive', guest.name);
          const withIothread = xml
            .replace(/<vcpu/, '<iothreads>1</iothreads>\n  <vcpu')
            .replace(/(<driver name='qemu' type='qcow2'[^/]*)\/>/, "$1 iothread='1'/>");
          assert.match(withIothread, /iothread='1'/);
          const file = path.join(outDir, 'iothread.xml');
          await fs.writeFile(file, withIothread);
          await virsh('define', file);
        },
      });
      const dir = await exportDir('iothread');
      const auto = await hv.startLiveExport(io.uuid, { dir, quiesce: 'never' });
      assert.equal(auto.started, false);
      assert.match(auto.started ? '' : auto.reason, /iothread/);
      const e = await rejectsWith(hv.startLiveExport(io.uuid, { dir, quiesce: 'never', method: 'pull' }), 'InvalidInput');
      assert.match(e.message, /iothread.*push/);
      assert.equal(await jobType(name), 'None');
      assert.equal((await virsh('domstate', name)).trim(), 'running');
    } finally {
      await removeGuest(name, guestsDir);
    }
  });
});
