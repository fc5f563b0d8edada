// The fault report's own rules: a row only for a fault that fired, every row of one run (a file of
// another run is started over), invariants asserted as the row is written.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

const dir = mkdtempSync(join(tmpdir(), 'vmsnap-fault-report-'));
const jsonFile = join(dir, 'fault-report.json');
const mdFile = join(dir, 'fault-report.md');
let report: typeof import('../support/fault-report.js');

const held = {
  'prior power state': true,
  'task state None': true,
  'no temp files': true,
  'no unfinished image': true,
  'outcome and fault': true,
};

describe('fault report', () => {
  before(async () => {
    process.env.VMSNAP_FAULT_REPORT_DIR = dir;
    process.env.VMSNAP_TEST_RUN = 'run-b';
    // A file an earlier run left: its rows must not show in this run's table.
    writeFileSync(
      jsonFile,
      JSON.stringify({ run: 'run-a', rows: { old: { fault: 'old', outcome: 'completed', invariants: held, evidence: [], run: 'run-a', at: '' } } }),
    );
    report = await import('../support/fault-report.js');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a row whose fault did not fire, and writes nothing', () => {
    assert.throws(
      () =>
        report.recordFaultRow({
          fault: 'Glance unreachable',
          outcome: 'completed',
          invariants: held,
          evidence: [report.evidence('0 requests reset', false)],
        }),
      /did not fire as meant \(0 requests reset\): no row written/,
    );
    assert.throws(() => report.recordFaultRow({ fault: 'no evidence', outcome: 'completed', invariants: held, evidence: [] }), /no evidence/);
    assert.equal(JSON.parse(readFileSync(jsonFile, 'utf8')).run, 'run-a', 'the file is untouched');
  });

  it("starts over on another run's file: every row carries this run's id", () => {
    report.recordFaultRow({
      fault: 'Glance answering 5xx',
      outcome: 'completed',
      invariants: held,
      evidence: [report.evidence('3 answers of 503 seen', true)],
    });
    const written = JSON.parse(readFileSync(jsonFile, 'utf8')) as import('../support/fault-report.js').Report;
    assert.equal(written.run, 'run-b');
    assert.deepEqual(Object.keys(written.rows), ['Glance answering 5xx']);
    assert.equal(written.rows['Glance answering 5xx']?.run, 'run-b');
    const md = readFileSync(mdFile, 'utf8');
    assert.match(md, /of one run, `run-b`/);
    assert.match(md, /\| Glance answering 5xx \| completed \| held \| held \| held \| held \| held \| 3 answers of 503 seen \| {2}\| run-b \|/);
    assert.doesNotMatch(md, /\| old \|/);
  });

  it('writes the row of a broken invariant, then fails the test that wrote it', () => {
    assert.throws(() =>
      report.recordFaultRow({
        fault: 'cancel during upload',
        outcome: 'Cancelled',
        invariants: { ...held, 'no unfinished image': false },
        evidence: [report.evidence('cancelled while 12 MiB of the PUT had gone', true)],
      }),
    );
    assert.match(readFileSync(mdFile, 'utf8'), /\| cancel during upload \| Cancelled \| held \| held \| held \| \*\*BROKEN\*\* \| held \|/);
  });

  it('renders no row of another run, nor one without evidence', () => {
    const row = { fault: 'x', outcome: 'completed', invariants: held, evidence: [report.evidence('seen', true)], run: 'run-a', at: '2026-01-01T00:00:00Z' };
    assert.throws(() => report.renderReport({ run: 'run-b', rows: { x: row } }), /is of run run-a, not of run-b/);
    assert.throws(() => report.renderReport({ run: 'run-a', rows: { x: { ...row, evidence: [] } } }), /no evidence/);
    assert.ok(existsSync(mdFile));
  });
});
