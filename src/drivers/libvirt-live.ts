// Live copy of an instance's root disk with libvirt's backup API in push mode: `virsh backup-begin`
// makes QEMU start a backup block job whose point in time is the moment the job starts; guest writes
// to blocks not yet copied first copy the old data to the target (copy-before-write), so the guest
// keeps running and the target still ends up as that one instant. Measured on libvirt 9.0 / QEMU
// 7.2: backup-begin emits no STOP/RESUME (the vCPUs never stop), the qcow2 target is sparse, no
// checkpoint is created, and libvirt deletes a target it created when the job is aborted or fails.
//
// Optional quiesce: the guest agent freezes the guest's filesystems just before the job starts and
// thaws them as soon as it has started (the point in time is already fixed then), so the guest's
// writes are blocked for about the time backup-begin takes (tens of ms), bounded by a watchdog.

import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmsnapError } from '../shared/errors.js';
import type { LiveCopyOptions, LiveCopyResult, LiveCopySupport, PowerState, QuiesceMode } from './hypervisor.js';
import { domainDisks, domainPlatform, encodeEntities, type DomainDisk } from './libvirt-xml.js';
import { fsyncFileAndEntry, removeRegularFile } from './files.js';
import { AbortError } from './qemu-img.js';

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

// virDomainJobType and virDomainJobOperation values in `domjobinfo --rawstats`.
const JOB = { none: 0, bounded: 1, unbounded: 2, completed: 3, failed: 4, cancelled: 5 } as const;
const OP_BACKUP = 9;

