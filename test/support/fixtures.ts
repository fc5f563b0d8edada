import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

/** The recorded histories; a folder per release below it. */
export const FIXTURES_DIR = fileURLToPath(new URL('../fixtures/', import.meta.url));
const fixture = (name: string) => `${FIXTURES_DIR}${name}`;

/**
 * Every recorded history test/unit/replay.test.ts replays, each from a real run of the test that
 * names it (re-recorded with VMSNAP_RECORD_HISTORY=1). Before the first release these are the one
 * current shape of each workflow, re-recorded whenever a workflow's commands change; from a release
 * on, that release's histories are kept in a folder named after it (CONTRIBUTING.md), and a change
 * that breaks their replay needs `patched()`.
 */
export const REPLAY_FIXTURES = {
  /** Cold snapshot of a running guest (test/integration/snapshot.test.ts). */
  snapshotCold: fixture('snapshot-cold-history.json'),
  /** Live snapshot (test/integration/snapshot-live.test.ts). */
  snapshotLive: fixture('snapshot-live-history.json'),
  /** Upload refused for good, then compensation (test/integration/snapshot-compensation.test.ts). */
  snapshotCompensated: fixture('snapshot-compensated-history.json'),
  /** A restore in place of a running guest (test/integration/restore.test.ts). */
  restore: fixture('restore-history.json'),
  /** One run of a schedule: child snapshots, one failing, and retention (test/integration/schedules.test.ts). */
  scheduledSnapshots: fixture('scheduled-snapshots-history.json'),
  /** The reconciler undoing a terminated snapshot (test/integration/reconcile.test.ts). */
  reconcile: fixture('reconcile-history.json'),
} as const;

/**
 * With VMSNAP_RECORD_HISTORY=1, writes the run's history (as `temporal workflow show` prints it)
 * to the fixture: do it when a workflow change is meant to be incompatible (and then version the
 * workflow, see CONTRIBUTING.md). Otherwise does nothing.
 */
export async function recordHistory(address: string, execution: { workflowId: string; runId?: string }, path: string): Promise<void> {
  if (process.env.VMSNAP_RECORD_HISTORY !== '1') return;
  const shown = await execa('.tools/bin/temporal', [
    'workflow',
    'show',
    '--output',
    'json',
    '--address',
    address,
    '--workflow-id',
    execution.workflowId,
    ...(execution.runId ? ['--run-id', execution.runId] : []),
  ]);
  writeFileSync(path, shown.stdout);
}
