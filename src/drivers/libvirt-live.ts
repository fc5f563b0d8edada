// Live copy of an instance's root disk with libvirt's backup API: `virsh backup-begin` makes QEMU
// start a backup block job whose point in time is the moment the job starts; guest writes to blocks
// not yet copied first copy the old data aside (copy-before-write), so the guest keeps running and
// the copy still ends up as that one instant. backup-begin emits no STOP/RESUME (the vCPUs never
// stop), and no checkpoint is created.
//
// A live snapshot streamed into Glance uses the pull job alone (startExport): the job is left
// running, its NBD export read by the upload (activities/live-export.ts), and ended once the image
// is verified (abortLeftover). A copy into a file (copy) takes one of two ways, chosen per copy
// (LiveCopyOptions.method):
// - pull (the default where it works, as Proxmox does): QEMU only keeps the old data of blocks the
//   guest overwrites in a small scratch image (fleecing) and serves the point-in-time view over NBD
//   on a unix socket; `qemu-img convert` in its own process reads it, with few requests in flight and
//   at a chosen rate, and writes the target. Then the job is ended.
// - push: QEMU's backup job copies the whole disk to the target itself, as fast as it can (libvirt
//   cannot start it with a rate). Measured on QEMU 7.2 under TCG: that copy fills QEMU's I/O thread
//   pool and main loop, and the guest's writes wait behind it (stalls of 0.3-1 s, write rate
//   0.25-0.55 x idle); pull kept 0.6-0.9 x. Push remains for hosts where pull cannot start (a
//   socket path too long, QEMU unable to create the socket) and for root disks served by an
//   iothread (QEMU 7.2 aborts when a pull copy's NBD client of such a disk disconnects).
//
// Optional quiesce: the guest agent freezes the guest's filesystems just before the job starts and
// thaws them as soon as it has started (the point in time is already fixed then), so the guest's
// writes are blocked for about the time backup-begin takes (tens of ms), bounded by a watchdog.

import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmsnapError } from '../shared/errors.js';
import type {
  LiveCopyMethod,
  LiveCopyOptions,
  LiveCopyResult,
  LiveCopySupport,
  LiveExportOptions,
  LiveExportStart,
  PowerState,
  QuiesceMode,
} from './hypervisor.js';
import { decodeEntities, domainDisks, domainPlatform, encodeEntities, firstText, type DomainDisk } from './libvirt-xml.js';
import { qemuUser, removeRegularFile } from './files.js';
import { AbortError, convert } from './qemu-img.js';

/** Runs `virsh -c URI args...` and returns stdout; failures are VmsnapErrors (see LibvirtHypervisor). */
export type VirshRunner = (args: string[], id?: string, timeoutMs?: number) => Promise<string>;

const POLL_MS = 250;
// Agent calls: libvirt has its own agent timeout, but a hung libvirtd must not hold us either.
const FREEZE_TIMEOUT_MS = 5_000;
const THAW_TIMEOUT_MS = 10_000;
const THAW_ATTEMPTS = 3;
// The guest never stays frozen longer than this, whatever hangs: the watchdog thaws it.
const FROZEN_MAX_MS = 5_000;
// After domjobabort QEMU stops the job within milliseconds; this only bounds a stuck libvirtd.
const ABORT_WAIT_MS = 30_000;
const ABORT_POLL_MS = 20;

// virDomainJobType and virDomainJobOperation values in `domjobinfo --rawstats`.
const JOB = { none: 0, bounded: 1, unbounded: 2, completed: 3, failed: 4, cancelled: 5 } as const;
const OP_BACKUP = 9;

const FORMATS = new Set(['qcow2', 'raw']);
const METHODS = new Set(['auto', 'pull', 'push']);
// sun_path holds 108 bytes with its terminating NUL.
const MAX_SOCKET_PATH = 107;
// Requests qemu-img keeps in flight against QEMU's NBD server: each is one more read the guest's own
// requests may queue behind in QEMU's thread pool. Two keep the copy near disk speed here.
const PULL_PARALLEL = 2;
const QUIESCE_MODES = new Set<QuiesceMode>(['never', 'try', 'require']);

