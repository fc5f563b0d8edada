// The test guest: a tiny real Linux VM (busybox initramfs, no rootfs) whose only job is to write
// an increasing counter to its disk. Tests snapshot its disk and check that the two copies of the
// counter agree, which proves the snapshot is one consistent point in time.
//
// On-disk format: one 512-byte sector "VMSNAP-COUNTER <n>\n" padded with NULs, written twice per
// step: record A at 1 MiB, then record B at (disk size - 1 MiB). Each write is fsynced before the
// next starts, so at any instant the disk holds A == B or A == B + 1. A torn snapshot (e.g. the two
// ends of the disk copied at different times) shows up as any other combination.
//
// Everything talks to libvirt by running `virsh` (no native bindings), as root, on qemu:///system.

import { createHash, randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';

export const LIBVIRT_URI = 'qemu:///system';
export const READY_MARKER = 'VMSNAP-GUEST-READY';
export const SECTOR = 512;
/** Byte offset of record A; record B sits at (virtual size - RECORD_MARGIN). */
export const RECORD_MARGIN = 1024 * 1024;

const DEFAULT_DISK_MIB = 64;
const DEFAULT_MEMORY_MIB = 128;
/** How often the test guest writes its counter, unless told otherwise. */
export const DEFAULT_INTERVAL_MS = 20;
const DEFAULT_READY_TIMEOUT_MS = 120_000;
// Load order matters: each module needs the ones before it (no modprobe/depmod in the initramfs).
const VIRTIO_MODULES = [
  'virtio/virtio_ring',
  'virtio/virtio',
  'virtio/virtio_pci_legacy_dev',
  'virtio/virtio_pci_modern_dev',
  'virtio/virtio_pci',
  'block/virtio_blk',
];
const BUSYBOX = '/usr/bin/busybox';
// Bump when the initramfs layout changes in a way the stamp inputs do not capture.
const ASSETS_FORMAT = 1;

export class GuestError extends Error {
  override name = 'GuestError';
}

export interface Guest {
  name: string;
  uuid: string;
  diskPath: string;
  consoleLog: string;
  /** Directory holding the disk, the console log and the domain XML. */
  dir: string;
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
  /** Runs once the disk exists and the domain is defined, before it starts (e.g. to write data into the disk with qemu-io). */
  beforeStart?: (guest: Guest) => Promise<void>;
}

export interface Counter {
  a: number;
  b: number;
}

/** States as printed by `virsh domstate`. */
export type DomainState =
  | 'running'
  | 'idle'
  | 'paused'
  | 'in shutdown'
  | 'shut off'
  | 'crashed'
  | 'pmsuspended'
  | 'no state';

// ---------------------------------------------------------------------------------------------
// Guest assets: kernel + initramfs

// /init of the guest. Runs as PID 1 under busybox sh; never exits (PID 1 exiting panics the kernel).
const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "vmsnap-guest: init started, kernel $(uname -r)"

fail() { echo "VMSNAP-GUEST-ERROR $*"; while :; do sleep 3600; done; }

for m in ${VIRTIO_MODULES.map((m) => path.basename(m)).join(' ')}; do
  insmod /modules/$m.ko || fail "insmod $m failed"
done

interval=${DEFAULT_INTERVAL_MS}
for w in $(cat /proc/cmdline); do
  case "$w" in vmsnap.interval_ms=*) interval=\${w#vmsnap.interval_ms=} ;; esac
done
case "$interval" in ''|*[!0-9]*) interval=${DEFAULT_INTERVAL_MS} ;; esac

i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1)); [ $i -gt 3000 ] && fail "no /dev/vda after 30 s"
  usleep 10000
done

sectors=$(cat /sys/block/vda/size)
a_sec=${RECORD_MARGIN / SECTOR}
b_sec=$((sectors - ${RECORD_MARGIN / SECTOR}))
[ $b_sec -gt $a_sec ] || fail "disk too small: $sectors sectors"
echo "vmsnap-guest: virtio modules loaded, /dev/vda has $sectors sectors"

