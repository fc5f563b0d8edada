// Fast workflow tests: vmsnap's workflows on a local Temporal (the dev server scripts/setup built
// into .tools/, through @temporalio/testing) with fake activities that act on a small in-memory
// cloud: instances with a power and task state, Glance images, temp dirs, events and faults. A
// test asserts on that cloud, as the integration tests assert on the real one. No libvirt, Glance,
// Keystone or PostgreSQL; no root.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import { heartbeatingFromStart } from '../../src/activities/heartbeat.js';
import { SHORT_HOST_STEPS } from '../../src/activities/index.js';
import type { AbandonedSnapshot } from '../../src/activities/reconcile.js';
import type { TaskStateChange } from '../../src/activities/instance-state.js';
import type { InspectInput } from '../../src/activities/inspection.js';
import { chooseDisks } from '../../src/activities/disk-choice.js';
import type { InstanceDisk, PowerState } from '../../src/drivers/hypervisor.js';
import type { DiskSelection, DiskSetManifest } from '../../src/shared/disk-set.js';
import type { SnapshotSettings } from '../../src/shared/config.js';
import { VmsnapError } from '../../src/shared/errors.js';
import { ALL_TASK_STATES } from '../../src/store/schema.js';
import { SLOT_ACQUIRED_SIGNAL, hostSlotTaskQueue, hostTaskQueue } from '../../src/shared/names.js';
import { HOST, IMAGE_ID, INSTANCE_ID, PHASE } from '../../src/shared/search-attributes.js';
import type { RestoreRequest, RollbackRequest, SnapshotProgress, SnapshotRequest } from '../../src/shared/types.js';
import { workflowBundle } from '../../src/worker/workflow-bundle.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';

const TEMPORAL_CLI = fileURLToPath(new URL('../../.tools/bin/temporal', import.meta.url));

export interface FakeInstance {
  id: string;
  name: string;
  host: string;
  power: PowerState | 'gone';
  taskState: string | null;
  taskOwner: string | null;
  frozen: boolean;
  /** What the instance's disk holds: 'original', or the image id restored onto it. */
  disk: string;
  /** The pre-restore disk a restore kept (what it held, and the restore run that kept it). */
  preRestore?: { disk: string; owner: string };
  /** Data disks beside the root disk vda (target devices); none by default. */
  dataDisks: string[];
}

export interface FakeImage {
  /** saving: an upload was cut off and Glance still holds the image (a test sets it). */
  status: 'queued' | 'saving' | 'active';
  instanceId: string;
  owner: string;
  /** A set's image: its role and disk, data images hidden (os_hidden). */
  diskSet?: { setId: string; role: 'root' | 'data'; dev: string; rootImageId: string };
  /** A set's root image: its manifest, once sealed. */
  manifest?: DiskSetManifest;
}

/** The activity's arguments and its default behaviour, for a hook that wraps it. */
export interface HookCall {
  args: unknown[];
  run: () => Promise<unknown>;
  /** The calling workflow's id. */
  workflowId: string;
}
type Hook = (call: HookCall) => Promise<unknown>;

export const FAST_SETTINGS: SnapshotSettings = {
  pauseBudgetMs: 0,
  heartbeatTimeoutMs: 5000,
  imageServiceRetry: { maximumAttempts: 2, initialIntervalMs: 100, maximumIntervalMs: 200 },
  defaultMode: 'cold',
  liveCopyBandwidthMiBps: 0,
  liveCopyMethod: 'auto',
  liveTransfer: 'stream',
  restoreShutdownTimeoutMs: 0,
  preRestoreRetentionMs: 60_000,
  restoreStartTimeoutMs: 1000,
};

