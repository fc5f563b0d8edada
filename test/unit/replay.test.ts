// Replays the histories of real runs (recorded by the integration tests named in
// test/support/fixtures.ts) against the current workflow code: a change that would break running
// workflows fails here.
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import { Worker } from '@temporalio/worker';
import { workflowBundle } from '../../src/worker/workflow-bundle.js';
import { REPLAY_FIXTURES } from '../support/fixtures.js';

const cases: [string, string][] = [
  ['a recorded snapshotInstance history replays deterministically', REPLAY_FIXTURES.snapshotCold],
  ['a snapshotInstance history from before the wait-for-slot-release patch replays', REPLAY_FIXTURES.snapshotBeforeSlotRelease],
  ['a recorded live snapshotInstance history replays deterministically', REPLAY_FIXTURES.snapshotLive],
  ['a recorded compensated snapshotInstance history replays deterministically', REPLAY_FIXTURES.snapshotCompensated],
  ['a cold snapshotInstance history from before the lean-snapshot patch replays', REPLAY_FIXTURES.snapshotColdBeforeLean],
  ['a live snapshotInstance history from before the lean-snapshot patch replays', REPLAY_FIXTURES.snapshotLiveBeforeLean],
  ['a compensated snapshotInstance history from before the lean-snapshot patch replays', REPLAY_FIXTURES.snapshotCompensatedBeforeLean],
  ['a recorded scheduledSnapshots history replays deterministically', REPLAY_FIXTURES.scheduledSnapshots],
  ['a recorded reconcile history replays deterministically', REPLAY_FIXTURES.reconcile],
];

for (const [name, path] of cases) {
  it(name, { timeout: 120_000 }, async () => {
    const history = historyFromJSON(JSON.parse(readFileSync(path, 'utf8')));
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history);
  });
}
