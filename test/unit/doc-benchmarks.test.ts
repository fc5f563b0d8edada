// docs/benchmarks.md quotes the whole target table of the latest committed benchmark run: after a
// new `npm run bench`, this fails until the page shows the new table (and its text is reread).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';

/** The rows of the first table under the heading that starts with `heading`. */
function tableUnder(markdown: string, heading: string): string[] {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => l.startsWith(heading));
  assert.ok(start >= 0, `no heading "${heading}"`);
  const first = lines.findIndex((l, i) => i > start && l.startsWith('|'));
  const end = lines.findIndex((l, i) => i > first && !l.startsWith('|'));
  return lines.slice(first, end < 0 ? undefined : end);
}

it("docs/benchmarks.md shows the latest run's whole target table, misses first", () => {
  const latest = tableUnder(readFileSync('bench/results/latest.md', 'utf8'), '## Targets');
  const page = tableUnder(readFileSync('docs/benchmarks.md', 'utf8'), '## Latest run');
  assert.ok(latest.length > 10, `bench/results/latest.md's target table has ${latest.length} lines`);
  assert.deepEqual(page, latest, 'copy the "Targets" table of bench/results/latest.md into docs/benchmarks.md, "Latest run"');
  const results = page.slice(2).map((row) => (row.includes('**MISS**') ? 'miss' : 'pass'));
  assert.deepEqual(
    results,
    [...results].sort((a, b) => (a === b ? 0 : a === 'miss' ? -1 : 1)),
    'misses first',
  );
});
