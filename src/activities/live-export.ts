// A live snapshot without a copy on the host: a QEMU pull backup job holds one point in time of the
// root disk while the guest runs (exportLiveDisk, step 6), and the upload makes the image from the
// job's NBD export as it sends it, hashed on the way (uploadLiveExport, step 8). The job lives until
// the image is verified; it is ended then (endLiveExport, step 9), by compensation or by the
// reconciler. A retried upload reads the same point in time again, from the same job; one whose job
// is gone (libvirtd, QEMU or the host restarted) fails CopyLost. Meanwhile QEMU keeps the old data
// of the blocks the guest overwrites in an overlay in the snapshot's temp dir: bounded before the
// job starts (copy-room.ts: ensureRoomForOverlay) and watched while the image is sent.
//
// Where the export cannot be streamed (VMSNAP_LIVE_TRANSFER=copy, push, an iothread, no libnbd
// tools on the host) the snapshot is copied into the temp dir first, as before (live-copy.ts), and
// the result says why.
import { Context } from '@temporalio/activity';
import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { virtualSizeOf } from './cold-copy.js';
import { ensureRoomForOverlay, type OverlayBound } from './copy-room.js';
import type { ActivityDeps } from './deps.js';
import { snapshotDisks } from './disk-choice.js';
import { keepHeartbeating } from './heartbeat.js';
import { liveCopyDisk, prepareLiveJob, type LiveCopiedDisk, type LiveCopyDiskInput } from './live-copy.js';
import { removeSnapshotFiles, snapshotDir } from './snapshot-files.js';
import { sendAndVerify, type UploadedImage, type UploadTarget } from './upload.js';
import type { LiveExport } from '../drivers/hypervisor.js';
import type { UploadStream } from '../drivers/image-service.js';
import { missingNbdTools, nbdUnixUri, openNbdReader, readAllocationMap, type NbdReader } from '../drivers/nbd.js';
import { planQcow2Stream, type DiskSource } from '../drivers/qcow2-stream.js';
import { planRawStream } from '../drivers/raw-stream.js';
import { hashStream } from '../drivers/upload-body.js';
import { VmsnapError } from '../shared/errors.js';
import type { Consistency, StepProgress } from '../shared/types.js';

/** Where the upload finds a running export, and how far its overlay may grow. */
export interface LiveExportRef extends Pick<LiveExport, 'socket' | 'exportName' | 'scratch'> {
  /** The job is ended when the overlay holds this many bytes (OverlayBound.limitBytes). */
  overlayLimitBytes: number;
  /** A job over several disks: every disk's overlay, summed against the limit (else the scratch alone). */
  overlayFiles?: string[];
}

/** A set's data disk in the same job: its export and its size. */
export interface LiveDataExport {
  dev: string;
  export: LiveExportRef;
  virtualSize: number;
}

/** Step 6 in live mode: the point in time the upload streams, or a copy where it cannot. */
export type LiveSource = LiveStreamSource | ({ transfer: 'copied'; transferNote: string } & LiveCopiedDisk);

export interface LiveStreamSource {
  transfer: 'streamed';
  export: LiveExportRef;
  virtualSize: number;
  consistency: Consistency;
  quiesceNote?: string;
  /** Pause and longest write stall while the job started (the upload reports its own). */
  guestPauseMs: number;
  guestWriteStallMs?: number;
  /** The overlay's bound, in words for the result. */
  transferNote: string;
  /** A set's data disks, exported by the same job (LiveCopyDiskInput.dataDisks). */
  dataExports?: LiveDataExport[];
}

const MiB = (n: number) => `${Math.ceil(n / 2 ** 20)} MiB`;
/** How often the overlay's size is looked at while the image is sent. */
const OVERLAY_POLL_MS = 100;

function overlayNote(bound: OverlayBound): string {
  if (!bound.capped) return `streamed: the overlay can hold all ${MiB(bound.worstCaseBytes)} of the disk's data`;
  return (
    `streamed, overlay capped at ${MiB(bound.limitBytes)} by the free space of the snapshots dir (${MiB(bound.freeBytes)} free, the disk holds ` +
    `${MiB(bound.worstCaseBytes)}): the snapshot fails NoSpace if the guest overwrites more during the upload`
  );
}

