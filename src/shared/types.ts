// The shapes that cross the workflow boundary: input, progress, result. Plain JSON only, and
// never a secret: all of it is stored in Temporal's history.
import type { DiskSelection } from './disk-set.js';

export type DiskFormat = 'qcow2' | 'raw';
export type SnapshotMode = 'auto' | 'cold' | 'live';
/** How good a copy is: crash-consistent (as after power loss) or with the guest's filesystems frozen. */
export type Consistency = 'crash-consistent' | 'filesystem-consistent';
/**
 * Guest filesystem freeze through the QEMU guest agent around a live copy's point in time: never;
 * try (no agent or a failing one: go on crash-consistent, say why); require (else fail).
 */
export type QuiesceMode = 'never' | 'try' | 'require';

/** Input of the snapshotInstance workflow (also what `temporal workflow start --input` takes). */
export interface SnapshotRequest {
  /** Instance UUID (libvirt domain UUID) or its exact name. */
  instance: string;
  /** Name of the Glance image to create (1-255 characters). */
  imageName: string;
  /** Extra image properties, as Nova's createImage `metadata`. Reserved keys are refused. */
  metadata?: Record<string, string>;
  /**
   * cold: the guest is paused for the copy and resumed before the upload. live: the copy is taken
   * while the guest runs (a point-in-time block backup). auto: live where the host can, else cold.
   * Default: the workers' VMSNAP_DEFAULT_MODE (auto).
   */
  mode?: SnapshotMode;
  /** Live mode: freeze the guest's filesystems (QEMU guest agent) while the copy starts. Default try. */
  quiesce?: QuiesceMode;
  /** Format of the uploaded image; default qcow2. */
  diskFormat?: DiskFormat;
  /** qcow2 compression (smaller upload, slower copy); default false. */
  compress?: boolean;
  /** Glance image id to use; chosen by vmsnap when absent. */
  imageId?: string;
  /** The vmsnap schedule that asked for it: recorded on the image, so retention finds its images. */
  scheduleId?: string;
  /** Who asks, recorded on the image as Nova does (user_id, owner). */
  userId?: string;
  projectId?: string;
  /**
   * Nova's createBackup: the image is a backup of this type (image_type=backup, backup_type), and
   * after the upload the oldest backups of the instance and type past `rotation` are deleted.
   */
  backup?: BackupRotation;
  /**
   * Which disks: root (default: Nova's createImage), all, or the named target devices (root
   * included). Each disk becomes its own image, all from one point in time; the root image
   * carries the set's manifest (shared/disk-set.ts). CD-ROMs, read-only and shareable disks are
   * skipped (result.skippedDisks); a network disk is refused.
   */
  disks?: DiskSelection;
}

export interface BackupRotation {
  /** A type of the user's choosing, like "daily" or "weekly" (may be empty, as Nova allows). */
  type: string;
  /** How many backups of this instance and type to keep, the new one included. */
  rotation: number;
}

/**
 * The answer of a snapshot's or restore's `accepted` update (ACCEPTED_UPDATE): its task state is
 * taken (and a snapshot's image record made), so the request is Nova's 202. A refused request
 * answers with the failure that refused it instead (InstanceBusy, InstanceNotFound, ...).
 */
export interface Acceptance {
  instanceId: string;
  imageId: string;
  /** The task state taken (none for a restore as a new instance, which leaves the instance alone). */
  taskState: string | null;
  workflowId: string;
  runId: string;
}

export type SnapshotPhase =
  | 'starting'
  | 'creating-image'
  | 'waiting-for-host'
  | 'converting'
  | 'copying'
  | 'uploading'
  | 'finishing'
  | 'compensating'
  | 'completed'
  | 'cancelled'
  | 'failed'
  /** Ended before it took the instance (busy, unknown, a request it cannot honour): nothing was done. */
  | 'refused';

