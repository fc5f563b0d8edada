// Debian's Chromium, headless, for the browser tests (the Temporal Web UI, Horizon): Debian's
// package (scripts/setup installs it), driven by playwright-core. Nothing it would fetch on its own
// (updates, sync, QUIC probes) leaves the machine.
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

/** Why a browser test cannot run here (printed as its skip reason), or false. */
export const noChromium = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (run ./scripts/setup, which installs it)`;

/** A headless Chromium with a fresh, temporary profile of its own (launch() makes one each time). */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
