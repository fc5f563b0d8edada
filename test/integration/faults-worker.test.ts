// Faults of the machinery around a snapshot, on the real stack with real worker processes:
// a worker killed with SIGKILL during the copy and during the upload (a new worker takes over
// after the heartbeat timeout; a cold copy goes on under its pause guard, which outlives the
// worker: pause-guard.test.ts), and the Temporal server stopped and started mid-snapshot. Each
// kill waits for its phase (the copy's heartbeat with bytes done, the proxy in front of Glance
// seeing PUT bytes), and its row says what showed it landed there: the step's next attempt in
// the history, a second PUT after the kill, the pause guard's own outcome.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection } from '@temporalio/client';
import { guestState, type Guest } from '../../scripts/lib/guest.js';
import { services, stackConfig } from '../../scripts/lib/stack.js';
import { readGuardState, type GuardState } from '../../src/activities/pause-guard-files.js';
import { snapshotDir } from '../../src/activities/snapshot-files.js';
import { getProgress, startSnapshot } from '../../src/client/snapshots.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import { eventually } from '../support/cli.js';
import { closeTestCloud, stackGlanceUrl, testCloud } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { evidence, recordFaultRow, type Evidence } from '../support/fault-report.js';
import { activityRuns, activitySummaries, eventMs, eventTypes, onlyActivityRun } from '../support/history.js';
import { checkInvariants, outcomeAcrossOutage, outcomeOf, qemuImgProcessesUnder } from '../support/invariants.js';
import { freePorts } from '../support/ports.js';
import { waitForPhase } from '../support/slow-guest.js';
import { WorkerTest } from '../support/worker-test.js';

const guestName = `vmsnap-test-fw-${process.pid}`;
const t = new WorkerTest('fw', {
  VMSNAP_DEFAULT_MODE: 'cold', // these faults are about a paused guest
  // A lost worker's step moves to another worker after 3 s instead of 10.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '3000',
});
const { env, workers } = t;

async function waitFor(condition: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await sleep(50);
  }
}
let guest: Guest;
let store: SqliteStore;
/** In front of Glance for the workers: it shows how far an upload had come. */
let proxy: FaultProxy;
const startWorker = (extra: Record<string, string> = {}, role: 'all' | 'main' | 'host' = 'all') =>
  workers.start({ VMSNAP_GLANCE_URL: proxy.url, ...extra }, role);

/** The snapshot's pause guard as its state file in the temp dir says (undefined: none, or the dir is gone); read with no worker running. */
function guardOf(imageId: string): Promise<GuardState | undefined> {
  return readGuardState(snapshotDir(env.VMSNAP_SNAPSHOTS_DIR, imageId));
}

/** The pids of qemu-img convert (not its check) writing into the workers' snapshots dir. */
function copyProcesses(): number[] {
  return qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('convert');
    } catch {
      return false; // exited in between
    }
  });
}

/** A guard's state in words, for the report. */
function guardSays(state: GuardState | undefined): string {
  if (!state) return 'had left no state';
  const { outcome } = state;
  if (!outcome) return `was ${state.phase} (${state.percent.toFixed(0)} %)`;
  return `had ended: copy ${outcome.copy}, guest ${outcome.resumeOutcome ?? 'not resumed'} after ${outcome.guestPauseMs} ms of pause (${outcome.pauseMeasuredBy ?? 'unmeasured'})`;
}

/** The fault's row in the report: the snapshot must have completed, every invariant held. */
async function completedAndHeld(imageName: string, outcome: string, fault: string, seen: Evidence[], note?: string): Promise<void> {
  recordFaultRow({
    fault,
    outcome,
    invariants: await checkInvariants({
      store,
      snapshotsDir: env.VMSNAP_SNAPSHOTS_DIR,
      guest,
      priorState: 'running',
      image: { name: imageName },
      expectedOutcome: 'completed',
      outcome,
    }),
    evidence: seen,
    ...(note ? { note } : {}),
  });
}