/** Why this snapshot is copied rather than streamed, or undefined. */
async function whyCopied({ settings, hypervisor }: Pick<ActivityDeps, 'settings' | 'hypervisor'>): Promise<string | undefined> {
  if (settings.liveTransfer === 'copy') return 'copied: VMSNAP_LIVE_TRANSFER is copy';
  if (!hypervisor.startLiveExport) return 'copied: the hypervisor driver has no live export';
  const missing = await missingNbdTools();
  return missing ? `copied: ${missing}` : undefined;
}

async function copied(deps: ActivityDeps, input: LiveCopyDiskInput & { dataDisks?: string[] }, transferNote: string): Promise<LiveSource> {
  if (input.dataDisks?.length) throw cannotStreamSet(input.instanceId, transferNote.replace(/^copied: /, ''));
  return { transfer: 'copied', transferNote, ...(await liveCopyDisk(deps, input)) };
}

/** A live snapshot of several disks is streamed from one job; where it cannot be, it is taken cold. */
function cannotStreamSet(instanceId: string, reason: string): VmsnapError {
  return new VmsnapError(
    'InstanceInvalidState',
    `a live snapshot of instance ${instanceId}'s disks streams them from one backup job, which cannot be done here (${reason}): take it with mode "cold"`,
  );
}

/** The virtual size of each data disk of a set, by target device. */
async function dataDiskSizes(deps: ActivityDeps, input: { instanceId: string; dataDisks?: string[] }): Promise<Map<string, number>> {
  const sizes = new Map<string, number>();
  if (!input.dataDisks?.length) return sizes;
  const [, ...data] = await snapshotDisks(deps.hypervisor, input.instanceId, input.dataDisks);
  for (const disk of data) sizes.set(disk.dev, await virtualSizeOf(deps, disk));
  return sizes;
}

/**
 * Step 6, live: starts the pull backup job and leaves it running for the upload; or, where the
 * export cannot be streamed, copies the disk into the temp dir as liveCopyDisk does. A retry (the
 * worker died after the job started) ends the job an earlier attempt left and starts anew.
 */
export async function exportLiveDisk(deps: ActivityDeps, input: LiveCopyDiskInput & { dataDisks?: string[] }): Promise<LiveSource> {
  const { hypervisor, snapshotsDir, store, settings } = deps;
  const why = await whyCopied(deps);
  if (why) return copied(deps, input, why);
  const dataSizes = await dataDiskSizes(deps, input);
  // This snapshot holds the instance's task state: a job of vmsnap's on it is an earlier snapshot's
  // whose end failed (or this step's own, from an attempt whose worker died). It is ended first.
  await hypervisor.abortLiveCopy?.(input.instanceId, snapshotsDir);
  const bound = await ensureRoomForOverlay(deps, input);
  const signal = Context.current().cancellationSignal;
  const { dir, disk, virtualSize, pauses } = await prepareLiveJob(deps, input);
  const heartbeat = keepHeartbeating((): StepProgress => ({ phase: 'copying', percent: 0, bytesDone: 0, bytesTotal: virtualSize }), 1000);
  const writes = await hypervisor.watchWrites?.(input.instanceId, disk.path).catch(() => undefined);
  let watching = true;
  try {
    const quiesceEvent = (event: 'freeze' | 'thaw') =>
      store.recordEvent({ instanceId: input.instanceId, action: 'createImage', event, requestId: input.owner, details: {} });
    // As liveCopyDisk: a freeze is recorded before it may happen, the thaw after the driver's own.
    if (input.quiesce !== 'never') await quiesceEvent('freeze');
    let started;
    try {
      const data = input.dataDisks?.length ? { dataDisks: input.dataDisks } : {};
      started = await hypervisor.startLiveExport!(input.instanceId, { dir, quiesce: input.quiesce, method: settings.liveCopyMethod, signal, ...data });
    } finally {
      if (input.quiesce !== 'never') await quiesceEvent('thaw');
    }
    const [{ pausedMs }, written] = await Promise.all([pauses.stop(), writes?.stop()]);
    watching = false;
    if (!started.started) {
      await removeSnapshotFiles(snapshotsDir, input.imageId);
      if (input.dataDisks?.length) throw cannotStreamSet(input.instanceId, started.reason);
      return await copied(deps, input, `copied: ${started.reason}`);
    }
    const overlayFiles = started.dataExports ? { overlayFiles: [started.scratch, ...started.dataExports.map((d) => d.scratch)] } : {};
    const ref = (exportName: string, scratch: string): LiveExportRef => ({
      socket: started.socket,
      exportName,
      scratch,
      overlayLimitBytes: bound.limitBytes,
      ...overlayFiles,
    });
    const dataExports = (started.dataExports ?? []).map((d) => ({ dev: d.dev, export: ref(d.exportName, d.scratch), virtualSize: dataSizes.get(d.dev) ?? 0 }));
    return {
      transfer: 'streamed',
      export: ref(started.exportName, started.scratch),
      ...(dataExports.length ? { dataExports } : {}),
      virtualSize,
      consistency: started.consistency,
      ...(started.quiesceNote ? { quiesceNote: started.quiesceNote } : {}),
      guestPauseMs: pausedMs,
      ...(written ? { guestWriteStallMs: written.longestWriteMs } : {}),
      transferNote: overlayNote(bound),
    };
  } catch (err) {
    await removeSnapshotFiles(snapshotsDir, input.imageId);
    throw err;
  } finally {
    if (watching) await Promise.all([pauses.stop().catch(() => undefined), writes?.stop()]);
    heartbeat.stop();
  }
}

