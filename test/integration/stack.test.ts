// The dev stack itself, on ports and a data dir of its own so that it can be taken down here
// without disturbing the test stack the other tests use.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { execa } from 'execa';
import { isAlive } from '../../scripts/lib/daemon.js';
import { readAccounts } from '../../scripts/lib/keystone.js';
import { clientEnv, services, stackConfig } from '../../scripts/lib/stack.js';
import { SEARCH_ATTRIBUTES } from '../../src/shared/names.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { freePorts } from '../support/ports.js';

const dataDir = mkdtempSync(join(tmpdir(), 'vmsnap-stack-test-'));
// Ports free when the test runs: fixed ones would collide with another stack on the machine.
const [temporalPort, uiPort, glancePort, postgresPort, keystonePort, apiPort] = await freePorts(6);
const cfg = stackConfig({
  ...process.env,
  VMSNAP_DATA_DIR: dataDir,
  VMSNAP_TEMPORAL_PORT: String(temporalPort),
  VMSNAP_TEMPORAL_UI_PORT: String(uiPort),
  VMSNAP_GLANCE_PORT: String(glancePort),
  VMSNAP_POSTGRES_PORT: String(postgresPort),
  VMSNAP_KEYSTONE_PORT: String(keystonePort),
  VMSNAP_API_PORT: String(apiPort),
});
const passfile = join(dataDir, 'postgresql.pgpass');
const stack = services(cfg);

/**
 * Pids of processes whose command line mentions our data dir, and of their children (postgres
 * names its children "postgres: checkpointer" and the like): they are ours.
 */
function processesOfOurs(): number[] {
  const parents = new Map<number, number>();
  const ours = new Set<number>();
  for (const d of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parents.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
      if (readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(dataDir)) ours.add(Number(d));
    } catch {
      /* gone meanwhile */
    }
  }
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, parent] of parents) {
      if (!ours.has(pid) && ours.has(parent)) {
        ours.add(pid);
        grew = true;
      }
    }
  }
  return [...ours].filter(isAlive);
}

/** The stack's PostgreSQL answers real queries through the URL clients are given. */
async function postgresAnswers(): Promise<string[]> {
  const store = new PostgresStore(clientEnv(cfg).VMSNAP_POSTGRES_URL!);
  try {
    await store.migrate();
    await store.registerHost('stack-test', 'vmsnap-host-stack-test');
    return (await store.listHosts()).map((h) => h.host);
  } finally {
    await store.close();
  }
}

