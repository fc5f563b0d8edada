// The pause guard on the real stack (issue 25, items 1 and 2): a cold copy's pause belongs to a
// process of its own on the host (src/worker/pause-guard.ts), so that killing every process of the
// worker mid-pause neither keeps the guest paused nor throws the copy away. The workers run in a
// process group of their own here, and the whole group is killed with SIGKILL, as a crashed or
// OOM-killed worker (and its virsh shells) would die. Pauses are measured by QEMU's own STOP and
// RESUME events (a watch of the test's) and libvirt's domstate, never by sleeping.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection } from '@temporalio/client';
import { execa } from 'execa';
import { guestState, type Guest } from '../../scripts/lib/guest.js';
import { readGuardState, writeGuardJob } from '../../src/activities/pause-guard-files.js';
import { followPauseGuard, GUARD_NOT_STARTED_LOG, GuardProcess, launchPauseGuard } from '../../src/activities/pause-guard-launch.js';
import { removeSnapshotFiles } from '../../src/activities/snapshot-files.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { snapshotWorkflowId } from '../../src/shared/names.js';
import type { PauseEvent, PauseWatch } from '../../src/drivers/hypervisor.js';
import { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { assertAllHeld, checkInvariants, outcomeOf, qemuImgProcessesUnder } from '../support/invariants.js';
import { waitForGuestState } from '../support/slow-guest.js';
import { ROOT } from '../support/cli.js';
import { startWorkerProcess, type WorkerProcess } from '../support/worker-process.js';
import { WorkerTest } from '../support/worker-test.js';

const guestName = `vmsnap-test-pg-${process.pid}`;
const t = new WorkerTest('pg', {
  VMSNAP_DEFAULT_MODE: 'cold', // these are about a paused guest
  // A lost worker's step moves to another worker after 3 s instead of 10.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '3000',
});
const { env } = t;
const hypervisor = new LibvirtHypervisor({ uri: 'qemu:///system' });
const groups: WorkerProcess[] = [];
let guest: Guest;
let store: SqliteStore;
let client: Client;

const watches = new Set<PauseWatch>();

/** The guest's vCPU stops as QEMU stamps them; a watch a failed test left running is stopped after it. */
async function watchGuestPauses(): Promise<PauseWatch> {
  const watch = await hypervisor.watchPauses(guest.uuid);
  watches.add(watch);
  return {
    stop: () => {
      watches.delete(watch);
      return watch.stop();
    },
  };
}

/** A worker in a process group of its own (setsid execs it: the pid is the group's id), started and polling. */
async function startWorkerGroup(extra: Record<string, string> = {}): Promise<WorkerProcess> {
  const w = startWorkerProcess(
    { ...(process.env as Record<string, string>), ...env, ...extra },
    { command: ['setsid', process.execPath, '--import', 'tsx', 'src/worker/main.ts', '--role', 'all'], cwd: ROOT },
  );
  groups.push(w);
  await w.waitForLine(/vmsnap worker started/);
  return w;
}

/** SIGKILL to every process of the worker's group; resolves once the worker is gone, with the group's pids that were alive. */
async function killWorkerGroup(w: WorkerProcess): Promise<number[]> {
  const pgid = w.proc.pid!;
  const members = processesOfGroup(pgid);
  if (members.length) process.kill(-pgid, 'SIGKILL');
  await w.exited();
  await until(() => processesOfGroup(pgid).length === 0, 10_000, `processes of group ${pgid} gone`);
  return members;
}

function processesOfGroup(pgid: number): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        return Number(fields[2]) === pgid && fields[0] !== 'Z';
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await sleep(50);
  }
}

/** Every qemu-img convert into the test's snapshots dir, by pid, while it runs: one pid is one copy (not its check after). */
function collectCopies(): { pids: Set<number>; stop: () => void } {
  const pids = new Set<number>();
  const timer = setInterval(() => {
    for (const pid of qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR)) {
      const cmdline = readFileSafe(`/proc/${pid}/cmdline`).split('\0');
      if (cmdline.includes('convert')) pids.add(pid);
    }
  }, 25);
  return { pids, stop: () => clearInterval(timer) };
}

