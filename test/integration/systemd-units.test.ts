// The systemd units of deploy/systemd, checked offline: no systemd runs here, but
// `systemd-analyze verify` parses them as systemd would (it ignores a bad line with a message and
// still exits 0, so any message about our units fails), and `security --offline` scores their
// hardening. The settings docs/deployment.md promises are checked by name.
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { execa } from 'execa';
import { ROOT } from '../support/cli.js';

const UNITS = ['vmsnap-host-worker.service', 'vmsnap-main-worker.service', 'vmsnap-api.service'];
const WORKERS = UNITS.slice(0, 2);
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-units-'));
for (const u of UNITS) copyFileSync(join(ROOT, 'deploy/systemd', u), join(dir, u));

/** What `systemd-analyze verify` says about these unit files (other units of the machine aside). */
async function verify(files: string[]): Promise<string[]> {
  const r = await execa('systemd-analyze', ['verify', '--man=no', ...files], { reject: false });
  return `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => files.some((f) => l.includes(f) || l.includes(f.split('/').pop()!)));
}

function settings(unit: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of readFileSync(join(dir, unit), 'utf8').split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!]);
  }
  return out;
}

describe('systemd units (deploy/systemd)', () => {
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('verify finds nothing wrong, and would say so of a broken unit', async () => {
    assert.deepEqual(await verify(UNITS.map((u) => join(dir, u))), []);
    const broken = join(dir, 'vmsnap-broken.service');
    writeFileSync(broken, readFileSync(join(dir, UNITS[0]!), 'utf8').replace('KillMode=control-group', 'KillMode=control-grup'));
    assert.ok(
      (await verify([broken])).some((l) => /kill mode/i.test(l)),
      'verify reports a bad KillMode',
    );
  });

  it('run the compiled worker and API with restart, a clean stop, secrets as credentials', () => {
    for (const unit of UNITS) {
      const s = settings(unit);
      const role = unit.includes('host') ? 'host' : 'main';
      const exec = unit === 'vmsnap-api.service' ? 'dist/api/main.js' : `dist/worker/main.js --role ${role}`;
      assert.deepEqual(s.get('ExecStart'), [`/usr/bin/node --max-semi-space-size=1 /opt/vmsnap/${exec}`], unit);
      assert.deepEqual(s.get('Restart'), ['on-failure'], unit);
      assert.deepEqual(s.get('KillMode'), ['control-group'], unit);
      // A worker's running step needs time to hand over; the API's requests only to finish.
      const stop = WORKERS.includes(unit) ? 60 : 10;
      assert.ok(Number.parseInt(s.get('TimeoutStopSec')?.[0] ?? '0', 10) >= stop, `${unit}: TimeoutStopSec of ${stop} s or more`);
      assert.ok(s.get('EnvironmentFile')?.length, unit);
      for (const file of ['clouds.yaml', 'secure.yaml']) assert.ok(s.get('LoadCredential')?.includes(`${file}:/etc/vmsnap/${file}`), `${unit}: ${file}`);
      assert.ok(s.get('Environment')?.includes('OS_CLIENT_CONFIG_FILE=%d/clouds.yaml OS_CLIENT_SECURE_FILE=%d/secure.yaml'), unit);
      assert.ok(!s.get('Environment')?.some((e) => /TOKEN=|PASSWORD|API_KEY=/.test(e)), `${unit}: no secret in the unit`);
    }
    // The host worker reaches libvirt's socket and writes its state (snapshots) dir, and no more.
    const host = settings(UNITS[0]!);
    assert.deepEqual(host.get('ProtectSystem'), ['strict']);
    assert.ok(host.get('ReadWritePaths')?.includes('-/run/libvirt'));
    assert.deepEqual(host.get('StateDirectory'), ['vmsnap']);
  });

  it('are hardened (systemd-analyze security --offline)', async () => {
    for (const [unit, most] of [
      [UNITS[0]!, 4.0],
      [UNITS[1]!, 2.5],
      [UNITS[2]!, 2.5],
    ] as const) {
      const r = await execa('systemd-analyze', ['security', '--offline=true', '--no-pager', join(dir, unit)], { reject: false });
      const score = Number(/Overall exposure level for \S+: ([\d.]+)/.exec(r.stdout)?.[1]);
      assert.ok(score <= most, `${unit}: exposure ${score} (at most ${most} expected)\n${r.stdout.slice(-2000)}`);
    }
  });
});
