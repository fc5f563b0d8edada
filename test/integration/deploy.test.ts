// vmsnap as it is deployed, not as a developer runs it: a copy of the project holding only what
// the container's final stage holds (package.json, the lockfile, production dependencies from
// `npm ci --omit=dev`, the built dist/ and bin/): no sources, no tsx, no compiler. From that copy,
// the container's command line (read from docker-compose.yml) runs the main worker, the host
// unit's ExecStart (deploy/systemd) runs the host worker, and the copy's own `vmsnap snapshot
// --wait` snapshots a real guest into the real Glance. There is no Docker engine here: this is
// the honest stand-in for running the image.
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { parse } from 'yaml';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { readAccounts } from '../../scripts/lib/keystone.js';
import { ROOT } from '../support/cli.js';
import { closeTestCloud, stackGlanceUrl, testCloud } from '../support/cloud.js';
import { startWorkerProcess, type WorkerProcess } from '../support/worker-process.js';

const guestName = `vmsnap-test-deploy-${process.pid}`;
const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-deploy-'));
const app = join(dir, 'app');
let guest: Guest;
let imageId: string | undefined;
const workers: WorkerProcess[] = [];

/** The environment of a deployed worker: the test stack's endpoints and nothing of the test run's own. */
function deployedEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !/^(TEMPORAL_|VMSNAP_|OS_CLIENT_|NODE_OPTIONS$)/.test(k)) env[k] = v;
  // As the units hand them over: the stack's clouds.yaml and secure.yaml as credential files.
  const credentials = join(dir, 'credentials');
  mkdirSync(credentials, { recursive: true, mode: 0o700 });
  for (const [file, from] of [
    ['clouds.yaml', process.env.OS_CLIENT_CONFIG_FILE],
    ['secure.yaml', process.env.OS_CLIENT_SECURE_FILE],
  ] as const) {
    assert.ok(from, `the test stack names its ${file}`);
    writeFileSync(join(credentials, file), readFileSync(from), { mode: 0o400 });
  }
  return {
    ...env,
    NODE_ENV: 'production',
    MALLOC_ARENA_MAX: '2', // as the image and the units set it
    TEMPORAL_ADDRESS: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233',
    TEMPORAL_NAMESPACE: 'default',
    OS_CLOUD: process.env.OS_CLOUD ?? 'vmsnap',
    OS_CLIENT_CONFIG_FILE: join(credentials, 'clouds.yaml'),
    OS_CLIENT_SECURE_FILE: join(credentials, 'secure.yaml'),
    VMSNAP_HOST: `test-deploy-${process.pid}`,
    VMSNAP_TASK_QUEUE: `vmsnap-test-deploy-${process.pid}`,
    VMSNAP_DATA_DIR: join(dir, 'data'),
    VMSNAP_SNAPSHOTS_DIR: join(dir, 'data', 'snapshots'),
    VMSNAP_RECONCILE_INTERVAL_MS: '0', // no schedule left behind on the shared Temporal
    VMSNAP_METRICS_ADDRESS: 'off', // two workers on one machine
    VMSNAP_DEFAULT_MODE: 'cold',
  };
}

/** The container's command line, as docker-compose.yml gives it. */
async function composeCommand(): Promise<string[]> {
  const { stdout } = await execa('docker-compose', ['-f', 'docker-compose.yml', 'config'], { cwd: ROOT });
  const command = (parse(stdout) as { services: Record<string, { command?: string[] }> }).services['vmsnap-worker']?.command;
  assert.ok(Array.isArray(command), 'the vmsnap-worker service has a command');
  return command;
}

