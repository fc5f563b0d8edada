// Where the machine's CPU went during a measured stretch, by process group (Glance, Keystone,
// Temporal, the vmsnap worker, the guests, ...): on 2 shared cores, a step that is CPU-bound is
// slow because of whoever else is burning CPU, and this is what shows who.
import { readdirSync, readFileSync } from 'node:fs';
import { CLK_TCK, cmdline, cpuTimes } from './proc.js';

export const CPU_GROUPS = [
  'glance',
  'keystone',
  'temporal',
  'worker',
  'worker children',
  'bench and its children',
  'guests (qemu)',
  'libvirt',
  'postgres',
  'other',
] as const;
export type CpuGroup = (typeof CPU_GROUPS)[number];

/** CPU-seconds per group, plus the machine's busy and total CPU-seconds over the stretch. */
export type CpuUse = Partial<Record<CpuGroup | 'machine busy' | 'machine total', number>>;

interface Reading {
  machineBusy: number;
  machineTotal: number;
  /** pid → [group, own CPU-s, reaped children's CPU-s] */
  procs: Map<number, [CpuGroup, number, number]>;
}

function groupOf(pid: number, workerPid: number | undefined): CpuGroup {
  if (pid === workerPid) return 'worker';
  if (pid === process.pid) return 'bench and its children';
  const args = cmdline(pid).join(' ');
  if (/glance-api/.test(args)) return 'glance';
  if (/keystone|uwsgi/.test(args)) return 'keystone';
  if (/temporal/.test(args)) return 'temporal';
  if (/qemu-system/.test(args)) return 'guests (qemu)';
  if (/libvirtd|virtlogd/.test(args)) return 'libvirt';
  if (/postgres/.test(args)) return 'postgres';
  return 'other';
}

function read(workerPid: number | undefined): Reading {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = cpu;
  const busy = user + nice + system + irq + softirq + steal;
  const procs = new Map<number, [CpuGroup, number, number]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const times = cpuTimes(pid); // undefined: ended while listed
    if (times) procs.set(pid, [groupOf(pid, workerPid), times.own, times.children]);
  }
  return { machineBusy: busy / CLK_TCK, machineTotal: (busy + idle + iowait) / CLK_TCK, procs };
}

/**
 * Starts watching; `stop()` gives the CPU each group used since. A process that started within
 * the stretch counts whole; one that ended within it is lost unless its parent reaped it (the
 * worker's qemu-img, the bench's curl and virsh count as their parent's children); what is lost
 * shows as the machine's busy time the groups do not add up to ('other').
 */
export function watchCpuUse(workerPid?: number): { stop(): CpuUse } {
  const a = read(workerPid);
  return {
    stop() {
      const b = read(workerPid);
      const use: CpuUse = {};
      const add = (g: CpuGroup, s: number) => {
        if (s > 0) use[g] = (use[g] ?? 0) + s;
      };
      for (const [pid, [group, own, children]] of b.procs) {
        const before = a.procs.get(pid);
        add(group, own - (before?.[1] ?? 0));
        const reaped = children - (before?.[2] ?? 0);
        if (group === 'worker') add('worker children', reaped);
        else if (group === 'bench and its children') add(group, reaped);
      }
      const busy = b.machineBusy - a.machineBusy;
      const named = CPU_GROUPS.filter((g) => g !== 'other').reduce((s, g) => s + (use[g] ?? 0), 0);
      // Unattributed busy time: processes that came and went unreaped, kernel threads, rounding.
      use.other = Math.max(use.other ?? 0, busy - named);
      use['machine busy'] = busy;
      use['machine total'] = b.machineTotal - a.machineTotal;
      for (const k of Object.keys(use) as (keyof CpuUse)[]) use[k] = Math.round(use[k]! * 100) / 100;
      return use;
    },
  };
}
