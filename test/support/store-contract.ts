// The behaviour every Store must have, as one suite each implementation runs against itself
// (SQLite here; PostgreSQL later), so the two cannot drift apart.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmsnapError } from '../../src/shared/errors.js';
import type { Store, TaskState } from '../../src/store/store.js';

export interface StoreContractOptions {
  /**
   * Opens another, independent handle on the database behind `store` (a second connection,
   * as another worker would have). Enables the cross-handle race test.
   */
  connect?: (store: Store) => Promise<Store>;
}

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

const VM1 = '11111111-1111-4111-8111-111111111111';
const VM2 = '22222222-2222-4222-8222-222222222222';
const VM3 = '33333333-3333-4333-8333-333333333333';

/** Fires `count` CAS attempts from None at once, owners owner-0..n; returns the winners. */
async function raceFromNone(stores: Store[], instanceId: string, count: number): Promise<string[]> {
  const owners = Array.from({ length: count }, (_, i) => `owner-${i}`);
  const results = await Promise.all(
    owners.map((owner, i) => stores[i % stores.length]!.compareAndSwapTaskState(instanceId, null, 'image_snapshot_pending', owner)),
  );
  return owners.filter((_, i) => results[i]);
}

/**
 * `makeStore` must return a store on a fresh, empty database, not yet migrated; the suite
 * migrates and closes it.
 */