function readFileSafe(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** The guest's pauses as QEMU stamped them: [STOP, RESUME] pairs. */
function pausesOf(events: PauseEvent[]): { stop: number; resume: number }[] {
  const pauses: { stop: number; resume: number }[] = [];
  let stop: number | undefined;
  for (const e of events) {
    if (e.type === 'STOP' && stop === undefined) stop = e.at;
    if (e.type === 'RESUME' && stop !== undefined) {
      pauses.push({ stop, resume: e.at });
      stop = undefined;
    }
  }
  return pauses;
}

async function invariantsAfter(imageName: string, outcome: string, expectedOutcome: string) {
  return checkInvariants({
    store,
    snapshotsDir: env.VMSNAP_SNAPSHOTS_DIR,
    guest,
    priorState: 'running',
    image: { name: imageName },
    expectedOutcome,
    outcome,
  });
}

describe('the pause guard: a cold copy outlives its worker', { timeout: 900_000 }, () => {
  before(async () => {
    ({ guest, store } = await t.setUp(guestName, 512));
    client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
  });

  after(async () => {
    await client?.connection.close();
    await t.tearDown();
  });

  // Each test leaves no worker behind, and a guest that a failed test left paused runs again.
  afterEach(async () => {
    for (const w of groups.splice(0)) await killWorkerGroup(w);
    for (const watch of watches) await watch.stop().catch(() => undefined);
    watches.clear();
    // What a failed test left: its run, the task state it held (no reconciler runs here), a paused guest.
    await client.workflow
      .getHandle(snapshotWorkflowId(guest.uuid))
      .terminate('test: left by a failed test')
      .catch(() => undefined);
    const held = await store.getInstance(guest.uuid);
    if (held?.taskOwner) await store.releaseTaskState(guest.uuid, held.taskOwner);
    if ((await guestState(guestName)) === 'paused') await hypervisor.resume(guest.uuid);
    for (const name of existsSync(env.VMSNAP_SNAPSHOTS_DIR) ? readdirSync(env.VMSNAP_SNAPSHOTS_DIR) : []) {
      await removeSnapshotFiles(env.VMSNAP_SNAPSHOTS_DIR, name); // a guard still there is stopped first
    }
  });

  it('under systemd without a scope to be had, the guard still starts: detached, in a session of its own, and the worker says why', async () => {
    const dir = mkdtempSync(join(t.dir, 'scope-'));
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'source.qcow2'), '16M']);
    writeFileSync(join(dir, 'disk.qcow2'), '');
    const nonce = randomUUID();
    await writeGuardJob(dir, {
      nonce,
      owner: 'test/run',
      instanceId: guest.uuid,
      imageId: randomUUID(),
      libvirtUri: 'qemu:///system',
      source: { path: join(dir, 'source.qcow2'), format: 'qcow2' },
      target: join(dir, 'disk.qcow2'),
      targetFormat: 'qcow2',
      compress: false,
      forceShare: false,
      pause: false,
      pauseBudgetMs: 0,
    });
    const warnings: string[] = [];
    // As systemd starts a unit: no systemd runs here, so systemd-run fails as it does without D-Bus.
    process.env.INVOCATION_ID = 'vmsnap-test';
    let ahead;
    try {
      ahead = await GuardProcess.start(join(t.dir, 'snapshots'));
    } finally {
      delete process.env.INVOCATION_ID;
    }
    assert.equal(ahead.scoped, true, 'started through systemd-run');
    const guard = await launchPauseGuard(ahead, dir, nonce, (m) => warnings.push(m));
    assert.match(warnings.join('\n'), /could not start in a systemd scope/);
    assert.match(readFileSync(join(dir, GUARD_NOT_STARTED_LOG), 'utf8'), /systemd/, "systemd-run's own words are kept");
    assert.notEqual(guard.pid, ahead.pid, 'a guard without a scope took the job');
    const stat = readFileSync(`/proc/${guard.pid}/stat`, 'utf8');
    const [, , pgrp, session] = stat
      .slice(stat.lastIndexOf(')') + 2)
      .split(' ')
      .map(Number);
    assert.deepEqual([pgrp, session], [guard.pid, guard.pid], 'its own process group and session');
    guard.go(Date.now());
    const ended = await followPauseGuard(dir, guard, { signal: new AbortController().signal, onProgress: () => undefined });
    assert.equal(ended?.outcome?.copy, 'done', JSON.stringify(ended));
  });

  it('every worker process killed mid-pause and none restarted: the guest runs again at the pause budget', async (ctx) => {
    const budgetMs = 4000;
    const worker = await startWorkerGroup({ VMSNAP_PAUSE_BUDGET_MS: String(budgetMs) });
    const watch = await watchGuestPauses();
    const imageName = `vmsnap-test-${process.pid}-guard-budget`;
    // Compressed: the copy takes longer than the budget.
    const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
    await waitForGuestState(guestName, 'paused');
    await until(() => qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).length > 0, 30_000, 'qemu-img copies');
    const copying = qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR);
    const killed = await killWorkerGroup(worker);
    const killedAt = Date.now();
    assert.ok(killed.length > 1, `the worker's group held the worker and its helpers (pids ${killed.join(', ')})`);

    // No worker runs: only the guard can resume the guest.
    await waitForGuestState(guestName, 'running', budgetMs + 30_000);
    const { events } = await watch.stop();
    const [pause, ...more] = pausesOf(events);
    assert.ok(pause, `QEMU saw the pause: ${JSON.stringify(events)}`);
    assert.deepEqual(more, [], 'one pause');
    assert.ok(killedAt < pause.stop + budgetMs, `the worker died ${killedAt - pause.stop} ms into the pause, before the budget ran out`);
    const pausedMs = pause.resume - pause.stop;
    ctx.diagnostic(`killed ${killedAt - pause.stop} ms into the pause; QEMU: paused ${pausedMs} ms for a budget of ${budgetMs} ms`);
    assert.ok(pausedMs <= budgetMs + 1000, `paused ${pausedMs} ms for a budget of ${budgetMs} ms (target: budget + 1 s)`);
    assert.deepEqual(qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR), [], 'the guard ended its copy');
    // What the guard itself says it did, read from its temp dir while no worker runs (none could have resumed).
    const [dir, ...others] = readdirSync(env.VMSNAP_SNAPSHOTS_DIR);
    assert.deepEqual(others, [], "one snapshot's temp dir");
    const guard = await readGuardState(join(env.VMSNAP_SNAPSHOTS_DIR, dir!));
    const guardOutcome = guard?.outcome;

    // A worker back later undoes the rest: the snapshot failed for its budget, nothing is left.
    await startWorkerGroup();
    const outcome = await outcomeOf(handle);
    const invariants = await invariantsAfter(imageName, outcome, 'PauseBudgetExceeded');
    recordFaultRow({
      fault: 'worker SIGKILL mid-pause, no worker restarted',
      outcome,
      invariants,
      evidence: [
        evidence(
          `SIGKILL to every process of the worker's group (${killed.length} pids) ${killedAt - pause.stop} ms into the pause (QEMU's STOP), ` +
            `qemu-img copying (pids ${copying.join(', ')})`,
          killed.length > 1 && copying.length > 0 && killedAt > pause.stop && killedAt < pause.stop + budgetMs,
        ),
        evidence(
          `with no worker running, the pause guard (pid ${guard?.pid}) gave up its copy (${guardOutcome?.failure?.type ?? guardOutcome?.copy}) and ` +
            `resumed the guest (${guardOutcome?.resumeOutcome}): QEMU saw ${pausedMs} ms of pause, the guard ${guardOutcome?.guestPauseMs} ms`,
          guardOutcome?.failure?.type === 'PauseBudgetExceeded' && guardOutcome.resumeOutcome === 'resumed',
        ),
      ],
      note: `pause budget ${budgetMs} ms (target: running again within budget + 1 s); a worker started afterwards undid the rest`,
    });
    assert.equal(outcome, 'PauseBudgetExceeded');
    assertAllHeld(invariants);
  });

  for (const restart of ['while the guard copies', 'after the guard has finished'] as const) {
    it(`every worker process killed mid-pause, a worker restarted ${restart}: one copy, and guestPauseMs is the whole pause`, async (ctx) => {
      const worker = await startWorkerGroup();
      const watch = await watchGuestPauses();
      const copies = collectCopies();
      const imageName = `vmsnap-test-${process.pid}-guard-${restart.split(' ')[0]}`;
      try {
        const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
        await waitForGuestState(guestName, 'paused');
        await until(() => copies.pids.size > 0, 30_000, 'qemu-img copies');
        await killWorkerGroup(worker);
        const killedAt = Date.now();
        assert.equal(await guestState(guestName), 'paused', 'the copy goes on, the guest paused, with no worker');
        assert.ok(qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).length > 0, 'the copy outlived the worker');
        let next: WorkerProcess;
        if (restart === 'while the guard copies') {
          // A stalled disk: the copy stands still until the new worker's attempt follows the guard,
          // however fast this machine copies or slow it starts a worker.
          const [copy] = [...copies.pids];
          process.kill(copy!, 'SIGSTOP');
          try {
            next = await startWorkerGroup();
            await next.waitForLine(/following an earlier attempt's pause guard/, 60_000);
          } finally {
            process.kill(copy!, 'SIGCONT');
          }
        } else {
          await waitForGuestState(guestName, 'running', 120_000);
          next = await startWorkerGroup();
        }

        const result = await handle.result();
        const { events } = await watch.stop();
        const pauses = pausesOf(events);
        assert.equal(pauses.length, 1, `one pause as QEMU saw it: ${JSON.stringify(events)}`);
        const qemuPausedMs = pauses[0]!.resume - pauses[0]!.stop;
        assert.deepEqual([...copies.pids].length, 1, `one qemu-img convert (pids ${[...copies.pids].join(', ')})`);
        assert.ok(
          next.lines.some((l) => /adopting the outcome of an earlier attempt's pause guard/.test(l)),
          `the new worker's attempt took the guard's copy over:\n${next.lines.filter((l) => /guard/.test(l)).join('\n')}`,
        );

        ctx.diagnostic(
          `killed ${killedAt - pauses[0]!.stop} ms into the pause; QEMU: paused ${qemuPausedMs} ms; result guestPauseMs ${result.guestPauseMs}; ` +
            `qemu-img convert pids ${[...copies.pids].join(', ')}`,
        );
        // Item 2: the result's pause is the guest's whole pause, the part before the kill included.
        assert.ok(
          result.guestPauseMs >= killedAt - pauses[0]!.stop,
          `guestPauseMs ${result.guestPauseMs} covers the ${killedAt - pauses[0]!.stop} ms before the kill`,
        );
        assert.ok(Math.abs(result.guestPauseMs - qemuPausedMs) <= 250, `guestPauseMs ${result.guestPauseMs} is QEMU's ${qemuPausedMs} ms`);

        const { runId } = await handle.describe();
        const run = (await store.listEvents(guest.uuid)).filter((e) => e.requestId === `${handle.workflowId}/${runId}`);
        assert.deepEqual(
          run.filter((e) => e.event === 'pause' || e.event === 'resume').map((e) => e.event),
          ['pause', 'resume'],
          'one pause and its resume recorded',
        );
        assert.equal(run.find((e) => e.event === 'resume')?.details.pausedMs, result.guestPauseMs);

        const invariants = await invariantsAfter(imageName, 'completed', 'completed');
        assertAllHeld(invariants);
      } finally {
        copies.stop();
      }
    });
  }
});
