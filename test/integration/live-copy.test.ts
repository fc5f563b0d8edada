// Integration test of the live snapshot driver part (LibvirtHypervisor.liveCopy / liveCopySupport /
// watchPauses) against the real libvirt/QEMU on this host, with the counter test guest. Needs root,
// libvirtd, qemu-utils and (for the agent cases) qemu-guest-agent. Env: VMSNAP_LIBVIRT_URI
// (default qemu:///system), VMSNAP_DATA_DIR (default .data/test).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { createGuest, readCounter, removeGuest, type Counter, type Guest } from '../../scripts/lib/guest.js';
import { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import { rejectsWith } from '../support/assertions.js';

const uri = process.env.VMSNAP_LIBVIRT_URI ?? 'qemu:///system';
const dataDir = path.resolve(process.env.VMSNAP_DATA_DIR ?? '.data/test');
const assetsDir = path.join(dataDir, 'guest-assets');
const guestsDir = path.join(dataDir, 'guests');
const prefix = `vmsnap-test-live-${process.pid}-${Date.now().toString(36)}`;
const mainName = `${prefix}-main`;
const agentName = `${prefix}-agent`;
const offName = `${prefix}-off`;
// Copies go here; QEMU (libvirt-qemu) must be able to reach it, so it is 0711, not 0700.
const outDir = path.join(dataDir, `live-copy-${process.pid}`);

const MiB = 1024 * 1024;
// A large sparse disk. Push: the job's rate limit counts the holes too, so the time a limited copy
// takes is about DISK_MIB / limit whatever the host's speed (unlimited, 8 GiB of holes take ~0.6 s).
// Pull: qemu-img skips the holes, so its limit is about the bulk data.
// The bulk data sits well away from the counter records at 1 MiB and (size - 1 MiB).
const DISK_MIB = 8192;
const PIT_BANDWIDTH_MIBPS = { push: 1536, pull: 64 };
const BULK_OFFSET = 256 * MiB;
const BULK_LEN = 256 * MiB;
const BULK_PATTERN = 0xa5;

const hv = new LibvirtHypervisor({ uri });

async function virsh(...args: string[]): Promise<string> {
  return (await execa('virsh', ['-c', uri, ...args], { env: { LC_ALL: 'C' } })).stdout;
}

/** "None" when libvirt has no job on the domain. */
async function jobType(name: string): Promise<string> {
  return /Job type:\s*(\S+)/.exec(await virsh('domjobinfo', name))?.[1] ?? '?';
}

async function exists(file: string): Promise<boolean> {
  return fs.lstat(file).then(
    () => true,
    () => false,
  );
}

function assertConsistent(c: Counter, what: string): void {
  assert.ok(c.a === c.b || c.a === c.b + 1, `${what}: records disagree: A=${c.a} B=${c.b}`);
}

/** The guest keeps writing: its live counter moves on within a few seconds. */
async function assertAdvancing(g: Guest): Promise<void> {
  const c0 = await readCounter(g.diskPath, 'qcow2');
  const until = Date.now() + 5000;
  for (;;) {
    await sleep(200);
    const c1 = await readCounter(g.diskPath, 'qcow2');
    if (c1.a > c0.a) return;
    assert.ok(Date.now() < until, `counter stuck at ${c0.a}: is the guest still running?`);
  }
}

describe('live copy (libvirt backup API)', { timeout: 600_000 }, () => {
  let main: Guest | undefined;
  let agent: Guest | undefined;
  let off: Guest | undefined;
  let shimDir: string | undefined;

  before(async () => {
    await fs.mkdir(outDir, { recursive: true });
    await fs.chmod(outDir, 0o711);
    main = await createGuest({
      name: mainName,
      guestsDir,
      assetsDir,
      diskSizeMiB: DISK_MIB,
      // Bulk data written before boot, so the copy has real clusters to move.
      beforeStart: async (g) => {
        await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${BULK_PATTERN} ${BULK_OFFSET} ${BULK_LEN}`, g.diskPath]);
      },
    });
    agent = await createGuest({ name: agentName, guestsDir, assetsDir, guestAgent: true });
    off = await createGuest({ name: offName, guestsDir, assetsDir, start: false });
  });

  after(async () => {
    for (const n of [mainName, agentName, offName]) await removeGuest(n, guestsDir);
    await fs.rm(outDir, { recursive: true, force: true });
    if (shimDir) await fs.rm(shimDir, { recursive: true, force: true });
  });

  test('liveCopySupport: yes for a running guest; no, with a reason, for a shut-off one; lookups fail as usual', async () => {
    assert.ok(main && off);
    assert.deepEqual(await hv.liveCopySupport(main.uuid), { supported: true });
    const s = await hv.liveCopySupport(off.uuid);
    assert.equal(s.supported, false);
    assert.match(s.reason ?? '', /shut off.*cold copy/);
    await rejectsWith(hv.liveCopySupport(randomUUID()), 'InstanceNotFound');
    await rejectsWith(hv.liveCopySupport('../x'), 'InvalidInput');
    const e = await rejectsWith(hv.liveCopy(off.uuid, { target: path.join(outDir, 'off.qcow2'), targetFormat: 'qcow2' }), 'InstanceInvalidState');
    assert.equal(e.retryable, false);
  });

  for (const method of ['pull', 'push'] as const)
    test(`point in time (${method}): the guest runs on during the copy, the copy holds one counter value from within it`, async (t) => {
      assert.ok(main);
      const g = main;
      const target = path.join(outDir, `pit-${method}.qcow2`);
      const watch = await hv.watchPauses(g.uuid);
      const reads: { at: number; c: Counter }[] = [];
      const pending: Promise<void>[] = [];
      let firstAt = 0;
      const readDuring = () => {
        pending.push(
          readCounter(g.diskPath, 'qcow2').then((c) => {
            reads.push({ at: Date.now(), c });
          }),
        );
      };
      const progress: number[] = [];

      const before = await readCounter(g.diskPath, 'qcow2');
      const t0 = Date.now();
      const result = await hv.liveCopy(g.uuid, {
        target,
        targetFormat: 'qcow2',
        quiesce: 'never',
        // Slowed down so the copy takes seconds: the guest gets to write a lot meanwhile.
        bandwidthMiBps: PIT_BANDWIDTH_MIBPS[method],
        method,
        onProgress: (percent) => {
          progress.push(percent);
          if (pending.length === 0) {
            firstAt = Date.now();
            readDuring();
          } else if (pending.length === 1 && Date.now() - firstAt >= 2000) readDuring();
        },
      });
      const copyMs = Date.now() - t0;
      const end = Date.now();
      const afterCopy = await readCounter(g.diskPath, 'qcow2');
      const pauses = await watch.stop();
      await Promise.all(pending);

      assert.deepEqual(result, { consistency: 'crash-consistent', method });
      assert.equal(reads.length, 2, `expected two counter reads during the copy (copy took ${copyMs} ms, progress ${progress.length} calls)`);
      const [r1, r2] = reads as [{ at: number; c: Counter }, { at: number; c: Counter }];
      assert.ok(r2.c.a > r1.c.a, `guest counter did not advance during the copy: ${r1.c.a} -> ${r2.c.a}`);
      assert.ok(r2.at <= end + 1000, 'second read was not during the copy');
      assert.equal(progress.at(-1), 100);
      assert.ok(
        progress.every((p, i) => i === 0 || p >= (progress[i - 1] ?? 0)),
        `progress went backwards: ${progress.join(',')}`,
      );

      const copy = await readCounter(target, 'qcow2');
      assertConsistent(copy, 'copy');
      assert.ok(copy.a >= before.a, `copy (${copy.a}) is older than the counter before the copy (${before.a})`);
      assert.ok(copy.a <= afterCopy.a, `copy (${copy.a}) is newer than the counter after the copy (${afterCopy.a})`);
      // The copy is the state at the job's start: the guest wrote much more while it ran.
      assert.ok(afterCopy.a > copy.a, 'guest wrote nothing during the copy?');

      // No pause at all: QEMU emitted no STOP.
      assert.deepEqual(pauses, { pausedMs: 0, events: [] });

      // The bulk data arrived intact, and the image is a sound standalone qcow2.
      const check = await execa('qemu-io', ['-r', '-f', 'qcow2', '-c', `read -P ${BULK_PATTERN} ${BULK_OFFSET} ${BULK_LEN}`, target], {
        reject: false,
      });
      assert.ok(!check.failed && !/Pattern verification failed/.test(check.stdout), check.stdout + check.stderr);
      const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', '-f', 'qcow2', target])).stdout) as {
        'virtual-size': number;
        'actual-size': number;
        'backing-filename'?: string;
      };
      assert.equal(info['virtual-size'], DISK_MIB * MiB);
      assert.equal(info['backing-filename'], undefined);
      await execa('qemu-img', ['check', '-f', 'qcow2', target]);
      // Sparse: about the data, not the 1 GiB virtual size.
      assert.ok(info['actual-size'] < BULK_LEN + 16 * MiB, `copy allocates ${info['actual-size']} bytes for ${BULK_LEN} bytes of data`);

      // Nothing left behind: no job, no checkpoint, no scratch image or socket, the file is ours
      // (libvirt hands a push target back to root).
      assert.equal(await jobType(g.name), 'None');
      assert.deepEqual(
        (await fs.readdir(outDir)).filter((f) => f.startsWith(`pit-${method}.`)),
        [`pit-${method}.qcow2`],
      );
      assert.equal((await virsh('checkpoint-list', g.name, '--name')).trim(), '');
      const st = await fs.stat(target);
      assert.equal(st.uid, process.getuid?.());
      assert.equal(st.mode & 0o777, 0o600);
      t.diagnostic(
        `live copy (${method}) ${copyMs} ms at ${PIT_BANDWIDTH_MIBPS[method]} MiB/s; counter ${before.a} before, ${copy.a} in the copy, ${afterCopy.a} after; ` +
          `during: ${r1.c.a} -> ${r2.c.a} in ${r2.at - r1.at} ms; copy actual size ${info['actual-size']} bytes`,
      );
    });

  test('abort mid-copy: rejects with AbortError, no job left, no target file, guest running', async () => {
    assert.ok(main);
    const g = main;
    const target = path.join(outDir, 'aborted.qcow2');
    const ac = new AbortController();
    const t0 = Date.now();
    let lastPercent = 0;
    const p = hv.liveCopy(g.uuid, {
      target,
      targetFormat: 'qcow2',
      quiesce: 'never',
      bandwidthMiBps: 64,
      signal: ac.signal,
      onProgress: (percent) => {
        lastPercent = percent;
        if (Date.now() - t0 > 800) ac.abort();
      },
    });
    await assert.rejects(p, (e: Error) => e.name === 'AbortError');
    assert.ok(lastPercent < 100, `the copy had finished (${lastPercent} %) before the abort`);
    assert.equal(await jobType(g.name), 'None');
    assert.equal(await exists(target), false, 'partial target left behind');
    assert.equal((await hv.getInstance(g.uuid)).powerState, 'running');
    await assertAdvancing(g);
    // Aborted before it starts: nothing happens at all.
    const pre = new AbortController();
    pre.abort();
    await assert.rejects(hv.liveCopy(g.uuid, { target, targetFormat: 'qcow2', signal: pre.signal }), (e: Error) => e.name === 'AbortError');
    assert.equal(await exists(target), false);
  });

  test('quiesce without a guest agent: try -> crash-consistent with a note; require -> InstanceInvalidState, nothing left', async () => {
    assert.ok(main);
    const target = path.join(outDir, 'noagent.qcow2');
    const r = await hv.liveCopy(main.uuid, { target, targetFormat: 'qcow2', quiesce: 'try' });
    assert.equal(r.consistency, 'crash-consistent');
    assert.match(r.quiesceNote ?? '', /not quiesced: .*guest agent is not configured/);
    assertConsistent(await readCounter(target, 'qcow2'), 'copy');
    // The default is 'try'.
    assert.equal((await hv.liveCopy(main.uuid, { target, targetFormat: 'qcow2' })).consistency, 'crash-consistent');

    const e = await rejectsWith(hv.liveCopy(main.uuid, { target, targetFormat: 'qcow2', quiesce: 'require' }), 'InstanceInvalidState');
    assert.equal(e.retryable, false);
    assert.match(e.message, /cannot quiesce.*guest agent is not configured/);
    assert.equal(e.details.quiesce, true);
    assert.equal(await exists(target), false, 'the earlier copy at the target should have been replaced, then removed');
    assert.equal(await jobType(main.name), 'None');
  });

  test('quiesce with the guest agent: filesystem-consistent (try and require)', async () => {
    assert.ok(agent);
    for (const quiesce of ['try', 'require'] as const) {
      const target = path.join(outDir, `agent-${quiesce}.qcow2`);
      const r = await hv.liveCopy(agent.uuid, { target, targetFormat: 'qcow2', quiesce });
      assert.deepEqual(r, { consistency: 'filesystem-consistent', method: 'pull' }, `quiesce=${quiesce}: ${r.quiesceNote ?? ''}`);
      assertConsistent(await readCounter(target, 'qcow2'), `copy (${quiesce})`);
    }
    // 'never' skips the agent even when it is there.
    const r = await hv.liveCopy(agent.uuid, { target: path.join(outDir, 'agent-never.qcow2'), targetFormat: 'qcow2', quiesce: 'never' });
    assert.deepEqual(r, { consistency: 'crash-consistent', method: 'pull' });
    await assertAdvancing(agent);
  });

  test('a hung backup-begin cannot keep the guest frozen: the watchdog thaws it', async (t) => {
    assert.ok(agent);
    // A virsh shim first in PATH logs each call and holds backup-begin back for 7 s.
    shimDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmsnap-test-live-shim-'));
    const log = path.join(shimDir, 'calls.log');
    const realVirsh = (await execa('sh', ['-c', 'command -v virsh'])).stdout.trim();
    await fs.writeFile(
      path.join(shimDir, 'virsh'),
      `#!/bin/sh\ncase " $* " in *" backup-begin "*) echo "$(date +%s%3N) hold $*" >> '${log}'; sleep 7;; esac\n` +
        `echo "$(date +%s%3N) run $*" >> '${log}'\n"${realVirsh}" "$@"\nrc=$?\necho "$(date +%s%3N) done $*" >> '${log}'\nexit $rc\n`,
      { mode: 0o755 },
    );
    const oldPath = process.env.PATH;
    process.env.PATH = `${shimDir}:${oldPath ?? ''}`;
    // A process per command, so that the shim sees (and holds) backup-begin.
    const hv = new LibvirtHypervisor({ uri, shells: false });
    try {
      const target = path.join(outDir, 'watchdog.qcow2');
      const r = await hv.liveCopy(agent.uuid, { target, targetFormat: 'qcow2', quiesce: 'try' });
      assert.equal(r.consistency, 'crash-consistent');
      assert.match(r.quiesceNote ?? '', /thawed after 5 s, before the copy started/);
      const calls = (await fs.readFile(log, 'utf8')).split('\n').filter(Boolean);
      const at = (re: RegExp) => Number(calls.find((l) => re.test(l))?.split(' ')[0]);
      const frozen = at(/^\d+ done .*domfsfreeze/);
      const thawed = at(/^\d+ done .*domfsthaw/);
      const begun = at(/^\d+ done .*backup-begin/);
      assert.ok(frozen && thawed && begun, calls.join('\n'));
      // The shim holds backup-begin for 7 s: a thaw before it returned is the watchdog's.
      assert.ok(frozen < thawed && thawed < begun, 'thawed after the freeze and before backup-begin returned');
      t.diagnostic(`frozen ${thawed - frozen} ms (watchdog), backup-begin returned ${begun - frozen} ms after the freeze`);

      await fs.writeFile(log, '');
      const e = await rejectsWith(hv.liveCopy(agent.uuid, { target, targetFormat: 'qcow2', quiesce: 'require' }), 'InstanceInvalidState');
      assert.match(e.message, /thawed after 5 s/);
      assert.equal(await exists(target), false);
    } finally {
      process.env.PATH = oldPath;
    }
    assert.equal(await jobType(agent.name), 'None');
    await assertAdvancing(agent);
  });

  test('targets: raw works (sparse by pull, fully allocated by push); an existing file is replaced; bad options, a missing dir and a dir QEMU cannot enter are refused', async (t) => {
    assert.ok(main && agent);
    const g = main;
    const virtualSize = JSON.parse((await execa('qemu-img', ['info', '-U', '--output=json', agent.diskPath])).stdout)['virtual-size'] as number;
    // On the small guest: a raw copy of the big one would write all 8 GiB.
    for (const method of ['pull', 'push'] as const) {
      const raw = path.join(outDir, 'copy.raw');
      await fs.writeFile(raw, 'junk that is not an image');
      assert.deepEqual(await hv.liveCopy(agent.uuid, { target: raw, targetFormat: 'raw', quiesce: 'never', method }), {
        consistency: 'crash-consistent',
        method,
      });
      assertConsistent(await readCounter(raw, 'raw'), `raw copy (${method})`);
      const st = await fs.stat(raw);
      assert.equal(st.size, virtualSize);
      // qemu-img leaves holes as holes; QEMU's backup job writes them as allocated zeroes
      // (fallocate), so a push copy takes the whole virtual size on the host.
      if (method === 'push') assert.ok(st.blocks * 512 >= virtualSize, `raw push copy allocates ${st.blocks * 512} bytes: sparse after all?`);
      else assert.ok(st.blocks * 512 < virtualSize / 2, `raw pull copy allocates ${st.blocks * 512} bytes of ${virtualSize}`);
      t.diagnostic(`raw live copy (${method}) of a ${virtualSize}-byte disk holding ~2 sectors of data allocates ${st.blocks * 512} bytes`);
    }

    // A socket path over the 107 bytes a unix socket may have: auto copies by push, pull refuses.
    const deep = path.join(outDir, 'd'.repeat(Math.max(1, 100 - outDir.length)));
    await fs.mkdir(deep, { mode: 0o711 });
    await fs.chmod(deep, 0o711);
    const long = path.join(deep, 'long-name.qcow2');
    assert.deepEqual(await hv.liveCopy(agent.uuid, { target: long, targetFormat: 'qcow2', quiesce: 'never' }), {
      consistency: 'crash-consistent',
      method: 'push',
    });
    await rejectsWith(hv.liveCopy(agent.uuid, { target: long, targetFormat: 'qcow2', quiesce: 'never', method: 'pull' }), 'InvalidInput');
    assert.ok(await exists(long), 'a refused copy changed nothing');
    await rejectsWith(hv.liveCopy(agent.uuid, { target: long, targetFormat: 'qcow2', method: 'fast' as 'pull' }), 'InvalidInput');

    const opts = { target: path.join(outDir, 'x.qcow2'), targetFormat: 'qcow2' as const };
    await rejectsWith(hv.liveCopy(g.uuid, { ...opts, target: 'relative.qcow2' }), 'InvalidInput');
    await rejectsWith(hv.liveCopy(g.uuid, { ...opts, targetFormat: 'vmdk' as 'raw' }), 'InvalidInput');
    await rejectsWith(hv.liveCopy(g.uuid, { ...opts, quiesce: 'maybe' as 'try' }), 'InvalidInput');
    await rejectsWith(hv.liveCopy(g.uuid, { ...opts, bandwidthMiBps: -1 }), 'InvalidInput');
    await rejectsWith(hv.liveCopy(g.uuid, { ...opts, target: path.join(outDir, 'nodir', 'x.qcow2') }), 'InvalidInput');
    await fs.mkdir(path.join(outDir, 'dir-not-a-file.qcow2'));
    await rejectsWith(hv.liveCopy(g.uuid, { ...opts, target: path.join(outDir, 'dir-not-a-file.qcow2') }), 'InvalidInput');

    const priv = path.join(outDir, 'private');
    await fs.mkdir(priv, { mode: 0o700 });
    await fs.chmod(priv, 0o700);
    const e = await rejectsWith(hv.liveCopy(g.uuid, { ...opts, target: path.join(priv, 'x.qcow2'), quiesce: 'never' }), 'ConfigError');
    assert.match(e.message, /Permission denied.*searchable/);
    assert.deepEqual(await fs.readdir(priv), []);
    assert.equal(await jobType(g.name), 'None');
  });

  test('another job on the domain: HypervisorError at once; a backup job left on our own target is taken over', async () => {
    assert.ok(main);
    const g = main;
    const ac = new AbortController();
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const first = hv.liveCopy(g.uuid, {
      target: path.join(outDir, 'first.qcow2'),
      targetFormat: 'qcow2',
      quiesce: 'never',
      bandwidthMiBps: 32,
      signal: ac.signal,
      onProgress: () => started(),
    });
    await running;
    let firstEnded = false;
    void first.catch(() => undefined).finally(() => (firstEnded = true));
    const e = await rejectsWith(hv.liveCopy(g.uuid, { target: path.join(outDir, 'second.qcow2'), targetFormat: 'qcow2', quiesce: 'never' }), 'HypervisorError');
    assert.equal(e.retryable, true);
    // Refused for the job it found, while that job still ran: not after waiting out libvirt's job lock.
    assert.match(e.message, /already has a pull-mode backup job.*virsh domjobabort/);
    assert.equal(firstEnded, false, 'the first copy still ran when the second was refused');
    assert.notEqual(await jobType(g.name), 'None', 'and its job is still on the domain');
    assert.equal(await exists(path.join(outDir, 'second.qcow2')), false);
    ac.abort();
    await assert.rejects(first, (err: Error) => err.name === 'AbortError');

    // As if a worker died mid-copy: a slow backup job still writes to the target of the retry.
    const target = path.join(outDir, 'leftover.qcow2');
    const xml = path.join(outDir, 'leftover.xml');
    await fs.writeFile(
      xml,
      `<domainbackup mode='push'><disks><disk name='vda' backup='yes' type='file'><target file='${target}'/><driver type='qcow2'/></disk></disks></domainbackup>`,
    );
    await virsh('backup-begin', g.name, xml);
    await virsh('blockjob', g.name, 'vda', '--bandwidth', '16').catch(() => undefined);
    const r = await hv.liveCopy(g.uuid, { target, targetFormat: 'qcow2', quiesce: 'never' });
    assert.equal(r.consistency, 'crash-consistent');
    assertConsistent(await readCounter(target, 'qcow2'), 'copy after taking over');
    assert.equal(await jobType(g.name), 'None');
  });

  test('a root disk served by an iothread is copied by push (ending a pull copy there makes QEMU abort); pull is refused', async () => {
    const name = `${prefix}-iothread`;
    try {
      const g = await createGuest({
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
      const target = path.join(outDir, 'iothread.qcow2');
      const e = await rejectsWith(hv.liveCopy(g.uuid, { target, targetFormat: 'qcow2', quiesce: 'never', method: 'pull' }), 'InvalidInput');
      assert.match(e.message, /iothread.*push/);
      assert.equal(await jobType(name), 'None');
      // Before: auto pulled, and QEMU aborted as qemu-img disconnected (the guest was gone).
      const r = await hv.liveCopy(g.uuid, { target, targetFormat: 'qcow2', quiesce: 'never' });
      assert.equal(r.method, 'push');
      assert.match(r.quiesceNote ?? '', /iothread/);
      assertConsistent(await readCounter(target, 'qcow2'), 'copy of the iothread guest');
      assert.equal((await virsh('domstate', name)).trim(), 'running');
      await assertAdvancing(g);
    } finally {
      await removeGuest(name, guestsDir);
    }
  });

  // Last on this guest: see the driver notes on QEMU 7.2 and pauses that overlap a backup job.
  test('watchPauses measures a real suspend/resume', async (t) => {
    assert.ok(main);
    const g = main;
    assert.equal(await jobType(g.name), 'None');
    const watch = await hv.watchPauses(g.uuid);
    const beforeSuspend = Date.now();
    await virsh('suspend', g.name);
    const suspended = Date.now();
    await sleep(500);
    const beforeResume = Date.now();
    await virsh('resume', g.name);
    const resumed = Date.now();
    const r = await watch.stop();
    assert.deepEqual(
      r.events.map((e) => e.type),
      ['STOP', 'RESUME'],
    );
    const [stop, resume] = r.events;
    assert.ok(stop && resume);
    assert.equal(r.pausedMs, resume.at - stop.at);
    // QEMU's events fall within the commands that caused them: the pause measured is the one made.
    assert.ok(beforeSuspend <= stop.at && stop.at <= suspended, `STOP at ${stop.at}, suspend ran ${beforeSuspend}-${suspended}`);
    assert.ok(beforeResume <= resume.at && resume.at <= resumed, `RESUME at ${resume.at}, resume ran ${beforeResume}-${resumed}`);

    // A watch started on a paused guest counts from its start; stop() while still paused counts up to then.
    await virsh('suspend', g.name);
    const watchFrom = Date.now();
    const w2 = await hv.watchPauses(g.uuid);
    const watching = Date.now();
    await sleep(300);
    const stopping = Date.now();
    const r2 = await w2.stop();
    const stopped = Date.now();
    await virsh('resume', g.name);
    assert.deepEqual(r2.events, []);
    assert.ok(r2.pausedMs >= stopping - watching && r2.pausedMs <= stopped - watchFrom, `pausedMs ${r2.pausedMs}: from the watch's start to its stop`);
    await assert.rejects(w2.stop(), /already stopped/);
    await rejectsWith(hv.watchPauses(randomUUID()), 'InstanceNotFound');
    await assertAdvancing(g);
    t.diagnostic(`suspend + 500 ms + resume: pausedMs ${r.pausedMs}`);
  });
});
