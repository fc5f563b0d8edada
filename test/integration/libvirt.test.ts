// Integration test of LibvirtHypervisor against the real libvirt/QEMU on this host (no mocks):
// a real test guest (scripts/lib/guest.ts) plus two defined-only domains for the XML cases.
// Needs root and libvirtd. Env: VMSNAP_LIBVIRT_URI (default qemu:///system), VMSNAP_DATA_DIR
// (default .data/test).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { createGuest, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import { VirshShells } from '../../src/drivers/virsh-shell.js';
import { rejectsWith } from '../support/assertions.js';

const uri = process.env.VMSNAP_LIBVIRT_URI ?? 'qemu:///system';
const dataDir = path.resolve(process.env.VMSNAP_DATA_DIR ?? '.data/test');
const assetsDir = path.join(dataDir, 'guest-assets');
const guestsDir = path.join(dataDir, 'guests');
const prefix = `vmsnap-test-lv-${process.pid}-${Date.now().toString(36)}`;
const guestName = `${prefix}-run`;
// Never started: only their definitions matter.
const novaName = `${prefix}-nova`;
const novaUuid = randomUUID();
const baseImage = randomUUID();
const cdromName = `${prefix}-cdrom`;
const cdromUuid = randomUUID();

const hv = new LibvirtHypervisor({ uri });

async function define(xml: string): Promise<void> {
  const file = path.join(os.tmpdir(), `${prefix}-${randomUUID()}.xml`);
  await fs.writeFile(file, xml);
  try {
    await execa('virsh', ['-c', uri, 'define', file]);
  } finally {
    await fs.rm(file, { force: true });
  }
}

