// docker-compose.yml is validated offline: no Docker engine runs here, but the file must parse
// and describe the deployment the README promises.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { it } from 'node:test';
import { execa } from 'execa';

it('docker-compose.yml validates and names the deployment services', async () => {
  const { stdout } = await execa('docker-compose', ['-f', 'docker-compose.yml', 'config']);
  for (const service of ['postgresql', 'temporal', 'temporal-ui', 'vmsnap-worker']) {
    assert.match(stdout, new RegExp(`^  ${service}:`, 'm'), `service ${service} missing`);
  }
  const services = (await execa('docker-compose', ['-f', 'docker-compose.yml', 'config', '--services'])).stdout.split('\n');
  assert.equal(services.length, 4);
  assert.ok(existsSync('Dockerfile'), 'the worker service builds from ./Dockerfile');
});