describe('worker and server faults on the real stack', { timeout: 600_000 }, () => {
  before(async () => {
    ({ guest, store } = await t.setUp(guestName, 512));
    proxy = await startFaultProxy(await stackGlanceUrl());
  });

  after(async () => {
    await t.tearDown();
    await proxy?.close();
    await closeTestCloud();
  });

  it('a worker killed with SIGKILL during the copy: the copy goes on under its pause guard, a new worker completes', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      const first = await startWorker();
      const imageName = `vmsnap-test-${process.pid}-kill-convert`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'converting');
      // The copy is under way: its heartbeat says bytes are done, and qemu-img runs.
      const atKill = await eventually(
        'the copy under way',
        async () => {
          const p = await getProgress(handle);
          return p.phase === 'converting' && (p.bytesDone ?? 0) > 0 && qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).length > 0 ? p : undefined;
        },
        120_000,
        100,
      );
      await first.stop('SIGKILL');
      // The pause guard, a process of its own, owns the copy and the pause: both outlive the worker.
      const guardAfterKill = await guardOf(atKill.imageId);
      const guestAfterKill = await guestState(guestName);

      const next = await startWorker();
      const outcome = await outcomeOf(handle);
      const copy = onlyActivityRun(await handle.fetchHistory(), 'coldCopyDisk');
      const adopted = next.lines.some((l) => /adopting the outcome of an earlier attempt's pause guard/.test(l));
      await completedAndHeld(imageName, outcome, 'worker SIGKILL during convert', [
        evidence(`SIGKILL with the copy at ${atKill.percent?.toFixed(0)} % (${atKill.bytesDone} bytes), qemu-img running`, (atKill.percent ?? 100) < 100),
        evidence(
          `after the kill the pause guard ${guardSays(guardAfterKill)}, the guest ${guestAfterKill}`,
          guardAfterKill?.phase === 'copying' || guardAfterKill?.outcome?.copy === 'done',
        ),
        evidence(
          `the copy step completed on attempt ${copy.attempt}, on the new worker, ${adopted ? 'adopting' : 'not adopting'} the guard's copy`,
          copy.ended === 'completed' && (copy.attempt ?? 0) >= 2 && adopted,
        ),
      ]);
    } finally {
      await client.connection.close();
    }
  });

  it('a worker killed with SIGKILL during the upload: a new worker uploads again and verifies', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      await workers.killAll();
      proxy.requests.length = 0;
      const uploader = await startWorker();
      const imageName = `vmsnap-test-${process.pid}-kill-upload`;
      // Uncompressed: the 512 MiB of data make an upload of seconds.
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName }, env.VMSNAP_TASK_QUEUE);
      const put = await proxy.until('a PUT under way', (r) => r.method === 'PUT' && r.bytesIn > 0, 300_000);
      const killedAt = Date.now();
      const sentAtKill = put.bytesIn;
      const endedBeforeKill = put.endedAt !== undefined;
      await uploader.stop('SIGKILL');
      await startWorker();
      const outcome = await outcomeOf(handle);
      const upload = onlyActivityRun(await handle.fetchHistory(), 'uploadImage');
      const retry = proxy.requests.filter((r) => r.method === 'PUT' && r.startedAt > killedAt);
      const { imageId } = (await handle.query('progress')) as { imageId: string };
      const size = (await (await testCloud()).imageService.getImage(imageId))?.size;
      await completedAndHeld(imageName, outcome, 'worker SIGKILL during upload', [
        evidence(`SIGKILL with ${sentAtKill} bytes of the PUT sent, before its answer`, !endedBeforeKill && sentAtKill < (size ?? 0)),
        evidence(
          `PUT seen again after the kill: ${retry.map((r) => `${r.bytesIn} bytes, answered ${r.status}`).join('; ')} (image size ${size})`,
          retry.length >= 1 && retry.at(-1)!.status === 204 && retry.at(-1)!.bytesIn === size,
        ),
        evidence(`the upload step completed on attempt ${upload.attempt}`, upload.ended === 'completed' && (upload.attempt ?? 0) >= 2),
      ]);
    } finally {
      await client.connection.close();
    }
  });

  // Who resumes the guest and who ends the copy step must not be a race between the new worker's
  // activity poll (the copy step's next attempt) and its workflow task (the cancel). So the test
  // decides each: the copy is held still (its qemu-img stopped) until the cancel is recorded with
  // no worker running; the pause guard then finishes and resumes the guest while still no worker
  // runs; a workflow worker alone comes back first, so the cancel reaches the copy step before any
  // host worker could start its next attempt; only then a host worker, for the compensation.
  it('a worker killed with SIGKILL during the copy, the snapshot cancelled meanwhile: the pause guard resumes the guest with no worker, a new worker compensates', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    let stalled: number | undefined;
    try {
      await workers.killAll();
      const first = await startWorker();
      const imageName = `vmsnap-test-${process.pid}-kill-cancel`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'converting');
      const atKill = await eventually(
        'the copy under way',
        async () => {
          const p = await getProgress(handle);
          return p.phase === 'converting' && (p.bytesDone ?? 0) > 0 && copyProcesses().length > 0 ? p : undefined;
        },
        120_000,
        100,
      );
      [stalled] = copyProcesses();
      process.kill(stalled!, 'SIGSTOP'); // a stalled disk: the copy cannot end before the cancel is in
      await first.stop('SIGKILL');
      await handle.cancel();
      const cancelRecorded = eventTypes(await handle.fetchHistory()).includes('WorkflowExecutionCancelRequested');
      const guardAtCancel = await guardOf(atKill.imageId);
      const guestAtCancel = await guestState(guestName);
      process.kill(stalled!, 'SIGCONT');
      stalled = undefined;

      // Still no worker: the guard copies on, and resumes the guest at the copy's end.
      const guardEnded = await eventually(
        'the pause guard ended',
        async () => {
          const state = await guardOf(atKill.imageId);
          return state?.outcome ? state : undefined;
        },
        300_000,
        100,
      );
      const guestAfterGuard = await guestState(guestName);

      // A workflow worker alone: the cancel reaches the copy step, which no host worker can retry meanwhile.
      await startWorker({}, 'main');
      const copy = await eventually(
        "the copy step's end in the history",
        async () => {
          const [run] = activityRuns(await handle.fetchHistory(), 'coldCopyDisk');
          return run?.ended ? run : undefined;
        },
        120_000,
        200,
      );
      await startWorker({}, 'host'); // for the compensation's host steps
      const outcome = await outcomeOf(handle);
      const history = await handle.fetchHistory();
      const resume = activityRuns(history, 'resumeInstance');
      const cleanup = activityRuns(history, 'removeSnapshotFiles');
      const compensations = activitySummaries(history).filter((a) => a.summary.startsWith('compensation:'));
      recordFaultRow({
        fault: 'worker SIGKILL during convert, then the snapshot cancelled',
        outcome,
        invariants: await checkInvariants({
          store,
          snapshotsDir: env.VMSNAP_SNAPSHOTS_DIR,
          guest,
          priorState: 'running',
          image: { name: imageName },
          expectedOutcome: 'Cancelled',
          outcome,
        }),
        evidence: [
          evidence(`SIGKILL with the copy at ${atKill.percent?.toFixed(0)} % (${atKill.bytesDone} bytes), qemu-img running`, (atKill.percent ?? 100) < 100),
          evidence(
            `the cancel recorded with no worker running (${cancelRecorded ? 'WorkflowExecutionCancelRequested in the history' : 'not in the history'}), ` +
              `the pause guard ${guardSays(guardAtCancel)}, the guest ${guestAtCancel}`,
            cancelRecorded && guardAtCancel?.phase === 'copying' && guestAtCancel === 'paused',
          ),
          evidence(
            `still with no worker, the pause guard ${guardSays(guardEnded)}; the guest ${guestAfterGuard}`,
            guardEnded?.outcome?.copy === 'done' && guardEnded.outcome.resumeOutcome === 'resumed' && guestAfterGuard === 'running',
          ),
          evidence(
            `with a workflow worker alone, the copy step ended ${copy.ended} (cancel requested: ${copy.cancelRequested}, ` +
              `attempt ${copy.attempt ?? 'none started after the kill'}): no second copy`,
            (copy.ended === 'canceled' || copy.ended === 'timedOut') && copy.cancelRequested && (copy.attempt ?? 1) === 1,
          ),
          evidence(
            `then on a host worker: ${compensations.map((a) => `"${a.summary}"`).join(', ')}, each completed ` +
              `(a resume of a guest that runs is done already: it counts as resumed)`,
            ['compensation: resume the guest', 'compensation: remove temp dir'].every((c) => compensations.some((a) => a.summary === c)) &&
              [...resume, ...cleanup].every((r) => r.ended === 'completed'),
          ),
        ],
      });
    } finally {
      if (stalled !== undefined) process.kill(stalled, 'SIGCONT');
      await client.connection.close();
    }
  });

  it('a worker stopped with SIGTERM during the upload: it exits at once, and its attempt goes to another worker', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    // The first PUT crawls (a slow link), so the upload is surely in flight when the signal comes.
    const proxy = await startFaultProxy(await stackGlanceUrl());
    proxy.setRule({ method: 'PUT', path: /\/file$/, kind: 'stretch', ms: 300_000, times: 1 });
    // The stall watchdog could fire only after 10 minutes, and a lost attempt would be noticed only
    // after a heartbeat timeout of 2 minutes: an exit or a retry sooner is not theirs.
    const slowToNotice = { VMSNAP_GLANCE_URL: proxy.url, VMSNAP_GLANCE_STALL_MS: '600000', VMSNAP_HEARTBEAT_TIMEOUT_MS: '120000' };
    try {
      await workers.killAll();
      const stopped = await workers.start(slowToNotice);
      const imageName = `vmsnap-test-${process.pid}-sigterm-upload`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'uploading');
      await waitFor(() => proxy.requests.some((r) => r.method === 'PUT'), 'the PUT reaches Glance');
      await workers.start(slowToNotice);

      const signalled = Date.now();
      stopped.proc.kill('SIGTERM');
      const code = await Promise.race([stopped.exited(), sleep(60_000).then(() => 'still running after 60 s')]);
      const exitMs = Date.now() - signalled;
      assert.equal(code, 0, `the worker exits by itself after SIGTERM (${stopped.lines.slice(-5).join('\n')})`);

      const outcome = await outcomeOf(handle);
      // The stopped worker reported its attempt as failed: the retry did not wait for the heartbeat timeout.
      const history = await handle.fetchHistory();
      const uploads = (history.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'uploadImage');
      const first = (history.events ?? []).find(
        (e) => e.activityTaskStartedEventAttributes && String(e.activityTaskStartedEventAttributes.scheduledEventId) === String(uploads[0]?.eventId),
      )?.activityTaskStartedEventAttributes;
      assert.ok(Number(first?.attempt) >= 2, 'the upload was tried again');
      const lastFailure = first?.lastFailure;
      assert.ok(
        lastFailure && !lastFailure.timeoutFailureInfo,
        `the attempt was reported by the stopped worker, not timed out: ${JSON.stringify(lastFailure)}`,
      );
      assert.match(lastFailure.message ?? '', /shutting down/);
      // Figures, not bounds: how soon the process was gone, and the next attempt at Glance (after the retry's 1 s backoff).
      const retriedMs = (proxy.requests.find((r) => r.startedAt >= signalled)?.startedAt ?? NaN) - signalled;
      const replaced = ((await handle.describe()).memo?.replacedImageIds as string[] | undefined)?.length ?? 0;
      const puts = proxy.requests.filter((r) => r.method === 'PUT');
      await completedAndHeld(
        imageName,
        outcome,
        'worker SIGTERM during upload',
        [
          evidence(`SIGTERM with the first PUT in flight (${puts[0]?.bytesIn ?? 0} bytes through), the worker exited ${code}`, code === 0),
          evidence(`the upload's attempt ${first?.attempt} followed a failure the stopped worker reported`, Number(first?.attempt) >= 2),
          evidence(`${puts.length} PUTs seen, the last one after the signal`, puts.length >= 2 && (puts.at(-1)?.startedAt ?? 0) >= signalled),
        ],
        `the worker exited ${exitMs} ms after SIGTERM (stall watchdog at 600 s, heartbeat timeout 120 s); its attempt, reported failed, reached ` +
          `Glance again from another worker ${retriedMs} ms after the signal${replaced ? ' (into a new image record: the first was left saving)' : ''}`,
      );
    } finally {
      await workers.killAll();
      await proxy.close();
      await client.connection.close();
    }
  });

  it('the Temporal server stopped and started again mid-snapshot: the snapshot completes', async () => {
    // A Temporal of its own (SQLite persistence), so stopping it disturbs no other test.
    const serverDir = join(t.dir, 'temporal');
    const [port, uiPort] = await freePorts(2);
    const cfg = stackConfig({
      ...process.env,
      VMSNAP_DATA_DIR: serverDir,
      VMSNAP_TEMPORAL_PORT: String(port),
      VMSNAP_TEMPORAL_UI_PORT: String(uiPort),
    });
    const temporal = services(cfg).find((s) => s.name === 'temporal')!;
    await temporal.up();
    const address = `127.0.0.1:${port}`;
    const connection = await Connection.connect({ address });
    const client = new Client({ connection });
    try {
      await workers.killAll();
      await startWorker({ TEMPORAL_ADDRESS: address });
      const imageName = `vmsnap-test-${process.pid}-temporal-restart`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'converting');
      await eventually('qemu-img copying', async () => (qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).length > 0 ? true : undefined), 120_000, 100);
      const downAt = Date.now();
      await temporal.down();
      // The outage itself: how long the server stays away is the fault, not a wait for something.
      await sleep(3000);
      await temporal.up();
      const upAt = Date.now();
      const outcome = await outcomeAcrossOutage(handle, 20);
      const copy = onlyActivityRun(await handle.fetchHistory(), 'coldCopyDisk');
      const scheduledAt = eventMs(copy.scheduled);
      await completedAndHeld(
        imageName,
        outcome,
        'Temporal server restart mid-snapshot',
        [
          evidence(
            `the copy step was scheduled before the stop and ended (${copy.ended}) after the restart`,
            scheduledAt <= downAt && (copy.endedAt ?? 0) >= upAt && copy.ended === 'completed',
          ),
        ],
        'dev server with SQLite persistence stopped for 3 s during the copy',
      );
    } finally {
      await workers.killAll();
      await connection.close();
      await temporal.down();
    }
  });
});