describe('LibvirtHypervisor', { timeout: 400_000 }, () => {
  let guest: Guest | undefined;
  let shimDir: string | undefined;

  before(async () => {
    guest = await createGuest({ name: guestName, guestsDir, assetsDir });
    // Nova-style domain: a cdrom before the root disk, a block root disk, double-quoted attributes
    // and Nova's metadata, as Nova's libvirt driver writes it.
    await define(`<domain type="qemu">
  <name>${novaName}</name>
  <uuid>${novaUuid}</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>test &amp; co</nova:name>
      <nova:root type="image" uuid="${baseImage}"/>
    </nova:instance>
  </metadata>
  <memory unit="MiB">64</memory>
  <os><type arch="x86_64">hvm</type></os>
  <devices>
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw"/>
      <source file="/var/lib/vmsnap-test/config.iso"/>
      <target dev="hdc" bus="ide"/>
      <readonly/>
    </disk>
    <disk type="block" device="disk">
      <driver name="qemu" type="raw" cache="none"/>
      <source dev="/dev/mapper/vmsnap-test-root"/>
      <target dev="vda" bus="virtio"/>
    </disk>
  </devices>
</domain>`);
    await define(`<domain type='qemu'>
  <name>${cdromName}</name>
  <uuid>${cdromUuid}</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='cdrom'>
      <source file='/var/lib/vmsnap-test/config.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
  </devices>
</domain>`);
  });

  // Clean up even when a test failed (removeGuest is harmless when already gone).
  after(async () => {
    for (const n of [guestName, novaName, cdromName]) await removeGuest(n, guestsDir);
    if (shimDir) await fs.rm(shimDir, { recursive: true, force: true });
  });

  test('listInstances has the running guest and the defined domains', async () => {
    assert.ok(guest);
    const all = await hv.listInstances();
    const byId = new Map(all.map((i) => [i.id, i]));
    // The owner is the one createGuest wrote into the domain's metadata (the stack's vmsnap project when run in a stack).
    const owner = guest.owner ? { owner: guest.owner } : {};
    assert.deepEqual(byId.get(guest.uuid), { id: guest.uuid, name: guestName, powerState: 'running', ...owner });
    assert.deepEqual(byId.get(novaUuid), { id: novaUuid, name: novaName, powerState: 'shutdown', baseImageRef: baseImage });
    assert.equal(byId.get(cdromUuid)?.powerState, 'shutdown');
  });

  test('getInstance: known, unknown (InstanceNotFound), upper-case id', async () => {
    assert.ok(guest);
    assert.equal((await hv.getInstance(guest.uuid)).name, guestName);
    assert.equal((await hv.getInstance(guest.uuid.toUpperCase())).id, guest.uuid);
    const e = await rejectsWith(hv.getInstance(randomUUID()), 'InstanceNotFound');
    assert.equal(e.retryable, false);
    assert.match(e.message, /does not exist/);
  });

  test('a non-UUID id is InvalidInput and never reaches virsh', async () => {
    // A virsh shim first in PATH logs every call, so "no call" is observed, not assumed.
    shimDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmsnap-test-shim-'));
    const log = path.join(shimDir, 'calls.log');
    const realVirsh = (await execa('sh', ['-c', 'command -v virsh'])).stdout.trim();
    // A virsh shell (no command in its arguments) gets its commands on stdin: those are logged too.
    await fs.writeFile(
      path.join(shimDir, 'virsh'),
      `#!/bin/sh\nif [ "$#" -le 2 ]; then tee -a '${log}' | '${realVirsh}' "$@"; exit; fi\necho "$*" >> '${log}'\nexec '${realVirsh}' "$@"\n`,
      { mode: 0o755 },
    );
    const oldPath = process.env.PATH;
    process.env.PATH = `${shimDir}:${oldPath ?? ''}`;
    try {
      // Made now, so that its shells are started through the shim; one without shells as well.
      for (const hv of [new LibvirtHypervisor({ uri }), new LibvirtHypervisor({ uri, shells: false })]) {
        for (const bad of ['../etc; rm -rf /', '--help', '', `${randomUUID()} x`, `${randomUUID()}\n`]) {
          await rejectsWith(hv.getInstance(bad), 'InvalidInput');
          await rejectsWith(hv.pause(bad), 'InvalidInput');
          await rejectsWith(hv.resume(bad), 'InvalidInput');
          await rejectsWith(hv.rootDisk(bad), 'InvalidInput');
          await rejectsWith(hv.liveCopySupport(bad), 'InvalidInput');
          await rejectsWith(hv.liveCopy(bad, { target: '/nonexistent/x.qcow2', targetFormat: 'qcow2' }), 'InvalidInput');
          await rejectsWith(hv.watchPauses(bad), 'InvalidInput');
        }
        assert.equal(await fs.readFile(log, 'utf8').catch(() => ''), '', 'virsh was called');
        // Control: the shim does see real calls.
        await hv.getInstance(novaUuid);
        assert.match(await fs.readFile(log, 'utf8'), /dumpxml/);
        await fs.rm(log);
      }
    } finally {
      process.env.PATH = oldPath;
    }
  });

  test('virsh shells: arguments quoted, failures and missing domains as from a process, and the shell goes on after a failure', async () => {
    const shells = new VirshShells(uri);
    try {
      const echoed = await shells.run(['echo', "it's", 'a "b" c', 'd\\e', ''], 10_000);
      assert.deepEqual(
        { stdout: echoed?.stdout, failed: echoed?.failed },
        { stdout: `it's a "b" c d\\e `, failed: false },
        'arguments come back as they were sent',
      );
      assert.equal(await shells.run(['echo', 'two\nlines'], 10_000), undefined, 'a newline cannot go through a shell line');
      const missing = await shells.run(['domstate', randomUUID()], 10_000);
      assert.equal(missing?.failed, true);
      assert.match(missing?.stderr ?? '', /failed to get domain/);
      // The same shell answers on after a failed command.
      const state = await shells.run(['domstate', novaUuid], 10_000);
      assert.deepEqual({ stdout: state?.stdout.trim(), failed: state?.failed }, { stdout: 'shut off', failed: false });
    } finally {
      shells.close();
    }
  });

  test('pause stops the guest, twice is fine; resume restarts it, twice is fine', async () => {
    assert.ok(guest);
    await hv.pause(guest.uuid);
    assert.equal((await hv.getInstance(guest.uuid)).powerState, 'paused');
    const c1 = await readCounter(guest.diskPath, 'qcow2');
    await sleep(1200);
    const c2 = await readCounter(guest.diskPath, 'qcow2');
    assert.deepEqual(c2, c1, 'counter changed while paused');
    // A pause can land between the two writes of a step (A == B + 1); both are consistent.
    assert.ok(c1.a === c1.b || c1.a === c1.b + 1, `records disagree while paused: A=${c1.a} B=${c1.b}`);
    assert.ok(c1.a > 0);

    await hv.pause(guest.uuid);
    assert.equal((await hv.getInstance(guest.uuid)).powerState, 'paused');

    await hv.resume(guest.uuid);
    assert.equal((await hv.getInstance(guest.uuid)).powerState, 'running');
    await sleep(1200);
    const c3 = await readCounter(guest.diskPath, 'qcow2');
    assert.ok(c3.a > c2.a, `counter did not advance after resume: ${c2.a} -> ${c3.a}`);

    await hv.resume(guest.uuid);
    assert.equal((await hv.getInstance(guest.uuid)).powerState, 'running');
  });

  test('pause/resume of a shut-off domain: InstanceInvalidState; of a missing one: InstanceNotFound', async () => {
    for (const op of ['pause', 'resume'] as const) {
      const e = await rejectsWith(hv[op](novaUuid), 'InstanceInvalidState');
      assert.match(e.message, /not running/);
      await rejectsWith(hv[op](randomUUID()), 'InstanceNotFound');
    }
    assert.equal((await hv.getInstance(novaUuid)).powerState, 'shutdown');
  });

  test('rootDisk: file qcow2, block raw after a cdrom, none (DiskNotFound), unknown id', async () => {
    assert.ok(guest);
    assert.deepEqual(await hv.rootDisk(guest.uuid), { path: guest.diskPath, format: 'qcow2' });
    assert.deepEqual(await hv.rootDisk(novaUuid), { path: '/dev/mapper/vmsnap-test-root', format: 'raw' });
    const e = await rejectsWith(hv.rootDisk(cdromUuid), 'DiskNotFound');
    assert.equal(e.retryable, false);
    await rejectsWith(hv.rootDisk(randomUUID()), 'InstanceNotFound');
  });

  test('liveCopySupport: defined-only domains are not supported (not running); a missing one is InstanceNotFound', async () => {
    for (const id of [novaUuid, cdromUuid]) {
      const s = await hv.liveCopySupport(id);
      assert.equal(s.supported, false);
      assert.match(s.reason ?? '', /shut off/);
    }
    await rejectsWith(hv.liveCopySupport(randomUUID()), 'InstanceNotFound');
    await rejectsWith(hv.watchPauses(randomUUID()), 'InstanceNotFound');
  });

  test("a bad URI is a retryable HypervisorError with virsh's message", async () => {
    const e = await rejectsWith(new LibvirtHypervisor({ uri: 'qemu:///nonsense' }).listInstances(), 'HypervisorError');
    assert.equal(e.retryable, true);
    assert.match(e.message, /connect/);
  });
});
