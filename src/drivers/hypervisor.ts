// The hypervisor as vmsnap needs it (libvirt is the first implementation), in the spirit of
// Nova's virt driver interface. Errors are VmsnapError: InstanceNotFound, InstanceInvalidState
// (e.g. resume of a shut-off instance), DiskNotFound, InvalidInput (an id that is not a UUID),
// ConfigError (no virsh), HypervisorError (anything else; retryable).
import type { Consistency, QuiesceMode } from '../shared/types.js';

export type { Consistency, QuiesceMode };

/** Nova's power states, as far as a snapshot cares. */
export type PowerState = 'running' | 'paused' | 'shutdown' | 'crashed' | 'suspended' | 'nostate';

export interface InstanceInfo {
  /** libvirt domain UUID = Nova instance uuid. */
  id: string;
  name: string;
  powerState: PowerState;
  /** Glance id of the image the instance booted from, when the domain says (Nova metadata). */
  baseImageRef?: string;
  /** The Keystone project and user that own it, when the domain's metadata says (InstanceOwner). */
  owner?: InstanceOwner;
}

/**
 * An instance's owner as its domain's <metadata> records it: Nova's <nova:owner>, else the same in
 * vmsnap's own namespace. Ids are Keystone ids; the names are what the metadata says, if anything.
 */
export interface InstanceOwner {
  projectId?: string;
  userId?: string;
  projectName?: string;
  userName?: string;
}

export interface RootDisk {
  path: string;
  /** Format QEMU uses for it, from the domain definition: 'qcow2', 'raw', ... */
  format: string;
}

/** One <disk> of the domain, in the domain's order (cdroms and floppies too). */
export interface InstanceDisk {
  /** Target device name (vda, sdb ...). */
  dev: string;
  /** 'disk', 'cdrom', 'floppy', 'lun'. */
  device: string;
  /** Source type: 'file', 'block', 'network', 'volume' ... */
  type: string;
  /** Target bus: virtio, scsi, sata, ide ... ('' when none is named). */
  bus: string;
  /** The image of a local file or block disk. */
  path?: string;
  /** Format QEMU uses for it: 'qcow2', 'raw', ... */
  format: string;
  readonly: boolean;
  shareable: boolean;
}

export interface Hypervisor {
  listInstances(): Promise<InstanceInfo[]>;
  /** Throws InstanceNotFound for an unknown id. */
  getInstance(id: string): Promise<InstanceInfo>;
  /** Pausing a paused instance is success. */
  pause(id: string): Promise<void>;
  /** Resuming a running instance is success. */
  resume(id: string): Promise<void>;
  /** The root disk as the domain defines it (the first disk device). */
  rootDisk(id: string): Promise<RootDisk>;
  /** Every disk of the domain, in its order. Throws InstanceNotFound / InvalidInput like getInstance. */
  disks(id: string): Promise<InstanceDisk[]>;

  // Live snapshot mode (types below).
  /**
   * Whether liveCopy can work for this instance now, and why not: it must be running or paused (QEMU
   * does the copy), with a local file or block root disk, on a libvirt/QEMU that offers the backup
   * API. Throws InstanceNotFound / InvalidInput like getInstance.
   */
  liveCopySupport(id: string): Promise<LiveCopySupport>;
  /**
   * A point-in-time copy of the root disk while the guest runs (libvirt backup job, pull or push mode: LiveCopyOptions.method).
   * Errors: InstanceInvalidState (not running; quiesce 'require' not possible), InvalidInput (bad
   * options or target), ConfigError (QEMU cannot write the target), NoSpace, HypervisorError
   * (retryable: another job on the domain, the job failed); an AbortError when aborted.
   */
  liveCopy(id: string, opts: LiveCopyOptions): Promise<LiveCopyResult>;
  /**
   * Ends a live copy's or export's job on the instance whose files are in dir (the export's upload
   * is verified, its worker died, its snapshot was terminated) and removes its scratch image and
   * socket; true if there was one. A gone instance has none.
   */
  abortLiveCopy?(id: string, dir: string): Promise<boolean>;
  /**
   * Starts a pull backup job of the root disk and leaves it running: its point in time served over
   * NBD on a unix socket in `opts.dir` until abortLiveCopy(id, dir). Says why not where a pull job
   * cannot be used (then nothing was started); errors as liveCopy. Optional: a driver without it
   * copies (liveCopy).
   */
  startLiveExport?(id: string, opts: LiveExportOptions): Promise<LiveExportStart>;
  /** Whether the pull job serving this export's socket still runs. */
  liveExportRunning?(id: string, socket: string): Promise<boolean>;
  /**
   * Thaws filesystems frozen through the guest agent (compensation after a lost worker). An
   * instance without an agent, not running or gone has nothing frozen: that is success.
   */
  thawFilesystems(id: string): Promise<void>;
  /**
   * Starts watching the guest's vCPU stops (QEMU STOP/RESUME events); resolves once the watch is
   * live. onEvent hears each event as it arrives (the pause guard keeps its budget from the STOP).
   */
  watchPauses(id: string, onEvent?: (event: PauseEvent) => void): Promise<PauseWatch>;

