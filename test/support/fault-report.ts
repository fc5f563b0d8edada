// The fault suite's report: one row per fault (fault, outcome, invariants, what showed the fault
// fired), written to build/report/fault-report.{json,md} by the fault tests of one test run.
// Every row carries the run's id, and a file left by another run is started over, so the table
// only ever shows what one run saw. A row is only written for a fault that fired (its own
// evidence: requests reset, a kill that landed in its phase, the status seen): otherwise the test
// fails and writes nothing. Invariants are asserted where the row is written. The committed copy
// in docs/ is refreshed on request only: `VMSNAP_RECORD_FAULT_REPORT=1 ./scripts/test` copies it there.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertAllHeld, type Invariants } from './invariants.js';

const DIR = process.env.VMSNAP_FAULT_REPORT_DIR || 'build/report';
const JSON_FILE = join(DIR, 'fault-report.json');
const MD_FILE = join(DIR, 'fault-report.md');
// ./scripts/test names its run; files run by hand with `node --test` share their runner's pid.
const RUN = process.env.VMSNAP_TEST_RUN || `node-test-${process.ppid}`;

/** One thing the test saw of the fault itself, and whether it shows the fault fired where it was meant to. */
export interface Evidence {
  seen: string;
  fired: boolean;
}

export function evidence(seen: string, fired: boolean): Evidence {
  return { seen, fired };
}

export interface FaultRow {
  fault: string;
  outcome: string;
  invariants: Invariants;
  /** What showed the fault fired: every item must have. */
  evidence: Evidence[];
  /** Settings that frame the fault (a budget, a size); what happened belongs in the evidence. */
  note?: string;
}

export interface WrittenRow extends FaultRow {
  run: string;
  at: string;
}

export interface Report {
  run: string;
  rows: Record<string, WrittenRow>;
}

function readReport(): Report {
  try {
    const report = JSON.parse(readFileSync(JSON_FILE, 'utf8')) as Partial<Report>;
    if (report.run === RUN && report.rows) return { run: RUN, rows: report.rows };
  } catch {
    /* the run's first row */
  }
  return { run: RUN, rows: {} };
}

/**
 * Writes the fault's row, then asserts that every invariant held. A fault whose evidence says it
 * did not fire gets no row: the call throws, and the test with it.
 */
export function recordFaultRow(row: FaultRow): void {
  assert.ok(row.evidence.length > 0, `fault "${row.fault}": no evidence that it fired`);
  const missed = row.evidence.filter((e) => !e.fired);
  assert.deepEqual(
    missed.map((e) => e.seen),
    [],
    `fault "${row.fault}" did not fire as meant (${missed.map((e) => e.seen).join('; ')}): no row written`,
  );
  mkdirSync(DIR, { recursive: true });
  const report = readReport();
  report.rows[row.fault] = { ...row, run: RUN, at: new Date().toISOString() };
  writeFileSync(JSON_FILE, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(MD_FILE, renderReport(report));
  assertAllHeld(row.invariants);
}

const cell = (text: string) => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** The table of one run; refuses rows of any other run or without evidence of their fault. */
export function renderReport(report: Report): string {
  const rows = Object.values(report.rows).sort((a, b) => a.fault.localeCompare(b.fault));
  for (const r of rows) {
    assert.equal(r.run, report.run, `row "${r.fault}" is of run ${r.run}, not of ${report.run}`);
    assert.ok(r.evidence?.length && r.evidence.every((e) => e.fired), `row "${r.fault}" has no evidence that its fault fired`);
  }
  const columns = Object.keys(rows[0]?.invariants ?? {}) as (keyof Invariants)[];
  return [
    '# Fault suite report',
    '',
    `Written by the fault tests (test/integration/faults-*.test.ts, reconcile.test.ts, restore*.test.ts, keystone.test.ts, snapshot-compensation.test.ts, snapshot-disks.test.ts) of one run, \`${report.run}\`, on the real stack.`,
    'A row is written only when its fault fired (evidence: what the test saw of the fault itself), and every row is of this run.',
    'Invariants: ' + columns.join(' · ') + '.',
    '',
    `| fault | outcome | ${columns.join(' | ')} | evidence that it fired | note | run | at |`,
    `| --- | --- | ${columns.map(() => ':---:').join(' | ')} | --- | --- | --- | --- |`,
    ...rows.map(
      (r) =>
        `| ${cell(r.fault)} | ${cell(r.outcome)} | ${columns.map((c) => (r.invariants[c] ? 'held' : '**BROKEN**')).join(' | ')} | ${cell(r.evidence.map((e) => e.seen).join('; '))} | ${cell(r.note ?? '')} | ${r.run} | ${r.at.slice(0, 16).replace('T', ' ')} |`,
    ),
    '',
  ].join('\n');
}