/** The in-memory cloud the fake activities act on. */
export class FakeCloud {
  readonly host = 'fake-host';
  instances = new Map<string, FakeInstance>();
  images = new Map<string, FakeImage>();
  tempDirs = new Set<string>();
  /** Live snapshots' backup jobs still running, by the first image id (their temp dir's name). */
  liveJobs = new Set<string>();
  /** Files a restore keeps beside a disk while it runs (download, restored image, a new instance's disk). */
  restoreFiles = new Set<string>();
  events: { instanceId: string; event: string; requestId: string; details: Record<string, unknown> }[] = [];
  faults: { instanceId: string; code: string; message: string; details: Record<string, unknown> }[] = [];
  /** Slot holders running, by owner: releaseSnapshotSlot ends one. */
  slotHolders = new Map<string, () => void>();
  /** Activity names in the order they were called (retries too). */
  calls: string[] = [];
  settings: SnapshotSettings = { ...FAST_SETTINGS };
  liveSupported = false;
  /** Per activity: runs instead of the default (which it may call through `run`). */
  hooks: Record<string, Hook> = {};
  /** What coldCopyDisk does while the guest is paused (the copy itself); resolves by default. */
  duringColdCopy: () => Promise<void> = async () => undefined;

  /** Glance taking an upload's data, as the upload steps see it. */
  fillImage(imageId: string): void {
    const image = this.images.get(imageId);
    if (!image) throw ApplicationFailure.create({ type: 'ImageNotFound', message: `no image ${imageId}`, nonRetryable: true });
    if (image.status === 'saving') {
      throw ApplicationFailure.create({ type: 'ImageStuck', message: `image ${imageId} is still saving in Glance`, nonRetryable: true });
    }
    image.status = 'active';
  }

  addInstance(id: string, power: PowerState = 'running'): FakeInstance {
    const instance: FakeInstance = {
      id,
      name: `guest-${id.slice(0, 8)}`,
      host: this.host,
      power,
      taskState: null,
      taskOwner: null,
      frozen: false,
      disk: 'original',
      dataDisks: [],
    };
    this.instances.set(id, instance);
    return instance;
  }

  eventsOf(instanceId: string): string[] {
    return this.events.filter((e) => e.instanceId === instanceId).map((e) => e.event);
  }

  private instance(id: string): FakeInstance {
    const found = this.instances.get(id);
    if (!found || found.power === 'gone') throw ApplicationFailure.create({ type: 'InstanceNotFound', message: `no instance ${id}`, nonRetryable: true });
    return found;
  }

