// A restore's stop of the guest says what it waits for: its heartbeat carries the shutdown wait and
// how to skip it (--force-stop), which `vmsnap restore status` and `--wait` show; --force-stop
// destroys at once. The hypervisor is a fake whose stop() ends only once it has seen that heartbeat
// (or at once when no wait was asked), so the test waits on the heartbeat, never on the clock.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { MockActivityEnvironment } from '@temporalio/testing';
import type { ActivityDeps } from '../../src/activities/deps.js';
import { stopSwapStart } from '../../src/activities/restore-swap.js';
import { ProgressView } from '../../src/client/progress.js';
import type { Hypervisor, Stopped } from '../../src/drivers/hypervisor.js';
import { VmsnapError } from '../../src/shared/errors.js';

const root = mkdtempSync(join(tmpdir(), 'vmsnap-restore-stop-'));
after(() => rmSync(root, { recursive: true, force: true }));
const disk = join(root, 'disk.qcow2');
writeFileSync(disk, 'not read: the fake stop ends the step first');

/** Runs stopSwapStart until the fake's stop(): what it was asked, and the heartbeats seen by then. */
async function stopStep(forceStop: boolean) {
  const env = new MockActivityEnvironment();
  const heartbeats: unknown[] = [];
  let noted: () => void = () => undefined;
  const sawNote = new Promise<void>((resolve) => (noted = resolve));
  env.on('heartbeat', (d: unknown) => {
    heartbeats.push(d);
    if ((d as { note?: string } | undefined)?.note) noted();
  });
  const asked: number[] = [];
  const hypervisor: Partial<Hypervisor> = {
    rootDisk: async () => ({ path: disk, format: 'qcow2' }),
    async stop(_id: string, timeoutMs: number): Promise<Stopped> {
      asked.push(timeoutMs);
      if (timeoutMs > 0) await sawNote;
      // The step has shown what it needed to: it ends here.
      throw new VmsnapError('InstanceInvalidState', 'the fake ends the step at its stop');
    },
  };
  const deps = {
    hypervisor,
    store: { recordEvent: async () => undefined },
    settings: { restoreShutdownTimeoutMs: 60_000 },
  } as unknown as ActivityDeps;
  await assert.rejects(
    env.run(() =>
      stopSwapStart(deps, { instanceId: '6a535fc0-8993-420b-af4c-16246447e5b5', owner: 'restore-x/run', imageId: 'img', powerState: 'running', forceStop }),
    ),
    /the fake ends the step at its stop/,
  );
  return { asked, heartbeats };
}

describe("a restore's stop of the guest", { timeout: 60_000 }, () => {
  it('says in its heartbeat that it waits for the shutdown, until when, and how to skip the wait', async () => {
    const { asked, heartbeats } = await stopStep(false);
    assert.deepEqual(asked, [60_000]);
    const noted = heartbeats.find((d) => (d as { note?: string } | undefined)?.note) as { phase: string; note: string };
    assert.equal(noted.phase, 'stopping');
    assert.match(noted.note, /^asked the guest to shut down \(ACPI\); it is destroyed if still running at \d\d:\d\d:\d\d UTC \(60 s\)/);
    assert.match(noted.note, /vmsnap restore --force-stop skips the wait$/);
  });

  it('--force-stop destroys at once: no wait, nothing to say', async () => {
    const { asked, heartbeats } = await stopStep(true);
    assert.deepEqual(asked, [0]);
    assert.ok(!heartbeats.some((d) => (d as { note?: string } | undefined)?.note), JSON.stringify(heartbeats));
  });
});

describe('progress lines of a wait without bytes', () => {
  function view() {
    const lines: string[] = [];
    const out = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        done();
      },
    });
    return { lines, view: new ProgressView(out, 'plain', 5000, () => 0) };
  }

  it('shows the note once when it comes, after the phase line', () => {
    const { lines, view: v } = view();
    const note = 'asked the guest to shut down (ACPI); ...: vmsnap restore --force-stop skips the wait';
    v.update({ phase: 'stopping' });
    v.update({ phase: 'stopping', note });
    v.update({ phase: 'stopping', note });
    v.update({ phase: 'starting-guest' });
    assert.deepEqual(
      lines.map((l) => l.replace(/^\S+ /, '')),
      ['stopping', `stopping: ${note}`, 'starting-guest'],
    );
  });
});
