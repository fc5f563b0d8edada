// What /proc says about a process: resident memory, open files, children. Read synchronously in
// a timer: each read is a few microseconds, cheaper than the promise machinery around it.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

/** Clock ticks per second of /proc's CPU times. */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

/** VmRSS of a process in KiB; undefined once it is gone. */
export function rssKiB(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** CPU time (user + system) a process has used so far, in seconds; undefined once it is gone. */
export function cpuSeconds(pid: number): number | undefined {
  return cpuTimes(pid)?.own;
}

/** CPU seconds a process used itself (utime + stime) and its reaped children did (cutime + cstime); undefined once it is gone. */
export function cpuTimes(pid: number): { own: number; children: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start at field 3; utime, stime, cutime, cstime are 14-17.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { own: (Number(rest[11]) + Number(rest[12])) / CLK_TCK, children: (Number(rest[13]) + Number(rest[14])) / CLK_TCK };
  } catch {
    return undefined;
  }
}

/** Whether the process has a file open whose path contains `fragment`. */
export function hasOpenFile(pid: number, fragment: string): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  for (const fd of fds) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).includes(fragment)) return true;
    } catch {
      // closed between readdir and readlink
    }
  }
  return false;
}

/** Direct children of a process (every thread's children list). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
        if (text) out.push(...text.split(/\s+/).map(Number));
      } catch {
        // thread ended
      }
    }
  } catch {
    // process ended
  }
  return out;
}

export function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

/** Children of `pid` that run `qemu-img convert` (the worker execs it through setpriv, in place). */
export function convertChildren(pid: number): number {
  return childPids(pid).filter((c) => {
    const args = cmdline(c);
    return args.some((a) => a.endsWith('qemu-img')) && args.includes('convert');
  }).length;
}

/** A child of `pid` whose command line holds `fragment`, or undefined. */
export function childWith(pid: number, fragment: string): number | undefined {
  let children: string[];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  } catch {
    return undefined;
  }
  for (const child of children) {
    try {
      if (readFileSync(`/proc/${child}/cmdline`, 'utf8').includes(fragment)) return Number(child);
    } catch {
      // ended between the two reads
    }
  }
  return undefined;
}

export interface RssSample {
  /** ms since the sampler started */
  t: number;
  kib: number;
  /** CPU seconds used by the process so far. */
  cpu?: number;
  /** The watched file was open in the process at that moment. */
  open?: boolean;
}

/**
 * Samples a process's VmRSS every intervalMs; with `openFragment`, also whether it has a file of
 * that path open (how the worker's upload window is found without asking the worker).
 */
export function sampleRss(pid: number, intervalMs = 50, openFragment?: string): { stop(): RssSample[] } {
  const samples: RssSample[] = [];
  const start = performance.now();
  const take = () => {
    const kib = rssKiB(pid);
    if (kib === undefined) return;
    const sample: RssSample = { t: Math.round(performance.now() - start), kib };
    // A streamed live snapshot reads its export through a child (python3-libnbd) given the
    // snapshot's socket path (URI-encoded: the fragment without its slashes): its CPU is the
    // upload's too, and the worker's reaped children's (counted in once it ends) keep the figure continuous.
    const reader = openFragment ? childWith(pid, openFragment.replaceAll('/', '')) : undefined;
    const times = cpuTimes(pid);
    if (times) sample.cpu = times.own + times.children + (reader !== undefined ? (cpuSeconds(reader) ?? 0) : 0);
    if (openFragment) sample.open = reader !== undefined || hasOpenFile(pid, openFragment);
    samples.push(sample);
  };
  take();
  const timer = setInterval(take, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

/** Samples a number (e.g. running copies) every intervalMs and keeps the maximum. */
export function sampleMax(read: () => number, intervalMs = 100): { stop(): number } {
  let max = read();
  const timer = setInterval(() => {
    max = Math.max(max, read());
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(max, read());
    },
  };
}
