// The test guest: a tiny real Linux VM (busybox initramfs, no rootfs) whose only job is to write
// an increasing counter to its disk. Tests snapshot its disk and check that the two copies of the
// counter agree, which proves the snapshot is one consistent point in time.
//
// On-disk format: one 512-byte sector "VMSNAP-COUNTER <n>\n" padded with NULs, written twice per
// step: record A at 1 MiB, then record B at (disk size - 1 MiB). Each write is fsynced before the
// next starts, so at any instant the disk holds A == B or A == B + 1. A torn snapshot (e.g. the two
// ends of the disk copied at different times) shows up as any other combination.
//
// A guest with data disks (dataDisks) writes the same value to every disk in one step: vda's A and
// B, then each data disk's A and B (same layout on each), so the records of a copy of all disks
// from one instant are no further apart than one step (checkOneInstant).
//
// Everything talks to libvirt by running `virsh` (no native bindings), as root, on qemu:///system.

// The parts live in ./guest/: the init script, the cpio writer, the kernel finder, the assets
// build, the domain XML and the counter reader; this file is the guest's life (create, state,
// remove) and the names the tests and bench import.

import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { buildGuestAssets, mkdirForQemu } from './guest/assets.js';
import { DEFAULT_INTERVAL_MS, GuestError, LIBVIRT_URI, READY_MARKER } from './guest/common.js';
import { readCounter } from './guest/counter.js';
import { domainXml, type DomainExtraDisk, type GuestOwner } from './guest/domain-xml.js';
import { readAccounts } from './keystone.js';

export { buildGuestAssets } from './guest/assets.js';
export { DEFAULT_INTERVAL_MS, GUEST_AGENT_CHANNEL, GuestError, LIBVIRT_URI, READY_MARKER, RECORD_MARGIN, SECTOR } from './guest/common.js';
export { checkOneInstant, readCounter, type Counter } from './guest/counter.js';
export type { GuestOwner } from './guest/domain-xml.js';

const DEFAULT_DISK_MIB = 64;
const DEFAULT_DATA_DISK_MIB = 16;
/** Target devices of data disks, in order; the read-only disk takes the next free one. */
const DATA_DEVS = 'bcdefghijklmnop'.split('').map((c) => `vd${c}`);
const DEFAULT_MEMORY_MIB = 128;
const DEFAULT_READY_TIMEOUT_MS = 120_000;

/** A disk of the guest beside its root disk (vda, diskPath). */
export interface GuestDisk {
  /** Target device: vdb, vdc ... */
  dev: string;
  path: string;
  format: 'qcow2' | 'raw';
}

export interface Guest {
  name: string;
  uuid: string;
  /** The root disk (vda), qcow2. */
  diskPath: string;
  /** Data disks (vdb, vdc ...), each written with the same counter as vda; empty for the default guest. */
  dataDisks: GuestDisk[];
  /** The read-only disk the guest never writes, when asked for (readonlyDisk). */
  readonlyDisk?: GuestDisk;
  /** Target device of the empty CD-ROM drive, when asked for (cdrom). */
  cdromDev?: string;
  consoleLog: string;
  /** Directory holding the disk, the console log and the domain XML. */
  dir: string;
  /** The owner written into the domain's metadata, if any. */
  owner?: GuestOwner;
}

