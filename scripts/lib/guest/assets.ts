// The guest's kernel and initramfs, built into an assets dir once and reused.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { GuestError } from './common.js';
import { cpioNewc, type CpioEntry } from './cpio.js';
import { AGENT_MODULES, DISK_SET_INIT_SCRIPT, INIT_SCRIPT, QEMU_GA, VIRTIO_MODULES, agentInitScript } from './init-script.js';
import { findKernel } from './kernel.js';

const BUSYBOX = '/usr/bin/busybox';
// Bump when the initramfs layout changes in a way the stamp inputs do not capture.
const ASSETS_FORMAT = 1;

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

let writes = 0;

async function writeAtomic(file: string, data: Buffer | string): Promise<void> {
  // Unique per call: two guests built at once in one process write the same kernel.
  const tmp = `${file}.tmp-${process.pid}-${++writes}`;
  await fs.writeFile(tmp, data);
  await fs.chmod(tmp, 0o644); // readable by QEMU whatever the umask
  await fs.rename(tmp, file);
}

// QEMU runs as libvirt-qemu here (libvirt's default), not root. libvirt's dynamic_ownership chowns
// the disk, kernel and initrd to it for the life of the domain, but not their directories: those
// must be searchable by "other". So directories we create are made 0755 whatever the umask, and
// an ancestor that blocks the way is reported rather than silently chmodded.
export async function mkdirForQemu(dir: string): Promise<void> {
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
 * separate one (initrd-agent.img, own stamp) that also holds qemu-ga; with diskSet one whose
 * counter loop writes every disk (initrd-disks.img, initrd-agent-disks.img); the plain one is unchanged.
 */
export async function buildGuestAssets(assetsDir: string, opts: { guestAgent?: boolean; diskSet?: boolean } = {}): Promise<{ kernel: string; initrd: string }> {
  const agent = opts.guestAgent === true;
  const diskSet = opts.diskSet === true;
  const dir = path.resolve(assetsDir);
  const kernelOut = path.join(dir, 'vmlinuz');
  const variant = `${agent ? '-agent' : ''}${diskSet ? '-disks' : ''}`;
  const initrdOut = path.join(dir, `initrd${variant}.img`);
  const stampFile = path.join(dir, `stamp${variant}`);
  const base = diskSet ? DISK_SET_INIT_SCRIPT : INIT_SCRIPT;
  const initScript = agent ? agentInitScript(base) : base;

  const kernel = await findKernel();
  const moduleFiles = [...VIRTIO_MODULES, ...(agent ? AGENT_MODULES : [])].map((m) => `/lib/modules/${kernel.version}/kernel/drivers/${m}.ko`);
  const agentBinaries = agent ? await agentFiles() : [];
  const inputs = [kernel.path, BUSYBOX, ...moduleFiles, ...agentBinaries];
  const stats = await Promise.all(
    inputs.map(async (f) => {
      try {
        const s = await fs.stat(f);
        return `${f}:${s.size}:${s.mtimeMs}`;
      } catch {
        throw new GuestError(`guest asset input ${f} is missing: install busybox-static and the modules of kernel ${kernel.version}`);
      }
    }),
  );
  // The plain and agent variants hash exactly what they always did, so existing assets are not rebuilt.
  let stampOf: object = { ASSETS_FORMAT, stats, INIT_SCRIPT };
  if (agent || diskSet) stampOf = { ASSETS_FORMAT, stats, INIT_SCRIPT: initScript, agent, ...(diskSet ? { diskSet } : {}) };
  const stamp = createHash('sha256').update(JSON.stringify(stampOf)).digest('hex');

  const existing = await fs.readFile(stampFile, 'utf8').catch(() => '');
  if (existing === stamp) {
    const present = await Promise.all(
      [kernelOut, initrdOut].map((f) =>
        fs.access(f).then(
          () => true,
          () => false,
        ),
      ),
    );
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