export function storeContract(name: string, makeStore: () => Promise<Store>, options: StoreContractOptions = {}): void {
  describe(`Store contract: ${name}`, () => {
    let store: Store;
    const extra: Store[] = [];

    beforeEach(async () => {
      store = await makeStore();
      await store.migrate();
    });

    afterEach(async () => {
      for (const s of extra.splice(0)) await s.close();
      await store.close();
    });

    it('migrate is idempotent and keeps the data', async () => {
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      await store.migrate();
      await store.migrate();
      assert.equal((await store.getInstance(VM1))?.name, 'web');
    });

    it('syncs instances and finds them by uuid and by exact name', async () => {
      await store.syncHostInstances('host-a', [
        { id: VM1, name: 'web', powerState: 'running', baseImageRef: 'img-1' },
        { id: VM2, name: 'db', powerState: 'shutoff' },
      ]);
      const byId = await store.findInstance(VM1);
      assert.deepEqual(
        { ...byId, updatedAt: undefined, createdAt: undefined },
        {
          id: VM1,
          name: 'web',
          host: 'host-a',
          powerState: 'running',
          taskState: null,
          taskOwner: null,
          baseImageRef: 'img-1',
          projectId: null,
          userId: null,
          projectName: null,
          userName: null,
          createdAt: undefined,
          updatedAt: undefined,
          deletedAt: null,
        },
      );
      assert.match(byId!.updatedAt, ISO_UTC);
      assert.match(byId!.createdAt, ISO_UTC);
      assert.equal((await store.findInstance('db'))?.id, VM2);
      assert.equal((await store.findInstance('db'))?.baseImageRef, null);
      assert.equal(await store.findInstance('DB'), undefined, 'names match exactly');
      assert.equal(await store.findInstance('we'), undefined);
      assert.equal(await store.findInstance(VM3), undefined);
      assert.deepEqual(await store.getInstance(VM2), await store.findInstance(VM2));
      assert.equal(await store.getInstance(VM3), undefined);
    });

    it("keeps each instance's owner as its host last reported it, and when it was first seen", async () => {
      const owner = { projectId: 'p1', userId: 'u1', projectName: 'web-team', userName: 'alice' };
      await store.syncHostInstances('host-a', [
        { id: VM1, name: 'web', powerState: 'running', ...owner },
        { id: VM2, name: 'db', powerState: 'running', projectId: 'p2' },
      ]);
      const first = (await store.getInstance(VM1))!;
      assert.deepEqual([first.projectId, first.userId, first.projectName, first.userName], ['p1', 'u1', 'web-team', 'alice']);
      const db = (await store.getInstance(VM2))!;
      assert.deepEqual([db.projectId, db.userId, db.projectName, db.userName], ['p2', null, null, null], 'a part the metadata leaves out is null');
      await sleep(5);
      // The domain's metadata changed hands, then lost its owner: the store follows it.
      await store.syncHostInstances('host-a', [
        { id: VM1, name: 'web', powerState: 'running', projectId: 'p3', userId: 'u3' },
        { id: VM2, name: 'db', powerState: 'running', projectId: 'p2' },
      ]);
      const moved = (await store.getInstance(VM1))!;
      assert.deepEqual([moved.projectId, moved.userId, moved.projectName, moved.userName], ['p3', 'u3', null, null]);
      assert.equal(moved.createdAt, first.createdAt, 'first seen stays');
      assert.ok(moved.updatedAt > first.updatedAt, 'last seen moves');
      await store.syncHostInstances('host-b', [{ id: VM1, name: 'web', powerState: 'running' }]);
      const unowned = (await store.getInstance(VM1))!;
      assert.deepEqual([unowned.projectId, unowned.userId], [null, null]);
      assert.equal(unowned.createdAt, first.createdAt);
      assert.deepEqual(
        (await store.listInstances()).map((i) => [i.name, i.projectId]),
        [
          ['db', 'p2'],
          ['web', null],
        ],
      );
    });

    it('refuses an ambiguous name and asks for the uuid', async () => {
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      await store.syncHostInstances('host-b', [{ id: VM2, name: 'web', powerState: 'running' }]);
      await assert.rejects(store.findInstance('web'), (err: unknown) => {
        assert.ok(err instanceof VmsnapError);
        assert.equal(err.code, 'InvalidInput');
        assert.equal(err.retryable, false);
        assert.equal(err.message, 'instance name web is ambiguous: use its UUID');
        return true;
      });
      assert.equal((await store.findInstance(VM2))?.host, 'host-b');
      // Once one of them is gone the name is unique again.
      await store.syncHostInstances('host-b', []);
      assert.equal((await store.findInstance('web'))?.id, VM1);
    });

    it('moves an instance seen on another host, keeping its task', async () => {
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running', baseImageRef: 'img-1' }]);
      assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-1'), true);
      await store.syncHostInstances('host-b', [{ id: VM1, name: 'web-2', powerState: 'paused', baseImageRef: 'img-2' }]);
      const moved = await store.getInstance(VM1);
      assert.equal(moved?.host, 'host-b');
      assert.equal(moved?.name, 'web-2');
      assert.equal(moved?.powerState, 'paused');
      assert.equal(moved?.baseImageRef, 'img-2');
      assert.equal(moved?.taskState, 'image_snapshot_pending');
      assert.equal(moved?.taskOwner, 'wf-1');
      assert.equal(moved?.deletedAt, null);
      // The old host no longer lists it: that must not delete it on its new host.
      await store.syncHostInstances('host-a', []);
      assert.equal((await store.findInstance(VM1))?.host, 'host-b');
    });

    it('marks unseen instances of the host deleted, keeps their tasks, and hides them', async () => {
      await store.syncHostInstances('host-a', [
        { id: VM1, name: 'web', powerState: 'running' },
        { id: VM2, name: 'db', powerState: 'running' },
      ]);
      await store.syncHostInstances('host-b', [{ id: VM3, name: 'cache', powerState: 'running' }]);
      assert.equal(await store.compareAndSwapTaskState(VM2, null, 'image_snapshot_pending', 'wf-2'), true);

      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      assert.equal(await store.findInstance(VM2), undefined);
      assert.equal(await store.findInstance('db'), undefined);
      const gone = await store.getInstance(VM2);
      assert.match(gone?.deletedAt ?? '', ISO_UTC);
      assert.equal(gone?.taskState, 'image_snapshot_pending', 'a task in progress survives deletion');
      assert.equal(gone?.taskOwner, 'wf-2');
      assert.deepEqual(
        (await store.listInstancesWithTask()).map((i) => i.id),
        [VM2],
      );
      assert.deepEqual(
        (await store.listInstances()).map((i) => i.name),
        ['cache', 'web'],
        'by name, deleted ones left out',
      );
      assert.deepEqual(
        (await store.listInstances({ includeDeleted: true })).map((i) => i.name),
        ['cache', 'db', 'web'],
      );
      assert.equal((await store.findInstance(VM3))?.deletedAt, null, 'other hosts are untouched');
      assert.equal(await store.releaseTaskState(VM2, 'wf-2'), true, 'the running task can still finish');
      assert.equal(await store.compareAndSwapTaskState(VM2, null, 'image_snapshot_pending', 'wf-3'), false, 'no new task on a deleted instance');

      // Seen again: alive again.
      await store.syncHostInstances('host-a', [
        { id: VM1, name: 'web', powerState: 'running' },
        { id: VM2, name: 'db', powerState: 'shutoff' },
      ]);
      assert.equal((await store.findInstance('db'))?.deletedAt, null);
      assert.equal((await store.findInstance('db'))?.powerState, 'shutoff');
    });

    it('CAS from None succeeds once; a second start is refused', async () => {
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      const before = (await store.getInstance(VM1))!.updatedAt;
      await sleep(5);
      assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-1'), true);
      assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-2'), false);
      assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-1'), false);
      const held = await store.getInstance(VM1);
      assert.equal(held?.taskState, 'image_snapshot_pending');
      assert.equal(held?.taskOwner, 'wf-1');
      assert.ok(held!.updatedAt > before, 'a task state change bumps updatedAt');
      assert.equal(await store.compareAndSwapTaskState(VM3, null, 'image_snapshot_pending', 'wf-1'), false, 'unknown instance');
    });

    it('CAS with the wrong owner or the wrong expected state changes nothing', async () => {
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-1'), true);
      assert.equal(await store.compareAndSwapTaskState(VM1, 'image_snapshot_pending', 'image_snapshot', 'wf-2'), false);
      assert.equal(await store.compareAndSwapTaskState(VM1, 'image_snapshot_pending', null, 'wf-2'), false);
      assert.equal(await store.compareAndSwapTaskState(VM1, 'image_uploading', null, 'wf-1'), false);
      const held = await store.getInstance(VM1);
      assert.equal(held?.taskState, 'image_snapshot_pending');
      assert.equal(held?.taskOwner, 'wf-1');
    });

    it("walks Nova's createImage task states back to None", async () => {
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      const owner = 'snapshot-vm1/run-1';
      const steps: (TaskState | null)[] = [null, 'image_snapshot_pending', 'image_snapshot', 'image_pending_upload', 'image_uploading', null];
      for (let i = 1; i < steps.length; i++) {
        assert.equal(await store.compareAndSwapTaskState(VM1, steps[i - 1]!, steps[i]!, owner), true, `${steps[i - 1]} -> ${steps[i]}`);
        const now = await store.getInstance(VM1);
        assert.equal(now?.taskState, steps[i]);
        assert.equal(now?.taskOwner, steps[i] === null ? null : owner, 'None has no owner');
        // Replaying the same step (a retried activity) does not pass the check again.
        assert.equal(await store.compareAndSwapTaskState(VM1, steps[i - 1]!, steps[i]!, `${owner}-other`), false);
      }
      assert.deepEqual(await store.listInstancesWithTask(), []);
      assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'next'), true, 'free for the next snapshot');
    });

    it('releases the task state only for its owner', async () => {
      await store.syncHostInstances('host-a', [
        { id: VM1, name: 'web', powerState: 'running' },
        { id: VM2, name: 'db', powerState: 'running' },
      ]);
      assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-1'), true);
      assert.equal(await store.compareAndSwapTaskState(VM1, 'image_snapshot_pending', 'image_uploading', 'wf-1'), true);
      assert.equal(await store.releaseTaskState(VM1, 'wf-2'), false);
      assert.equal((await store.getInstance(VM1))?.taskState, 'image_uploading');
      assert.equal(await store.releaseTaskState(VM1, 'wf-1'), true, 'whatever the state');
      const free = await store.getInstance(VM1);
      assert.equal(free?.taskState, null);
      assert.equal(free?.taskOwner, null);
      assert.equal(await store.releaseTaskState(VM1, 'wf-1'), true, 'a repeated release (retry) still succeeds');
      assert.equal(await store.releaseTaskState(VM2, 'wf-1'), true, 'nothing held: nothing to refuse');
      assert.equal(await store.releaseTaskState(VM3, 'wf-1'), false, 'unknown instance');
      // After someone else took it, the old owner's late release must not free it.
      assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-3'), true);
      assert.equal(await store.releaseTaskState(VM1, 'wf-1'), false);
      assert.equal((await store.getInstance(VM1))?.taskOwner, 'wf-3');
    });

    it('20 concurrent starts: exactly one wins', async () => {
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      const winners = await raceFromNone([store], VM1, 20);
      assert.equal(winners.length, 1);
      assert.equal((await store.getInstance(VM1))?.taskOwner, winners[0]);
    });

    it('20 concurrent starts across independent handles: exactly one wins', { skip: !options.connect && 'no connect option' }, async () => {
      const other = await options.connect!(store);
      extra.push(other);
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      assert.equal((await other.findInstance('web'))?.id, VM1, 'the handles share one database');
      const winners = await raceFromNone([store, other], VM1, 20);
      assert.equal(winners.length, 1);
      assert.equal((await other.getInstance(VM1))?.taskOwner, winners[0]);
      assert.equal((await store.getInstance(VM1))?.taskOwner, winners[0]);
    });

    it('records faults and action events and lists them in order', async () => {
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      const details = { attempt: 2, cause: { status: 503, body: 'busy' }, tags: ['a', 'b'], nothing: null };
      await store.recordFault({ instanceId: VM1, code: 'ConvertFailed', message: 'qemu-img died', details });
      await store.recordFault({ instanceId: VM1, code: 'ImageServiceUnavailable', message: 'glance 503', details: {} });
      await store.recordFault({ instanceId: VM2, code: 'NoSpace', message: 'disk full', details: {} });
      const faults = await store.listFaults(VM1);
      assert.deepEqual(
        faults.map((f) => [f.instanceId, f.code, f.message, f.details]),
        [
          [VM1, 'ConvertFailed', 'qemu-img died', details],
          [VM1, 'ImageServiceUnavailable', 'glance 503', {}],
        ],
      );
      for (const f of faults) assert.match(f.createdAt, ISO_UTC);
      assert.ok(faults[0]!.createdAt <= faults[1]!.createdAt);
      assert.deepEqual(await store.listFaults(VM3), []);

      const events = ['start', 'finish', 'error', 'start', 'finish'];
      for (const [i, event] of events.entries()) {
        await store.recordEvent({ instanceId: VM1, action: 'createImage', event, requestId: `snapshot-${i}`, details: { step: i } });
      }
      const listed = await store.listEvents(VM1);
      assert.deepEqual(
        listed.map((e) => [e.instanceId, e.action, e.event, e.requestId, e.details]),
        events.map((event, i) => [VM1, 'createImage', event, `snapshot-${i}`, { step: i }]),
      );
      for (const e of listed) assert.match(e.createdAt, ISO_UTC);
      assert.deepEqual(await store.listEvents(VM2), []);
    });

    it('records a fault or event once when the step that records it runs twice', async () => {
      // Steps are at-least-once: a local activity reruns when its workflow task fails.
      const fault = { instanceId: VM1, code: 'Cancelled', message: 'cancelled', details: { workflowId: 'w', runId: 'r', nested: { a: [1, 2] } } };
      await store.recordFault(fault);
      await store.recordFault(fault);
      await store.recordFault({ ...fault, details: { ...fault.details, runId: 'r2' } });
      assert.deepEqual(
        (await store.listFaults(VM1)).map((f) => f.details.runId),
        ['r', 'r2'],
      );
      const event = { instanceId: VM1, action: 'createImage', event: 'error', requestId: 'snapshot-1', details: { code: 'Cancelled' } };
      await store.recordEvent(event);
      await store.recordEvent(event);
      await store.recordEvent({ ...event, requestId: 'snapshot-2' });
      assert.deepEqual(
        (await store.listEvents(VM1)).map((e) => e.requestId),
        ['snapshot-1', 'snapshot-2'],
      );
    });

    it('registers hosts, and a re-registration updates them', async () => {
      assert.deepEqual(await store.listHosts(), []);
      await store.registerHost('host-b', 'vmsnap-host-host-b');
      await store.registerHost('host-a', 'vmsnap-host-host-a');
      const first = await store.listHosts();
      assert.deepEqual(
        first.map((h) => [h.host, h.taskQueue]),
        [
          ['host-a', 'vmsnap-host-host-a'],
          ['host-b', 'vmsnap-host-host-b'],
        ],
      );
      for (const h of first) assert.match(h.seenAt, ISO_UTC);
      await sleep(5);
      await store.registerHost('host-a', 'vmsnap-host-host-a-v2');
      const second = await store.listHosts();
      assert.equal(second.length, 2);
      assert.equal(second[0]!.taskQueue, 'vmsnap-host-host-a-v2');
      assert.ok(second[0]!.seenAt > first[0]!.seenAt, 'seenAt moves forward');
      assert.equal(second[1]!.seenAt, first[1]!.seenAt);
    });
  });
}