export interface CreateGuestOptions {
  name: string;
  guestsDir: string;
  assetsDir: string;
  diskSizeMiB?: number;
  intervalMs?: number;
  uuid?: string;
  start?: boolean;
  memoryMiB?: number;
  /** How long to wait for the ready marker and a counter > 0 (default 120 s). */
  readyTimeoutMs?: number;
  /**
   * Also run the QEMU guest agent (the host's qemu-ga from Debian's qemu-guest-agent, with its
   * libraries) on a virtio-serial channel org.qemu.guest_agent.0; createGuest then also waits until
   * libvirt can talk to it. The guest has no mounted disk filesystems, so an fsfreeze freezes 0 of
   * them, but it is a real round trip through libvirt and the agent. Off by default.
   */
  guestAgent?: boolean;
  /**
   * Who owns the guest (domain metadata in vmsnap's namespace, read by discovery and the API's
   * policy). Default: the stack's vmsnap project and user, when guestsDir is in a stack's data dir
   * (its keystone/accounts.json); null: no owner.
   */
  owner?: GuestOwner | null;
  /**
   * Data disks beside the root disk, as vdb, vdc ... (virtio): the guest writes the same counter to
   * every disk in one step. Default: none (the one-disk guest, unchanged).
   */
  dataDisks?: { format: 'qcow2' | 'raw'; sizeMiB?: number; bus?: 'virtio' }[];
  /** An empty CD-ROM drive (hdc, IDE): a disk a snapshot of all disks skips. */
  cdrom?: boolean;
  /** A read-only raw disk after the data disks, which the guest never writes (a snapshot skips it too). */
  readonlyDisk?: boolean;
  /** Runs once the disk exists and the domain is defined, before it starts (e.g. to write data into the disk with qemu-io). */
  beforeStart?: (guest: Guest) => Promise<void>;
}

/** States as printed by `virsh domstate`. */
export type DomainState = 'running' | 'idle' | 'paused' | 'in shutdown' | 'shut off' | 'crashed' | 'pmsuspended' | 'no state';

// ---------------------------------------------------------------------------------------------
// libvirt via virsh

const LIBVIRT_HINT = `check libvirt is up: virsh -c ${LIBVIRT_URI} version (without systemd start it with: virtlogd -d && libvirtd -d)`;

async function virsh(args: string[]): Promise<string> {
  const r = await execa('virsh', ['-c', LIBVIRT_URI, ...args], { reject: false });
  if (r.failed) {
    const why = (r.stderr || r.stdout || r.message || '').trim();
    const hint = /connect|socket|hypervisor|ENOENT/i.test(why) ? `; ${LIBVIRT_HINT}` : '';
    throw new GuestError(`virsh ${args.join(' ')} failed: ${why}${hint}`);
  }
  return r.stdout;
}

async function domainExists(name: string): Promise<boolean> {
  const names = (await virsh(['list', '--all', '--name'])).split('\n').map((s) => s.trim());
  return names.includes(name);
}

/** The domain's state as `virsh domstate` prints it, or null when no such domain is defined. */
export async function guestState(name: string): Promise<DomainState | null> {
  if (!(await domainExists(name))) return null;
  return (await virsh(['domstate', name])).trim() as DomainState;
}

async function undefineDomain(name: string): Promise<void> {
  if (!(await domainExists(name))) return;
  const state = await guestState(name);
  if (state !== null && state !== 'shut off') {
    await virsh(['destroy', name]).catch(async (e: unknown) => {
      // It may have stopped between the two calls.
      if ((await guestState(name)) !== 'shut off') throw e;
    });
  }
  // Snapshot/checkpoint metadata left by snapshot tests would otherwise block undefine.
  await virsh(['undefine', name, '--snapshots-metadata', '--checkpoints-metadata']);
}

function checkName(name: string): void {
  // Used as a path component and a libvirt name: keep it boring.
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) {
    throw new GuestError(`invalid guest name ${JSON.stringify(name)}: use letters, digits, '.', '_', '-' (max 64)`);
  }
}

async function consoleTail(file: string, lines = 20): Promise<string> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  if (!text.trim()) return '(console empty: the kernel has not reached /init yet; kernel messages are hidden by loglevel=4)';
  return text.split('\n').slice(-lines).join('\n');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Creates (replacing any domain of the same name) and by default starts a test guest, then waits
 * until it printed the ready marker and its counter on disk is > 0.
 */