  /** The activities of the three task queues, each call logged and open to a hook. */
  activities(client: () => Client) {
    const hooked =
      <A extends unknown[], R>(name: string, body: (...args: A) => Promise<R>) =>
      async (...args: A): Promise<R> => {
        this.calls.push(name);
        const hook = this.hooks[name];
        const run = () => body(...args);
        if (!hook) return run();
        return (await hook({ args, run, workflowId: Context.current().info.workflowExecution?.workflowId ?? '' })) as R;
      };
    // As the stores: recording the same event or fault again is a no-op (steps are at-least-once).
    const record = (instanceId: string, event: string, requestId: string, details: Record<string, unknown> = {}) => {
      const entry = { instanceId, event, requestId, details };
      if (!this.events.some((e) => isDeepStrictEqual(e, entry))) this.events.push(entry);
    };
    const inspectNow = async ({ instanceId, liveSupport }: InspectInput) => {
      const powerState = this.instance(instanceId).power as PowerState;
      if (!liveSupport || powerState !== 'running') return { powerState };
      return {
        powerState,
        liveSupport: this.liveSupported ? { supported: true } : { supported: false, reason: 'the fake host has no backup API' },
      };
    };
    const main = {
      getSnapshotSettings: hooked('getSnapshotSettings', async () => this.settings),
      findInstance: hooked('findInstance', async (ref: string) => {
        const found = [...this.instances.values()].find((i) => (i.id === ref || i.name === ref) && i.power !== 'gone');
        return found
          ? {
              id: found.id,
              name: found.name,
              host: found.host,
              powerState: found.power,
              taskState: found.taskState,
              taskOwner: found.taskOwner,
              baseImageRef: null,
              updatedAt: '',
              deletedAt: null,
            }
          : null;
      }),
      listHosts: hooked('listHosts', async () => [this.host]),
      setTaskState: hooked('setTaskState', async (change: TaskStateChange) => {
        const instance = this.instance(change.instanceId);
        if (instance.taskState === change.expected) {
          instance.taskState = change.next;
          instance.taskOwner = change.next === null ? null : change.owner;
          return;
        }
        // As the real one: a rerun of one of ours (at-least-once steps) is success.
        const order = ALL_TASK_STATES as (string | null)[];
        if (instance.taskOwner === change.owner && order.indexOf(instance.taskState) >= order.indexOf(change.next) && change.next !== null) return;
        throw ApplicationFailure.create({
          type: 'InstanceBusy',
          message: `instance ${change.instanceId} is in task state ${instance.taskState ?? 'None'}`,
          nonRetryable: true,
        });
      }),
      releaseTaskState: hooked('releaseTaskState', async ({ instanceId, owner }: { instanceId: string; owner: string }) => {
        const instance = this.instances.get(instanceId);
        if (!instance || instance.taskOwner !== owner) return false;
        instance.taskState = null;
        instance.taskOwner = null;
        return true;
      }),
      recordInstanceFault: hooked(
        'recordInstanceFault',
        async (fault: { instanceId: string; code: string; message: string; details: Record<string, unknown> }) => {
          const entry = { instanceId: fault.instanceId, code: fault.code, message: fault.message, details: fault.details };
          if (!this.faults.some((f) => isDeepStrictEqual(f, entry))) this.faults.push(entry);
        },
      ),
      recordInstanceEvent: hooked(
        'recordInstanceEvent',
        async (e: { instanceId: string; event: string; requestId: string; details: Record<string, unknown> }) => {
          record(e.instanceId, e.event, e.requestId, e.details);
        },
      ),
      createImageRecord: hooked(
        'createImageRecord',
        async (input: { imageId: string; instanceId: string; requestId: string; diskSet?: FakeImage['diskSet'] }) => {
          const created = !this.images.has(input.imageId);
          const set = input.diskSet ? { diskSet: input.diskSet } : {};
          if (created) this.images.set(input.imageId, { status: 'queued', instanceId: input.instanceId, owner: input.requestId, ...set });
          return { imageId: input.imageId, created };
        },
      ),
      sealDiskSet: hooked('sealDiskSet', async (input: { rootImageId: string; manifest: DiskSetManifest }) => {
        const image = this.images.get(input.rootImageId);
        if (!image) throw ApplicationFailure.create({ type: 'ImageNotFound', message: `no image ${input.rootImageId}`, nonRetryable: true });
        image.manifest = input.manifest;
      }),
      deleteImageRecord: hooked('deleteImageRecord', async (imageId: string) => {
        const image = this.images.get(imageId);
        if (!image) return { deleted: false };
        this.images.delete(imageId);
        return { deleted: true, status: image.status };
      }),
      // As the real one: an active snapshot of this instance (or any active image, when allowed).
      checkRestoreImage: hooked('checkRestoreImage', async (input: { imageId: string; instanceId: string; allowOtherImage: boolean }) => {
        const image = this.images.get(input.imageId);
        if (!image) throw ApplicationFailure.create({ type: 'ImageNotFound', message: `no image ${input.imageId}`, nonRetryable: true });
        if (image.status !== 'active' || (!input.allowOtherImage && image.instanceId !== input.instanceId)) {
          throw ApplicationFailure.create({ type: 'InvalidInput', message: `image ${input.imageId} cannot be restored here`, nonRetryable: true });
        }
        return { imageId: input.imageId, name: 'fake', diskFormat: 'qcow2', size: 1024, sha512: 'f'.repeat(128), virtualSize: 4096 };
      }),
      // The reconciler's: the same rules as src/activities/reconcile.ts, on this cloud.
      findAbandonedSnapshots: hooked('findAbandonedSnapshots', async () => {
        const abandoned: AbandonedSnapshot[] = [];
        for (const instance of this.instances.values()) {
          const owner = instance.taskOwner;
          if (!owner) continue;
          const [workflowId, runId] = owner.split('/') as [string, string];
          const { status } = await client().workflow.getHandle(workflowId, runId).describe();
          if (status.name === 'RUNNING') continue;
          const events = this.events.filter((e) => e.instanceId === instance.id && e.requestId === owner).map((e) => e.event);
          const imageId = this.events.find((e) => e.instanceId === instance.id && e.requestId === owner && e.event === 'start')?.details.imageId;
          abandoned.push({
            instanceId: instance.id,
            host: instance.host,
            owner,
            taskState: instance.taskState ?? 'None',
            ...(typeof imageId === 'string' ? { imageId } : {}),
            pausedByUs: events.lastIndexOf('pause') > events.lastIndexOf('resume'),
            frozenByUs: events.lastIndexOf('freeze') > events.lastIndexOf('thaw'),
          });
        }
        return abandoned;
      }),
      releaseAbandonedTask: hooked('releaseAbandonedTask', async (snapshot: AbandonedSnapshot) => {
        const instance = this.instances.get(snapshot.instanceId);
        if (!instance || instance.taskOwner !== snapshot.owner) return;
        instance.taskState = null;
        instance.taskOwner = null;
        this.faults.push({
          instanceId: snapshot.instanceId,
          code: 'SnapshotAbandoned',
          message: `snapshot ${snapshot.owner} ended without finishing`,
          details: {},
        });
        record(snapshot.instanceId, 'error', snapshot.owner, { code: 'SnapshotAbandoned' });
      }),
      rotateBackups: hooked('rotateBackups', async (_input: { instanceId: string; backupType: string; rotation: number }) => ({
        kept: [] as string[],
        deleted: [] as string[],
        failed: [] as string[],
      })),
      findOrphanImages: hooked('findOrphanImages', async () => []),
      runningSnapshotImageIds: hooked('runningSnapshotImageIds', async () => [] as string[]),
    };
    const host = {
      discoverInstances: hooked('discoverInstances', async () => ({ host: this.host, instances: this.instances.size })),
      inspectInstance: hooked('inspectInstance', inspectNow),
      chooseInstanceDisks: hooked('chooseInstanceDisks', async ({ instanceId, selection }: { instanceId: string; selection: DiskSelection }) => {
        const instance = this.instance(instanceId);
        const disk = (dev: string): InstanceDisk => ({
          dev,
          device: 'disk',
          type: 'file',
          bus: 'virtio',
          path: `/fake/${dev}`,
          format: 'qcow2',
          readonly: false,
          shareable: false,
        });
        try {
          return chooseDisks(instanceId, [disk('vda'), ...instance.dataDisks.map(disk)], selection);
        } catch (e) {
          // As withTypedFailures does for the real host step.
          if (e instanceof VmsnapError) throw ApplicationFailure.create({ type: e.code, message: e.message, nonRetryable: true });
          throw e;
        }
      }),
      // As the real one: pause, copy, resume on every path (a dead worker aside), and the budget kept here.
      coldCopyDisk: hooked(
        'coldCopyDisk',
        async (input: {
          instanceId: string;
          imageId: string;
          diskFormat: 'qcow2' | 'raw';
          owner: string;
          pause: boolean;
          pauseBudgetMs: number;
          dataDisks?: string[];
        }) => {
          const instance = this.instance(input.instanceId);
          if (input.pause) {
            record(input.instanceId, 'pause', input.owner);
            instance.power = 'paused';
          }
          this.tempDirs.add(input.imageId);
          const pausedAt = Date.now();
          let overBudget = false;
          let resumeOutcome: 'resumed' | 'gone' | 'not-paused' | undefined;
          try {
            const budget =
              input.pause && input.pauseBudgetMs > 0
                ? new Promise<void>((resolve) => setTimeout(() => ((overBudget = true), resolve()), input.pauseBudgetMs))
                : new Promise<void>(() => undefined);
            await Promise.race([this.duringColdCopy(), budget]);
          } catch (err) {
            this.tempDirs.delete(input.imageId);
            throw err;
          } finally {
            if (input.pause) {
              const now = this.instances.get(input.instanceId);
              resumeOutcome = !now || now.power === 'gone' ? 'gone' : now.power === 'paused' ? 'resumed' : 'not-paused';
              if (resumeOutcome === 'resumed') now!.power = 'running';
              record(input.instanceId, 'resume', input.owner, { outcome: resumeOutcome });
            }
          }
          if (overBudget) {
            this.tempDirs.delete(input.imageId);
            throw ApplicationFailure.create({
              type: 'PauseBudgetExceeded',
              message: `the copy took longer than the pause budget of ${input.pauseBudgetMs} ms; the guest was resumed`,
              nonRetryable: true,
              details: [{ guestResumed: true }],
            });
          }
          return {
            path: `/fake/${input.imageId}/disk`,
            diskFormat: input.diskFormat,
            size: 1024,
            virtualSize: 4096,
            bootId: 'fake-boot',
            guestPauseMs: input.pause ? Date.now() - pausedAt : 0,
            ...(resumeOutcome ? { resumeOutcome } : {}),
            ...(input.dataDisks
              ? {
                  dataDisks: input.dataDisks.map((dev) => ({
                    dev,
                    path: `/fake/${input.imageId}/disk-${dev}`,
                    diskFormat: input.diskFormat,
                    size: 512,
                    virtualSize: 2048,
                    bootId: 'fake-boot',
                  })),
                }
              : {}),
          };
        },
      ),
      resumeInstance: hooked('resumeInstance', async ({ instanceId, owner }: { instanceId: string; owner: string }) => {
        const instance = this.instances.get(instanceId);
        let outcome: 'resumed' | 'gone' | 'not-paused' = 'not-paused';
        if (!instance || instance.power === 'gone') outcome = 'gone';
        else if (instance.power === 'paused') {
          instance.power = 'running';
          outcome = 'resumed';
        }
        record(instanceId, 'resume', owner, { outcome });
        return { resumedAt: Date.now(), outcome };
      }),
      thawInstance: hooked('thawInstance', async ({ instanceId, owner }: { instanceId: string; owner: string }) => {
        this.instance(instanceId).frozen = false;
        record(instanceId, 'thaw', owner, { by: 'compensation' });
      }),
      liveCopyDisk: hooked(
        'liveCopyDisk',
        async (input: { instanceId: string; imageId: string; diskFormat: 'qcow2' | 'raw'; quiesce: string; owner: string }) => {
          this.tempDirs.add(input.imageId);
          if (input.quiesce !== 'never') {
            record(input.instanceId, 'freeze', input.owner);
            record(input.instanceId, 'thaw', input.owner);
          }
          return {
            path: `/fake/${input.imageId}/disk`,
            diskFormat: input.diskFormat,
            size: 1024,
            virtualSize: 4096,
            bootId: 'fake-boot',
            consistency: 'crash-consistent' as const,
            guestPauseMs: 0,
          };
        },
      ),
      uploadImage: hooked('uploadImage', async (input: { imageId: string }) => {
        this.fillImage(input.imageId);
        return { size: 1024, sha512: 'f'.repeat(128) };
      }),
      // A live snapshot streamed from its backup job: the job runs from exportLiveDisk to endLiveExport.
      exportLiveDisk: hooked(
        'exportLiveDisk',
        async (input: { instanceId: string; imageId: string; diskFormat: 'qcow2' | 'raw'; quiesce: string; owner: string; dataDisks?: string[] }) => {
          this.tempDirs.add(input.imageId);
          if (input.quiesce !== 'never') {
            record(input.instanceId, 'freeze', input.owner);
            record(input.instanceId, 'thaw', input.owner);
          }
          this.liveJobs.add(input.imageId);
          const socket = `/fake/${input.imageId}/export.nbd/sock`;
          const ref = { socket, exportName: 'vda', scratch: `/fake/${input.imageId}/export.scratch` };
          const dataExports = (input.dataDisks ?? []).map((dev) => ({
            dev,
            export: { socket, exportName: dev, scratch: `/fake/${input.imageId}/export-${dev}.scratch`, overlayLimitBytes: 1 << 30 },
            virtualSize: 2048,
          }));
          return {
            transfer: 'streamed' as const,
            export: { ...ref, overlayLimitBytes: 1 << 30 },
            ...(dataExports.length ? { dataExports } : {}),
            virtualSize: 4096,
            consistency: 'crash-consistent' as const,
            guestPauseMs: 0,
            transferNote: 'streamed: the overlay can hold all 1 MiB of the disk',
          };
        },
      ),
      uploadLiveExport: hooked('uploadLiveExport', async (input: { imageId: string; export: { socket: string } }) => {
        const job = /^\/fake\/([^/]+)\//.exec(input.export.socket)?.[1] ?? '';
        if (!this.liveJobs.has(job)) throw ApplicationFailure.create({ type: 'CopyLost', message: 'the live backup job is gone', nonRetryable: true });
        this.fillImage(input.imageId);
        return { size: 1024, sha512: 'f'.repeat(128), sendAndVerifyMs: 1, overlayBytes: 65536, guestPauseMs: 0 };
      }),
      endLiveExport: hooked('endLiveExport', async (input: { instanceId: string; imageId: string }) => {
        this.liveJobs.delete(input.imageId);
        this.tempDirs.delete(input.imageId);
      }),
      // A restore, as src/activities/restore-*.ts do it on this cloud's instances.
      prepareRestoreImage: hooked('prepareRestoreImage', async (input: { instanceId: string; imageId: string; newDiskPath?: string }) => {
        this.instance(input.instanceId);
        const file = input.newDiskPath ?? `${input.instanceId}.vmsnap-restore`;
        this.restoreFiles.add(file);
        const restored = { diskPath: `/fake/${input.instanceId}.qcow2`, diskFormat: 'qcow2', restoredPath: file };
        return { ...restored, downloadedBytes: 1024, sha512: 'f'.repeat(128), virtualSize: 4096, converted: false };
      }),
      stopSwapStart: hooked('stopSwapStart', async (input: { instanceId: string; owner: string; imageId: string; powerState: PowerState }) => {
        const instance = this.instance(input.instanceId);
        const stoppedAt = Date.now();
        instance.power = 'shutdown';
        if (instance.preRestore?.owner !== input.owner) {
          instance.preRestore = { disk: instance.disk, owner: input.owner };
          instance.disk = input.imageId;
          this.restoreFiles.delete(`${input.instanceId}.vmsnap-restore`);
        }
        if (instance.taskState === 'rebuild_block_device_mapping') instance.taskState = 'rebuild_spawning';
        instance.power = input.powerState;
        const startedAt = Date.now();
        record(input.instanceId, 'started', input.owner, { powerState: input.powerState });
        const downtimeStepsMs = { swapAndTaskState: 0, start: startedAt - stoppedAt, confirm: 0 };
        return { stoppedBy: 'shutdown', stoppedAt, startedAt, confirmedBy: 'power-state', downtimeStepsMs, preRestorePath: '/fake/pre', keptUntil: '' };
      }),
      undoRestore: hooked('undoRestore', async (input: { instanceId: string; owner: string; priorPowerState?: string }) => {
        const instance = this.instance(input.instanceId);
        this.restoreFiles.delete(`${input.instanceId}.vmsnap-restore`);
        const swappedBack = instance.preRestore?.owner === input.owner;
        if (swappedBack) {
          instance.power = 'shutdown';
          instance.disk = instance.preRestore!.disk;
          delete instance.preRestore;
          record(input.instanceId, 'swap-back', input.owner);
        }
        const prior = input.priorPowerState;
        if ((prior === 'running' || prior === 'paused') && instance.power === 'shutdown') instance.power = prior;
        return { swappedBack };
      }),
      preRestoreDisk: hooked('preRestoreDisk', async (instanceId: string) => {
        const kept = this.instance(instanceId).preRestore;
        return kept ? { path: `/fake/${instanceId}.qcow2.vmsnap-pre-restore`, keptUntil: '', imageId: kept.disk } : null;
      }),
      rollbackDisk: hooked('rollbackDisk', async (input: { instanceId: string; owner: string; powerState: PowerState }) => {
        const instance = this.instance(input.instanceId);
        const stoppedAt = Date.now();
        if (instance.preRestore) {
          instance.power = 'shutdown';
          instance.disk = instance.preRestore.disk;
          delete instance.preRestore;
        }
        instance.power = input.powerState;
        return { stoppedAt, startedAt: Date.now() };
      }),
      newInstanceDiskPath: hooked('newInstanceDiskPath', async (input: { instanceId: string; name: string }) => `/fake/${input.name}.vmsnap-new.qcow2`),
      defineNewInstance: hooked('defineNewInstance', async (input: { instanceId: string; name: string; diskPath: string; powerState: PowerState }) => {
        this.restoreFiles.delete(input.diskPath); // the new instance's disk from now on
        const newInstanceId = randomUUID();
        const made = this.addInstance(newInstanceId, input.powerState);
        made.name = input.name;
        return { newInstanceId, startedAt: Date.now(), confirmedBy: 'power-state' };
      }),
      removeNewInstance: hooked('removeNewInstance', async (input: { instanceId: string; name: string; diskPath: string }) => {
        for (const i of this.instances.values()) if (i.name === input.name && i.id !== input.instanceId) this.instances.delete(i.id);
        this.restoreFiles.delete(input.diskPath);
      }),
      removeSnapshotFiles: hooked('removeSnapshotFiles', async (imageId: string) => {
        this.tempDirs.delete(imageId);
      }),
      // As the real one: ends the holder at once where it runs in the same process.
      releaseSnapshotSlot: hooked('releaseSnapshotSlot', async (owner: string) => {
        const release = this.slotHolders.get(owner);
        release?.();
        return release !== undefined;
      }),
      // As the real one: ends the backup job whose files are in the snapshot's temp dir, if any.
      abortAbandonedLiveCopy: hooked('abortAbandonedLiveCopy', async (input: { instanceId: string; imageId: string }) => this.liveJobs.delete(input.imageId)),
      removeOrphanSnapshotDirs: hooked('removeOrphanSnapshotDirs', async () => [] as string[]),
      prunePreRestoreDisks: hooked('prunePreRestoreDisks', async () => [] as string[]),
      removeAbandonedNewInstances: hooked('removeAbandonedNewInstances', async () => [] as string[]),
    };
    const slot = {
      // As the real one: tells the snapshot it may go on, then holds the slot until cancelled.
      // With the instance as it found it, when able (as inspectInstance reads it).
      holdSnapshotSlot: hooked('holdSnapshotSlot', async ({ owner, inspect }: { owner: string; inspect: InspectInput }) => {
        const [workflowId, runId] = owner.split('/') as [string, string];
        const inspection = await inspectNow(inspect).catch(() => undefined);
        await client()
          .workflow.getHandle(workflowId, runId)
          .signal(SLOT_ACQUIRED_SIGNAL, inspection ? { inspection } : {});
        const released = new Promise<void>((resolve) => this.slotHolders.set(owner, resolve));
        const context = Context.current();
        const beat = setInterval(() => context.heartbeat(), 50);
        try {
          await Promise.race([context.cancelled, released]);
        } finally {
          clearInterval(beat);
          this.slotHolders.delete(owner);
        }
      }),
    };
    return { main, host, slot };
  }
}

