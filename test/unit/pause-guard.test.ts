// The pause guard's pieces that need no guest: how it is started (a scope of its own under
// systemd), how a follower tells it still runs, and how a run's pauses add up to guestPauseMs.
// The guard itself, on real guests: test/integration/pause-guard.test.ts.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { isGuardRunning, processStart } from '../../src/activities/pause-guard-files.js';
import { pauseGuardCommand, underSystemd } from '../../src/activities/pause-guard-launch.js';
import { pausedMsOfRun } from '../../src/activities/power.js';
import { bootId } from '../../src/drivers/files.js';

const owner = 'snapshot-x/run-1';
const at = (ms: number) => new Date(Date.UTC(2026, 0, 1) + ms).toISOString();
const event = (name: string, ms: number, details: Record<string, unknown> = {}, requestId = owner) => ({
  requestId,
  event: name,
  details,
  createdAt: at(ms),
});

describe('pausedMsOfRun', () => {
  it("sums each pause of the run, as QEMU measured it where the resume says, else by the events' times", () => {
    const events = [
      event('start', 0),
      event('pause', 1000, { guard: 'a' }),
      event('resume', 3500, { guard: 'a', pausedMs: 2410 }), // the guard's QEMU measure
      event('pause', 5000, { guard: 'b' }),
      event('resume', 6200, { outcome: 'resumed' }), // compensation: no measure, 1200 ms apart
      event('pause', 7000, {}, 'snapshot-x/run-0'), // another run's
      event('resume', 9000, {}, 'snapshot-x/run-0'),
    ];
    assert.equal(pausedMsOfRun(events, owner), 2410 + 1200);
  });

  it('a retry that paused a guest still paused counts from the first pause; a resume without a pause counts nothing', () => {
    const events = [
      event('resume', 500, { pausedMs: 99 }),
      event('pause', 1000, { guard: 'a' }),
      event('pause', 4000, { guard: 'b' }),
      event('resume', 9000, { guard: 'b', pausedMs: 4900 }),
    ];
    assert.equal(pausedMsOfRun(events, owner), 8000);
  });

  it('an open pause counts nothing yet', () => {
    assert.equal(pausedMsOfRun([event('pause', 1000)], owner), 0);
  });
});

describe('the pause guard process', () => {
  it('runs in a systemd scope of its own when the worker is a unit, else as a plain detached process', () => {
    assert.equal(underSystemd({ INVOCATION_ID: '0123abcd' }), true);
    assert.equal(underSystemd({}), false);
    const log = '/var/lib/vmsnap/snapshots/.pause-guard-x.log';
    const plain = pauseGuardCommand(log, false);
    assert.equal(plain[0], process.execPath);
    assert.equal(plain.at(-1), log);
    assert.match(plain.at(-2)!, /[/]worker[/]pause-guard\.ts$/, 'from source, the .ts entry through tsx');
    assert.ok(plain.includes('--import'));
    const scoped = pauseGuardCommand(log, true, 't1');
    assert.deepEqual(scoped.slice(0, 2), ['systemd-run', '--scope']);
    assert.ok(scoped.includes('--unit=vmsnap-pause-guard-t1'));
    assert.deepEqual(scoped.slice(scoped.indexOf('--') + 1), plain);
  });

  it('is told running from a later process with its pid, or from its exited (zombie) self', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const exited = once(child, 'exit');
    await once(child, 'spawn');
    const pid = child.pid!;
    const state = { pid, procStart: processStart(pid)!.start, bootId: await bootId() };
    assert.equal(await isGuardRunning(state), true);
    assert.equal(await isGuardRunning({ ...state, procStart: `${state.procStart}1` }), false, 'another process with this pid');
    assert.equal(await isGuardRunning({ ...state, bootId: 'another-boot' }), false, 'an earlier boot');
    // Exited but not yet reaped: the kernel keeps its /proc entry as a zombie.
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 200 && processStart(pid)?.zombie === false; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(await isGuardRunning(state), false, 'a zombie does not run');
    await exited;
  });
});
