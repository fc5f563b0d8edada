// The fault suite's report: one row per fault (fault, outcome, invariants held), written to
// build/report/fault-report.{json,md} by the fault tests of one test run. A file left by another
// run is started over, so the table only ever shows what one run saw. The committed copy in docs/
// is refreshed on request only: `VMSNAP_RECORD_FAULT_REPORT=1 ./scripts/test` copies it there.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Invariants } from './invariants.js';

const DIR = process.env.VMSNAP_FAULT_REPORT_DIR || 'build/report';
const JSON_FILE = join(DIR, 'fault-report.json');
const MD_FILE = join(DIR, 'fault-report.md');
// ./scripts/test names its run; files run by hand with `node --test` share their runner's pid.
const RUN = process.env.VMSNAP_TEST_RUN || `node-test-${process.ppid}`;

export interface FaultRow {
  fault: string;
  outcome: string;
  invariants: Invariants;
  note?: string;
  at?: string;
}

interface Report {
  run: string;
  rows: Record<string, FaultRow>;
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

export function recordFaultRow(row: FaultRow): void {
  mkdirSync(DIR, { recursive: true });
  const report = readReport();
  report.rows[row.fault] = { ...row, at: new Date().toISOString() };
  writeFileSync(JSON_FILE, `${JSON.stringify(report, null, 2)}\n`);

  const columns = Object.keys(row.invariants) as (keyof Invariants)[];
  const lines = [
    '# Fault suite report',
    '',
    `Written by the fault tests (test/integration/faults-*.test.ts, reconcile.test.ts, restore.test.ts, keystone.test.ts) of one run (${RUN}), on the real stack.`,
    'Invariants: ' + columns.join(' · ') + '.',
    '',
    `| fault | outcome | ${columns.join(' | ')} | note | at |`,
    `| --- | --- | ${columns.map(() => ':---:').join(' | ')} | --- | --- |`,
    ...Object.values(report.rows)
      .sort((a, b) => a.fault.localeCompare(b.fault))
      .map(
        (r) =>
          `| ${r.fault} | ${r.outcome} | ${columns.map((c) => (r.invariants[c] ? 'held' : '**BROKEN**')).join(' | ')} | ${r.note ?? ''} | ${r.at?.slice(0, 16).replace('T', ' ')} |`,
      ),
    '',
  ];
  writeFileSync(MD_FILE, lines.join('\n'));
}
