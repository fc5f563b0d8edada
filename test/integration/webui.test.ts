// What an operator sees in Temporal's Web UI after a real snapshot: the workflow list filtered by
// vmsnap's instance search attribute, and the workflow page with the image id and the phase.
// A real headless Chromium drives the real UI; screenshots land in the data dir for a person to check.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { snapshotResult, startSnapshot } from '../../src/client/index.js';
import type { SnapshotResult } from '../../src/shared/types.js';
import { launchChromium, noChromium } from '../support/browser.js';
import { deleteImages, stopLeftoverSnapshots } from '../support/cli.js';
import { startHarness, type Harness } from '../support/harness.js';

const skip = noChromium;
if (skip) console.log(`# webui.test.ts skipped: ${skip}`);

const guestName = `vmsnap-test-webui-${process.pid}`;
let h: Harness;
let guest: Guest;
let browser: Browser | undefined;
let result: SnapshotResult;
let workflowId: string;
let shots: string;
let details: string;

/** The Web UI's list filtered by a query, reloaded until `text` shows (visibility lags a little). */
async function openListUntil(page: Page, url: string, text: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    await page.goto(url);
    try {
      await page.getByRole('link', { name: text, exact: true }).first().waitFor({ timeout: 5000 });
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
  }
}

describe('the Temporal Web UI shows a snapshot', { timeout: 400_000, skip }, () => {
  before(async () => {
    const ui = process.env.VMSNAP_TEMPORAL_UI_URL;
    assert.ok(ui, 'VMSNAP_TEMPORAL_UI_URL names the Web UI (eval "$(npm run -s stack -- env)")');
    h = await startHarness({ name: 'webui' });
    guest = await createGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir, intervalMs: 100 });
    // A name long enough to wrap: the current details then take several lines in the Web UI.
    const imageName = `vmsnap-test-webui-${process.pid} before the schema migration of the web frontend, kept for a week`;
    const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue);
    workflowId = handle.workflowId;
    result = await snapshotResult(handle);
    details = ((await handle.query('__temporal_workflow_metadata')) as { currentDetails: string }).currentDetails;
    shots = join(h.config.dataDir, 'webui');
    mkdirSync(shots, { recursive: true });
    // launch() gives the browser a fresh, temporary profile of its own.
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    if (h) await stopLeftoverSnapshots(h);
    await removeGuest(guestName, h?.guestsDir ?? '').catch(() => undefined);
    if (h && result) await deleteImages(h, [result.imageId]);
    await h?.close();
  });

  it('lists the workflow by VmsnapInstanceId, and its page shows the image id and the phase', async () => {
    const ui = process.env.VMSNAP_TEMPORAL_UI_URL!.replace(/\/+$/, '');
    const page = await browser!.newPage({ viewport: { width: 1600, height: 1000 } });

    const query = `VmsnapInstanceId="${guest.uuid}"`;
    await openListUntil(page, `${ui}/namespaces/${h.config.temporal.namespace}/workflows?query=${encodeURIComponent(query)}`, workflowId);
    const row = page.getByRole('row').filter({ hasText: workflowId });
    assert.equal(await row.count(), 1, 'one row: the filter keeps other workflows out');
    assert.match(await row.innerText(), /Completed/);
    assert.match(await row.innerText(), /snapshotInstance/);
    await page.screenshot({ path: join(shots, 'list.png') });

    // From the list to the workflow, as a person would.
    await page.getByRole('link', { name: workflowId, exact: true }).first().click();
    await page.getByRole('heading', { name: workflowId }).waitFor();
    await page.getByText(`"imageId": "${result.imageId}"`).first().waitFor();
    assert.ok((await page.locator('body').innerText()).includes(`"sha512": "${result.sha512}"`), 'the result is shown');
    await page.screenshot({ path: join(shots, 'workflow.png') });

    await page.getByRole('tab', { name: 'Search Attributes' }).click();
    await page.getByText('"VmsnapPhase": "completed"').waitFor();
    const attributes = await page.locator('body').innerText();
    assert.ok(attributes.includes(`"VmsnapImageId": "${result.imageId}"`), attributes);
    assert.ok(attributes.includes(`"VmsnapInstanceId": "${guest.uuid}"`));
    assert.ok(attributes.includes(`"VmsnapHost": "${h.config.host}"`));
    await page.screenshot({ path: join(shots, 'search-attributes.png') });
    console.log(`# screenshots in ${shots}: list.png, workflow.png, search-attributes.png`);
  });

  it('shows the current details whole: every paragraph of them, none cut off at the bottom', async () => {
    const ui = process.env.VMSNAP_TEMPORAL_UI_URL!.replace(/\/+$/, '');
    const page = await browser!.newPage({ viewport: { width: 1600, height: 1000 } });
    await page.goto(`${ui}/namespaces/${h.config.temporal.namespace}/workflows/${workflowId}`);
    await page.getByRole('heading', { name: workflowId }).waitFor();
    await page.getByRole('tab', { name: 'User Metadata' }).click();
    // The UI renders the markdown in an iframe, sets its height once it has loaded, and renders it
    // anew when the details are fetched again: read until one read holds together.
    const deadline = Date.now() + 30_000;
    let shown: { text: string; bottom: number; height: number } | undefined;
    while (!shown) {
      assert.ok(
        Date.now() < deadline,
        `no current details in the Web UI: frames ${page
          .frames()
          .map((f) => f.url())
          .join(', ')}`,
      );
      await page.waitForTimeout(200);
      const sized = (await page.evaluate(`(() => {
        const f = document.querySelector('iframe[title="output"][height]');
        return f ? { src: f.src, height: f.clientHeight } : undefined;
      })()`)) as { src: string; height: number } | undefined;
      const frame = sized && page.frames().find((f) => f.url() === sized.src);
      if (!frame) continue;
      const read = (await frame
        .evaluate(
          `(() => {
            let bottom = 0;
            for (const e of Array.from(document.body.querySelectorAll('*'))) {
              if (e.children.length === 0 && e.textContent.trim()) bottom = Math.max(bottom, e.getBoundingClientRect().bottom);
            }
            return { text: document.body.innerText, bottom, height: window.innerHeight };
          })()`,
        )
        .catch(() => undefined)) as { text: string; bottom: number; height: number } | undefined;
      if (read?.text.includes('task state') && read.height === sized.height) shown = read;
    }
    await page.screenshot({ path: join(shots, 'current-details.png') });

    const paragraphs = details
      .split('\n\n')
      .map((p) => p.replace(/\*\*|`/g, '').trim())
      .filter(Boolean);
    assert.ok(paragraphs.length >= 3, details);
    const text = shown.text.replace(/\s+/g, ' ');
    for (const p of paragraphs) assert.ok(text.includes(p.replace(/\s+/g, ' ')), `"${p}" is not in the Web UI's current details: ${shown.text}`);
    assert.ok(text.includes(result.imageId) && text.includes('before the schema migration of the web frontend, kept for a week'));
    // Every line of text lies inside the iframe: none is cut off by its height.
    assert.ok(shown.bottom <= shown.height, `the last line ends at ${shown.bottom} px, the iframe shows ${shown.height} px: clipped`);
  });
});
