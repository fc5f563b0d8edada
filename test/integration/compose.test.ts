// docker-compose.yml and the Dockerfile are validated offline: no Docker engine runs here, but the
// compose file must parse and describe the deployment the README promises, and the image must run
// the compiled worker from production dependencies (deploy.test.ts runs that very command line).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { it } from 'node:test';
import { execa } from 'execa';
import { parse } from 'yaml';

it('docker-compose.yml validates and names the deployment services', async () => {
  const { stdout } = await execa('docker-compose', ['-f', 'docker-compose.yml', 'config']);
  for (const service of ['postgresql', 'temporal', 'temporal-ui', 'vmsnap-worker']) {
    assert.match(stdout, new RegExp(`^  ${service}:`, 'm'), `service ${service} missing`);
  }
  const services = (await execa('docker-compose', ['-f', 'docker-compose.yml', 'config', '--services'])).stdout.split('\n');
  assert.equal(services.length, 4);
  assert.ok(existsSync('Dockerfile'), 'the worker service builds from ./Dockerfile');
  const worker = (parse(stdout) as { services: Record<string, { command?: string[] }> }).services['vmsnap-worker'];
  assert.deepEqual(worker?.command, ['node', '--max-semi-space-size=1', 'dist/worker/main.js', '--role', 'main']);
});

it('the Dockerfile builds in one stage and runs dist/ with production dependencies in the last', () => {
  const stages = readFileSync('Dockerfile', 'utf8').split(/^FROM /m).slice(1);
  assert.ok(stages.length >= 2, 'a multi-stage build');
  const final = stages.at(-1)!;
  assert.match(stages[0]!, /npm run build/);
  assert.match(stages[0]!, /npm prune --omit=dev/);
  assert.match(final, /^CMD \["node", "--max-semi-space-size=1", "dist\/worker\/main\.js"\]$/m);
  assert.doesNotMatch(final, /COPY (src|tsconfig)|tsx|npm (ci|install)(?! --omit=dev)/, 'no sources, compiler or dev install in the final image');
});
