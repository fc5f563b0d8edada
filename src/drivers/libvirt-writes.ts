// What a live copy costs the guest's disk writes, as the guest sees them. QEMU's STOP/RESUME
// events say nothing here (the vCPUs never stop), yet a backup job can hold the guest's writes
// back (job start, copy-before-write, the job's own I/O in QEMU's main loop). QEMU counts each
// completed write and its time (`domblkstat`: wr_req, wr_total_times in ns); read every few ms
// through one long-lived `virsh` shell, the mean time of the writes completed between two reads
// is, for a write held back, about how long it was held. The longest such figure is reported.
import { spawn } from 'node:child_process';

// Often enough that a held write rarely shares its interval with many quick ones; rarely enough
// that the QMP queries behind it (one per sample) do not load QEMU's main loop themselves.
const SAMPLE_MS = 20;

/** One read of a disk's write counters. */
export interface WriteCounters {
  /** performance.now() when the answer arrived. */
  at: number;
  /** Completed write requests (wr_req). */
  writes: number;
  /** Their total time, ns (wr_total_times). */
  totalNs: number;
}

/**
 * Reads a disk's write counters every `everyMs` (after each answer) through one long-lived
 * `virsh` shell: a process per read would cost more than the interval. A virsh that cannot run
 * gives no reads; nothing else depends on it.
 */
export function readWriteCounters(uri: string, domain: string, device: string, everyMs: number, onRead: (c: WriteCounters) => void): { stop(): Promise<void> } {
  const virsh = spawn('virsh', ['-c', uri], { stdio: ['pipe', 'pipe', 'ignore'] });
  let buffered = '';
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let current: { writes?: number; totalNs?: number } = {};
  const ask = () => {
    if (!stopped && virsh.stdin.writable) virsh.stdin.write(`domblkstat ${domain} ${device}\n`);
  };
  virsh.stdout.setEncoding('utf8');
  virsh.stdout.on('data', (chunk: string) => {
    buffered += chunk;
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      const m = /\b(wr_req|wr_total_times)\s+(\d+)/.exec(line);
      if (m?.[1] === 'wr_req') current.writes = Number(m[2]);
      if (m?.[1] === 'wr_total_times') current.totalNs = Number(m[2]);
      if (current.writes === undefined || current.totalNs === undefined) continue;
      onRead({ at: performance.now(), writes: current.writes, totalNs: current.totalNs });
      current = {};
      timer = setTimeout(ask, everyMs);
    }
  });
  virsh.on('error', () => undefined);
  virsh.stdin.on('error', () => undefined);
  ask();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      virsh.stdin.end();
      await new Promise((resolve) => {
        if (virsh.exitCode !== null || virsh.signalCode !== null) resolve(undefined);
        else virsh.once('close', resolve);
        setTimeout(() => {
          virsh.kill();
          resolve(undefined);
        }, 2000).unref();
      });
    },
  };
}

export interface WriteWatch {
  /** Ends the watch: the longest write the guest waited for (ms; 0 if none completed), undefined if nothing could be read. */
  stop(): Promise<{ longestWriteMs: number; writes: number } | undefined>;
}

export function startWriteWatch(uri: string, domain: string, device: string): WriteWatch {
  let last: WriteCounters | undefined;
  let first: WriteCounters | undefined;
  let longestNs = 0;
  const reader = readWriteCounters(uri, domain, device, SAMPLE_MS, (now) => {
    first ??= now;
    if (last && now.writes > last.writes) longestNs = Math.max(longestNs, (now.totalNs - last.totalNs) / (now.writes - last.writes));
    last = now;
  });
  return {
    async stop() {
      await reader.stop();
      if (!first || !last) return undefined;
      return { longestWriteMs: Math.round(longestNs / 1e6), writes: last.writes - first.writes };
    },
  };
}