/** Answer of the `progress` query. */
export interface SnapshotProgress {
  phase: SnapshotPhase;
  instanceId?: string;
  imageId: string;
  taskState: string | null;
  /** Milliseconds spent in each phase that has ended so far. */
  phaseDurationsMs: Partial<Record<SnapshotPhase, number>>;
  error?: string;
}

/**
 * Heartbeat details of the long steps (convert, upload): visible in the Web UI's pending
 * activities and through `describe()`, which is how clients show percent and bytes/s.
 */
export interface StepProgress {
  phase: 'converting' | 'copying' | 'uploading' | 'downloading';
  percent: number;
  bytesDone: number;
  bytesTotal: number;
  /** What the step waits for when its bytes do not move, e.g. "waiting for Glance to confirm". */
  note?: string;
  /** The disk (target device) of a snapshot of several disks this step moves. */
  dev?: string;
}

/** A step without bytes that waits on something (a restore's guest shutting down): its heartbeat says what. */
export interface StepNote {
  phase: string;
  note: string;
}

export interface SnapshotResult {
  imageId: string;
  imageName: string;
  instanceId: string;
  host: string;
  diskFormat: DiskFormat;
  /** Bytes uploaded to Glance, and their sha512 as Glance recorded it (os_hash_value) and vmsnap verified it. */
  size: number;
  virtualSize: number;
  sha512: string;
  /** Power state before the snapshot; the instance is in it again now. */
  priorPowerState: string;
  /** cold or live; and why not live when auto chose cold. */
  mode: 'cold' | 'live';
  modeReason?: string;
  /** crash-consistent, or filesystem-consistent when the guest agent froze the filesystems. */
  consistency: Consistency;
  quiesceNote?: string;
  /**
   * How the image reached Glance: streamed (live by pull: made from the backup job's point in time as
   * it was sent, no copy on the host) or copied (into the snapshots dir first: cold, push, or where
   * the export cannot be streamed). Absent in results written before issue 29 (copied).
   */
  transfer?: 'streamed' | 'copied';
  /** Why a live snapshot was copied, or the bound of a streamed one's overlay. */
  transferNote?: string;
  /**
   * The most the snapshot kept on the host's disk: a copy's size, or a streamed snapshot's overlay
   * at its largest (the old data of the blocks the guest overwrote while the job ran).
   */
  hostScratchBytes?: number;
  /**
   * How long the guest's vCPUs stood still for this snapshot, as the guest saw it: cold mode, from
   * the pause to the resume; live mode, QEMU's STOP/RESUME events during the copy (normally 0);
   * 0 for a guest that was not running. (Results before issue 14 also carry it as pauseDurationMs,
   * 0 in live mode.)
   */
  guestPauseMs: number;
  /**
   * Live mode: the longest disk write QEMU timed during the copy (its write counters, sampled
   * every 20 ms). The vCPUs never stop, but a backup job can hold writes back. A lower bound: a
   * write waiting for QEMU's busy main loop is not timed until QEMU takes it.
   */
  guestWriteStallMs?: number;
  phaseDurationsMs: Partial<Record<SnapshotPhase, number>>;
  /** Every image the snapshot made, root first: one per disk (one entry for a root-disk snapshot). */
  disks?: SnapshotDiskResult[];
  /** The set's id (vmsnap_disk_set on each image), when the request asked for more than the root disk. */
  diskSetId?: string;
  /** Disks the selection left out, and why (CD-ROMs, read-only, shareable). */
  skippedDisks?: { dev: string; reason: string }[];
}

/** One disk's image in a snapshot's result. */
export interface SnapshotDiskResult {
  dev: string;
  bus: string;
  role: 'root' | 'data';
  imageId: string;
  diskFormat: DiskFormat;
  size: number;
  virtualSize: number;
  sha512: string;
}

// ---------------------------------------------------------------------------------------------
// Restore (Nova's rebuild): put an image back on an instance's root disk.