/** Heartbeats until the workflow cancels this activity, then ends as cancelled. */
export async function untilCancelled(): Promise<never> {
  const context = Context.current();
  const beat = setInterval(() => context.heartbeat(), 50);
  try {
    await context.cancelled;
    throw new Error('unreachable');
  } finally {
    clearInterval(beat);
  }
}

export interface FastTemporal {
  env: TestWorkflowEnvironment;
  client: Client;
  taskQueue: string;
  /** A cloud of its own for one test: tests run side by side. */
  newCloud(): FakeCloud;
  /** Makes the cloud the one the activities of this workflow id act on (for starts of one's own). */
  serve(cloud: FakeCloud, workflowId: string): void;
  /** Starts a snapshot on the cloud, as the client does (workflow id snapshot-<instance>). */
  startSnapshot(cloud: FakeCloud, request: SnapshotRequest): Promise<WorkflowHandle>;
  /** Starts a restore (or a rollback) on the cloud, as the client does (workflow id restore-<instance>). */
  startRestore(cloud: FakeCloud, request: RestoreRequest): Promise<WorkflowHandle>;
  startRollback(cloud: FakeCloud, request: RollbackRequest): Promise<WorkflowHandle>;
  /** Runs the reconciler once on the cloud. */
  reconcile(cloud: FakeCloud): Promise<ReconcileReport>;
  /** Resolves once the run shows this phase (or fails if it ended first). */
  waitForPhase(handle: WorkflowHandle, phase: string): Promise<void>;
  close(): Promise<void>;
}

