// A PNG of the chart, for looking at it where SVG does not show: rsvg-convert when installed,
// else headless Chromium's screenshot. Best effort: the SVG is the result.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';

export async function renderPng(svgFile: string, pngFile: string, width: number, height: number): Promise<string> {
  const rsvg = await execa('rsvg-convert', ['-o', pngFile, svgFile], { reject: false, timeout: 60_000 });
  if (rsvg.exitCode === 0) return 'rsvg-convert';
  for (const browser of ['chromium', 'chromium-browser', 'google-chrome']) {
    // A profile of its own: no clash with another Chromium, nothing left in $HOME.
    const profile = await mkdtemp(join(tmpdir(), 'vmsnap-bench-chromium-'));
    try {
      const r = await execa(
        browser,
        [
          '--headless',
          '--no-sandbox', // run as root here
          '--disable-gpu',
          '--hide-scrollbars',
          `--user-data-dir=${profile}`,
          `--window-size=${width},${height}`,
          `--screenshot=${pngFile}`,
          pathToFileURL(svgFile).href,
        ],
        { reject: false, timeout: 90_000 },
      );
      if (r.exitCode === 0) return browser;
    } finally {
      await rm(profile, { recursive: true, force: true });
    }
  }
  throw new Error('neither rsvg-convert nor chromium could render the chart');
}
