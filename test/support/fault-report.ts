// The fault suite's report: one row per fault (fault, outcome, invariants held), kept in
// docs/fault-report.json and rendered to docs/fault-report.md each time a fault test runs.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { Invariants } from './invariants.js';

const JSON_FILE = 'docs/fault-report.json';
const MD_FILE = 'docs/fault-report.md';

export interface FaultRow {
  fault: string;
  outcome: string;
  invariants: Invariants;
  note?: string;
  at?: string;
}

export function recordFaultRow(row: FaultRow): void {
  mkdirSync('docs', { recursive: true });
  let rows: Record<string, FaultRow> = {};
  try {
    rows = JSON.parse(readFileSync(JSON_FILE, 'utf8')) as Record<string, FaultRow>;
  } catch {
    /* first run */
  }
  rows[row.fault] = { ...row, at: new Date().toISOString() };
  writeFileSync(JSON_FILE, `${JSON.stringify(rows, null, 2)}\n`);

  const columns = Object.keys(row.invariants) as (keyof Invariants)[];
  const lines = [
    '# Fault suite report',
    '',
    'Written by the fault tests (test/integration/faults-*.test.ts, reconcile.test.ts) each time they run, on the real stack.',
    'Invariants: ' + columns.join(' · ') + '.',
    '',
    `| fault | outcome | ${columns.join(' | ')} | note | last run |`,
    `| --- | --- | ${columns.map(() => ':---:').join(' | ')} | --- | --- |`,
    ...Object.values(rows)
      .sort((a, b) => a.fault.localeCompare(b.fault))
      .map((r) => `| ${r.fault} | ${r.outcome} | ${columns.map((c) => (r.invariants[c] ? 'held' : '**BROKEN**')).join(' | ')} | ${r.note ?? ''} | ${r.at?.slice(0, 16).replace('T', ' ')} |`),
    '',
  ];
  writeFileSync(MD_FILE, lines.join('\n'));
}