type Activities = ReturnType<FakeCloud['activities']>;

/**
 * A local Temporal dev server with vmsnap's search attributes, and workers for the main, host and
 * slot task queues running the current workflow code. Each activity acts on the cloud of the
 * workflow that called it, so tests with clouds of their own run side by side.
 */
export async function startFastTemporal(name: string): Promise<FastTemporal> {
  if (!existsSync(TEMPORAL_CLI)) throw new Error(`${TEMPORAL_CLI} is missing: run ./scripts/setup once (it builds the Temporal CLI)`);
  // Workflow logs of expected failures would bury the test output.
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const env = await TestWorkflowEnvironment.createLocal({
    server: {
      executable: { type: 'existing-path', path: TEMPORAL_CLI },
      searchAttributes: [INSTANCE_ID, IMAGE_ID, PHASE, HOST],
      extraArgs: ['--log-level', 'error'],
    },
  });
  const byWorkflow = new Map<string, Activities>();
  const route = <K extends keyof Activities>(kind: K): Activities[K] => {
    const names = Object.keys(new FakeCloud().activities(() => env.client)[kind]);
    return Object.fromEntries(
      names.map((n) => [
        n,
        (...args: unknown[]) => {
          const workflowId = Context.current().info.workflowExecution?.workflowId ?? '';
          const activities = byWorkflow.get(workflowId);
          if (!activities) throw ApplicationFailure.create({ message: `no fake cloud for workflow ${workflowId}`, nonRetryable: true });
          return (activities[kind] as Record<string, (...a: unknown[]) => Promise<unknown>>)[n]!(...args);
        },
      ]),
    ) as Activities[K];
  };
  const taskQueue = `vmsnap-fast-${name}`;
  const host = new FakeCloud().host;
  // Heartbeats carry cancellation: sent at once, so a cancelled fake step ends without delay.
  const throttle = { maxHeartbeatThrottleInterval: '50ms', defaultHeartbeatThrottleInterval: '50ms' };
  const workers = [
    await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: await workflowBundle(),
      activities: route('main'),
      ...throttle,
    }),
    // The short host steps heartbeat from their start, as the real host worker's do.
    await Worker.create({
      connection: env.nativeConnection,
      taskQueue: hostTaskQueue(host),
      activities: heartbeatingFromStart(
        route('host'),
        SHORT_HOST_STEPS.filter((name) => name in new FakeCloud().activities(() => env.client).host) as (keyof Activities['host'] & string)[],
      ),
      ...throttle,
    }),
    // As many slots as tests run at once: the limit itself is the real slot worker's.
    await Worker.create({ connection: env.nativeConnection, taskQueue: hostSlotTaskQueue(host), activities: route('slot'), ...throttle }),
  ];
  const running = Promise.all(workers.map((w) => w.run()));
  const serve = (cloud: FakeCloud, workflowId: string) => {
    byWorkflow.set(
      workflowId,
      cloud.activities(() => env.client),
    );
  };
  return {
    env,
    client: env.client,
    taskQueue,
    serve,
    newCloud: () => new FakeCloud(),
    startSnapshot(cloud, request) {
      const workflowId = `snapshot-${request.instance}`;
      serve(cloud, workflowId);
      return env.client.workflow.start('snapshotInstance', { taskQueue, workflowId, args: [request] });
    },
    startRestore(cloud, request) {
      const workflowId = `restore-${request.instance}`;
      serve(cloud, workflowId);
      return env.client.workflow.start('restoreInstance', { taskQueue, workflowId, args: [request] });
    },
    startRollback(cloud, request) {
      const workflowId = `restore-${request.instance}`;
      serve(cloud, workflowId);
      return env.client.workflow.start('rollbackRestore', { taskQueue, workflowId, args: [request] });
    },
    reconcile(cloud) {
      const workflowId = `reconcile-${randomUUID()}`;
      serve(cloud, workflowId);
      return env.client.workflow.execute('reconcile', { taskQueue, workflowId });
    },
    async waitForPhase(handle, phase) {
      for (;;) {
        const progress = await handle.query<SnapshotProgress>('progress');
        if (progress.phase === phase) return;
        if (['completed', 'failed', 'cancelled', 'refused'].includes(progress.phase))
          throw new Error(`the snapshot ended (${progress.phase}) before phase ${phase}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
    async close() {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await running;
      await env.teardown();
    },
  };
}
