import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));

/**
 * Every recorded history test/unit/replay.test.ts replays, each from a real run of the test that
 * names it (re-recorded with VMSNAP_RECORD_HISTORY=1). A change to workflow code that would break
 * running workflows fails there.
 */
export const REPLAY_FIXTURES = {
  /** Cold snapshot of a running guest (test/integration/snapshot.test.ts). */
  snapshotCold: fixture('snapshot-cold-history.json'),
  /**
   * The same, recorded before the `wait-for-slot-release` patch: never re-recorded, it keeps the
   * unpatched path of snapshotInstance replaying.
   */
  snapshotBeforeSlotRelease: fixture('snapshot-running-history.json'),
  /** Live snapshot (test/integration/snapshot-live.test.ts). */
  snapshotLive: fixture('snapshot-live-history.json'),
  /** Upload refused for good, then compensation (test/integration/snapshot-compensation.test.ts). */
  snapshotCompensated: fixture('snapshot-compensated-history.json'),
  /**
   * The three above as recorded before the `lean-snapshot` patch (issue 15): never re-recorded,
   * they keep the step-by-step path of snapshotInstance replaying.
   */
  snapshotColdBeforeLean: fixture('snapshot-cold-before-lean-history.json'),
  snapshotLiveBeforeLean: fixture('snapshot-live-before-lean-history.json'),
  snapshotCompensatedBeforeLean: fixture('snapshot-compensated-before-lean-history.json'),
  /** One run of a schedule: child snapshots, one failing, and retention (test/integration/schedules.test.ts). */
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
