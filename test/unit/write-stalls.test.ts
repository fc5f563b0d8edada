// The write-stalls bench section's table: medians per variant, read against the idle floor.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { stallRows, type StallSample } from '../../bench/lib/write-stalls.js';

const sample = (variant: StallSample['variant'], run: number, stallMs: number, idleStallMs: number, ok = true): StallSample => ({
  disk: 'large',
  variant,
  run,
  ok,
  ...(ok ? { copyMs: 1000, stallMs, idleStallMs, rateRatio: 0.9, sampleGapMs: 50, idleSampleGapMs: 40 } : { error: 'boom' }),
});

describe('write-stalls table', () => {
  it("reads each variant against the idle variant's floor, and counts failures", () => {
    const samples = [
      sample('idle', 1, 100, 90),
      sample('idle', 2, 140, 100),
      sample('idle', 3, 120, 130),
      sample('live-pull', 1, 300, 100),
      sample('live-pull', 2, 200, 150),
      sample('live-pull', 3, 0, 0, false),
      sample('cold', 1, 900, 100),
    ];
    const { floorMs, rows } = stallRows(samples, 'large');
    assert.equal(floorMs, 120);
    assert.deepEqual(
      rows.map((r) => r.variant),
      ['idle', 'cold', 'live-pull'],
    );
    const pull = rows.find((r) => r.variant === 'live-pull')!;
    assert.equal(pull.stallMs, 250);
    assert.equal(pull.overFloorMs, 130);
    assert.equal(pull.overIdleBeforeMs, 125);
    assert.deepEqual([pull.runs, pull.failed], [3, 1]);
    assert.equal(stallRows(samples, 'small').rows.length, 0);
  });

  it('without an idle variant the floor is the idle windows before the copies', () => {
    const { floorMs } = stallRows([sample('live-push', 1, 400, 80), sample('live-push', 2, 500, 60)], 'large');
    assert.equal(floorMs, 70);
  });
});