export interface UploadLiveExportInput extends UploadTarget {
  instanceId: string;
  export: LiveExportRef;
  compress: boolean;
}

export interface UploadedLiveExport extends UploadedImage {
  /** The overlay's largest size while the image was sent: all the snapshot wrote on the host. */
  overlayBytes: number;
  /** Pause and longest write stall while the image was sent (the job still running). */
  guestPauseMs: number;
  guestWriteStallMs?: number;
}

/**
 * The overlay's size, looked at every OVERLAY_POLL_MS; `onFull` once it reaches the limit. The
 * reserve copy-room.ts keeps free takes what the guest writes before the job is ended.
 */
function watchOverlay(scratches: string[], limitBytes: number, onFull: (bytes: number) => void): { peak(): number; stop(): void } {
  let peak = 0;
  let full = false;
  let looking = false;
  const look = async () => {
    if (looking) return;
    looking = true;
    try {
      const sizes = await Promise.all(
        scratches.map((scratch) =>
          stat(scratch).then(
            (st) => st.blocks * 512,
            () => 0,
          ),
        ),
      );
      const bytes = sizes.reduce((a, b) => a + b, 0);
      peak = Math.max(peak, bytes);
      if (bytes >= limitBytes && !full) {
        full = true;
        onFull(bytes);
      }
    } finally {
      looking = false;
    }
  };
  const timer = setInterval(() => void look(), OVERLAY_POLL_MS);
  void look();
  return {
    peak: () => peak,
    stop: () => clearInterval(timer),
  };
}

/**
 * The reader, paced to `mibps` from the first byte: VMSNAP_LIVE_BANDWIDTH_MIBPS spares the host's
 * storage, and the stream reads the disk as a copy would. Each read starts in its turn.
 */
function paced(reader: NbdReader, mibps: number): DiskSource {
  const bytesPerMs = (mibps * 2 ** 20) / 1000;
  let next = performance.now();
  const turn = async (bytes: number) => {
    const now = performance.now();
    const at = Math.max(now, next);
    next = at + bytes / bytesPerMs;
    if (at > now) await sleep(at - now);
  };
  return {
    read: async (offset, length, into) => {
      await turn(length);
      return reader.read(offset, length, into);
    },
    nonZeroClusters: async (offset, length, cluster) => {
      await turn(length);
      return reader.nonZeroClusters(offset, length, cluster);
    },
  };
}

/** The image as the upload sends it, made from the export: qcow2 (compressed if asked) or raw. */
async function planImage(
  reader: NbdReader,
  uri: string,
  input: UploadLiveExportInput,
  { settings }: Pick<ActivityDeps, 'settings'>,
  signal: AbortSignal,
): Promise<UploadStream> {
  const map = await readAllocationMap(uri, signal);
  if (map.virtualSize !== reader.size) {
    throw new VmsnapError('ConvertFailed', `live export ${uri}: its map covers ${map.virtualSize} bytes, the export has ${reader.size}`);
  }
  const source = settings.liveCopyBandwidthMiBps > 0 ? paced(reader, settings.liveCopyBandwidthMiBps) : reader;
  const description = `the image made from live export ${uri}`;
  if (input.diskFormat === 'raw') {
    const raw = planRawStream(map, source);
    return { size: raw.size, chunks: () => raw.chunks({ signal }), description };
  }
  // The map is the export's word for what is allocated: trusted, without a first pass over the data
  // to find allocated zeros (benchmarks.md: the stream's cost). Compression needs that pass anyway.
  const qcow2 = await planQcow2Stream(map, source, { scanZeros: false, compress: input.compress, signal });
  // Buffers reused: the upload sends each chunk before it pulls the next (upload-body.ts).
  return { size: qcow2.size, chunks: () => qcow2.chunks({ signal, reuseBuffers: true }), description };
}

