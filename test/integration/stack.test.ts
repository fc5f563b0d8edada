// The dev stack itself, on ports and a data dir of its own so that it can be taken down here
// without disturbing the test stack the other tests use.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { execa } from 'execa';
import { isAlive } from '../../scripts/lib/daemon.js';
import { services, stackConfig } from '../../scripts/lib/stack.js';
import { SEARCH_ATTRIBUTES } from '../../src/shared/names.js';

const dataDir = mkdtempSync(join(tmpdir(), 'vmsnap-stack-test-'));
const cfg = stackConfig({
  ...process.env,
  VMSNAP_DATA_DIR: dataDir,
  VMSNAP_TEMPORAL_PORT: '27233',
  VMSNAP_TEMPORAL_UI_PORT: '28233',
  VMSNAP_GLANCE_PORT: '29292',
});
const stack = services(cfg);

/** Pids of processes whose command line mentions our data dir: they are ours. */
function processesOfOurs(): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dataDir) && isAlive(Number(pid));
      } catch {
        return false;
      }
    })
    .map(Number);
}

describe('dev stack', { timeout: 180_000 }, () => {
  after(async () => {
    for (const s of [...stack].reverse()) await s.down().catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('comes up, and every service answers', async () => {
    for (const s of stack) assert.equal((await s.up()).healthy, true, `${s.name} is not healthy`);

    const ns = await execa(cfg.temporalBin, ['operator', 'search-attribute', 'list', '--address', '127.0.0.1:27233']);
    for (const name of Object.values(SEARCH_ATTRIBUTES)) assert.match(ns.stdout, new RegExp(`${name}\\s+Keyword`));

    const ui = await fetch('http://127.0.0.1:28233/');
    assert.equal(ui.status, 200);
    assert.match(await ui.text(), /<html/i);

    const images = await fetch('http://127.0.0.1:29292/v2/images');
    assert.equal(images.status, 200);
    assert.ok(Array.isArray(((await images.json()) as { images: unknown }).images));

    const virsh = await execa('virsh', ['-c', cfg.libvirtUri, 'version']);
    assert.match(virsh.stdout, /Running hypervisor: QEMU/);
  });

  it('up a second time is harmless and keeps the same processes', async () => {
    const before = (await Promise.all(stack.map((s) => s.status()))).map((s) => s.pid);
    const again = await Promise.all(stack.map((s) => s.up()));
    assert.deepEqual(again.map((s) => s.pid), before);
    assert.ok(again.every((s) => s.healthy));
  });

  it('refuses a port in use by someone else, naming the port', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(29393, '127.0.0.1', resolve));
    try {
      const other = stackConfig({ ...process.env, VMSNAP_DATA_DIR: join(dataDir, 'other'), VMSNAP_GLANCE_PORT: '29393' });
      const glance = services(other).find((s) => s.name === 'glance');
      await assert.rejects(glance!.up(), /port 29393 .* in use/);
    } finally {
      blocker.close();
    }
  });

  it('down leaves no process of ours running', async () => {
    assert.ok(processesOfOurs().length > 0, 'the stack should be running before down');
    for (const s of [...stack].reverse()) await s.down();
    assert.deepEqual(processesOfOurs(), []);
    const statuses = await Promise.all(stack.filter((s) => s.name !== 'libvirt').map((s) => s.status()));
    assert.ok(statuses.every((s) => !s.healthy && s.pid === undefined));
  });
});