/** The host unit's ExecStart, with the install dir (/opt/vmsnap) being this copy. */
function hostUnitCommand(): string[] {
  const unit = readFileSync(join(ROOT, 'deploy/systemd/vmsnap-host-worker.service'), 'utf8');
  const line = /^ExecStart=(.+)$/m.exec(unit)?.[1];
  assert.ok(line, 'the host unit has an ExecStart');
  return line.split(/\s+/).map((arg) => arg.replace(/^\/opt\/vmsnap\//, `${app}/`));
}

describe('deployed form: production dependencies and dist/ only', { timeout: 900_000 }, () => {
  before(async () => {
    for (const built of ['dist/worker/main.js', 'dist/client/cli/index.js', 'dist/workflow-bundle.js']) {
      assert.ok(existsSync(join(ROOT, built)), `${built} is missing: scripts/setup builds it (npm run build)`);
    }
    mkdirSync(app);
    for (const part of ['package.json', 'package-lock.json', 'bin', 'dist']) cpSync(join(ROOT, part), join(app, part), { recursive: true });
    // Native modules build against the local Node headers: no header download is reachable.
    await execa('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund', '--prefer-offline'], {
      cwd: app,
      env: { npm_config_nodedir: process.env.npm_config_nodedir ?? '/usr' },
      timeout: 600_000,
    });
    mkdirSync(join(dir, 'data', 'snapshots'), { recursive: true });
    chmodSync(dir, 0o711); // QEMU's user reaches copy targets below it
    guest = await createGuest({ name: guestName, guestsDir: join(dataDir, 'guests'), assetsDir: join(dataDir, 'guest-assets') });
  });

  after(async () => {
    for (const w of workers) await w.stop();
    await removeGuest(guestName, join(dataDir, 'guests')).catch(() => undefined);
    if (imageId) await (await testCloud()).imageService.deleteImage(imageId).catch(() => undefined);
    await closeTestCloud();
    rmSync(dir, { recursive: true, force: true });
  });

  it('holds no development dependency and no sources', () => {
    // (@types/node does come, through protobufjs of @grpc/proto-loader: a dependency of theirs.)
    for (const dev of ['tsx', 'typescript', 'eslint', 'typescript-eslint', '@temporalio/testing', 'playwright-core', '@types/better-sqlite3']) {
      assert.ok(!existsSync(join(app, 'node_modules', dev)), `${dev} was installed`);
    }
    assert.ok(!existsSync(join(app, 'src')));
    assert.ok(existsSync(join(app, 'node_modules', '@temporalio', 'envconfig')));
  });

  it("runs the container's main worker and the host unit's worker, and snapshots a guest with its own vmsnap", async () => {
    const env = deployedEnv();
    const main = await composeCommand();
    assert.equal(main[0], 'node');
    assert.ok(main.includes('dist/worker/main.js'), 'the container runs the compiled worker');
    workers.push(startWorkerProcess(env, { command: main, cwd: app }));
    workers.push(startWorkerProcess(env, { command: hostUnitCommand(), cwd: app }));
    const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    const expected = [
      { roles: ['main'], queues: [env.VMSNAP_TASK_QUEUE] },
      { roles: ['host'], queues: [`vmsnap-host-${env.VMSNAP_HOST}`, `vmsnap-host-${env.VMSNAP_HOST}-slots`] },
    ];
    for (const [i, w] of workers.entries()) {
      // One start-up line that says what runs and where it points.
      const line = await w.waitForLine(/vmsnap worker started/, 60_000);
      const before = w.lines.slice(0, w.lines.indexOf(line));
      assert.deepEqual(before, [], 'the start-up is one line');
      const started = JSON.parse(line) as Record<string, unknown>;
      assert.equal(started.version, version);
      assert.deepEqual(started.roles, expected[i]!.roles);
      assert.deepEqual(started.queues, expected[i]!.queues);
      assert.equal(started.host, env.VMSNAP_HOST);
      assert.equal(started.temporal, env.TEMPORAL_ADDRESS);
      assert.equal(started.glance, await stackGlanceUrl(), 'Glance from the catalog');
      assert.match(String(started.identity), /^user vmsnap on project vmsnap at https:/);
    }

    const run = await execa(process.execPath, ['bin/vmsnap.js', 'snapshot', guest.uuid, '--name', `vmsnap-test-deploy-${process.pid}`, '--wait', '--json'], {
      cwd: app,
      env,
      extendEnv: false,
      reject: false,
      timeout: 300_000,
      stdin: 'ignore',
    });
    assert.equal(run.exitCode, 0, `vmsnap snapshot: exit ${run.exitCode}\n${run.stdout}\n${run.stderr}`);
    const doc = JSON.parse(run.stdout) as { imageId: string; status: string; result: { sha512: string } };
    imageId = doc.imageId;
    assert.equal(doc.status, 'completed');
    const image = await (await testCloud()).imageService.getImage(doc.imageId);
    assert.equal(image?.status, 'active');
    assert.equal(image?.os_hash_value, doc.result.sha512);

    // A clean stop on SIGTERM, as systemd and the container engine send it.
    for (const w of workers) await w.stop('SIGTERM');
    for (const w of workers) assert.equal(w.proc.exitCode, 0, `worker exit ${w.proc.exitCode ?? w.proc.signalCode}:\n${w.lines.slice(-10).join('\n')}`);

    // Nothing an operator should learn to ignore, and no secret.
    const accounts = readAccounts(dataDir);
    assert.ok(accounts);
    for (const w of workers) {
      for (const line of w.lines) {
        let level: unknown;
        try {
          level = (JSON.parse(line) as { level?: unknown }).level;
        } catch {
          assert.fail(`a line that is not JSON: ${line}`);
        }
        assert.ok(level !== 'WARN' && level !== 'ERROR', `worker logged ${String(level)}: ${line}`);
        for (const secret of [accounts.vmsnapPassword, accounts.applicationCredentialSecret])
          assert.ok(!line.includes(secret), 'a Keystone secret appears in the logs');
      }
    }
  });
});
