// The seed's dialog, for real: Horizon (Debian's openstack-dashboard, started through the stack)
// in a headless Chromium, against the stack's Keystone, Glance and vmsnap's compute API, with real
// workers and a real guest owned by the stack's vmsnap project. Log in, see the guest on the
// Instances page, Create Snapshot, find it on the Images page and in Glance with vmsnap's verified
// hash, Rebuild Instance from it; then another project's user sees nothing. Any error banner on
// any page, a server error from Horizon or a request to anywhere but loopback fails the test.
// Screenshots: build/horizon/*.png.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { createGuest, guestState, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { syncInventory } from '../../src/activities/inventory.js';
import { restoreWorkflowId, snapshotWorkflowId } from '../../src/shared/names.js';
import type { SnapshotResult } from '../../src/shared/types.js';
import { launchChromium, noChromium } from '../support/browser.js';
import { stopLeftoverSnapshots } from '../support/cli.js';
import { closeTestCloud, stackGlanceUrl } from '../support/cloud.js';
import { apiRequest, issueToken, stackApi, startApiWorkers, type StackApi } from '../support/compute-api.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import type { Harness } from '../support/harness.js';
import { startStackHorizon, type StackHorizon } from '../support/horizon.js';
import { downloadImage } from '../support/images.js';
import { until } from '../support/until.js';

const skip = noChromium;
// Horizon's pages take seconds each here: looked at twice a second, not four times.
const PAGE_POLL_MS = 500;
if (skip) console.log(`# horizon.test.ts skipped: ${skip}`);

const tag = randomBytes(3).toString('hex');
const SHOTS = join(process.cwd(), 'build', 'horizon');

