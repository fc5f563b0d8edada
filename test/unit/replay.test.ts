// Replays the histories of real runs (recorded by the integration tests named in
// test/support/fixtures.ts, and those of each release kept in test/fixtures/<version>/) against
// the current workflow code: a change that would break running workflows fails here.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import { Worker } from '@temporalio/worker';
import { workflowBundle } from '../../src/worker/workflow-bundle.js';
import { FIXTURES_DIR, REPLAY_FIXTURES } from '../support/fixtures.js';

const cases: [string, string][] = [
  ['a recorded cold snapshotInstance history replays deterministically', REPLAY_FIXTURES.snapshotCold],
  ['a recorded live snapshotInstance history replays deterministically', REPLAY_FIXTURES.snapshotLive],
  ['a recorded compensated snapshotInstance history replays deterministically', REPLAY_FIXTURES.snapshotCompensated],
  ['a recorded restoreInstance history replays deterministically', REPLAY_FIXTURES.restore],
  ['a recorded scheduledSnapshots history replays deterministically', REPLAY_FIXTURES.scheduledSnapshots],
  ['a recorded reconcile history replays deterministically', REPLAY_FIXTURES.reconcile],
];

// Each release's histories (CONTRIBUTING.md): runs it started must finish on this code.
for (const release of readdirSync(FIXTURES_DIR, { withFileTypes: true }).filter((e) => e.isDirectory())) {
  for (const file of readdirSync(join(FIXTURES_DIR, release.name)).filter((f) => f.endsWith('.json'))) {
    cases.push([`a ${file} of release ${release.name} replays deterministically`, join(FIXTURES_DIR, release.name, file)]);
  }
}

for (const [name, path] of cases) {
  it(name, { timeout: 120_000 }, async () => {
    const history = historyFromJSON(JSON.parse(readFileSync(path, 'utf8')));
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history);
  });
}
