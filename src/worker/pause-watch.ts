// A guest that a snapshot paused must not stay paused when that snapshot's run is gone
// (terminated, timed out): terminate runs no compensation, and the reconciler only comes by
// once a minute. The host worker knows which of its guests vmsnap paused (a pause event with no
// resume after it, under the run that holds the task state), so it looks every few seconds and
// resumes those whose run no longer runs. A cold copy's pause guard may still run for that run
// (it outlives workers): it is stopped first, so that it neither copies on nor resumes the guest
// later, when another snapshot may have paused it. The rest (image, temp dir, task state) stays the
// reconciler's: it sees the resume recorded and releases the task state. A guest whose run still
// runs is its guard's, and its retried step's, to resume.
import { Runtime } from '@temporalio/worker';
import type { ActivityDeps } from '../activities/deps.js';
import { stopPauseGuard } from '../activities/pause-guard-files.js';
import { resumeIfPresent } from '../activities/power.js';
import { snapshotDir } from '../activities/snapshot-files.js';
import { UUID_PATTERN } from '../shared/validation.js';

type Deps = Pick<ActivityDeps, 'store' | 'hypervisor' | 'workflows' | 'host' | 'snapshotsDir'>;

/** One look: resumes this host's guests paused by a run that is gone; returns their ids. */
export async function resumeAbandonedPauses(deps: Deps): Promise<string[]> {
  const resumed: string[] = [];
  for (const instance of await deps.store.listInstancesWithTask()) {
    const owner = instance.taskOwner;
    if (instance.host !== deps.host || !owner) continue;
    const runEvents = (await deps.store.listEvents(instance.id)).filter((e) => e.requestId === owner);
    const events = runEvents.map((e) => e.event);
    // Only what vmsnap paused; and asking Temporal only then keeps a look cheap.
    if (events.lastIndexOf('pause') <= events.lastIndexOf('resume')) continue;
    if ((await deps.workflows.runStatus(owner)) === 'running') continue;
    const imageId = runEvents.find((e) => e.event === 'start')?.details.imageId;
    if (typeof imageId === 'string' && UUID_PATTERN.test(imageId)) await stopPauseGuard(snapshotDir(deps.snapshotsDir, imageId));
    const outcome = await resumeIfPresent(deps.hypervisor, instance.id);
    await deps.store.recordEvent({
      instanceId: instance.id,
      action: 'createImage',
      event: 'resume',
      requestId: owner,
      details: { outcome, by: 'host pause watch' },
    });
    Runtime.instance().logger.warn('resumed a guest whose snapshot run is gone', {
      instanceId: instance.id,
      owner,
      outcome,
      host: deps.host,
    });
    resumed.push(instance.id);
  }
  return resumed;
}

/** Looks every intervalMs (0: never); the returned function stops it. Looks never overlap. */
export function watchAbandonedPauses(deps: Deps, intervalMs: number): () => void {
  if (intervalMs <= 0) return () => undefined;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const look = async () => {
    try {
      await resumeAbandonedPauses(deps);
    } catch (err) {
      Runtime.instance().logger.error('pause watch failed', { host: deps.host, error: (err as Error).message });
    }
    if (!stopped) timer = setTimeout(() => void look(), intervalMs);
  };
  timer = setTimeout(() => void look(), intervalMs);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