/**
 * Step 8, streamed: reads the export (the same point in time on every attempt, as long as the job
 * runs), makes the image as it sends it, and verifies it as uploadImage does. The overlay is
 * watched throughout: should it reach its limit, the job is ended at once (the guest's writes
 * must never find the dir full) and the snapshot fails NoSpace.
 */
export async function uploadLiveExport(deps: ActivityDeps, input: UploadLiveExportInput): Promise<UploadedLiveExport> {
  const { hypervisor, imageService, snapshotsDir } = deps;
  const { export: ref, instanceId } = input;
  if (!(await hypervisor.liveExportRunning?.(instanceId, ref.socket))) {
    throw new VmsnapError(
      'CopyLost',
      `the point in time of instance ${instanceId}'s live snapshot is gone (its backup job ended: libvirtd, QEMU or the host restarted, or ` +
        `someone aborted it) before its upload was verified: nothing is kept on the host to upload`,
    );
  }
  const activity = Context.current().cancellationSignal;
  const overlayFull = new AbortController();
  const signal = AbortSignal.any([activity, overlayFull.signal]);
  const overlay = watchOverlay(ref.overlayFiles ?? [ref.scratch], ref.overlayLimitBytes, (bytes) => {
    overlayFull.abort(
      new VmsnapError(
        'NoSpace',
        `the live snapshot of instance ${instanceId} was ended: the guest overwrote ${MiB(bytes)} of its disk during the upload, the limit of ` +
          `its overlay in ${snapshotsDir} (VMSNAP_SNAPSHOTS_DIR), set by its free space: free space there or point it at a larger disk, or take ` +
          `the snapshot cold`,
        { snapshotsDir, overlayBytes: bytes, limitBytes: ref.overlayLimitBytes },
      ),
    );
    // At once, before the stream unwinds: the guest's next writes must not fill the dir.
    void hypervisor.abortLiveCopy?.(instanceId, snapshotDir(snapshotsDir, input.imageId)).catch(() => undefined);
  });
  const disk = await hypervisor.rootDisk(instanceId);
  const [pauses, writes] = await Promise.all([
    hypervisor.watchPauses(instanceId).catch(() => undefined),
    hypervisor.watchWrites?.(instanceId, disk.path).catch(() => undefined),
  ]);
  const uri = nbdUnixUri(ref.socket, ref.exportName);
  let reader: NbdReader | undefined;
  let watching = true;
  try {
    reader = await openNbdReader(uri);
    const image = await planImage(reader, uri, input, deps, signal);
    const uploaded = await sendAndVerify(deps, input, {
      size: image.size,
      send: (progress) => imageService.uploadStream(input.imageId, image, progress, signal),
      hash: () => hashStream(image.chunks()),
    });
    const [paused, written] = await Promise.all([pauses?.stop(), writes?.stop()]);
    watching = false;
    return {
      ...uploaded,
      overlayBytes: overlay.peak(),
      guestPauseMs: paused?.pausedMs ?? 0,
      ...(written ? { guestWriteStallMs: written.longestWriteMs } : {}),
    };
  } catch (err) {
    // The overlay's end of the job is the cause of whatever failed after it.
    if (overlayFull.signal.aborted) throw overlayFull.signal.reason;
    throw err;
  } finally {
    overlay.stop();
    await Promise.all([reader?.close(), watching && pauses?.stop().catch(() => undefined), watching && writes?.stop()]);
  }
}

/**
 * Step 9 and the compensation of a live snapshot: ends the backup job whose files are in the
 * snapshot's temp dir, if any, then removes the dir. Safe to run twice.
 */
export async function endLiveExport(deps: ActivityDeps, input: { instanceId: string; imageId: string }): Promise<void> {
  await deps.hypervisor.abortLiveCopy?.(input.instanceId, snapshotDir(deps.snapshotsDir, input.imageId));
  await removeSnapshotFiles(deps.snapshotsDir, input.imageId);
}