const FORMATS = new Set(['qcow2', 'raw']);
const QUIESCE_MODES = new Set<QuiesceMode>(['never', 'try', 'require']);

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
    const quiesce = opts.quiesce ?? 'try';
    if (!QUIESCE_MODES.has(quiesce)) throw new VmsnapError('InvalidInput', `quiesce must be never, try or require, got ${String(quiesce)}`);
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
    const target = path.normalize(opts.target);
    const signal = opts.signal;
    if (signal?.aborted) throw abortError(signal);

    const xml = await this.run(['dumpxml', id], id);
    const state = await this.state(id);
    if (state !== 'running' && state !== 'paused') {
      throw new VmsnapError('InstanceInvalidState', `instance ${id} is ${state}: a live copy needs it running`, { state });
    }
    const disks = domainDisks(xml);
    const root = rootOf(disks);
    if (!root?.dev) throw new VmsnapError('DiskNotFound', `instance ${id} has no disk device to copy`);
    await this.clearOwnLeftover(id, target);
    await this.prepareTarget(target);

    const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'vmsnap-backup-'));
    const xmlFile = path.join(tmp, 'backup.xml');
    await fs.writeFile(xmlFile, backupXml(disks, root, target, opts.targetFormat), { mode: 0o600 });

    const notes: string[] = [];
    const quiescer = new Quiescer(this.run, id);
    let frozen = false;
    let jobStarted = false;
    try {
      if (quiesce !== 'never') {
        const why = state === 'paused' ? 'the instance is paused, and the guest agent only answers a running guest' : await quiescer.freeze();
        if (why === undefined) frozen = true;
        else if (quiesce === 'require') {
          throw new VmsnapError('InstanceInvalidState', `instance ${id}: cannot quiesce the guest (quiesce=require): ${why}`, {
            quiesce: true,
          });
        } else notes.push(`not quiesced: ${why}`);
      }
      if (signal?.aborted) throw abortError(signal);

      await this.begin(id, xmlFile, target);
      jobStarted = true;

      if (frozen) {
        // The point in time is fixed once the job exists: let the guest write again at once.
        const watchdogFired = quiescer.thawedByWatchdog;
        const thawFailed = await quiescer.thaw();
        if (watchdogFired) {
          frozen = false;
          const why = `the guest was thawed after ${FROZEN_MAX_MS / 1000} s, before the copy started (backup-begin was slow)`;
          if (quiesce === 'require') {
            throw new VmsnapError('InstanceInvalidState', `instance ${id}: cannot quiesce the guest (quiesce=require): ${why}`, {
              quiesce: true,
            });
          }
          notes.push(`not quiesced: ${why}`);
        }
        if (thawFailed) notes.push(`THAW FAILED, the guest's filesystems may still be frozen: ${thawFailed}`);
      }

      if (bw !== undefined) {
        // The job may already be over for a small disk: nothing to limit then.
        await this.run(['blockjob', id, root.dev, '--bandwidth', String(bw)], id).catch(() => undefined);
      }
      await this.waitForJob(id, opts);
      await fsyncFileAndEntry(target);
      const result: LiveCopyResult = { consistency: frozen ? 'filesystem-consistent' : 'crash-consistent' };
      if (notes.length) result.quiesceNote = notes.join('; ');
      return result;
    } catch (err) {
      if (jobStarted) await this.abortJob(id).catch(() => undefined);
      await removeRegularFile(target);
      throw err;
    } finally {
      // Whatever happened: never leave the guest frozen.
      await quiescer.thaw();
      await fs.rm(tmp, { recursive: true, force: true });
    }
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
   * Another job on the domain makes backup-begin wait 30 s for libvirt's job lock and fail. A
   * backup job writing to our own target is what an earlier attempt of this very copy left (e.g.
   * the worker died): that one is aborted; any other job is reported.
   */
  private async clearOwnLeftover(id: string, target: string): Promise<void> {
    const job = parseJobStats(await this.run(['domjobinfo', id, '--rawstats'], id));
    if (job.type === JOB.none) return;
    if (job.operation === OP_BACKUP) {
      const xml = await this.run(['backup-dumpxml', id], id).catch(() => '');
      if (xml.includes(`file='${encodeEntities(target)}'`) || xml.includes(`file="${encodeEntities(target)}"`)) {
        await this.abortJob(id);
        await removeRegularFile(target);
        return;
      }
    }
    throw new VmsnapError(
      'HypervisorError',
      `instance ${id} already has a ${job.operation === OP_BACKUP ? 'backup' : `libvirt (operation ${job.operation ?? '?'})`} job running; try again when it has finished`,
      { operation: job.operation },
    );
  }

  private async begin(id: string, xmlFile: string, target: string): Promise<void> {
    // The completion record of an earlier job must not be mistaken for ours.
    await this.run(['domjobinfo', id, '--completed', '--rawstats'], id).catch(() => undefined);
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
    for (;;) {
      if (opts.signal?.aborted) throw abortError(opts.signal);
      const job = parseJobStats(await this.run(['domjobinfo', id, '--rawstats'], id));
      const running = (job.type === JOB.bounded || job.type === JOB.unbounded) && job.operation === OP_BACKUP;
      if (!running) break;
      report(job.processed ?? 0, job.total ?? 0);
      await sleep(POLL_MS, undefined, opts.signal ? { signal: opts.signal } : undefined).catch(() => undefined);
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
    throw new VmsnapError(
      'HypervisorError',
      `live copy of instance ${id}: the backup job ended without a completion record (libvirtd restarted?)`,
      { jobType: done.type, operation: done.operation },
    );
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
      await sleep(100);
    }
  }
}

/** Push-mode backup of the root disk only; every other disk is listed with backup='no'. */
function backupXml(disks: DomainDisk[], root: DomainDisk, target: string, format: 'qcow2' | 'raw'): string {
  const x = encodeEntities;
  const lines = disks
    .filter((d) => d.dev)
    .map((d) =>
      d === root
        ? `    <disk name='${x(d.dev)}' backup='yes' type='file'>\n      <target file='${x(target)}'/>\n      <driver type='${format}'/>\n    </disk>`
        : `    <disk name='${x(d.dev)}' backup='no'/>`,
    );
  return `<domainbackup mode='push'>\n  <disks>\n${lines.join('\n')}\n  </disks>\n</domainbackup>\n`;
}
