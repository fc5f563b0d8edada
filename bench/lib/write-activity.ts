// What the guest's disk writes look like from outside, often: QEMU's count of completed write
// requests (`domblkstat`: wr_req), read every few ms through one long-lived `virsh` shell (a
// process per sample would cost more than the interval). The test guest writes its counter every
// 20 ms with fsync; a stretch with no completed write much longer than that is a stall the guest
// felt (its writes blocked: a pause, a job start draining the disk, copy-before-write).
import { readWriteCounters, type WriteCounters } from '../../src/drivers/libvirt-writes.js';

export type WriteSample = Pick<WriteCounters, 'at' | 'writes'>;

export interface WriteSampler {
  /** Stops sampling and returns every sample, in order. */
  stop(): Promise<WriteSample[]>;
}

export function sampleWrites(libvirtUri: string, domain: string, device: string, everyMs = 5): WriteSampler {
  const samples: WriteSample[] = [];
  const reader = readWriteCounters(libvirtUri, domain, device, everyMs, ({ at, writes }) => samples.push({ at, writes }));
  return {
    async stop() {
      await reader.stop();
      return samples;
    },
  };
}

/**
 * Between from and to (performance.now() times): the longest stretch with no completed write,
 * measured between the samples that saw the count move, the completed writes per second, and
 * the sampling's own longest gap (a stall shorter than that cannot be seen).
 */
export function writeActivity(
  samples: WriteSample[],
  from: number,
  to: number,
): { longestStallMs: number; writesPerSecond: number; worstSampleGapMs: number } | undefined {
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
