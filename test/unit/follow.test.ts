// Following a run to its end does not wait on a progress query once the run has ended: a query of
// a run that just closed can take seconds (a worker replays it), and the CLI used to print the
// outcome 5 s after the run had closed. The fake run's queries never answer; its result does.
// And a failure's line says what to do.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure, RetryState } from '@temporalio/common';
import { readable } from '../../src/activities/heartbeat.js';
import { follow } from '../../src/client/cli/follow.js';
import { Session, type CliIo } from '../../src/client/cli/session.js';
import { VmsnapError } from '../../src/shared/errors.js';
import { knownFailure } from '../../src/shared/failures.js';
import { ProgressView, describeLine } from '../../src/client/progress.js';
import type { SnapshotHandle } from '../../src/client/snapshots.js';

describe('following a run', { timeout: 60_000 }, () => {
  it('ends when the run ends, even while a progress query is still unanswered', async () => {
    let asked = 0;
    let end: (value: unknown) => void = () => undefined;
    const result = new Promise((resolve) => (end = resolve));
    const handle = {
      client: { withDeadline: (_deadline: number, fn: () => Promise<unknown>) => fn() },
      query: () => {
        asked++;
        end({ imageId: 'img' }); // the run ends while this query is out
        return new Promise(() => undefined); // and the query is never answered
      },
      describe: () => new Promise(() => undefined),
      result: () => result,
    } as unknown as SnapshotHandle;
    const out = new Writable({ write: (_c, _e, done) => done() });
    const ended = await follow({} as Session, handle, new ProgressView(out, 'plain'), 60_000);
    assert.deepEqual(ended.result, { imageId: 'img' });
    assert.equal(asked, 1);
  });
});

describe('a failure as the CLI says it', () => {
  function said(err: unknown): string {
    let stderr = '';
    const io = {
      stdout: new Writable({ write: (_c, _e, done) => done() }),
      stderr: new Writable({
        write: (c: Buffer, _e, done) => {
          stderr += c.toString();
          done();
        },
      }),
      env: {},
    } as unknown as CliIo;
    new Session(io).fail({}, err);
    return stderr.trim();
  }

  it('a run that failed ImageCorrupt: one line with what to do', () => {
    const cause = ApplicationFailure.create({
      type: 'ImageCorrupt',
      message: 'image img in Glance does not match what was sent: sha512 differs',
      nonRetryable: true,
    });
    const line = said(new WorkflowFailedError('failed', cause, RetryState.NON_RETRYABLE_FAILURE));
    assert.match(line, /^vmsnap: snapshot failed \(ImageCorrupt\): image img in Glance does not match what was sent: sha512 differs: .*snapshot again/);
    assert.equal(line.split('\n').length, 1);
  });

  it("a run's refusal: its type and what to do", () => {
    const line = said(new VmsnapError('InstanceBusy', 'instance x has a task in progress (image_uploading)', { refusedByRun: true }));
    assert.equal(line, `vmsnap: refused (InstanceBusy): instance x has a task in progress (image_uploading): ${knownFailure('InstanceBusy')!.hint}`);
  });
});

describe("a step's progress after a failed attempt", () => {
  it('reads "retrying (attempt 2 of 8)" until its bytes move, not a stalled 0 %', () => {
    const view = new ProgressView(new Writable({ write: (_c, _e, done) => done() }), 'plain');
    const step = { activityType: 'uploadImage', attempt: 2, maximumAttempts: 8 };
    const waiting = view.line({ phase: 'uploading', percent: 0, bytesDone: 0, bytesTotal: 1 << 30, step });
    assert.equal(describeLine(waiting, 'plain'), 'uploading 0% (0 B of 1.0 GiB, retrying (attempt 2 of 8))');
    const moving = view.line({ phase: 'uploading', percent: 1, bytesDone: 1 << 24, bytesTotal: 1 << 30, step });
    assert.doesNotMatch(describeLine(moving, 'plain'), /retrying/);
    const first = view.line({ phase: 'uploading', percent: 0, bytesDone: 0, bytesTotal: 1 << 30, step: { ...step, attempt: 1 } });
    assert.doesNotMatch(describeLine(first, 'plain'), /retrying/);
  });
});

describe("a step's heartbeat as the Web UI shows it", () => {
  it('leads with a line a person reads: phase, percent, bytes, the attempt past the first; a wait says what it waits for', () => {
    const copying = { phase: 'uploading', percent: 42.7, bytesDone: 430 * 2 ** 20, bytesTotal: 2 ** 30 };
    assert.deepEqual(readable(copying, 2), { summary: 'uploading 42% (430.0 MiB of 1.0 GiB), attempt 2', ...copying });
    assert.equal((readable(copying, 1) as { summary: string }).summary, 'uploading 42% (430.0 MiB of 1.0 GiB)');
    assert.equal(
      (readable({ phase: 'stopping', note: 'asked the guest to shut down' }, 1) as { summary: string }).summary,
      'stopping: asked the guest to shut down',
    );
    assert.equal(readable(undefined, 1), undefined);
    assert.deepEqual(readable({ phase: 'power' }, 1), { phase: 'power' });
  });
});

describe("a set's disks, side by side", () => {
  it("the CLI's line names each disk's percent beside the phase; the Web UI's summary names the disk", () => {
    const view = new ProgressView(new Writable({ write: (_c, _e, done) => done() }), 'plain');
    const disks = [
      { dev: 'vda', percent: 40.5, bytesDone: 40, bytesTotal: 100 },
      { dev: 'vdb', percent: 100, bytesDone: 100, bytesTotal: 100 },
    ];
    const line = view.line({ phase: 'uploading', percent: 70, bytesDone: 140, bytesTotal: 200, disks });
    assert.match(describeLine(line, 'plain'), /^uploading \[vda 40%, vdb 100%\] 70% \(140 B of 200 B/);
    const heartbeat = { phase: 'downloading', dev: 'vdb', percent: 10, bytesDone: 2 ** 20, bytesTotal: 10 * 2 ** 20 };
    assert.equal((readable(heartbeat, 1) as { summary: string }).summary, 'downloading vdb 10% (1.0 MiB of 10.0 MiB)');
  });
});
