// What the guest's disk writes look like from outside, often: QEMU's count of completed write
// requests (`domblkstat`: wr_req), read every few ms through one long-lived `virsh` shell (a
// process per sample would cost more than the interval). The test guest writes its counter every
// 20 ms with fsync; a stretch with no completed write much longer than that is a stall the guest
// felt (its writes blocked: a pause, a job start draining the disk, copy-before-write).
import { spawn } from 'node:child_process';

export interface WriteSample {
  /** performance.now() when the answer arrived. */
  at: number;
  writes: number;
}

export interface WriteSampler {
  /** Stops sampling and returns every sample, in order. */
  stop(): Promise<WriteSample[]>;
}

export function sampleWrites(libvirtUri: string, domain: string, device: string, everyMs = 5): WriteSampler {
  const virsh = spawn('virsh', ['-c', libvirtUri], { stdio: ['pipe', 'pipe', 'ignore'] });
  const samples: WriteSample[] = [];
  let buffered = '';
  let waiting = false;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const ask = () => {
    if (stopped || waiting) return;
    waiting = true;
    virsh.stdin.write(`domblkstat ${domain} ${device}\n`);
  };
  virsh.stdout.setEncoding('utf8');
  virsh.stdout.on('data', (chunk: string) => {
    buffered += chunk;
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      const m = /\bwr_req\s+(\d+)/.exec(line);
      if (!m) continue;
      samples.push({ at: performance.now(), writes: Number(m[1]) });
      waiting = false;
      timer = setTimeout(ask, everyMs);
    }
  });
  virsh.on('error', () => undefined);
  ask();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      virsh.stdin.end();
      await new Promise((resolve) => (virsh.exitCode !== null ? resolve(undefined) : virsh.once('exit', resolve)));
      return samples;
    },
  };
}

/**
 * Between from and to (performance.now() times): the longest stretch with no completed write,
 * measured between the samples that saw the count move, the completed writes per second, and
 * the sampling's own longest gap (a stall shorter than that cannot be seen).
 */
export function writeActivity(samples: WriteSample[], from: number, to: number): { longestStallMs: number; writesPerSecond: number; worstSampleGapMs: number } | undefined {
  const inside = samples.filter((s) => s.at >= from && s.at <= to);
  if (inside.length < 2) return undefined;
  let longestStallMs = 0;
  let worstSampleGapMs = 0;
  let lastMove = inside[0]!.at;
  for (let i = 1; i < inside.length; i++) {
    const s = inside[i]!;
    worstSampleGapMs = Math.max(worstSampleGapMs, s.at - inside[i - 1]!.at);
    if (s.writes !== inside[i - 1]!.writes) {
      longestStallMs = Math.max(longestStallMs, s.at - lastMove);
      lastMove = s.at;
    }
  }
  const last = inside.at(-1)!;
  longestStallMs = Math.max(longestStallMs, last.at - lastMove);
  const seconds = (last.at - inside[0]!.at) / 1000;
  return { longestStallMs, writesPerSecond: seconds > 0 ? (last.writes - inside[0]!.writes) / seconds : 0, worstSampleGapMs };
}
