// docker-compose.yml and the Dockerfile are validated offline: no Docker engine runs here, but the
// compose file must parse and describe the deployment docs/deployment.md promises, and the image must run
// the compiled worker from production dependencies (deploy.test.ts runs that very command line).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { it } from 'node:test';
import { execa } from 'execa';
import { parse } from 'yaml';
import { SEARCH_ATTRIBUTES } from '../../src/shared/names.js';

it('docker-compose.yml validates and names the deployment services', async () => {
  const { stdout } = await execa('docker-compose', ['-f', 'docker-compose.yml', 'config']);
  const names = ['postgresql', 'temporal-schema', 'temporal', 'temporal-register', 'temporal-ui', 'vmsnap-worker', 'vmsnap-api'];
  for (const service of names) {
    assert.match(stdout, new RegExp(`^  ${service}:`, 'm'), `service ${service} missing`);
  }
  const services = (await execa('docker-compose', ['-f', 'docker-compose.yml', 'config', '--services'])).stdout.split('\n');
  assert.equal(services.length, names.length);
  assert.ok(existsSync('Dockerfile'), 'the worker service builds from ./Dockerfile');
  type Svc = {
    command?: string[];
    image?: string;
    depends_on?: Record<string, { condition: string }>;
    environment?: Record<string, string>;
  };
  const all = (parse(stdout) as { services: Record<string, Svc> }).services;
  const worker = all['vmsnap-worker'];
  assert.deepEqual(worker?.command, ['node', '--max-semi-space-size=1', 'dist/worker/main.js', '--role', 'main']);
  // The compute API from the same image, on Nova's port, after the namespace is ready.
  const api = all['vmsnap-api'];
  assert.deepEqual(api?.command, ['node', '--max-semi-space-size=1', 'dist/api/main.js']);
  assert.equal(api?.environment?.VMSNAP_API_PORT, '8774');
  assert.equal(api?.depends_on?.['temporal-register']?.condition, 'service_completed_successfully');
  // The shape the stack's cluster mode runs: the Temporal server (not auto-setup) on PostgreSQL,
  // its schemas by temporal-sql-tool first, vmsnap's search attributes registered before the worker.
  assert.match(all.temporal?.image ?? '', /^temporalio\/server:/);
  assert.equal(all.temporal?.environment?.DB, 'postgres12');
  assert.equal(all.temporal?.depends_on?.['temporal-schema']?.condition, 'service_completed_successfully');
  assert.match(all['temporal-schema']?.command?.join('\n') ?? '', /temporal-sql-tool[\s\S]*update-schema --schema-name postgresql\/v12/);
  const register = all['temporal-register']?.command?.join('\n') ?? '';
  for (const name of Object.values(SEARCH_ATTRIBUTES)) assert.match(register, new RegExp(name), `search attribute ${name} registered`);
  assert.equal(worker?.depends_on?.['temporal-register']?.condition, 'service_completed_successfully');
});

it('the Dockerfile builds in one stage and runs dist/ with production dependencies in the last', () => {
  const stages = readFileSync('Dockerfile', 'utf8')
    .split(/^FROM /m)
    .slice(1);
  assert.ok(stages.length >= 2, 'a multi-stage build');
  const final = stages.at(-1)!;
  assert.match(stages[0]!, /npm run build/);
  assert.match(stages[0]!, /npm prune --omit=dev/);
  assert.match(final, /^CMD \["node", "--max-semi-space-size=1", "dist\/worker\/main\.js"\]$/m);
  assert.doesNotMatch(final, /COPY (src|tsconfig)|tsx|npm (ci|install)(?! --omit=dev)/, 'no sources, compiler or dev install in the final image');
});
