// setTaskState, Nova's expected_task_state by compare-and-swap, on a real SQLite store: steps are
// at-least-once, so a rerun of one of ours succeeds, while a task state held by another refuses.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { instanceStateActivities } from '../../src/activities/instance-state.js';
import type { SnapshotSettings } from '../../src/shared/config.js';
import { VmsnapError } from '../../src/shared/errors.js';
import { SqliteStore } from '../../src/store/sqlite.js';

// One instance per test: neither depends on what the other left.
const VM = '22222222-2222-4222-8222-222222222222';
const VM2 = '33333333-3333-4333-8333-333333333333';
const root = mkdtempSync(join(tmpdir(), 'vmsnap-task-state-'));
let store: SqliteStore;
let steps: ReturnType<typeof instanceStateActivities>;

before(async () => {
  store = new SqliteStore(join(root, 'vmsnap.sqlite'));
  await store.migrate();
  await store.syncHostInstances('host-a', [
    { id: VM, name: 'web', powerState: 'running' },
    { id: VM2, name: 'db', powerState: 'running' },
  ]);
  steps = instanceStateActivities({ store, settings: {} as SnapshotSettings });
});
after(async () => {
  await store.close();
  rmSync(root, { recursive: true, force: true });
});

const busy = (err: unknown) => err instanceof VmsnapError && err.code === 'InstanceBusy';

describe('setTaskState', () => {
  it('a rerun of an earlier step of the same snapshot succeeds and changes nothing', async () => {
    const owner = 'snapshot-1/run-1';
    await steps.setTaskState({ instanceId: VM, expected: null, next: 'image_snapshot_pending', owner });
    await steps.setTaskState({ instanceId: VM, expected: 'image_snapshot_pending', next: 'image_snapshot', owner });
    await steps.setTaskState({ instanceId: VM, expected: 'image_snapshot', next: 'image_pending_upload', owner });
    // A workflow task that failed reruns its local activities from the first.
    await steps.setTaskState({ instanceId: VM, expected: null, next: 'image_snapshot_pending', owner });
    await steps.setTaskState({ instanceId: VM, expected: 'image_snapshot_pending', next: 'image_snapshot', owner });
    assert.equal((await store.getInstance(VM))?.taskState, 'image_pending_upload');
    // Another snapshot is refused, whatever it expects.
    await assert.rejects(steps.setTaskState({ instanceId: VM, expected: null, next: 'image_snapshot_pending', owner: 'snapshot-2/run-1' }), busy);
    await assert.rejects(steps.setTaskState({ instanceId: VM, expected: 'image_snapshot', next: 'image_pending_upload', owner: 'snapshot-2/run-1' }), busy);
    assert.equal(await steps.releaseTaskState({ instanceId: VM, owner }), true);
  });

  it('a state the snapshot has not reached yet is still refused: its expected state must hold', async () => {
    const owner = 'snapshot-3/run-1';
    await steps.setTaskState({ instanceId: VM2, expected: null, next: 'image_snapshot_pending', owner });
    await assert.rejects(steps.setTaskState({ instanceId: VM2, expected: 'image_pending_upload', next: 'image_uploading', owner }), busy);
    assert.equal((await store.getInstance(VM2))?.taskState, 'image_snapshot_pending');
    assert.equal(await steps.releaseTaskState({ instanceId: VM2, owner }), true);
  });
});
