// Replays the history of a real snapshot run (recorded by test/integration/snapshot.test.ts)
// against the current workflow code: a change that would break running workflows fails here.
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import { Worker } from '@temporalio/worker';
import { workflowBundle } from '../../src/worker/workflow-bundle.js';
import { REPLAY_FIXTURE } from '../support/fixtures.js';

it('a recorded snapshotInstance history replays deterministically', { timeout: 120_000 }, async () => {
  const history = historyFromJSON(JSON.parse(readFileSync(REPLAY_FIXTURE, 'utf8')));
  await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history);
});
