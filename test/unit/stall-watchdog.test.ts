// The upload's and the download's stall watchdog: it cuts a transfer that stands still, and once
// stopped it neither fires nor holds the process (a worker told to stop must exit at once).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { StallWatchdog } from '../../src/drivers/stall-watchdog.js';

describe('StallWatchdog', () => {
  it('aborts its signal with the reason it builds when nothing moved for its time', async () => {
    const watchdog = new StallWatchdog(20, () => new Error('stalled'));
    const signal = watchdog.signal();
    watchdog.arm();
    while (!signal.aborted) await sleep(5);
    assert.equal((signal.reason as Error).message, 'stalled');
  });

  it('armed again after stop (a chunk pulled from an aborted body): no timer, no abort', async () => {
    const watchdog = new StallWatchdog(20, () => new Error('stalled'));
    const signal = watchdog.signal();
    watchdog.arm();
    watchdog.stop();
    const before = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    watchdog.arm();
    assert.equal(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length, before, 'no timer started');
    await sleep(60);
    assert.equal(signal.aborted, false);
  });

  it('its timer does not hold the event loop', async () => {
    const watchdog = new StallWatchdog(60_000, () => new Error('stalled'));
    const before = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    watchdog.arm();
    // An unref'd timer is not among the resources that keep the process alive.
    assert.equal(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length, before);
    watchdog.stop();
  });
});
