// The write-stalls section's variants: the floor (nothing copied), the bare commands an operator
// would script, vmsnap's cold and live copies, and tunings of the live pull copy to compare.
import type { LiveCopyOptions } from '../../src/drivers/hypervisor.js';

export const STALL_VARIANTS = [
  'idle',
  'bare-cold',
  'cold',
  'live-pull',
  'live-stream',
  'live-push',
  'pull-m1',
  'pull-m4',
  'pull-shm',
  'pull-nice',
  'pull-r64',
  'pull-r32',
  'pull-direct',
  'pull-direct-nice',
  'pull-tmpfs',
] as const;
export type StallVariant = (typeof STALL_VARIANTS)[number];

export const DEFAULT_STALL_VARIANTS: readonly StallVariant[] = ['idle', 'bare-cold', 'cold', 'live-pull', 'live-stream', 'live-push'];

/** The live copy options of a live variant (undefined: not a live copy). */
export function liveOptionsOf(variant: StallVariant): Pick<LiveCopyOptions, 'method' | 'pull' | 'bandwidthMiBps'> | undefined {
  switch (variant) {
    case 'live-pull':
      return { method: 'pull' };
    case 'live-push':
      return { method: 'push' };
    case 'pull-m1':
      return { method: 'pull', pull: { parallel: 1 } };
    case 'pull-m4':
      return { method: 'pull', pull: { parallel: 4 } };
    case 'pull-shm':
      // RAM instead of the target's disk for the old data of overwritten blocks.
      return { method: 'pull', pull: { scratchDir: '/dev/shm' } };
    case 'pull-nice':
      return { method: 'pull', pull: { lowPriority: true } };
    case 'pull-r64':
      return { method: 'pull', bandwidthMiBps: 64 };
    case 'pull-r32':
      return { method: 'pull', bandwidthMiBps: 32 };
    case 'pull-direct':
      // The copy's writes past the page cache: no writeback burst for the guest's flushes to queue behind.
      return { method: 'pull', pull: { targetCache: 'none' } };
    case 'pull-tmpfs':
      // Diagnostic, not a setting: target and scratch in RAM, so the copy does no disk I/O at all.
      return { method: 'pull', pull: { scratchDir: '/dev/shm' } };
    case 'pull-direct-nice':
      return { method: 'pull', pull: { targetCache: 'none', lowPriority: true } };
    default:
      return undefined;
  }
}