  // Restore: stop the guest, swap its disk (a file operation, see activities/restore.ts), start it.
  /**
   * Stops the guest: a graceful shutdown (ACPI) first, destroy when it is not off within
   * timeoutMs (0: destroy at once). Says how it stopped ('none' when it was not running) and the
   * last moment it was seen running: the guest's downtime starts no earlier. An abort while
   * waiting for the shutdown rejects without destroying.
   */
  stop(id: string, timeoutMs: number, signal?: AbortSignal): Promise<Stopped>;
  /** Starts a shut-off guest (paused: with its vCPUs stopped). Starting a running guest is success. */
  start(id: string, opts?: { paused?: boolean }): Promise<void>;
  /** Whether the domain has a QEMU guest agent channel. */
  hasGuestAgent(id: string): Promise<boolean>;
  /** True when the guest agent answers (a guest-get-time round trip). */
  pingGuestAgent(id: string): Promise<boolean>;
  /**
   * Restore as a new instance: defines a new domain like `id` (its persistent definition) with a
   * new name, a new UUID and new MAC addresses, on `diskPath` as its root disk (and, for a set, each
   * disk of `dataDisks` (target device → path) on its new file), and its file consoles and logs
   * renamed after it. InvalidInput when the name is taken. Returns the new UUID.
   */
  defineCopy(id: string, opts: { name: string; diskPath: string; dataDisks?: Record<string, string> }): Promise<string>;
  /** Stops (destroy) and undefines a domain; one that is gone already is success. */
  undefine(id: string): Promise<void>;
  /** Watches the guest's completed disk writes (optional: a driver without it reports no figure). */
  watchWrites?(id: string, device: string): Promise<WriteWatch>; // device: target name or disk path
}

// ---------------------------------------------------------------------------------------------
// Live snapshot mode: the guest keeps running while its root disk is copied.

export interface LiveCopySupport {
  supported: boolean;
  /** Why not, for an operator (set when supported is false). */
  reason?: string;
}

export interface LiveCopyOptions {
  /**
   * Absolute path of the image to create. An existing regular file there is replaced. QEMU (not
   * root) opens it: its directory must be searchable by QEMU's user.
   */
  target: string;
  /** qcow2 comes out sparse (about the data's size); raw is sparse by pull and fully allocated by push (QEMU's job writes the holes as zeroes). */
  targetFormat: 'qcow2' | 'raw';
  /** Polled about every 250 ms while the copy runs, and once with 100 % at the end. */
  onProgress?: (percent: number, bytesDone: number, bytesTotal: number) => void;
  /** Abort: the job is aborted, the partial target removed, and the call rejects with an AbortError. */
  signal?: AbortSignal;
  /** Default 'try'. */
  quiesce?: QuiesceMode;
  /**
   * Limit the copy's read/write rate (MiB/s) to spare the host's storage. Pull: from the first byte
   * (qemu-img -r). Push: applied right after the job starts (libvirt's backup XML has no rate), so
   * the first instant runs at full speed.
   */
  bandwidthMiBps?: number;
  /**
   * pull: QEMU serves the point in time over NBD and qemu-img reads it; push: QEMU's backup job
   * writes the target itself; auto (default): pull, else push where pull cannot start.
   */
  method?: LiveCopyMethod;
  /** How a pull copy is made; unset fields take the defaults that measured best (the write-stalls benchmark compares the others). */
  pull?: PullTuning;
}

export interface PullTuning {
  /** Requests qemu-img keeps in flight against QEMU's NBD export (qemu-img -m). */
  parallel?: number;
  /** Directory of the scratch image that keeps the overwritten blocks' old data; default beside the target. */
  scratchDir?: string;
  /** Run the reader (qemu-img) at the lowest CPU and I/O priority (nice 19, ionice idle). */
  lowPriority?: boolean;
  /** Cache mode of the copy's writes (qemu-img -t): none writes past the page cache, so no burst of writeback queues the guest's flushes. */
  targetCache?: 'none' | 'writeback' | 'unsafe';
}

export type LiveCopyMethod = 'auto' | 'pull' | 'push';

export interface LiveExportOptions {
  /** Absolute path of a directory QEMU's user can traverse: the NBD socket's directory and the scratch image go in it. */
  dir: string;
  /** A set's data disks (target devices), exported by the same job as the root disk: one point in time for all. */
  dataDisks?: string[];
  /** Default 'try'. */
  quiesce?: QuiesceMode;
  /** auto (default): says why not where pull cannot be used; pull: fails there instead; push: nothing is started. */
  method?: LiveCopyMethod;
  signal?: AbortSignal;
}

/** A running pull job's point in time, as a reader reaches it. */
export interface LiveExport {
  /** The NBD server's unix socket and the export's name on it. */
  socket: string;
  exportName: string;
  /** The scratch image that keeps the old data of the blocks the guest overwrites while the job runs. */
  scratch: string;
  consistency: Consistency;
  quiesceNote?: string;
  /** The data disks' exports on the same socket (LiveExportOptions.dataDisks), each with its own scratch image. */
  dataExports?: { dev: string; exportName: string; scratch: string }[];
}

export type LiveExportStart = ({ started: true } & LiveExport) | { started: false; reason: string };

export interface LiveCopyResult {
  consistency: Consistency;
  /** How the copy was made (see LiveCopyOptions.method). */
  method: 'pull' | 'push';
  /** Why the copy is not filesystem-consistent although quiescing was asked for, or what went wrong around the freeze. */
  quiesceNote?: string;
}

export interface Stopped {
  stoppedBy: 'shutdown' | 'destroy' | 'none';
  /** Epoch ms: the start of the last look that still found the guest running (or the destroy call). */
  runningUntil: number;
  /** How long the guest was given to shut down by itself after the ACPI request (0: none was made). */
  shutdownWaitMs: number;
}

export interface PauseEvent {
  type: 'STOP' | 'RESUME';
  /** QEMU's own timestamp of the event, ms since the epoch. */
  at: number;
}

export type { WriteWatch } from './libvirt-writes.js';
import type { WriteWatch } from './libvirt-writes.js';

export interface PauseWatch {
  /** Ends the watch. pausedMs is the time the guest's vCPUs were stopped while it ran (an open pause counts up to now). */
  stop(): Promise<{ pausedMs: number; events: PauseEvent[] }>;
}
