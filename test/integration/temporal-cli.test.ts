// Snapshots started and watched with the Temporal CLI alone, as docs/usage.md documents: the workflow
// input is the documented JSON, the `progress` query answers JSON, a bad input fails at once with
// a non-retryable InvalidInput naming the fields. Real workers (in this process), guest and Glance.
import assert from 'node:assert/strict';
import { execa } from 'execa';
import { after, before, describe, it } from 'node:test';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { snapshotWorkflowId } from '../../src/shared/names.js';
import { deleteImages, eventually, stopLeftoverSnapshots, TEMPORAL_BIN } from '../support/cli.js';
import { startHarness, type Harness } from '../support/harness.js';

const guestName = `vmsnap-test-tcli-${process.pid}`;
let h: Harness;
let guest: Guest;
const images = new Set<string>();

async function temporal(args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const r = await execa(TEMPORAL_BIN, [...args, '--address', h.config.temporal.address, '--namespace', h.config.temporal.namespace], {
    reject: false,
    timeout: 90_000,
    stdin: 'ignore',
  });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** `temporal workflow start` of a snapshotInstance on the workers' task queue, with this JSON input. */
function startSnapshotWorkflow(workflowId: string, input: string) {
  return temporal([
    'workflow',
    'start',
    '--type',
    'snapshotInstance',
    '--task-queue',
    h.config.temporal.taskQueue,
    '--workflow-id',
    workflowId,
    '--input',
    input,
  ]);
}

function parse<T>(out: { stdout: string; stderr: string }): T {
  try {
    return JSON.parse(out.stdout) as T;
  } catch {
    assert.fail(`not JSON:\n${out.stdout}\n--- stderr ---\n${out.stderr}`);
  }
}

interface Failure {
  message: string;
  applicationFailureInfo?: { type: string; nonRetryable?: boolean; details?: unknown[] };
}
interface ResultDoc {
  status: string;
  closeEvent: {
    workflowExecutionCompletedEventAttributes?: { result?: unknown };
    workflowExecutionFailedEventAttributes?: { failure: Failure };
  };
}

describe('the Temporal CLI drives snapshotInstance', { timeout: 400_000 }, () => {
  before(async () => {
    h = await startHarness({ name: 'tcli' });
    guest = await createGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir, intervalMs: 100 });
  });

  after(async () => {
    if (h) await stopLeftoverSnapshots(h);
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    if (h) await deleteImages(h, images);
    await h?.close();
  });

  it('workflow start with the documented input completes with an active image; the progress query answers JSON', async () => {
    const workflowId = snapshotWorkflowId(guest.uuid);
    const imageName = `vmsnap-test-tcli-${process.pid}`;
    const input = `{"instance": "${guest.uuid}", "imageName": "${imageName}", "metadata": {"purpose": "backup"}}`;
    const started = await startSnapshotWorkflow(workflowId, input);
    assert.equal(started.exitCode, 0, started.stderr);

    // The query as docs/usage.md shows it, in JSON: the phase, and the image id from the first moment.
    const query = await temporal(['workflow', 'query', '--workflow-id', workflowId, '--type', 'progress', '--output', 'json']);
    assert.equal(query.exitCode, 0, query.stderr);
    const answer = parse<{ queryResult: { phase: string; imageId: string }[] }>(query);
    const progress = answer.queryResult[0]!;
    assert.match(progress.phase, /^(starting|creating-image|pausing|converting|resuming|uploading|finishing|completed)$/);
    assert.match(progress.imageId, /^[0-9a-f-]{36}$/);
    images.add(progress.imageId);

    const result = await temporal(['workflow', 'result', '--workflow-id', workflowId, '--output', 'json']);
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    const doc = parse<ResultDoc>(result);
    assert.equal(doc.status, 'COMPLETED');
    assert.ok(JSON.stringify(doc.closeEvent).includes(progress.imageId), 'the result names the image');

    const image = await h.glance.getImage(progress.imageId);
    assert.equal(image?.status, 'active');
    assert.equal(image?.name, imageName);
    assert.equal(image?.purpose, 'backup');
    assert.match(String(image?.vmsnap_request_id), new RegExp(`^${workflowId}(/|$)`), 'the image names the workflow that made it');

    // After the end the query still answers (a worker replays the history): completed.
    const done = await temporal(['workflow', 'query', '--workflow-id', workflowId, '--type', 'progress', '--output', 'json']);
    assert.equal(parse<{ queryResult: { phase: string }[] }>(done).queryResult[0]!.phase, 'completed');

    // The search attributes find it with the CLI too.
    const listed = await eventually('the workflow in temporal workflow list', async () => {
      const list = await temporal(['workflow', 'list', '--query', `VmsnapInstanceId = '${guest.uuid}' AND VmsnapPhase = 'completed'`, '--output', 'json']);
      const rows = parse<{ execution: { workflowId: string } }[] | null>(list) ?? [];
      return rows.find((r) => r.execution.workflowId === workflowId);
    });
    assert.ok(listed);
  });

  it('a bad input fails at once with a non-retryable InvalidInput naming both fields', async () => {
    const workflowId = `vmsnap-test-tcli-bad-${process.pid}`;
    const started = await startSnapshotWorkflow(workflowId, '{"instance": "../x", "imageName": ""}');
    assert.equal(started.exitCode, 0, started.stderr);
    const result = await temporal(['workflow', 'result', '--workflow-id', workflowId, '--output', 'json']);
    assert.notEqual(result.exitCode, 0, 'a failed workflow makes `temporal workflow result` fail');
    const doc = parse<ResultDoc>(result);
    assert.equal(doc.status, 'FAILED');
    const failure = doc.closeEvent.workflowExecutionFailedEventAttributes?.failure;
    assert.ok(failure, JSON.stringify(doc.closeEvent));
    assert.equal(failure.applicationFailureInfo?.type, 'InvalidInput');
    assert.equal(failure.applicationFailureInfo?.nonRetryable, true);
    assert.match(failure.message, /instance: must be a UUID or a name/);
    assert.match(failure.message, /imageName: required/);
    // The details carry the problems field by field, for programs.
    const problems = failure.applicationFailureInfo?.details?.[0] as { field: string }[] | undefined;
    assert.deepEqual(problems?.map((p) => p.field).sort(), ['imageName', 'instance']);
    // Nothing ran: no step at all, not even a local one (those are markers in the history), so no
    // task state was taken on any instance and no image was made.
    const history = parse<{ events: { eventType: string }[] }>(await temporal(['workflow', 'show', '--workflow-id', workflowId, '--output', 'json']));
    const types = history.events.map((e) => e.eventType);
    assert.ok(types.includes('EVENT_TYPE_WORKFLOW_EXECUTION_FAILED'), types.join(', '));
    assert.deepEqual(
      types.filter((t) => /ACTIVITY|MARKER/.test(t)),
      [],
      'no step ran',
    );
  });
});
