import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));

/** History of a real snapshot of a running guest, replayed by test/unit/replay.test.ts. */
export const REPLAY_FIXTURE = fixture('snapshot-running-history.json');

/**
 * Every recorded history test/unit/replay.test.ts replays, each from a real run of the test that
 * names it. A change to workflow code that would break running workflows fails there.
 */
export const REPLAY_FIXTURES = {
  /** Cold snapshot of a running guest (test/integration/snapshot.test.ts). */
  snapshotCold: REPLAY_FIXTURE,
  /** Live snapshot (test/integration/snapshot-live.test.ts). */
  snapshotLive: fixture('snapshot-live-history.json'),
  /** Upload refused for good, then compensation (test/integration/snapshot-compensation.test.ts). */
  snapshotCompensated: fixture('snapshot-compensated-history.json'),
  /** One run of a schedule, with a child snapshot and retention (test/integration/schedules.test.ts). */
  scheduledSnapshots: fixture('scheduled-snapshots-history.json'),
  /** The reconciler undoing a terminated snapshot (test/integration/reconcile.test.ts). */
  reconcile: fixture('reconcile-history.json'),
} as const;

/**
 * With VMSNAP_RECORD_HISTORY=1, writes the run's history (as `temporal workflow show` prints it)
 * to the fixture: do it when a workflow change is meant to be incompatible (and then version the
 * workflow, see README). Otherwise does nothing.
 */
export async function recordHistory(address: string, execution: { workflowId: string; runId?: string }, path: string): Promise<void> {
  if (process.env.VMSNAP_RECORD_HISTORY !== '1') return;
  const shown = await execa('.tools/bin/temporal', [
    'workflow', 'show', '--output', 'json', '--address', address,
    '--workflow-id', execution.workflowId, ...(execution.runId ? ['--run-id', execution.runId] : []),
  ]);
  writeFileSync(path, shown.stdout);
}
