// What the numbers were measured on: they mean little without the machine and how busy it was.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { execa } from 'execa';

export interface Machine {
  hostname: string;
  nproc: number;
  cpuModel: string;
  memoryMiB: number;
  kernel: string;
  node: string;
  qemu: string;
  libvirt: string;
  glance: string;
  curl: string;
  /** Whether /dev/kvm is usable; the test guests run under TCG either way (scripts/lib/guest.ts). */
  kvm: boolean;
  loadAverageStart: number[];
  loadAverageEnd?: number[];
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  const r = await execa(cmd, args, { reject: false, timeout: 10_000 });
  return (r.stdout || r.stderr || '').split('\n')[0]?.trim() || 'unknown';
}

async function dpkgVersion(pkg: string): Promise<string | undefined> {
  const r = await execa('dpkg-query', ['-W', '-f', '${Version}', pkg], { reject: false, timeout: 10_000 });
  return r.exitCode === 0 && r.stdout.trim() ? r.stdout.trim() : undefined;
}

export async function describeMachine(libvirtUri: string): Promise<Machine> {
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? 'unknown';
  const virshVersion = await execa('virsh', ['-c', libvirtUri, 'version'], { reject: false, timeout: 10_000 });
  const libvirt = /Using library: (.+)/.exec(virshVersion.stdout)?.[1]?.trim() ?? 'unknown';
  const hypervisor = /Running hypervisor: (.+)/.exec(virshVersion.stdout)?.[1]?.trim();
  let kvm = false;
  try {
    readFileSync('/dev/kvm');
  } catch (err) {
    // Reading a char device fails with EINVAL when it is there and usable; ENOENT/EACCES when not.
    kvm = (err as NodeJS.ErrnoException).code === 'EINVAL';
  }
  return {
    hostname: os.hostname(),
    nproc: os.availableParallelism(),
    cpuModel,
    memoryMiB: Math.round(os.totalmem() / 1024 / 1024),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    qemu: hypervisor ?? (await firstLine('qemu-img', ['--version'])),
    libvirt,
    glance: (await dpkgVersion('glance-api')) ?? (await firstLine('glance-api', ['--version'])),
    curl: await firstLine('curl', ['--version']),
    kvm,
    loadAverageStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
  };
}