export async function createGuest(opts: CreateGuestOptions): Promise<Guest> {
  checkName(opts.name);
  const name = opts.name;
  const dir = path.resolve(opts.guestsDir, name);
  const diskPath = path.join(dir, 'disk.qcow2');
  const consoleLog = path.join(dir, 'console.log');
  const uuid = opts.uuid ?? randomUUID();
  const diskSizeMiB = opts.diskSizeMiB ?? DEFAULT_DISK_MIB;
  if (!Number.isInteger(diskSizeMiB) || diskSizeMiB < 4) {
    throw new GuestError(`diskSizeMiB must be an integer >= 4, got ${diskSizeMiB}`);
  }
  const intervalMs = opts.intervalMs ?? DEFAULT_INTERVAL_MS;
  if (!Number.isInteger(intervalMs) || intervalMs < 0) {
    throw new GuestError(`intervalMs must be an integer >= 0, got ${intervalMs}`);
  }

  const dataDisks = (opts.dataDisks ?? []).map((d, i) => dataDisk(dir, d, i));
  const readonlyDisk = opts.readonlyDisk ? extraDisk(dir, DATA_DEVS[dataDisks.length], 'raw', DEFAULT_DATA_DISK_MIB, 'readonly') : undefined;
  const extraDisks = [...dataDisks, ...(readonlyDisk ? [readonlyDisk] : [])];

  const assets = await buildGuestAssets(opts.assetsDir, { guestAgent: opts.guestAgent === true, diskSet: dataDisks.length > 0 });
  await mkdirForQemu(path.resolve(opts.assetsDir)); // cheap; catches a dir made under another umask
  await undefineDomain(name);
  await fs.rm(dir, { recursive: true, force: true });
  await mkdirForQemu(dir);

  await createImage(diskPath, 'qcow2', diskSizeMiB);
  for (const d of extraDisks) await createImage(d.path, d.format, d.sizeMiB);
  await fs.writeFile(consoleLog, '');

  const owner = opts.owner === undefined ? stackOwner(opts.guestsDir) : (opts.owner ?? undefined);
  const xmlPath = path.join(dir, 'domain.xml');
  await fs.writeFile(
    xmlPath,
    domainXml({
      name,
      uuid,
      memoryMiB: opts.memoryMiB ?? DEFAULT_MEMORY_MIB,
      kernel: assets.kernel,
      initrd: assets.initrd,
      intervalMs,
      diskPath,
      consoleLog,
      guestAgent: opts.guestAgent === true,
      ...(owner ? { owner } : {}),
      dataDisks: dataDisks.map(domainDisk),
      ...(readonlyDisk ? { readonlyDisk: { ...domainDisk(readonlyDisk), readonly: true } } : {}),
      cdrom: opts.cdrom === true,
    }),
  );
  await virsh(['define', xmlPath]);
  const guest: Guest = {
    name,
    uuid,
    diskPath,
    dataDisks: dataDisks.map(guestDisk),
    ...(readonlyDisk ? { readonlyDisk: guestDisk(readonlyDisk) } : {}),
    ...(opts.cdrom ? { cdromDev: 'hdc' } : {}),
    consoleLog,
    dir,
    ...(owner ? { owner } : {}),
  };
  if (opts.beforeStart) await opts.beforeStart(guest);
  if (opts.start === false) return guest;

  await virsh(['start', name]);
  const deadline = Date.now() + (opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS);
  await waitReady(guest, deadline - Date.now());
  if (opts.guestAgent) await waitAgent(guest, deadline);
  return guest;
}

interface ExtraDisk extends GuestDisk {
  sizeMiB: number;
}

function extraDisk(dir: string, dev: string | undefined, format: 'qcow2' | 'raw', sizeMiB: number, kind: string): ExtraDisk {
  if (!dev) throw new GuestError(`too many disks: at most ${DATA_DEVS.length} beside the root disk`);
  if (!Number.isInteger(sizeMiB) || sizeMiB < 4) throw new GuestError(`sizeMiB of disk ${dev} must be an integer >= 4, got ${sizeMiB}`);
  return { dev, path: path.join(dir, `${kind}-${dev}.${format}`), format, sizeMiB };
}

function dataDisk(dir: string, d: NonNullable<CreateGuestOptions['dataDisks']>[number], i: number): ExtraDisk {
  if (d.format !== 'qcow2' && d.format !== 'raw') throw new GuestError(`data disk ${i + 1}: format must be qcow2 or raw, got ${String(d.format)}`);
  if (d.bus !== undefined && d.bus !== 'virtio') throw new GuestError(`data disk ${i + 1}: only the virtio bus is supported, got ${String(d.bus)}`);
  return extraDisk(dir, DATA_DEVS[i], d.format, d.sizeMiB ?? DEFAULT_DATA_DISK_MIB, 'data');
}