describe("Horizon's Create Snapshot and Rebuild Instance on vmsnap", { timeout: 30 * 60_000, skip }, () => {
  let api: StackApi;
  let horizon: StackHorizon;
  let h: Harness;
  let proxy: FaultProxy;
  let guest: Guest;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  /** Server errors Horizon answered, on any page: each fails the test. */
  const serverErrors: string[] = [];
  /** What a page asked of anywhere but loopback: nothing should be. */
  const outside: string[] = [];
  const snapshotName = `vmsnap-test-horizon-${tag}`;
  let snapshot: SnapshotResult;
  let atImage: number;

  /** Who is logged in on each page, to log in again when Horizon's Keystone token runs out. */
  const users = new Map<Page, { user: string; password: string }>();

  /** A fresh browser session of one of the stack's users, logged in through Horizon's form. */
  async function logIn(user: string, password: string): Promise<{ context: BrowserContext; page: Page }> {
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const p = await ctx.newPage();
    p.on('request', (req) => {
      const { protocol, hostname } = new URL(req.url());
      if (/^https?:$/.test(protocol) && hostname !== '127.0.0.1') outside.push(req.url());
    });
    p.on('response', (res) => {
      if (res.url().startsWith(horizon.url) && res.status() >= 500) serverErrors.push(`${res.status()} ${res.request().method()} ${res.url()}`);
    });
    users.set(p, { user, password });
    await open(p, '/project/');
    return { context: ctx, page: p };
  }

  /**
   * Opens a page of Horizon's with a session just made: Horizon's session lasts as long as its
   * Keystone token, and the test stack's tokens live 30 s (VMSNAP_KEYSTONE_TOKEN_LIFETIME), so each
   * step logs in again first (out, then the login form with the page as `next`), as a user would.
   */
  async function open(p: Page, path: string): Promise<void> {
    const { user, password } = users.get(p)!;
    await p.goto(`${horizon.url}/auth/logout/`);
    await p.goto(`${horizon.url}/auth/login/?next=${encodeURIComponent(path)}`);
    await p.fill('#id_username', user);
    await p.fill('#id_password', password);
    await Promise.all([p.waitForURL((url) => !url.pathname.startsWith('/auth/'), { timeout: 60_000 }), p.click('#loginBtn')]);
    assert.equal(new URL(p.url()).pathname.replace(/\/$/, ''), path.replace(/\/$/, ''), `${user} logged in and on ${path}`);
    await noErrorBanner(p, `${path} as ${user}`);
  }

  /** Horizon's error banners: Django's messages of level error and Angular's toasts are .alert-danger. */
  async function noErrorBanner(p: Page, where: string): Promise<void> {
    await p.waitForLoadState('networkidle');
    const banners = await p.locator('.alert-danger:visible').allInnerTexts();
    assert.deepEqual(banners, [], `no error banner on ${where}`);
    assert.deepEqual(serverErrors, [], `no server error from Horizon (${where})`);
    assert.deepEqual(outside, [], `nothing asked of anywhere but loopback (${where})`);
  }

  /**
   * Submits a modal form of Horizon's: it posts through XHR, then opens the page the answer names
   * (which may be the one it is on). By then Horizon has had the API's 202.
   */
  async function submitModal(p: Page, action: RegExp): Promise<void> {
    const answered = p.waitForResponse((res) => res.request().method() === 'POST' && action.test(new URL(res.url()).pathname), { timeout: 180_000 });
    const loaded = p.waitForEvent('load', { timeout: 240_000 });
    await p.locator('.modal:visible .modal-footer [type=submit]').click();
    const res = await answered;
    assert.ok(res.status() < 400, `Horizon answered ${res.status()} to ${res.url()}`);
    await loaded;
    await p.waitForLoadState('networkidle');
  }

  async function shot(p: Page, name: string): Promise<void> {
    await p.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  }

  /** The guest's row on the Instances page, once it shows `text` (the page is reloaded until then). */
  async function instanceRow(p: Page, text: RegExp, ms = 120_000) {
    const row = p.locator(`#instances__row__${guest.uuid}`);
    await until(
      `the Instances page showing ${text}`,
      ms,
      async () => {
        await open(p, '/project/instances/');
        return (await row.count()) === 1 && text.test(await row.innerText());
      },
      PAGE_POLL_MS,
    );
    return row;
  }

  before(async () => {
    api = stackApi();
    mkdirSync(SHOTS, { recursive: true });
    horizon = await startStackHorizon();
    // Glance behind a proxy that can take the snapshot's data slowly, so that its task state is there to see.
    proxy = await startFaultProxy(await stackGlanceUrl());
    // The workers behind the stack's API: its task queue and store, as Nova's service user.
    h = await startApiWorkers(api, { name: 'horizon', glanceUrl: proxy.url, glanceStallMs: 300_000 });
    guest = await createGuest({ name: `vmsnap-test-horizon-${tag}`, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
    await syncInventory({ hypervisor: h.hypervisor, store: h.store, host: h.config.host });
    browser = await launchChromium();
    ({ context, page } = await logIn('vmsnap', api.accounts.vmsnapPassword));
  });

  after(async () => {
    await browser?.close();
    // A run left going by a failed test is cancelled (its undo steps run) while the workers are here.
    if (h) await stopLeftoverSnapshots(h);
    await removeGuest(guest?.name ?? `vmsnap-test-horizon-${tag}`, h?.guestsDir ?? join(api.dataDir, 'guests')).catch(() => undefined);
    // The stack's store then knows it is gone: no Instances page lists it after this test.
    if (h) await syncInventory({ hypervisor: h.hypervisor, store: h.store, host: h.config.host }).catch(() => undefined);
    // The harness deletes the images its workers made: the snapshot.
    await h?.close();
    await proxy?.close();
    await horizon?.close();
    await closeTestCloud();
  });

  it('the Instances page lists the guest with its status, task state and power state', async () => {
    const row = await instanceRow(page, /Active/);
    const cells = await row.locator('td').allInnerTexts();
    const text = cells.join(' | ');
    assert.ok(cells.includes(guest.name), text);
    assert.ok(cells.includes('Active'), `status Active: ${text}`);
    assert.ok(cells.includes('None'), `task state None: ${text}`);
    assert.ok(cells.includes('Running'), `power state Running: ${text}`);
    await shot(page, '1-instances');
    await noErrorBanner(page, 'the Instances page');
  });

  it('Create Snapshot: the Instances page shows its task state; the Images page shows it as a snapshot, active; Glance holds it with the sha512 vmsnap verified', async () => {
    await instanceRow(page, /Active/);
    // Glance takes the data over 90 s: the task state stays image_uploading that long, time enough
    // for Horizon's pages, which take seconds each on a busy machine.
    proxy.setRule({ kind: 'stretch', ms: 90_000, method: 'PUT', path: /\/file$/, times: 1 });
    await page.click(`#instances__row_${guest.uuid}__action_snapshot`);
    const modal = page.locator('.modal:visible');
    await modal.locator('#id_name').fill(snapshotName);
    await shot(page, '2-create-snapshot');
    await submitModal(page, /\/project\/images\/[^/]+\/create\/?$/);
    await noErrorBanner(page, 'the page after Create Snapshot');
    const busy = await instanceRow(page, /Image Uploading/, 90_000);
    const busyCells = (await busy.locator('td').allInnerTexts()).map((c) => c.trim());
    assert.ok(busyCells.includes('Image Uploading'), `the task column: ${busyCells.join(' | ')}`);
    await shot(page, '2b-instances-task-state');
    await noErrorBanner(page, 'the Instances page while the snapshot runs');

    // The run Horizon's request started through the API, to its end.
    snapshot = (await h.client.workflow.getHandle(snapshotWorkflowId(guest.uuid)).result()) as SnapshotResult;
    const record = await h.glance.getImage(snapshot.imageId);
    assert.equal(record?.name, snapshotName);
    assert.equal(record?.image_type, 'snapshot');
    assert.equal(record?.instance_uuid, guest.uuid);
    assert.equal(record?.owner, api.accounts.vmsnapProjectId);
    assert.equal(record?.os_hash_algo, 'sha512');
    assert.equal(record?.os_hash_value, snapshot.sha512, "Glance's hash is the one vmsnap verified");
    // And the bytes are those: hashed again on the way down, and the guest's counter read from them.
    const downloaded = await downloadImage(h.glanceUrl, snapshot.imageId);
    try {
      assert.equal(downloaded.sha512, snapshot.sha512);
      atImage = (await readCounter(downloaded.path, 'qcow2')).a;
    } finally {
      rmSync(downloaded.path, { force: true });
    }
    assert.ok(atImage > 0, 'the snapshot holds a counting guest');

    const row = page.locator('tr', { hasText: snapshotName });
    await until(
      'the Images page showing the snapshot active',
      120_000,
      async () => {
        await open(page, '/project/images');
        // The Angular table has a detail row under each row, with the name too: the first is the row.
        return (await row.count()) >= 1 && /Active/.test(await row.first().innerText());
      },
      PAGE_POLL_MS,
    );
    const cells = (await row.first().locator('td').allInnerTexts()).map((c) => c.trim());
    assert.ok(cells.includes('Snapshot'), `type Snapshot: ${cells.join(' | ')}`);
    assert.ok(cells.includes('Active'), `status Active: ${cells.join(' | ')}`);
    await shot(page, '3-images');
    await noErrorBanner(page, 'the Images page');
  });

  it('Rebuild Instance from the snapshot: the guest runs on it again, its counter restarted from the snapshot', async () => {
    assert.ok(snapshot, 'the snapshot test ran');
    const before = (await readCounter(guest.diskPath, 'qcow2')).a;
    assert.ok(before > atImage, `the guest counted on after the snapshot (${before} > ${atImage})`);
    const row = await instanceRow(page, /Active/);
    // Rebuild is in the row's menu.
    await row.locator('.dropdown-toggle').click();
    await row.locator(`#instances__row_${guest.uuid}__action_rebuild`).click();
    const modal = page.locator('.modal:visible');
    await modal.locator('#id_image').selectOption(snapshot.imageId);
    await shot(page, '4-rebuild');
    await submitModal(page, /\/rebuild$/);
    await noErrorBanner(page, 'the page after Rebuild Instance');

    await h.client.workflow.getHandle(restoreWorkflowId(guest.uuid)).result();
    assert.equal(await guestState(guest.name), 'running');
    // The counter went back to the snapshot's and counts on from there.
    const now = await until(
      'the guest counting again',
      120_000,
      async () => {
        const c = (await readCounter(guest.diskPath, 'qcow2')).a;
        return c > 0 && c;
      },
      PAGE_POLL_MS,
    );
    assert.ok(now >= atImage && now < before, `the counter restarted from the snapshot's ${atImage} (now ${now}, before the rebuild ${before})`);
    const shown = await apiRequest('GET', `/v2.1/servers/${guest.uuid}`, { token: await issueToken('vmsnap', api.accounts.vmsnapPassword, 'vmsnap') });
    assert.equal(shown.body.server.status, 'ACTIVE');
    assert.equal(shown.body.server['OS-EXT-STS:task_state'], null);
    await instanceRow(page, /Active[\s\S]*None/);
    await shot(page, '5-instances-after-rebuild');
    await noErrorBanner(page, 'the Instances page after the rebuild');
  });

  it("another project's user does not see the guest on its Instances page", async () => {
    const other = await logIn('vmsnap-other', api.accounts.api.otherPassword);
    try {
      await open(other.page, '/project/instances/');
      // The page is the other project's, and it lists nothing of ours.
      assert.match(await other.page.locator('body').innerText(), /vmsnap-other/);
      assert.equal(await other.page.locator(`#instances__row__${guest.uuid}`).count(), 0);
      assert.match(await other.page.locator('#instances').innerText(), /No items to display/);
      assert.doesNotMatch(await other.page.locator('table').first().innerText(), new RegExp(guest.name));
      await shot(other.page, '6-other-project-instances');
      await noErrorBanner(other.page, "the other project's Instances page");
    } finally {
      await other.context.close();
    }
    await context.close();
  });
});