/** Input of the restoreInstance workflow (also what `temporal workflow start --input` takes). */
export interface RestoreRequest {
  /** Instance UUID (libvirt domain UUID) or its exact name. */
  instance: string;
  /** Glance image id (a UUID). The client resolves a name to the id before it starts. */
  imageId: string;
  /**
   * Allow an image of another instance (or no snapshot at all). By default only a snapshot of
   * this instance (its `instance_uuid`) is accepted.
   */
  allowOtherImage?: boolean;
  /** Allow an image whose virtual size is larger than the instance's disk (the disk grows). */
  allowGrow?: boolean;
  /** Stop the guest at once (destroy), without asking it to shut down first and waiting for it. */
  forceStop?: boolean;
  /**
   * Restore as a new instance of this name: a new domain (new UUID, name and MACs) like the
   * instance, on a new disk beside its disk holding the image. The instance is left untouched.
   */
  asNew?: string;
}

export type RestorePhase =
  | 'starting'
  | 'checking-image'
  | 'downloading'
  | 'converting'
  | 'stopping'
  | 'starting-guest'
  | 'finishing'
  | 'compensating'
  | 'completed'
  | 'cancelled'
  | 'failed'
  /** Ended before it took the instance (busy, unknown, an image it cannot restore): nothing was done. */
  | 'refused';

/** Answer of a restore's `progress` query. */
export interface RestoreProgress {
  phase: RestorePhase;
  instanceId?: string;
  imageId: string;
  taskState: string | null;
  phaseDurationsMs: Partial<Record<RestorePhase, number>>;
  error?: string;
}

export interface RestoreResult {
  instanceId: string;
  host: string;
  imageId: string;
  /** The disk now holding the image, and the previous disk kept beside it until keptUntil. */
  diskPath: string;
  diskFormat: string;
  /** Absent when restored as a new instance (nothing was replaced). */
  preRestorePath?: string;
  preRestoreKeptUntil?: string;
  /** Restore as new: the instance defined (and started as the original runs). */
  newInstance?: { id: string; name: string };
  /** Bytes downloaded from Glance and their sha512, equal to Glance's os_hash_value. */
  downloadedBytes: number;
  sha512: string;
  virtualSize: number;
  /** Power state before the restore; the instance is in it again now. */
  priorPowerState: string;
  /**
   * The guest's downtime as it lived it: from the last moment it was seen running to running again
   * on the image (0 when it was not running; a wait for its shutdown while it still runs is not in it).
   */
  downtimeMs: number;
  /** How long the guest was given to shut down by itself before it was off or destroyed (not downtime). */
  shutdownWaitMs?: number;
  /** How the guest stopped: a graceful shutdown, destroy after the timeout (or at once: forceStop), none (it was off, or restored as new). */
  stoppedBy: 'shutdown' | 'destroy' | 'none';
  /** What showed the guest runs on the image: its guest agent answering, or (no agent) the domain running; none when it stays off. */
  confirmedBy?: 'guest-agent' | 'power-state' | 'none';
  /** The downtime by step: stop → disk swapped and task state set, → started by libvirt; then the confirmation (not downtime). */
  downtimeStepsMs?: { swapAndTaskState: number; start: number; confirm: number };
  phaseDurationsMs: Partial<Record<RestorePhase, number>>;
  /** A set's restore (the image is a set's root): every disk restored, root first. Absent for a root-disk image. */
  disks?: RestoreDiskResult[];
  /** The set's id (vmsnap_disk_set), when the image is a set's root. */
  diskSetId?: string;
}

/** One disk of a set's restore. */
export interface RestoreDiskResult {
  dev: string;
  imageId: string;
  /** The disk now holding the image (a new instance's new disk when restored as new). */
  path: string;
  /** The disk it had before, kept beside it for rollback (absent when restored as new). */
  preRestorePath?: string;
  downloadedBytes: number;
  sha512: string;
  virtualSize: number;
}

/** Input of the rollbackRestore workflow: put the pre-restore disk back. */
export interface RollbackRequest {
  instance: string;
}

export interface RollbackResult {
  instanceId: string;
  diskPath: string;
  /** The restored disk that was replaced (removed). */
  priorPowerState: string;
  downtimeMs: number;
}
