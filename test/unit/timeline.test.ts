// The bench's timeline of a snapshot (bench/lib/timeline.ts) on a recorded history: every
// millisecond from the client's call to its result is counted once, under the right label.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import { TIMELINE_LABELS, historyTimeline } from '../../bench/lib/timeline.js';

const history = historyFromJSON(JSON.parse(readFileSync(new URL('../fixtures/snapshot-cold-history.json', import.meta.url), 'utf8')));
const events = history.events!;
const at = (i: number) => Number(events.at(i)!.eventTime!.seconds) * 1000 + events.at(i)!.eventTime!.nanos! / 1e6;

describe('historyTimeline', () => {
  it('gives each millisecond of the wall time to one label, the steps their running time', () => {
    const clientStart = at(0) - 40;
    const clientEnd = at(-1) + 15;
    const { byLabel, steps } = historyTimeline(events, clientStart, clientEnd);
    assert.deepEqual(Object.keys(byLabel), [...TIMELINE_LABELS]);
    const total = Object.values(byLabel).reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(total - (clientEnd - clientStart)) <= 2, `${total} ms counted of ${clientEnd - clientStart}`);
    assert.ok(Math.abs(byLabel['client → workflow started']! - 40) <= 1);
    assert.ok(Math.abs(byLabel['workflow closed → client result']! - 15) <= 1);
    // The upload is the longest step; the holder is not a step, its end is counted apart.
    const longest = Object.entries(steps).sort((a, b) => b[1] - a[1])[0]!;
    assert.equal(longest[0], 'step uploadImage');
    assert.equal(steps['step holdSnapshotSlot'], undefined);
    // The slot is let go of by a host step, not a cancel: nothing waited for a holder's end.
    assert.ok(steps['step releaseSnapshotSlot']! > 0);
    assert.equal(byLabel['slot holder ending (cancel → cancelled)'], 0);
    assert.ok(steps['local createImageRecord']! > 0);
  });
});
