// The benchmark's two-disk rows (issue 28): vmsnap with disks "all" against bare's one pause over
// both copies, judged with the large disk's limits; not judged while the workflow refuses disks "all".
import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { Sample } from '../../bench/lib/measure.js';
import type { DiskSpec, Mode } from '../../bench/lib/options.js';
import { evaluateTargets, summarize } from '../../bench/lib/results.js';

const pair: DiskSpec = { kind: 'pair', virtualMiB: 1024, dataMiB: 256, dataDisk: { virtualMiB: 1024, dataMiB: 256, format: 'raw' } };
const modes: Mode[] = ['bare', 'cold', 'live'];

function sample(mode: Mode, run: number, wallMs: number, pauseMs: number): Sample {
  return { disk: 'pair', mode, run, position: 1, ok: true, wallMs, pauseMs, imageBytes: 512 * 1024 * 1024, phasesMs: {} };
}

/** The rows of issue 28 (the pair also gets the live checks every disk gets). */
const PAIR_ROWS = ['cold-pause-pair', 'wall-pair-cold', 'wall-pair-live'];

const samples = [1, 2, 3].flatMap((run) => [sample('bare', run, 4000, 400), sample('cold', run, 4200, 500), sample('live', run, 4100, 0)]);

it('judges the pair: end to end against bare (cold ≤ 1.10 ×, live ≤ 1.00 ×) and one cold pause against bare', () => {
  const targets = evaluateTargets(summarize([pair], modes, samples), [], { available: true }, modes, 2, { available: true });
  const byId = Object.fromEntries(targets.filter((t) => PAIR_ROWS.includes(t.id)).map((t) => [t.id, t]));
  assert.deepEqual(Object.keys(byId).sort(), PAIR_ROWS);
  assert.equal(byId['wall-pair-cold']?.value, 4200 / 4000);
  assert.equal(byId['wall-pair-cold']?.pass, true);
  assert.equal(byId['wall-pair-live']?.value, 4100 / 4000);
  assert.equal(byId['wall-pair-live']?.pass, false, 'live must be no later than bare');
  assert.equal(byId['cold-pause-pair']?.value, 500 / 400);
  assert.equal(byId['cold-pause-pair']?.pass, false);
  assert.equal(byId['wall-pair-cold']?.baseline, '4200 ms vs bare 4000 ms');
  assert.match(byId['wall-pair-cold']?.scope ?? '', /^pair \(1024 MiB \+ raw 1024 MiB, 256 \+ 256 MiB data\), disks all, cold$/);
});

it('leaves the pair not judged, saying why, while the workflow does not take disks "all"', () => {
  const bareOnly = samples.filter((s) => s.mode === 'bare');
  const targets = evaluateTargets(summarize([pair], modes, bareOnly), [], { available: true }, modes, 2, { available: false, reason: 'refused' });
  const rows = targets.filter((t) => PAIR_ROWS.includes(t.id));
  assert.equal(rows.length, 3);
  for (const t of rows) {
    assert.equal(t.pass, null, t.id);
    assert.equal(t.margin, 'not measured');
    assert.match(t.note ?? '', /disks "all"/);
  }
});

it('has no pair rows when the run had no pair', () => {
  const targets = evaluateTargets(summarize([], modes, []), [], { available: true }, modes, 2, { available: true });
  assert.deepEqual(
    targets.filter((t) => PAIR_ROWS.includes(t.id)),
    [],
  );
});