/** Why the guest's filesystems cannot be frozen before even asking its agent, if they cannot. */
function unquiescable(state: PowerState, xml: string): string | undefined {
  if (state === 'paused') return 'the instance is paused, and the guest agent only answers a running guest';
  if (!GUEST_AGENT_RE.test(xml)) return 'the QEMU guest agent is not configured (the instance has no guest agent channel)';
  return undefined;
}
// The guest agent's channel in the domain XML: without it there is nothing to freeze, and asking costs a call.
const GUEST_AGENT_RE = /name=['"]org\.qemu\.guest_agent\.0['"]/;

interface JobStats {
  type: number;
  operation?: number;
  total?: number;
  processed?: number;
  errmsg?: string;
}

/** Parses `virsh domjobinfo --rawstats`: "Job type: N" then "name: value" lines. */
function parseJobStats(out: string): JobStats {
  const stats: JobStats = { type: JOB.none };
  for (const line of out.split('\n')) {
    const m = /^\s*([\w ]+?):\s*(.*?)\s*$/.exec(line);
    if (!m?.[1]) continue;
    const [key, value = ''] = [m[1], m[2]];
    if (key === 'Job type') stats.type = Number(value);
    else if (key === 'operation') stats.operation = Number(value);
    else if (key === 'disk_total') stats.total = Number(value);
    else if (key === 'disk_processed') stats.processed = Number(value);
    else if (key === 'errmsg') stats.errmsg = value;
  }
  return stats;
}

/** libvirt's own words from a mapped virsh failure (without our "virsh X failed:" prefix). */
function libvirtSaid(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.replace(/^instance \S+: virsh \S+: /, '').replace(/^virsh \S+ failed: /, '');
}

function rootOf(disks: DomainDisk[]): DomainDisk | undefined {
  // Same rule as rootDisk(): the first device='disk'.
  return disks.find((d) => d.device === 'disk');
}

function abortError(signal: AbortSignal): AbortError {
  return new AbortError('live copy aborted', { cause: signal.reason });
}

/**
 * Who QEMU runs as, to hand it the directory its NBD socket goes in: the owner of the domain's
 * QEMU process (libvirt's pid file), else the user Debian's or Fedora's libvirt uses.
 */
async function qemuOwner(domainName: string | undefined): Promise<{ uid: number; gid: number } | undefined> {
  const pid = domainName ? (await fs.readFile(`/run/libvirt/qemu/${domainName}.pid`, 'utf8').catch(() => '')).trim() : '';
  if (/^\d+$/.test(pid)) {
    const st = await fs.stat(`/proc/${pid}`).catch(() => undefined);
    if (st) return { uid: st.uid, gid: st.gid };
  }
  return qemuUser();
}

/**
 * The guest agent freeze/thaw pair with its watchdog. thaw() is idempotent and never throws: it
 * says what went wrong, and callers put that into the result's note.
 */
class Quiescer {
  private frozen = false;
  private thawing: Promise<string | undefined> | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  /** Set when the watchdog had to thaw before the job started. */
  thawedByWatchdog = false;

  constructor(
    private readonly run: VirshRunner,
    private readonly id: string,
  ) {}

  /** Returns undefined when frozen, else libvirt's reason. */
  async freeze(): Promise<string | undefined> {
    try {
      await this.run(['domfsfreeze', this.id], this.id, FREEZE_TIMEOUT_MS);
    } catch (e) {
      // A freeze that timed out on our side may still land in the guest later: thaw to be sure.
      this.frozen = true;
      await this.thaw();
      return libvirtSaid(e);
    }
    this.frozen = true;
    this.watchdog = setTimeout(() => {
      this.thawedByWatchdog = true;
      void this.thaw();
    }, FROZEN_MAX_MS);
    return undefined;
  }

  /** Thaws if a freeze was attempted; undefined on success, else why it failed. */
  thaw(): Promise<string | undefined> {
    clearTimeout(this.watchdog);
    if (!this.frozen) return Promise.resolve(undefined);
    this.thawing ??= this.thawWithRetries();
    return this.thawing;
  }

  private async thawWithRetries(): Promise<string | undefined> {
    let why = '';
    for (let attempt = 1; attempt <= THAW_ATTEMPTS; attempt++) {
      try {
        await this.run(['domfsthaw', this.id], this.id, THAW_TIMEOUT_MS);
        return undefined;
      } catch (e) {
        why = libvirtSaid(e);
        // Nothing can be frozen without an agent or without a running guest.
        if (/not configured|not running/i.test(why)) return undefined;
      }
      if (attempt < THAW_ATTEMPTS) await sleep(200 * attempt);
    }
    return why;
  }
}

export class LiveCopier {
  constructor(
    private readonly run: VirshRunner,
    private readonly state: (id: string) => Promise<PowerState>,
  ) {}

  async support(id: string): Promise<LiveCopySupport> {
    const xml = await this.run(['dumpxml', id], id);
    const state = await this.state(id);
    if (state !== 'running' && state !== 'paused') {
      return {
        supported: false,
        reason: `the instance is ${state === 'shutdown' ? 'shut off' : state}: a live copy needs its QEMU running; take a cold copy`,
      };
    }
    const root = rootOf(domainDisks(xml));
    if (!root) return { supported: false, reason: 'the instance has no disk device' };
    if (!root.dev) return { supported: false, reason: 'the root disk has no target device name' };
    if (root.type !== 'file' && root.type !== 'block') {
      return { supported: false, reason: `the root disk is of type '${root.type}'; live copy handles local file and block disks` };
    }
    // libvirt >= 7.2 says in domcapabilities whether the backup API works with this QEMU (it needs -blockdev).
    const p = domainPlatform(xml);
    const args = ['domcapabilities'];
    if (p.virtType) args.push('--virttype', p.virtType);
    if (p.emulator) args.push('--emulatorbin', p.emulator);
    if (p.arch) args.push('--arch', p.arch);
    if (p.machine) args.push('--machine', p.machine);
    let caps: string;
    try {
      caps = await this.run(args);
    } catch (e) {
      return { supported: false, reason: `cannot read libvirt's domain capabilities: ${libvirtSaid(e)}` };
    }
    if (!/<backup\s+supported=['"]yes['"]/.test(caps)) {
      const version = await this.run(['version', '--daemon']).catch(() => '');
      const daemon = /Running against daemon: (\S+)/.exec(version)?.[1] ?? 'unknown';
      const qemu = /Running hypervisor: (.+)/.exec(version)?.[1]?.trim() ?? 'unknown';
      return {
        supported: false,
        reason: `libvirt ${daemon} with ${qemu} does not offer the backup API (needs libvirt >= 7.2 and a QEMU that libvirt drives with -blockdev)`,
      };
    }
    return { supported: true };
  }

  async copy(id: string, opts: LiveCopyOptions): Promise<LiveCopyResult> {
    const quiesce = checkQuiesce(opts.quiesce);
    if (!FORMATS.has(opts.targetFormat)) {
      throw new VmsnapError('InvalidInput', `targetFormat must be qcow2 or raw, got ${String(opts.targetFormat)}`);
    }
    if (typeof opts.target !== 'string' || !path.isAbsolute(opts.target)) {
      throw new VmsnapError('InvalidInput', `target must be an absolute path, got ${JSON.stringify(String(opts.target))}`);
    }
    const bw = opts.bandwidthMiBps;
    if (bw !== undefined && (!Number.isInteger(bw) || bw <= 0)) {
      throw new VmsnapError('InvalidInput', `bandwidthMiBps must be a positive integer, got ${String(bw)}`);
    }
    const method = checkMethod(opts.method);
    const target = path.normalize(opts.target);
    const signal = opts.signal;
    // The scratch image sits beside the target (QEMU must reach that directory for a push target
    // too), the socket in a directory of QEMU's own beside it: both QEMU and we see it there,
    // whatever private /tmp either has, and only QEMU and root can connect.
    const tuning = opts.pull ?? {};
    const pull = {
      socketDir: `${target}.nbd`,
      socket: path.join(`${target}.nbd`, 'sock'),
      scratch: tuning.scratchDir ? path.join(tuning.scratchDir, `${path.basename(target)}.${process.pid}.scratch`) : `${target}.scratch`,
    };
    let usePull = method !== 'push';
    if (usePull && Buffer.byteLength(pull.socket) > MAX_SOCKET_PATH) {
      if (method === 'pull')
        throw new VmsnapError('InvalidInput', `live copy target ${target}: its NBD socket path would be longer than ${MAX_SOCKET_PATH} bytes`);
      usePull = false;
    }
    if (signal?.aborted) throw abortError(signal);

    const { xml, state, disks, root } = await this.domainToCopy(id);
    const notes: string[] = [];
    if (usePull && root.iothread !== undefined) {
      if (method === 'pull') throw iothreadRefusal(id, 'copy');
      usePull = false;
      notes.push(`copied by QEMU itself (push): ${IOTHREAD_REASON}`);
    }
    await this.clearOwnLeftover(id, [target, `${target}.scratch`]);
    await this.prepareTarget(target);

    const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'vmsnap-backup-'));
    const xmlFile = path.join(tmp, 'backup.xml');
    if (usePull) await this.socketDirForQemu(pull.socketDir, xml);
    const writeXml = () =>
      fs.writeFile(xmlFile, usePull ? pullXml(disks, new Map([[root.dev, pull.scratch]]), pull.socket) : backupXml(disks, root, target, opts.targetFormat), {
        mode: 0o600,
      });
    await writeXml();

    const quiescer = new Quiescer(this.run, id);
    const job = { started: false };
    try {
      const begin = async () => {
        try {
          await this.begin(id, xmlFile, usePull ? pull.scratch : target, !usePull);
        } catch (e) {
          // Pull cannot start here (no NBD, QEMU cannot create the socket): the old way still works.
          if (!usePull || method === 'pull' || !pullUnavailable(e)) throw e;
          await Promise.all([removeRegularFile(pull.scratch), fs.rm(pull.socketDir, { recursive: true, force: true })]);
          notes.push(`copied by QEMU itself (push): pull mode did not start: ${libvirtSaid(e)}`);
          usePull = false;
          await writeXml();
          await this.begin(id, xmlFile, target, true);
        }
        job.started = true;
      };
      const frozen = await this.pointInTime(id, { quiesce, state, xml, quiescer, notes, signal }, begin);

      if (usePull) {
        await this.pullCopy(id, root.dev!, pull.socket, target, opts);
      } else {
        if (bw !== undefined) {
          // The job may already be over for a small disk: nothing to limit then.
          await this.run(['blockjob', id, root.dev!, '--bandwidth', String(bw)], id).catch(() => undefined);
        }
        await this.waitForJob(id, opts);
      }
      // Not fsynced: a temp file, uploaded and deleted; the upload refuses one from before a host restart.
      const result: LiveCopyResult = {
        consistency: frozen ? 'filesystem-consistent' : 'crash-consistent',
        method: usePull ? 'pull' : 'push',
      };
      if (notes.length) result.quiesceNote = notes.join('; ');
      return result;
    } catch (err) {
      if (job.started) await this.abortJob(id).catch(() => undefined);
      await removeRegularFile(target);
      throw err;
    } finally {
      // Whatever happened: never leave the guest frozen.
      await quiescer.thaw();
      await fs.rm(tmp, { recursive: true, force: true });
      // libvirt removes the scratch image it made when the job ends; a killed libvirtd may not.
      await Promise.all([removeRegularFile(pull.scratch), fs.rm(pull.socketDir, { recursive: true, force: true })]);
    }
  }

  /**
   * Starts a pull backup job of the root disk and leaves it running: its point in time is served
   * over NBD on a unix socket in `dir` until the job is ended (abortLeftover), and QEMU keeps the
   * old data of the blocks the guest overwrites meanwhile in a scratch image there. Where a pull job
   * cannot be used (push asked for, an iothread, a socket path too long, pull refused by QEMU), it
   * starts nothing and says why, unless pull was asked for explicitly (then it fails).
   */
  async startExport(id: string, opts: LiveExportOptions): Promise<LiveExportStart> {
    const quiesce = checkQuiesce(opts.quiesce);
    const method = checkMethod(opts.method);
    if (typeof opts.dir !== 'string' || !path.isAbsolute(opts.dir)) {
      throw new VmsnapError('InvalidInput', `export dir must be an absolute path, got ${JSON.stringify(String(opts.dir))}`);
    }
    if (method === 'push') return { started: false, reason: 'VMSNAP_LIVE_METHOD is push: QEMU copies the disk itself' };
    const paths = exportPaths(path.normalize(opts.dir));
    if (Buffer.byteLength(paths.socket) > MAX_SOCKET_PATH) {
      const why = `its NBD socket path ${paths.socket} would be longer than ${MAX_SOCKET_PATH} bytes`;
      if (method === 'pull') throw new VmsnapError('InvalidInput', `live export of instance ${id}: ${why}`);
      return { started: false, reason: why };
    }
    const signal = opts.signal;
    if (signal?.aborted) throw abortError(signal);

    const { xml, state, disks, root } = await this.domainToCopy(id);
    const data = dataDisksOf(id, disks, opts.dataDisks ?? []);
    if ([root, ...data].some((d) => d.iothread !== undefined)) {
      if (method === 'pull') throw iothreadRefusal(id, 'export');
      return { started: false, reason: IOTHREAD_REASON };
    }
    // Each disk's overlay beside the root disk's, named after it (abortLeftover removes every *.scratch).
    const scratches = new Map([[root.dev, paths.scratch], ...data.map((d): [string, string] => [d.dev, dataScratch(paths, d.dev)])]);
    await this.clearOwnLeftover(id, [...scratches.values()]);
    await Promise.all([...scratches.values()].map(removeRegularFile));
    const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'vmsnap-backup-'));
    const xmlFile = path.join(tmp, 'backup.xml');
    await this.socketDirForQemu(paths.socketDir, xml);
    await fs.writeFile(xmlFile, pullXml(disks, scratches, paths.socket), { mode: 0o600 });

    const quiescer = new Quiescer(this.run, id);
    const notes: string[] = [];
    const job = { started: false, refused: '' };
    try {
      const begin = async () => {
        try {
          await this.begin(id, xmlFile, paths.scratch, false);
          job.started = true;
        } catch (e) {
          if (method === 'pull' || !pullUnavailable(e)) throw e;
          job.refused = `pull mode did not start: ${libvirtSaid(e)}`;
        }
      };
      const frozen = await this.pointInTime(id, { quiesce, state, xml, quiescer, notes, signal }, begin);
      if (!job.started) {
        await Promise.all([...scratches.values()].map(removeRegularFile));
        await this.cleanExport(paths);
        return { started: false, reason: job.refused };
      }
      return {
        started: true,
        socket: paths.socket,
        exportName: root.dev!,
        scratch: paths.scratch,
        consistency: frozen ? 'filesystem-consistent' : 'crash-consistent',
        ...(notes.length ? { quiesceNote: notes.join('; ') } : {}),
        ...(data.length ? { dataExports: data.map((d) => ({ dev: d.dev, exportName: d.dev, scratch: scratches.get(d.dev)! })) } : {}),
      };
    } catch (err) {
      if (job.started) await this.abortJob(id).catch(() => undefined);
      await Promise.all([...scratches.values()].map(removeRegularFile));
      await this.cleanExport(paths);
      throw err;
    } finally {
      await quiescer.thaw();
      await fs.rm(tmp, { recursive: true, force: true });
    }
  }

  /** The instance's current libvirt job; undefined when the instance is gone (it has none). */
  private async jobOfInstance(id: string): Promise<JobStats | undefined> {
    try {
      return parseJobStats(await this.run(['domjobinfo', id, '--rawstats'], id));
    } catch (e) {
      if (e instanceof VmsnapError && e.code === 'InstanceNotFound') return undefined;
      throw e;
    }
  }

  /** Whether the pull job that serves `socket` still runs on the instance (a gone instance has none). */
  async exportRunning(id: string, socket: string): Promise<boolean> {
    const job = await this.jobOfInstance(id);
    if (!job) return false;
    if (!((job.type === JOB.bounded || job.type === JOB.unbounded) && job.operation === OP_BACKUP)) return false;
    const xml = await this.run(['backup-dumpxml', id], id).catch(() => '');
    const ours = encodeEntities(socket);
    return xml.includes(`socket='${ours}'`) || xml.includes(`socket="${ours}"`);
  }

  /** The domain of a live copy or export, checked: this UUID, running or paused, with a root disk. */
  private async domainToCopy(id: string): Promise<{ xml: string; state: PowerState; disks: DomainDisk[]; root: DomainDisk }> {
    const xml = await this.run(['dumpxml', id], id);
    // virsh falls back to a lookup by name; a domain *named* like this UUID is not this instance.
    if (firstText(xml, 'uuid')?.toLowerCase() !== id.toLowerCase()) {
      throw new VmsnapError('InstanceNotFound', `instance ${id} does not exist on this host`);
    }
    const state = await this.state(id);
    if (state !== 'running' && state !== 'paused') {
      throw new VmsnapError('InstanceInvalidState', `instance ${id} is ${state}: a live copy needs it running`, { state });
    }
    const disks = domainDisks(xml);
    const root = rootOf(disks);
    if (!root?.dev) throw new VmsnapError('DiskNotFound', `instance ${id} has no disk device to copy`);
    return { xml, state, disks, root };
  }

  /** The NBD socket's directory, fresh and QEMU's own (0700): only QEMU and root can connect. */
  private async socketDirForQemu(socketDir: string, xml: string): Promise<void> {
    await fs.rm(socketDir, { recursive: true, force: true });
    await fs.mkdir(socketDir, { mode: 0o700 });
    const owner = await qemuOwner(firstText(xml, 'name'));
    // Not root: QEMU may still be us (qemu:///session); if not, pull fails to start (and push is used, for a copy).
    if (owner) await fs.chown(socketDir, owner.uid, owner.gid).catch(() => undefined);
  }

  private async cleanExport(paths: ExportPaths): Promise<void> {
    await Promise.all([removeRegularFile(paths.scratch), fs.rm(paths.socketDir, { recursive: true, force: true })]);
  }

  /**
   * The point in time: the guest's filesystems frozen if asked and able, the job begun (`begin`),
   * and thawed at once. Returns whether the point in time is filesystem-consistent; `notes` get why
   * not. The caller thaws again in its finally whatever happens (thaw is idempotent).
   */
  private async pointInTime(
    id: string,
    ctx: { quiesce: QuiesceMode; state: PowerState; xml: string; quiescer: Quiescer; notes: string[]; signal?: AbortSignal },
    begin: () => Promise<void>,
  ): Promise<boolean> {
    const { quiesce, quiescer, notes, signal } = ctx;
    let frozen = false;
    if (quiesce !== 'never') {
      const why = unquiescable(ctx.state, ctx.xml) ?? (await quiescer.freeze());
      if (why === undefined) frozen = true;
      else if (quiesce === 'require') {
        throw new VmsnapError('InstanceInvalidState', `instance ${id}: cannot quiesce the guest (quiesce=require): ${why}`, { quiesce: true });
      } else notes.push(`not quiesced: ${why}`);
    }
    if (signal?.aborted) throw abortError(signal);
    await begin();
    if (!frozen) return false;
    // The point in time is fixed once the job exists: let the guest write again at once.
    const watchdogFired = quiescer.thawedByWatchdog;
    const thawFailed = await quiescer.thaw();
    if (watchdogFired) {
      frozen = false;
      const why = `the guest was thawed after ${FROZEN_MAX_MS / 1000} s, before the copy started (backup-begin was slow)`;
      if (quiesce === 'require') {
        throw new VmsnapError('InstanceInvalidState', `instance ${id}: cannot quiesce the guest (quiesce=require): ${why}`, { quiesce: true });
      }
      notes.push(`not quiesced: ${why}`);
    }
    if (thawFailed) notes.push(`THAW FAILED, the guest's filesystems may still be frozen: ${thawFailed}`);
    return frozen;
  }

  /**
   * Reads the job's point-in-time view over NBD into the target with qemu-img, then ends the job
   * (a pull job runs until it is aborted). The job must still be running when the read is done:
   * one that failed meanwhile (scratch image full) may have served blocks the guest had changed.
   */
  private async pullCopy(id: string, dev: string, socket: string, target: string, opts: LiveCopyOptions): Promise<void> {
    const capacity = Number(/Capacity:\s+(\d+)/.exec(await this.run(['domblkinfo', id, dev], id))?.[1] ?? 0);
    const report = (percent: number) => {
      try {
        opts.onProgress?.(percent, Math.round((capacity * percent) / 100), capacity);
      } catch {
        // A broken progress callback must not break the copy.
      }
    };
    report(0);
    // The guest's data: private from the first byte (qemu-img would create it 0644 under umask 022).
    await fs.writeFile(target, '', { mode: 0o600, flag: 'wx' });
    await convert({
      source: dev,
      nbdSocket: socket,
      sourceFormat: 'raw',
      target,
      targetFormat: opts.targetFormat,
      parallel: opts.pull?.parallel ?? PULL_PARALLEL,
      ...(opts.pull?.lowPriority ? { lowPriority: true } : {}),
      ...(opts.pull?.targetCache ? { targetCache: opts.pull.targetCache } : {}),
      ...(opts.bandwidthMiBps ? { rateLimitMiBps: opts.bandwidthMiBps } : {}),
      onProgress: report,
      ...(opts.signal ? { signal: opts.signal } : {}),
      fsync: false, // a temp file: the upload refuses one from before a host restart
    });
    const job = parseJobStats(await this.run(['domjobinfo', id, '--rawstats'], id));
    if (!((job.type === JOB.bounded || job.type === JOB.unbounded) && job.operation === OP_BACKUP)) {
      const done = parseJobStats(await this.run(['domjobinfo', id, '--completed', '--rawstats'], id).catch(() => ''));
      throw new VmsnapError(
        'HypervisorError',
        `live copy of instance ${id}: the backup job ended before its data was read (${done.errmsg ?? 'no message'}); the copy is not used`,
        { errmsg: done.errmsg },
      );
    }
    await this.abortJob(id);
    report(100);
  }

  /** libvirt refuses an existing target (even an empty one): replace a regular file, refuse anything else. */
  private async prepareTarget(target: string): Promise<void> {
    const dir = path.dirname(target);
    const dst = await fs.stat(dir).catch(() => undefined);
    if (!dst?.isDirectory()) throw new VmsnapError('InvalidInput', `live copy target directory ${dir} does not exist`);
    const st = await fs.lstat(target).catch(() => undefined);
    if (!st) return;
    if (!st.isFile()) throw new VmsnapError('InvalidInput', `live copy target ${target} exists and is not a regular file`);
    await fs.rm(target, { force: true });
  }

  /**
   * Ends the backup job of instance id that copies into dir, if there is one, and removes its
   * scratch image and NBD socket: what a live copy leaves when its worker died and its snapshot was
   * terminated (a pull job never ends by itself, and no retry takes it over). Returns whether there
   * was such a job. Another job, or one copying elsewhere, is left alone.
   */
  async abortLeftover(id: string, dir: string): Promise<boolean> {
    const job = await this.jobOfInstance(id);
    if (!job) return false;
    if (job.type === JOB.none || job.operation !== OP_BACKUP) return false;
    const xml = await this.run(['backup-dumpxml', id], id);
    const prefix = encodeEntities(path.join(path.resolve(dir), '/'));
    const files = [...xml.matchAll(/\b(?:file|socket)=(?:'([^']*)'|"([^"]*)")/g)].map((m) => m[1] ?? m[2] ?? '');
    if (!files.some((f) => f.startsWith(prefix))) return false;
    await this.abortJob(id);
    for (const f of files.filter((f) => f.startsWith(prefix)).map(decodeEntities)) {
      if (/\.scratch$/.test(f)) await removeRegularFile(f);
      else if (path.basename(f) === 'sock') await fs.rm(path.dirname(f), { recursive: true, force: true });
    }
    return true;
  }

  /**
   * Another job on the domain makes backup-begin wait 30 s for libvirt's job lock and fail. A
   * backup job writing to one of our own `files` (target, scratch image) is what an earlier attempt
   * of this very copy or export left (e.g. the worker died): that one is aborted and the files
   * removed; any other job is reported.
   */
  private async clearOwnLeftover(id: string, files: string[]): Promise<void> {
    const job = parseJobStats(await this.run(['domjobinfo', id, '--rawstats'], id));
    if (job.type === JOB.none) return;
    let xml = '';
    if (job.operation === OP_BACKUP) {
      xml = await this.run(['backup-dumpxml', id], id).catch(() => '');
      const ours = files.map(encodeEntities);
      if (ours.some((f) => xml.includes(`file='${f}'`) || xml.includes(`file="${f}"`))) {
        await this.abortJob(id);
        await Promise.all(files.map(removeRegularFile));
        return;
      }
    }
    // A pull job never ends by itself: one whose copy died with its worker (and whose snapshot was
    // terminated, so no retry takes it over) stays until the reconciler (abortLeftover) or someone aborts it.
    const pullJob = /mode=['"]pull['"]/.test(xml);
    throw new VmsnapError(
      'HypervisorError',
      pullJob
        ? `instance ${id} already has a pull-mode backup job (an NBD export); if no copy of this instance is running, end it with \`virsh domjobabort ${id}\``
        : `instance ${id} already has a ${job.operation === OP_BACKUP ? 'backup' : `libvirt (operation ${job.operation ?? '?'})`} job running; try ` +
            `again when it has finished`,
      { operation: job.operation },
    );
  }

  private async begin(id: string, xmlFile: string, target: string, push: boolean): Promise<void> {
    // The completion record of an earlier job must not be mistaken for ours (a push job's end is read from it).
    if (push) await this.run(['domjobinfo', id, '--completed', '--rawstats'], id).catch(() => undefined);
    try {
      await this.run(['backup-begin', id, xmlFile], id);
    } catch (e) {
      const said = libvirtSaid(e);
      // A backup-begin that timed out on our side may still have started the job.
      if (e instanceof VmsnapError && /no answer after/.test(e.message)) await this.abortJob(id).catch(() => undefined);
      if (/Permission denied/i.test(said)) {
        throw new VmsnapError(
          'ConfigError',
          `QEMU cannot open the live copy target ${target}: ${said}. QEMU runs as an unprivileged user (libvirt-qemu on Debian): ` +
            `the target's directory and its parents must be searchable by it (e.g. mode 0711)`,
          { target },
        );
      }
      if (/No space left/i.test(said)) throw new VmsnapError('NoSpace', `live copy of instance ${id}: ${said}`, { target });
      if (/exists/i.test(said)) throw new VmsnapError('InvalidInput', `live copy target ${target}: ${said}`, { target });
      if (/state change lock/i.test(said)) {
        throw new VmsnapError('HypervisorError', `instance ${id} is busy with another libvirt job: ${said}`);
      }
      throw e;
    }
  }

  /** Polls the job until it is gone, reporting progress; then its completion record says how it ended. */
  private async waitForJob(id: string, opts: LiveCopyOptions): Promise<void> {
    const report = (done: number, total: number) => {
      try {
        opts.onProgress?.(total > 0 ? Math.min(100, (done / total) * 100) : 0, done, total);
      } catch {
        // A broken progress callback must not break the copy.
      }
    };
    // Often at first, so that a small disk's job is not waited on for a whole interval.
    for (let pollMs = 20; ; pollMs = Math.min(POLL_MS, pollMs * 2)) {
      if (opts.signal?.aborted) throw abortError(opts.signal);
      const job = parseJobStats(await this.run(['domjobinfo', id, '--rawstats'], id));
      const running = (job.type === JOB.bounded || job.type === JOB.unbounded) && job.operation === OP_BACKUP;
      if (!running) break;
      report(job.processed ?? 0, job.total ?? 0);
      await sleep(pollMs, undefined, opts.signal ? { signal: opts.signal } : undefined).catch(() => undefined);
    }
    // --keep-completed leaves the record for an operator to look at too.
    const done = parseJobStats(await this.run(['domjobinfo', id, '--completed', '--rawstats', '--keep-completed'], id));
    if (done.type === JOB.completed && done.operation === OP_BACKUP) {
      report(done.total ?? 0, done.total ?? 0);
      return;
    }
    if (done.operation === OP_BACKUP && (done.type === JOB.failed || done.type === JOB.cancelled)) {
      const said = done.errmsg ?? 'no message';
      if (/No space left/i.test(said)) throw new VmsnapError('NoSpace', `live copy of instance ${id} failed: ${said}`);
      const how = done.type === JOB.cancelled ? 'was cancelled (not by vmsnap)' : 'failed';
      throw new VmsnapError('HypervisorError', `live copy of instance ${id} ${how}: ${said}`, { errmsg: said });
    }
    throw new VmsnapError('HypervisorError', `live copy of instance ${id}: the backup job ended without a completion record (libvirtd restarted?)`, {
      jobType: done.type,
      operation: done.operation,
    });
  }

  /** domjobabort, then wait until libvirt has no job on the domain any more. */
  private async abortJob(id: string): Promise<void> {
    try {
      await this.run(['domjobabort', id], id);
    } catch (e) {
      // "no job is active on the domain": it ended meanwhile; a dead domain has no job either.
      if (!/no job is active|not running/i.test(libvirtSaid(e))) throw e;
    }
    const deadline = Date.now() + ABORT_WAIT_MS;
    for (;;) {
      const job = parseJobStats(await this.run(['domjobinfo', id, '--rawstats'], id).catch(() => ''));
      if (job.type === JOB.none) return;
      if (Date.now() > deadline) {
        throw new VmsnapError('HypervisorError', `instance ${id}: the backup job is still there ${ABORT_WAIT_MS / 1000} s after domjobabort`);
      }
      await sleep(ABORT_POLL_MS);
    }
  }
}

function checkQuiesce(quiesce: QuiesceMode | undefined): QuiesceMode {
  const q = quiesce ?? 'try';
  if (!QUIESCE_MODES.has(q)) throw new VmsnapError('InvalidInput', `quiesce must be never, try or require, got ${String(q)}`);
  return q;
}

function checkMethod(method: LiveCopyMethod | undefined): LiveCopyMethod {
  const m = method ?? 'auto';
  if (!METHODS.has(m)) throw new VmsnapError('InvalidInput', `method must be auto, pull or push, got ${String(m)}`);
  return m;
}

// Measured with QEMU 7.2: when the NBD client of a pull job on a disk served by an iothread
// disconnects, QEMU aborts (blockdev-nbd.c asserts it runs in the main thread) and the guest dies.
// Push works there. Newer QEMU is not checked here, so none is trusted with it.
const IOTHREAD_REASON = 'the root disk is served by an iothread, where ending a pull copy makes QEMU abort';

function iothreadRefusal(id: string, what: 'copy' | 'export'): VmsnapError {
  return new VmsnapError(
    'InvalidInput',
    `instance ${id}: its root disk is served by an iothread, and ending a pull ${what} of such a disk makes QEMU abort (the guest would die); ` +
      `copy it by push (VMSNAP_LIVE_METHOD=push or auto)`,
  );
}

interface ExportPaths {
  socketDir: string;
  socket: string;
  scratch: string;
}

/** Where an export's socket and scratch image go in its dir (abortLeftover finds them by these names). */
function exportPaths(dir: string): ExportPaths {
  const socketDir = path.join(dir, 'export.nbd');
  return { socketDir, socket: path.join(socketDir, 'sock'), scratch: path.join(dir, 'export.scratch') };
}

/** libvirt's reason why a pull-mode job could not start that a push-mode job does not share. */
function pullUnavailable(e: unknown): boolean {
  return /nbd|socket|pull|scratch|unix/i.test(libvirtSaid(e)) || (e instanceof VmsnapError && e.code === 'ConfigError');
}

/**
 * Pull-mode backup of the disks in `scratches` (target device → its scratch image), served over NBD
 * on a unix socket (each disk an export named after it), the old data of overwritten blocks kept in
 * each disk's qcow2 scratch image.
 */
function pullXml(disks: DomainDisk[], scratches: Map<string, string>, socket: string): string {
  const server = `  <server transport='unix' socket='${encodeEntities(socket)}'/>\n`;
  const files = new Map([...scratches].map(([dev, scratch]): [string, string] => [dev, `<scratch file='${encodeEntities(scratch)}'/>`]));
  return domainBackupXml('pull', server, disks, files, 'qcow2');
}

/** Push-mode backup of the root disk only, written by QEMU to `target`. */
function backupXml(disks: DomainDisk[], root: DomainDisk, target: string, format: 'qcow2' | 'raw'): string {
  return domainBackupXml('push', '', disks, new Map([[root.dev, `<target file='${encodeEntities(target)}'/>`]]), format);
}

/** A <domainbackup> of the disks in `files` (target device → its file element, driver type given); every other disk is listed with backup='no'. */
function domainBackupXml(mode: 'pull' | 'push', server: string, disks: DomainDisk[], files: Map<string, string>, driver: 'qcow2' | 'raw'): string {
  const x = encodeEntities;
  const lines = disks
    .filter((d) => d.dev)
    .map((d) => {
      const file = files.get(d.dev);
      return file
        ? `    <disk name='${x(d.dev)}' backup='yes' type='file'>\n      ${file}\n      <driver type='${driver}'/>\n    </disk>`
        : `    <disk name='${x(d.dev)}' backup='no'/>`;
    });
  return `<domainbackup mode='${mode}'>\n${server}  <disks>\n${lines.join('\n')}\n  </disks>\n</domainbackup>\n`;
}

/** The scratch image of a set's data disk, beside the root disk's. */
function dataScratch(paths: ExportPaths, dev: string): string {
  return path.join(path.dirname(paths.scratch), `export-${dev}.scratch`);
}

/** The named data disks of the domain, checked: local, writable disks it has now. */
function dataDisksOf(id: string, disks: DomainDisk[], devs: string[]): DomainDisk[] {
  return devs.map((dev) => {
    const disk = disks.find((d) => d.dev === dev && d.device === 'disk');
    if (!disk || (disk.type !== 'file' && disk.type !== 'block')) {
      throw new VmsnapError('DiskNotFound', `instance ${id}: disk ${dev} can no longer be exported (detached or changed since the snapshot began)`);
    }
    return disk;
  });
}
