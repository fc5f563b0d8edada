// Integration test of the test guest against the real libvirt/QEMU on this host (no mocks).
// Needs root, libvirtd running (qemu:///system), qemu-utils, busybox-static and the cloud kernel.
// Data dir: $VMSNAP_DATA_DIR (default .data/test).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { checkOneInstant, createGuest, guestState, LIBVIRT_URI, readCounter, removeGuest, type Counter, type Guest } from '../../scripts/lib/guest.js';

const dataDir = path.resolve(process.env.VMSNAP_DATA_DIR ?? '.data/test');
const assetsDir = path.join(dataDir, 'guest-assets');
const guestsDir = path.join(dataDir, 'guests');
const name = `vmsnap-test-${process.pid}-${Date.now().toString(36)}`;

function assertConsistent(c: Counter, what: string): void {
  assert.ok(c.a === c.b || c.a === c.b + 1, `${what}: records disagree: A=${c.a} B=${c.b}`);
}

describe('test guest', { timeout: 400_000 }, () => {
  let guest: Guest | undefined;

  before(async () => {
    guest = await createGuest({ name, guestsDir, assetsDir });
  });

  // Clean up even when a test failed (removeGuest is harmless when already gone).
  after(async () => {
    await removeGuest(name, guestsDir);
  });

  test('is running after create', async () => {
    assert.ok(guest);
    assert.equal(guest.name, name);
    assert.match(guest.uuid, /^[0-9a-f-]{36}$/);
    assert.ok(existsSync(guest.diskPath), 'disk exists');
    assert.equal(await guestState(name), 'running');
  });

  test('counter advances and both records stay consistent', async () => {
    assert.ok(guest);
    const first = await readCounter(guest.diskPath, 'qcow2');
    assertConsistent(first, 'first read');
    assert.ok(first.a > 0, `counter is ${first.a} after ready`);
    await sleep(1500);
    const second = await readCounter(guest.diskPath, 'qcow2');
    assertConsistent(second, 'second read');
    assert.ok(second.a > first.a, `counter did not advance: ${first.a} -> ${second.a}`);
  });

  test('remove deletes the domain and its directory', async () => {
    assert.ok(guest);
    await removeGuest(name, guestsDir);
    assert.equal(await guestState(name), null);
    assert.ok(!existsSync(guest.dir), 'guest dir removed');
    await removeGuest(name, guestsDir); // idempotent
  });
});

const virsh = (...args: string[]) => execa('virsh', ['-c', LIBVIRT_URI, ...args]);

/** Every disk's counter, root first, read while the guest is paused: one instant of all its disks. */
async function pausedCounters(g: Guest): Promise<{ dev: string; counter: Counter }[]> {
  await virsh('suspend', g.name);
  try {
    const out = [{ dev: 'vda', counter: await readCounter(g.diskPath, 'qcow2') }];
    for (const d of g.dataDisks) out.push({ dev: d.dev, counter: await readCounter(d.path, d.format) });
    return out;
  } finally {
    await virsh('resume', g.name);
  }
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

describe('test guest with a data disk, a CD-ROM and a read-only disk', { timeout: 400_000 }, () => {
  const setName = `${name}-set`;
  let guest: Guest | undefined;

  before(async () => {
    guest = await createGuest({ name: setName, guestsDir, assetsDir, dataDisks: [{ format: 'raw' }], cdrom: true, readonlyDisk: true });
  });

  after(async () => {
    await removeGuest(setName, guestsDir);
  });

  test('the domain has the raw data disk, the read-only disk and the CD-ROM', async () => {
    assert.ok(guest);
    assert.deepEqual(
      guest.dataDisks.map((d) => ({ dev: d.dev, format: d.format, exists: existsSync(d.path) })),
      [{ dev: 'vdb', format: 'raw', exists: true }],
    );
    assert.equal(guest.readonlyDisk?.dev, 'vdc');
    assert.equal(guest.cdromDev, 'hdc');
    const xml = (await virsh('dumpxml', setName)).stdout;
    const disks = [...xml.matchAll(/<disk type='file' device='(\w+)'>[\s\S]*?<target dev='(\w+)' bus='(\w+)'\/>[\s\S]*?<\/disk>/g)].map((m) => ({
      device: m[1],
      dev: m[2],
      bus: m[3],
      readonly: /<readonly\/>/.test(m[0]),
    }));
    assert.deepEqual(disks, [
      { device: 'disk', dev: 'vda', bus: 'virtio', readonly: false },
      { device: 'disk', dev: 'vdb', bus: 'virtio', readonly: false },
      { device: 'disk', dev: 'vdc', bus: 'virtio', readonly: true },
      { device: 'cdrom', dev: 'hdc', bus: 'ide', readonly: true },
    ]);
    assert.equal(await guestState(setName), 'running');
  });

  test('the counters of both disks move together: one instant spans one step at most', async () => {
    assert.ok(guest);
    const g = guest;
    const first = await pausedCounters(g);
    assert.equal(checkOneInstant(first), undefined);
    assert.ok(first[1] && first[1].counter.a > 0, `data disk holds no counter: ${JSON.stringify(first)}`);
    const firstRoot = first[0]?.counter.a ?? 0;
    // Wait until the guest has moved on by more than one step (a condition, not a sleep).
    const second = await waitFor('the counter to move on by 3 steps', 60_000, async () => {
      const c = await pausedCounters(g);
      return (c[0]?.counter.a ?? 0) > firstRoot + 2 ? c : undefined;
    });
    assert.equal(checkOneInstant(second), undefined);
    assert.ok((second[1]?.counter.b ?? 0) > (first[1]?.counter.a ?? 0), `data disk did not move: ${JSON.stringify({ first, second })}`);
    // The root of one instant with the data disk of another is what a set copied at two instants looks like.
    const mixed = [second[0], first[1]].filter((d) => d !== undefined);
    assert.match(checkOneInstant(mixed) ?? '', /span \d+ steps/);
    const backwards = [first[0], second[1]].filter((d) => d !== undefined);
    assert.match(checkOneInstant(backwards) ?? '', /newer value/);
  });

  test('the read-only disk is never written', async () => {
    assert.ok(guest?.readonlyDisk);
    assert.deepEqual(await readCounter(guest.readonlyDisk.path, 'raw'), { a: 0, b: 0 });
  });

  test('a restarted guest prints what each disk held and carries on from it', async () => {
    assert.ok(guest);
    const g = guest;
    await virsh('destroy', g.name);
    const root = await readCounter(g.diskPath, 'qcow2');
    const data = await readCounter(g.dataDisks[0]?.path ?? '', 'raw');
    const readyLines = () =>
      readFileSync(g.consoleLog, 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('VMSNAP-GUEST-READY'));
    const before = readyLines().length;
    await virsh('start', g.name);
    await waitFor('the guest to be ready again', 120_000, async () => (readyLines().length > before ? true : undefined));
    const seen = readFileSync(g.consoleLog, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('VMSNAP-GUEST-DISKS'))
      .at(-1);
    assert.equal(seen?.trim(), `VMSNAP-GUEST-DISKS vda=${root.a}/${root.b} vdb=${data.a}/${data.b}`);
    const after = await waitFor('the counter to move on', 60_000, async () => {
      const c = await pausedCounters(g);
      return (c[1]?.counter.b ?? 0) > root.a ? c : undefined;
    });
    assert.equal(checkOneInstant(after), undefined);
  });
});