# Prints the counter in the record at sector $1; 0 when blank or unreadable.
read_rec() {
  v=$(dd if=/dev/vda bs=512 skip=$1 count=1 2>/dev/null | tr -d '\\000')
  v=\${v#VMSNAP-COUNTER }
  case "$v" in ''|*[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}
# One sector, NUL padded (conv=sync), fsynced before returning so A-then-B order holds on disk.
write_rec() {
  printf 'VMSNAP-COUNTER %d\\n' $2 | dd of=/dev/vda bs=512 seek=$1 count=1 conv=sync,notrunc,fsync 2>/dev/null \\
    || echo "VMSNAP-GUEST-ERROR write of $2 at sector $1 failed"
}

# Continue from what is on disk (A is never behind B). If a previous run stopped between A and B,
# bring B up to A first so the next step cannot leave A == B + 2.
n=$(read_rec $a_sec)
[ "$(read_rec $b_sec)" = "$n" ] || write_rec $b_sec $n
echo "${READY_MARKER} counter=$n interval_ms=$interval sectors=$sectors"

while :; do
  n=$((n + 1))
  write_rec $a_sec $n
  write_rec $b_sec $n
  [ $((n % 500)) -eq 0 ] && echo "VMSNAP-COUNTER $n"
  usleep $((interval * 1000))
done
`;

// The guest agent variant: qemu-ga needs virtio_console for its port. No udev in the guest, so
// nothing makes /dev/virtio-ports/<name>: the port is found by its name in sysfs instead.
const QEMU_GA = '/usr/sbin/qemu-ga';
export const GUEST_AGENT_CHANNEL = 'org.qemu.guest_agent.0';
const AGENT_MODULES = ['char/virtio_console'];
const AGENT_READY_MARKER = 'VMSNAP-GUEST-AGENT-STARTED';
const AGENT_INIT_ANCHOR = 'echo "vmsnap-guest: virtio modules loaded, /dev/vda has $sectors sectors"\n';
const AGENT_INIT_BLOCK = `
insmod /modules/virtio_console.ko || fail "insmod virtio_console failed"
port=
i=0
while :; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = ${GUEST_AGENT_CHANNEL} ] && port=/dev/\${p##*/}
  done
  [ -n "$port" ] && [ -c "$port" ] && break
  i=$((i + 1)); [ $i -gt 3000 ] && fail "no virtio port ${GUEST_AGENT_CHANNEL} after 30 s"
  usleep 10000
done
# -t/-f: qemu-ga's state dir and pid file default to /var/run, which this initramfs lacks.
/usr/sbin/qemu-ga -m virtio-serial -p $port -t /tmp -f /tmp/qemu-ga.pid &
echo "${AGENT_READY_MARKER} on $port"
`;

/** The init script of the guest agent variant: the plain one plus qemu-ga started before the counter loop. */
function agentInitScript(): string {
  if (!INIT_SCRIPT.includes(AGENT_INIT_ANCHOR)) throw new GuestError('internal: agent anchor missing from INIT_SCRIPT');
  return INIT_SCRIPT.replace(AGENT_INIT_ANCHOR, AGENT_INIT_ANCHOR + AGENT_INIT_BLOCK);
}

/** qemu-ga and the shared libraries it loads (ldd), including the dynamic loader. */
async function agentFiles(): Promise<string[]> {
  try {
    await fs.access(QEMU_GA);
  } catch {
    throw new GuestError(`${QEMU_GA} is missing: install qemu-guest-agent (the guest agent variant of the test guest copies it)`);
  }
  const r = await execa('ldd', [QEMU_GA], { reject: false, env: { LC_ALL: 'C' } });
  if (r.failed) throw new GuestError(`ldd ${QEMU_GA} failed: ${(r.stderr || r.message || '').trim()}`);
  const libs = new Set<string>();
  for (const line of r.stdout.split('\n')) {
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (m?.[1]) libs.add(m[1]);
    if (/not found/.test(line)) throw new GuestError(`ldd ${QEMU_GA}: ${line.trim()}`);
  }
  return [QEMU_GA, ...libs];
}

/** Newest /boot/vmlinuz-*-cloud-amd64 (the cloud kernel has virtio as small loadable modules). */
async function findKernel(): Promise<{ path: string; version: string }> {
  const names = (await fs.readdir('/boot')).filter((n) => /^vmlinuz-.+-cloud-amd64$/.test(n));
  names.sort((x, y) => x.localeCompare(y, 'en', { numeric: true }));
  const newest = names.at(-1);
  if (!newest) {
    throw new GuestError('no /boot/vmlinuz-*-cloud-amd64 found: install linux-image-cloud-amd64');
  }
  return { path: path.join('/boot', newest), version: newest.slice('vmlinuz-'.length) };
}

interface CpioEntry {
  name: string;
  mode: number; // including the file type bits
  data?: Buffer;
  rdev?: [number, number];
}

// Minimal "newc" cpio writer: written here rather than shelling out to cpio so the archive can
// contain /dev/console (a device node) without mknod, and is byte-for-byte reproducible.
function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  const push = (b: Buffer) => {
    parts.push(b);
    offset += b.length;
    const pad = (4 - (offset % 4)) % 4;
    if (pad) {
      parts.push(Buffer.alloc(pad));
      offset += pad;
    }
  };
  const all = [...entries, { name: 'TRAILER!!!', mode: 0 }];
  all.forEach((e, i) => {
    const data = e.data ?? Buffer.alloc(0);
    const hex = (n: number) => n.toString(16).padStart(8, '0');
    const fields = [
      i + 1, // ino
      e.mode,
      0, // uid
      0, // gid
      (e.mode & 0o170000) === 0o040000 ? 2 : 1, // nlink
      0, // mtime: fixed, for reproducibility
      data.length,
      0, // devmajor
      0, // devminor
      e.rdev?.[0] ?? 0,
      e.rdev?.[1] ?? 0,
      Buffer.byteLength(e.name) + 1,
      0, // check
    ];
    push(Buffer.concat([Buffer.from('070701' + fields.map(hex).join('') + e.name, 'ascii'), Buffer.alloc(1)]));
    if (data.length) push(data);
  });
  return Buffer.concat(parts);
}

async function writeAtomic(file: string, data: Buffer | string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await fs.writeFile(tmp, data);
  await fs.chmod(tmp, 0o644); // readable by QEMU whatever the umask
  await fs.rename(tmp, file);
}

// QEMU runs as libvirt-qemu here (libvirt's default), not root. libvirt's dynamic_ownership chowns
// the disk, kernel and initrd to it for the life of the domain, but not their directories: those
// must be searchable by "other". So directories we create are made 0755 whatever the umask, and
// an ancestor that blocks the way is reported rather than silently chmodded.
async function mkdirForQemu(dir: string): Promise<void> {
  const first = await fs.mkdir(dir, { recursive: true });
  if (first) {
    for (let d = dir; ; d = path.dirname(d)) {
      await fs.chmod(d, 0o755);
      if (d === first || d === path.dirname(d)) break;
    }
  }
  for (let d = dir; ; d = path.dirname(d)) {
    const st = await fs.stat(d);
    if ((st.mode & 0o001) === 0) {
      throw new GuestError(
        `${d} is not searchable by other users, so QEMU (user libvirt-qemu) cannot open guest files under ${dir}: ` +
          `chmod o+x ${d}, or use a data dir elsewhere`,
      );
    }
    if (d === path.dirname(d)) break;
  }
}

/**
 * Builds the guest kernel + initramfs into assetsDir (idempotent: a stamp of the inputs' paths,
 * sizes and mtimes skips the work when nothing changed). The kernel is copied so a running or
 * defined domain does not depend on /boot changing underneath. With guestAgent the initramfs is a
 * separate one (initrd-agent.img, own stamp) that also holds qemu-ga; the plain one is unchanged.
 */
export async function buildGuestAssets(
  assetsDir: string,
  opts: { guestAgent?: boolean } = {},
): Promise<{ kernel: string; initrd: string }> {
  const agent = opts.guestAgent === true;
  const dir = path.resolve(assetsDir);
  const kernelOut = path.join(dir, 'vmlinuz');
  const initrdOut = path.join(dir, agent ? 'initrd-agent.img' : 'initrd.img');
  const stampFile = path.join(dir, agent ? 'stamp-agent' : 'stamp');
  const initScript = agent ? agentInitScript() : INIT_SCRIPT;

  const kernel = await findKernel();
  const moduleFiles = [...VIRTIO_MODULES, ...(agent ? AGENT_MODULES : [])].map(
    (m) => `/lib/modules/${kernel.version}/kernel/drivers/${m}.ko`,
  );
  const agentBinaries = agent ? await agentFiles() : [];
  const inputs = [kernel.path, BUSYBOX, ...moduleFiles, ...agentBinaries];
  const stats = await Promise.all(
    inputs.map(async (f) => {
      try {
        const s = await fs.stat(f);
        return `${f}:${s.size}:${s.mtimeMs}`;
      } catch {
        throw new GuestError(
          `guest asset input ${f} is missing: install busybox-static and the modules of kernel ${kernel.version}`,
        );
      }
    }),
  );
  // The plain variant hashes exactly what it always did, so existing assets are not rebuilt.
  const stamp = createHash('sha256')
    .update(JSON.stringify(agent ? { ASSETS_FORMAT, stats, INIT_SCRIPT: initScript, agent } : { ASSETS_FORMAT, stats, INIT_SCRIPT }))
    .digest('hex');

  const existing = await fs.readFile(stampFile, 'utf8').catch(() => '');
  if (existing === stamp) {
    const present = await Promise.all([kernelOut, initrdOut].map((f) => fs.access(f).then(() => true, () => false)));
    if (present.every(Boolean)) return { kernel: kernelOut, initrd: initrdOut };
  }

  await mkdirForQemu(dir);
  const dirEntry = (name: string): CpioEntry => ({ name, mode: 0o040755 });
  const entries: CpioEntry[] = [
    dirEntry('bin'),
    dirEntry('dev'),
    { name: 'dev/console', mode: 0o020600, rdev: [5, 1] },
    dirEntry('proc'),
    dirEntry('sys'),
    dirEntry('tmp'),
    dirEntry('modules'),
    { name: 'bin/busybox', mode: 0o100755, data: await fs.readFile(BUSYBOX) },
    { name: 'init', mode: 0o100755, data: Buffer.from(initScript) },
  ];
  for (const f of moduleFiles) {
    entries.push({ name: `modules/${path.basename(f)}`, mode: 0o100644, data: await fs.readFile(f) });
  }
  // qemu-ga and its libraries at their host paths, where the dynamic loader looks for them
  // (readFile follows symlinks, so each lands as a plain file under the name ldd gave).
  const dirsDone = new Set(entries.filter((e) => (e.mode & 0o170000) === 0o040000).map((e) => e.name));
  for (const f of agentBinaries) {
    const rel = f.replace(/^\/+/, '');
    const parents: string[] = [];
    for (let d = path.posix.dirname(rel); d !== '.'; d = path.posix.dirname(d)) parents.unshift(d);
    for (const d of parents) {
      if (!dirsDone.has(d)) {
        dirsDone.add(d);
        entries.push(dirEntry(d));
      }
    }
    entries.push({ name: rel, mode: 0o100755, data: await fs.readFile(f) });
  }
  await writeAtomic(kernelOut, await fs.readFile(kernel.path));
  await writeAtomic(initrdOut, gzipSync(cpioNewc(entries)));
  // Stamp last: an interrupted build is redone next time.
  await writeAtomic(stampFile, stamp);
  return { kernel: kernelOut, initrd: initrdOut };
}

// ---------------------------------------------------------------------------------------------
// libvirt via virsh

const LIBVIRT_HINT =
  `check libvirt is up: virsh -c ${LIBVIRT_URI} version (without systemd start it with: virtlogd -d && libvirtd -d)`;

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

const xmlEscape = (s: string) =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

function domainXml(o: {
  name: string;
  uuid: string;
  memoryMiB: number;
  kernel: string;
  initrd: string;
  intervalMs: number;
  diskPath: string;
  consoleLog: string;
  guestAgent?: boolean;
}): string {
  const x = xmlEscape;
  // libvirt picks the host socket path and adds the virtio-serial controller itself.
  const agentChannel = o.guestAgent
    ? `
    <channel type='unix'>
      <target type='virtio' name='${GUEST_AGENT_CHANNEL}'/>
    </channel>`
    : '';
  // type='qemu' (TCG): KVM is not usable on this host. No NIC, no graphics, no balloon, no USB:
  // the guest only needs a serial console and one disk. cache='none' so guest writes reach the
  // qcow2 file directly (host page cache bypassed), which is what snapshot tools read.
  return `<domain type='qemu'>
  <name>${x(o.name)}</name>
  <uuid>${x(o.uuid)}</uuid>
  <memory unit='MiB'>${o.memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${x(o.kernel)}</kernel>
    <initrd>${x(o.initrd)}</initrd>
    <cmdline>console=ttyS0 loglevel=4 vmsnap.interval_ms=${o.intervalMs}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='${x(o.diskPath)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='${x(o.consoleLog)}' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>${agentChannel}
  </devices>
</domain>
`;
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

  const assets = await buildGuestAssets(opts.assetsDir, { guestAgent: opts.guestAgent === true });
  await mkdirForQemu(path.resolve(opts.assetsDir)); // cheap; catches a dir made under another umask
  await undefineDomain(name);
  await fs.rm(dir, { recursive: true, force: true });
  await mkdirForQemu(dir);

  const img = await execa('qemu-img', ['create', '-q', '-f', 'qcow2', diskPath, `${diskSizeMiB}M`], { reject: false });
  if (img.failed) {
    throw new GuestError(`qemu-img create ${diskPath} failed: ${img.stderr.trim()}; is qemu-utils installed?`);
  }
  await fs.writeFile(consoleLog, '');

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
    }),
  );
  await virsh(['define', xmlPath]);
  const guest: Guest = { name, uuid, diskPath, consoleLog, dir };
  if (opts.beforeStart) await opts.beforeStart(guest);
  if (opts.start === false) return guest;

  await virsh(['start', name]);
  const deadline = Date.now() + (opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS);
  await waitReady(guest, deadline - Date.now());
  if (opts.guestAgent) await waitAgent(guest, deadline);
  return guest;
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
      throw new GuestError(
        `guest ${g.name}: the guest agent did not answer in time (last: ${last})\n--- console ---\n${await consoleTail(g.consoleLog)}`,
      );
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
      if (c.a > 0) return;
    }
    const state = await guestState(g.name);
    if (state !== 'running') {
      throw new GuestError(
        `guest ${g.name} is '${state ?? 'undefined'}' while waiting for it to boot\n--- console ---\n${await consoleTail(g.consoleLog)}`,
      );
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

/** Destroys (if running) and undefines the domain, then removes its directory. Harmless if gone. */
export async function removeGuest(name: string, guestsDir: string): Promise<void> {
  checkName(name);
  await undefineDomain(name);
  await fs.rm(path.resolve(guestsDir, name), { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// Reading the counter from an image

/** Parses qemu-io `read -v` hex dumps ("00100000:  56 4d ...  VMSNAP...") into offset -> byte. */
function parseHexDump(out: string): Map<number, number> {
  const bytes = new Map<number, number>();
  for (const line of out.split('\n')) {
    const m = /^([0-9a-f]+):\s+((?:[0-9a-f]{2} ){0,15}[0-9a-f]{2})/.exec(line);
    if (!m?.[1] || !m[2]) continue;
    const base = parseInt(m[1], 16);
    m[2].split(' ').forEach((h, i) => bytes.set(base + i, parseInt(h, 16)));
  }
  return bytes;
}

function parseRecord(bytes: Map<number, number>, offset: number, image: string): number {
  const buf = Buffer.alloc(SECTOR);
  for (let i = 0; i < SECTOR; i++) {
    const b = bytes.get(offset + i);
    if (b === undefined) throw new GuestError(`qemu-io did not return byte ${offset + i} of ${image}`);
    buf[i] = b;
  }
  if (buf.every((b) => b === 0)) return 0;
  const text = buf.toString('latin1');
  const m = /^VMSNAP-COUNTER (\d+)\n\0*$/.exec(text);
  if (!m?.[1]) {
    throw new GuestError(
      `sector at byte ${offset} of ${image} is not a counter record: starts ${JSON.stringify(text.slice(0, 32))} ` +
        `(is this an image of a vmsnap test guest, and is the format right?)`,
    );
  }
  return Number(m[1]);
}

/**
 * Reads records A and B from a disk image (qcow2 or raw; format probed when not given). Safe on a
 * running guest's disk: opens read-only with -U (force share), so the guest is not disturbed. Both
 * sectors are read by one qemu-io process, A then B, microseconds apart; the guest needs
 * milliseconds per step, so a live read also sees A == B or A == B + 1.
 */
export async function readCounter(imagePath: string, format?: 'qcow2' | 'raw'): Promise<Counter> {
  const fmtArgs = format ? ['-f', format] : [];
  const info = await execa('qemu-img', ['info', '-U', '--output=json', ...fmtArgs, imagePath], { reject: false });
  if (info.failed) {
    throw new GuestError(`qemu-img info ${imagePath} failed: ${info.stderr.trim()}; is the path a disk image?`);
  }
  const parsed = JSON.parse(info.stdout) as { 'virtual-size': number; format: string };
  const size = parsed['virtual-size'];
  const fmt = format ?? parsed.format;
  if (size < 2 * RECORD_MARGIN + SECTOR) {
    throw new GuestError(`${imagePath} is only ${size} bytes: too small to be a test guest disk`);
  }
  const offA = RECORD_MARGIN;
  const offB = size - RECORD_MARGIN;
  const r = await execa(
    'qemu-io',
    ['-r', '-U', '-f', fmt, '-c', `read -v ${offA} ${SECTOR}`, '-c', `read -v ${offB} ${SECTOR}`, imagePath],
    { reject: false },
  );
  if (r.failed || /error|failed/i.test(r.stderr)) {
    throw new GuestError(`qemu-io read of ${imagePath} failed: ${(r.stderr || r.stdout).trim()}`);
  }
  const bytes = parseHexDump(r.stdout);
  return { a: parseRecord(bytes, offA, imagePath), b: parseRecord(bytes, offB, imagePath) };
}
