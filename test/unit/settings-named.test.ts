// Help, README and docs/ name only settings that exist: each is read somewhere in the code (vmsnap's own,
// Temporal's envconfig for TEMPORAL_*, the stack scripts, tests and compose file for the rest).
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { SETTINGS_HELP } from '../../src/client/cli/options.js';

const NAME = /\b(?:VMSNAP|TEMPORAL|OS)_[A-Z0-9_]*[A-Z0-9]\b/g;

function files(dir: string, ext: RegExp): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && ext.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

function readers(paths: string[]): string {
  return paths.map((p) => readFileSync(p, 'utf8')).join('\n');
}

const code = readers(files('src', /\.ts$/).filter((p) => !p.endsWith(join('cli', 'options.ts'))));
const temporal = readers(files('node_modules/@temporalio/envconfig/lib', /\.js$/));
const stack = readers([
  ...files('scripts', /\.ts$/),
  ...files('bench', /\.ts$/),
  ...files('test', /\.ts$/),
  'scripts/test',
  'docker-compose.yml',
  ...files('deploy', /./),
]);
// A setting some code reads: its name in code other than where it is described.
const exists = (name: string, where: string) => where.includes(name) || where.includes(`${name.replace(/_FILE$/, '')}`);

it('vmsnap --help names only settings that exist', () => {
  const named = [...new Set(SETTINGS_HELP.match(NAME))];
  assert.ok(named.length > 8, named.join(' '));
  for (const name of named) assert.ok(exists(name, code) || exists(name, temporal), `vmsnap --help names ${name}, which nothing reads`);
  assert.ok(!named.includes('VMSNAP_STORE_PATH'), 'the store is VMSNAP_STORE_URL');
});

it('README and docs/ name only settings that exist', () => {
  const pages = ['README.md', ...files('docs', /\.md$/)];
  for (const page of pages) {
    const named = [...new Set(readFileSync(page, 'utf8').match(NAME))];
    for (const name of named) assert.ok(exists(name, code) || exists(name, temporal) || exists(name, stack), `${page} names ${name}, which nothing reads`);
  }
  assert.ok(readFileSync(join('docs', 'configuration.md'), 'utf8').match(NAME)!.length > 40, 'docs/configuration.md is the reference of every setting');
});
