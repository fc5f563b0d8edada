// Integration test of the test guest against the real libvirt/QEMU on this host (no mocks).
// Needs root, libvirtd running (qemu:///system), qemu-utils, busybox-static and the cloud kernel.
// Data dir: $VMSNAP_DATA_DIR (default .data/test).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createGuest, guestState, readCounter, removeGuest, type Counter, type Guest } from '../../scripts/lib/guest.js';

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