const guestDisk = (d: ExtraDisk): GuestDisk => ({ dev: d.dev, path: d.path, format: d.format });
const domainDisk = (d: ExtraDisk): DomainExtraDisk => ({ dev: d.dev, path: d.path, format: d.format });

async function createImage(file: string, format: 'qcow2' | 'raw', sizeMiB: number): Promise<void> {
  const img = await execa('qemu-img', ['create', '-q', '-f', format, file, `${sizeMiB}M`], { reject: false });
  if (img.failed) {
    throw new GuestError(`qemu-img create ${file} failed: ${img.stderr.trim()}; is qemu-utils installed?`);
  }
}

/** The stack's vmsnap project and user, when the guests dir is `<data dir>/guests` of a stack. */
function stackOwner(guestsDir: string): GuestOwner | undefined {
  const accounts = readAccounts(path.dirname(path.resolve(guestsDir)));
  if (!accounts) return undefined;
  return { projectId: accounts.vmsnapProjectId, userId: accounts.vmsnapUserId, projectName: 'vmsnap', userName: 'vmsnap' };
}

/**
 * Waits until libvirt gets an answer from the guest agent. `virsh domtime` (guest-get-time) is used
 * as the ping: an ordinary agent API, unlike qemu-agent-command, which marks the domain tainted.
 */
async function waitAgent(g: Guest, deadline: number): Promise<void> {
  for (;;) {
    const r = await execa('virsh', ['-c', LIBVIRT_URI, 'domtime', g.name], { reject: false });
    if (!r.failed) return;
    const last = (r.stderr || r.message || '').trim();
    if (Date.now() > deadline) {
      throw new GuestError(`guest ${g.name}: the guest agent did not answer in time (last: ${last})\n--- console ---\n${await consoleTail(g.consoleLog)}`);
    }
    await sleep(250);
  }
}

async function waitReady(g: Guest, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let marker = false;
  for (;;) {
    if (!marker) {
      const log = await fs.readFile(g.consoleLog, 'utf8').catch(() => '');
      const err = /VMSNAP-GUEST-ERROR.*/.exec(log);
      if (err) {
        throw new GuestError(`guest ${g.name} failed while booting: ${err[0]}\n--- console ---\n${await consoleTail(g.consoleLog)}`);
      }
      marker = log.includes(READY_MARKER);
    }
    if (marker) {
      // Before the first fsync the record is not yet on the qcow2 file: reads as 0 meanwhile.
      const c = await readCounter(g.diskPath, 'qcow2');
      if (c.a > 0 && (await dataDisksWritten(g))) return;
    }
    const state = await guestState(g.name);
    if (state !== 'running') {
      throw new GuestError(`guest ${g.name} is '${state ?? 'undefined'}' while waiting for it to boot\n--- console ---\n${await consoleTail(g.consoleLog)}`);
    }
    if (Date.now() > deadline) {
      throw new GuestError(
        `guest ${g.name} not ready after ${timeoutMs / 1000} s (${marker ? 'booted, but no counter on disk' : `no ${READY_MARKER} on the console`}); ` +
          `see ${g.consoleLog}\n--- console ---\n${await consoleTail(g.consoleLog)}`,
      );
    }
    await sleep(250);
  }
}

/** Whether every record of every data disk holds a counter (the last one a step writes is the last disk's B). */
async function dataDisksWritten(g: Guest): Promise<boolean> {
  for (const d of g.dataDisks) {
    const c = await readCounter(d.path, d.format);
    if (c.a === 0 || c.b === 0) return false;
  }
  return true;
}

/** Destroys (if running) and undefines the domain, then removes its directory. Harmless if gone. */
export async function removeGuest(name: string, guestsDir: string): Promise<void> {
  checkName(name);
  await undefineDomain(name);
  await fs.rm(path.resolve(guestsDir, name), { recursive: true, force: true });
}
