// The shapes that cross the workflow boundary: input, progress, result. Plain JSON only, and
// never a secret: all of it is stored in Temporal's history.

export type DiskFormat = 'qcow2' | 'raw';
export type SnapshotMode = 'auto' | 'cold' | 'live';
export type Consistency = 'crash-consistent' | 'filesystem-consistent';

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
  quiesce?: 'never' | 'try' | 'require';
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
}

export type SnapshotPhase =
  | 'starting'
  | 'creating-image'
  | 'waiting-for-host'
  | 'pausing'
  | 'converting'
  | 'copying'
  | 'resuming'
  | 'uploading'
  | 'finishing'
  | 'compensating'
  | 'completed'
  | 'cancelled'
  | 'failed';

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
  phase: 'converting' | 'copying' | 'uploading';
  percent: number;
  bytesDone: number;
  bytesTotal: number;
  /** What the step waits for when its bytes do not move, e.g. "waiting for Glance to confirm". */
  note?: string;
}

export interface SnapshotResult {
  imageId: string;
  imageName: string;
  instanceId: string;
  host: string;
  diskFormat: DiskFormat;
  /** Bytes uploaded to Glance, and their hashes as Glance recorded and vmsnap verified them. */
  size: number;
  virtualSize: number;
  sha512: string;
  md5: string;
  /** Power state before the snapshot; the instance is in it again now. */
  priorPowerState: string;
  /** cold or live; and why not live when auto chose cold. */
  mode: 'cold' | 'live';
  modeReason?: string;
  /** crash-consistent, or filesystem-consistent when the guest agent froze the filesystems. */
  consistency: Consistency;
  quiesceNote?: string;
  /** How long the guest was paused by vmsnap (0 when it was not running, and in live mode). */
  pauseDurationMs: number;
  /** Live mode: the guest-visible pause during the copy, from QEMU's STOP/RESUME events. */
  guestPauseMs: number;
  /**
   * Live mode: the longest disk write QEMU timed during the copy (its write counters, sampled
   * every 20 ms). The vCPUs never stop, but a backup job can hold writes back. A lower bound: a
   * write waiting for QEMU's busy main loop is not timed until QEMU takes it.
   */
  guestWriteStallMs?: number;
  phaseDurationsMs: Partial<Record<SnapshotPhase, number>>;
}