describe('dev stack', { timeout: 400_000 }, () => {
  after(async () => {
    for (const s of [...stack].reverse()) await s.down().catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('comes up, and every service answers', async () => {
    for (const s of stack) assert.equal((await s.up()).healthy, true, `${s.name} is not healthy`);

    const ns = await execa(cfg.temporalBin, ['operator', 'search-attribute', 'list', '--address', `127.0.0.1:${temporalPort}`]);
    for (const name of Object.values(SEARCH_ATTRIBUTES)) assert.match(ns.stdout, new RegExp(`${name}\\s+Keyword`));

    const ui = await fetch(`http://127.0.0.1:${uiPort}/`);
    assert.equal(ui.status, 200);
    assert.match(await ui.text(), /<html/i);

    // Glance sits behind Keystone: nothing without a token, the image list with one from the
    // clouds.yaml the stack wrote, read by openstacksdk itself (the openstack CLI).
    const anonymous = await fetch(`http://127.0.0.1:${glancePort}/v2/images`);
    assert.equal(anonymous.status, 401);
    const cloudEnv = { ...process.env, ...clientEnv(cfg) };
    assert.equal(cloudEnv.OS_CLOUD, 'vmsnap');
    for (const file of [cloudEnv.OS_CLIENT_CONFIG_FILE!, cloudEnv.OS_CLIENT_SECURE_FILE!]) assert.equal(statSync(file).mode & 0o777, 0o600, file);
    const accounts = readAccounts(dataDir)!;
    const api = accounts.api!;
    const secrets = [
      accounts.adminPassword,
      accounts.glancePassword,
      accounts.vmsnapPassword,
      accounts.applicationCredentialSecret,
      api.servicePassword,
      api.otherPassword,
      api.readerPassword,
    ];
    assert.ok(
      secrets.every((s) => s.length >= 20),
      'passwords and the application credential secret were made',
    );
    const cloudsYaml = readFileSync(cloudEnv.OS_CLIENT_CONFIG_FILE!, 'utf8');
    for (const secret of secrets) assert.ok(!cloudsYaml.includes(secret), 'clouds.yaml holds no secret: they are in secure.yaml');
    const token = await execa('openstack', ['token', 'issue', '-f', 'value', '-c', 'id'], { env: cloudEnv });
    const images = await fetch(`http://127.0.0.1:${glancePort}/v2/images`, { headers: { 'x-auth-token': token.stdout.trim() } });
    assert.equal(images.status, 200);
    assert.ok(Array.isArray(((await images.json()) as { images: unknown }).images));
    const appcred = await execa('openstack', ['--os-cloud', 'vmsnap-appcred', 'catalog', 'show', 'image', '-f', 'json'], { env: cloudEnv });
    assert.ok(appcred.stdout.includes(`http://127.0.0.1:${glancePort}`), appcred.stdout);

    // vmsnap's compute API: in the catalog as Nova is, its versions open, the rest behind Keystone.
    const compute = await execa('openstack', ['catalog', 'show', 'compute', '-f', 'json'], { env: cloudEnv });
    assert.ok(compute.stdout.includes(`http://127.0.0.1:${apiPort}/v2.1`), compute.stdout);
    assert.equal((await fetch(`http://127.0.0.1:${apiPort}/`)).status, 200);
    assert.equal((await fetch(`http://127.0.0.1:${apiPort}/v2.1/servers`)).status, 401);
    const servers = await fetch(`http://127.0.0.1:${apiPort}/v2.1/servers`, { headers: { 'x-auth-token': token.stdout.trim() } });
    assert.equal(servers.status, 200);

    const virsh = await execa('virsh', ['-c', cfg.libvirtUri, 'version']);
    assert.match(virsh.stdout, /Running hypervisor: QEMU/);

    assert.deepEqual(await postgresAnswers(), ['stack-test']);
    assert.equal(statSync(passfile).mode & 0o777, 0o600);
    assert.equal(statSync(join(dataDir, 'postgresql')).mode & 0o777, 0o700);
    const password = readFileSync(passfile, 'utf8').trim().split(':').slice(4).join(':');
    assert.ok(password.length >= 32);
    const shown = JSON.stringify([clientEnv(cfg), ...(await Promise.all(stack.map((s) => s.status())))]);
    assert.ok(!shown.includes(password), 'the password is never in the env or the status');
    const env = await execa('node_modules/.bin/tsx', ['scripts/stack.ts', 'env'], {
      env: { VMSNAP_DATA_DIR: dataDir, VMSNAP_POSTGRES_PORT: String(postgresPort) },
    });
    assert.match(env.stdout, new RegExp(`^export VMSNAP_POSTGRES_URL=postgresql://vmsnap@127\\.0\\.0\\.1:${postgresPort}/vmsnap\\?passfile=`, 'm'));
    assert.match(env.stdout, /^export OS_CLOUD=vmsnap$/m);
    assert.match(env.stdout, new RegExp(`^export OS_CLIENT_CONFIG_FILE=${dataDir}/clouds.yaml$`, 'm'));
    assert.ok(!env.stdout.includes(password));
    for (const secret of secrets) assert.ok(!env.stdout.includes(secret) && !shown.includes(secret), 'no Keystone secret in the env or the status');
  });

  it('up a second time is harmless and keeps the same processes', async () => {
    const before = (await Promise.all(stack.map((s) => s.status()))).map((s) => s.pid);
    const again = await Promise.all(stack.map((s) => s.up()));
    assert.deepEqual(
      again.map((s) => s.pid),
      before,
    );
    assert.ok(again.every((s) => s.healthy));
  });

  it('postgresql keeps its data and its password across a restart', async () => {
    const postgres = stack.find((s) => s.name === 'postgresql')!;
    const password = readFileSync(passfile, 'utf8');
    assert.match(await postgres.down(), /postgresql: stopped \(pid \d+\)/);
    assert.equal((await postgres.status()).healthy, false);
    assert.equal((await postgres.up()).healthy, true);
    assert.equal(readFileSync(passfile, 'utf8'), password);
    assert.deepEqual(await postgresAnswers(), ['stack-test']);
  });

  it('refuses a port in use by someone else, naming the port', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const taken = (blocker.address() as { port: number }).port;
    try {
      const other = stackConfig({ ...process.env, VMSNAP_DATA_DIR: join(dataDir, 'other'), VMSNAP_GLANCE_PORT: String(taken) });
      const glance = services(other).find((s) => s.name === 'glance');
      await assert.rejects(glance!.up(), new RegExp(`port ${taken} .* in use`));
    } finally {
      blocker.close();
    }
  });

  it('down leaves no process of ours running', async () => {
    assert.ok(processesOfOurs().length > 0, 'the stack should be running before down');
    for (const s of [...stack].reverse()) await s.down();
    assert.deepEqual(processesOfOurs(), []);
    const statuses = await Promise.all(stack.filter((s) => s.name !== 'libvirt').map((s) => s.status()));
    assert.ok(statuses.every((s) => !s.healthy && s.pid === undefined));
  });
});
