// latest.svg, drawn by hand (no chart library): left, vmsnap / bare per disk and figure on a log
// scale around 1 with each target's limit marked; right, wall time of concurrent snapshots.
import type { Mode } from './options.js';
import type { BenchResults } from './results.js';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const COLORS = { pass: '#2e7d32', miss: '#c62828', neutral: '#1565c0', grid: '#dddddd', axis: '#555555', text: '#222222' };
const MODE_COLORS: Record<Mode, string> = { bare: '#757575', cold: '#1565c0', live: '#ef6c00' };

interface Row {
  label: string;
  value: number;
  /** Shown as this text instead of a bar (a figure judged in absolute terms, like live's pause). */
  absolute?: { text: string; met: boolean };
  /** The target's limit and direction, when the figure has one here. */
  limit?: { value: number; lowerIsBetter: boolean };
}

function rowsOf(r: BenchResults): { disk: string; rows: Row[] }[] {
  const groups: { disk: string; rows: Row[] }[] = [];
  for (const d of r.summary) {
    const rows: Row[] = [];
    for (const mode of ['cold', 'live'] as const) {
      const q = d.ratios[mode];
      if (!q) continue;
      const livePause = d.modes.live?.pauseMs;
      if (mode === 'live' && livePause !== undefined && Number.isFinite(livePause)) {
        // Live's target is absolute (≤ 50 ms), and its ratio to bare is often 0.
        rows.push({
          label: 'live · pause',
          value: q.pause,
          absolute: { text: `${Math.round(livePause)} ms guest-visible pause (target ≤ 50 ms)`, met: livePause <= 50 },
        });
      } else {
        rows.push({ label: `${mode} · pause`, value: q.pause, limit: mode === 'cold' ? { value: 1.05, lowerIsBetter: true } : undefined });
      }
      rows.push({ label: `${mode} · end-to-end`, value: q.wall, limit: { value: 1.1, lowerIsBetter: true } });
      rows.push({
        label: `${mode} · upload MiB/s`,
        value: q.throughput,
        limit: d.disk === 'large' ? { value: 0.95, lowerIsBetter: false } : undefined,
      });
      rows.push({ label: `${mode} · guest progress`, value: q.progress });
    }
    if (rows.length) groups.push({ disk: d.disk, rows });
  }
  return groups;
}

function ratioPanel(r: BenchResults, x0: number, y0: number, width: number): { svg: string[]; height: number } {
  const groups = rowsOf(r);
  const labelW = 170;
  const plotX = x0 + labelW;
  const plotW = width - labelW - 60;
  const rowH = 22;
  const values = groups.flatMap((g) => g.rows.map((row) => row.value)).filter((v) => Number.isFinite(v) && v > 0);
  // Domain in powers of two, always covering 1/4..4 so small differences do not look huge.
  // Headroom on both sides for the value printed past the bar's end.
  let lo = Math.floor(Math.log2(Math.min(0.25, ...values.map((v) => v / 1.6))));
  let hi = Math.ceil(Math.log2(Math.max(4, ...values.map((v) => v * 1.6))));
  lo = Math.max(lo, -6);
  hi = Math.min(hi, 8);
  const xOf = (v: number) => plotX + ((Math.log2(Math.min(Math.max(v, 2 ** lo), 2 ** hi)) - lo) / (hi - lo)) * plotW;
  const out: string[] = [];
  out.push(
    `<text x="${x0}" y="${y0 + 14}" font-size="14" font-weight="bold" fill="${COLORS.text}">vmsnap ÷ bare, median of ${r.options.runs} run(s) (log scale; 1× = same as bare)</text>`,
  );
  out.push(
    `<text x="${x0}" y="${y0 + 31}" font-size="11" fill="${COLORS.axis}">pause, end-to-end: lower is better · upload, guest progress: higher is better</text>`,
  );
  out.push(
    `<text x="${x0}" y="${y0 + 45}" font-size="11" fill="${COLORS.axis}">black tick: the target’s limit · green: target met · red: missed · blue: no target</text>`,
  );
  const top = y0 + 58;
  const rowsTotal = groups.reduce((a, g) => a + g.rows.length + 1, 0);
  const plotH = rowsTotal * rowH;
  for (let e = lo; e <= hi; e++) {
    const x = xOf(2 ** e);
    out.push(`<line x1="${x}" y1="${top}" x2="${x}" y2="${top + plotH}" stroke="${e === 0 ? COLORS.axis : COLORS.grid}" stroke-width="${e === 0 ? 1.5 : 1}"/>`);
    const label = e >= 0 ? `${2 ** e}×` : `1/${2 ** -e}×`;
    out.push(`<text x="${x}" y="${top + plotH + 16}" font-size="11" text-anchor="middle" fill="${COLORS.axis}">${label}</text>`);
  }
  let y = top;
  for (const g of groups) {
    out.push(`<text x="${x0}" y="${y + 15}" font-size="12" font-weight="bold" fill="${COLORS.text}">${esc(g.disk)} disk</text>`);
    y += rowH;
    for (const row of g.rows) {
      out.push(`<text x="${plotX - 8}" y="${y + 15}" font-size="12" text-anchor="end" fill="${COLORS.text}">${esc(row.label)}</text>`);
      if (row.absolute) {
        const color = row.absolute.met ? COLORS.pass : COLORS.miss;
        out.push(`<circle cx="${xOf(1)}" cy="${y + rowH / 2}" r="5" fill="${color}"/>`);
        out.push(`<text x="${xOf(1) + 10}" y="${y + 15}" font-size="11" fill="${color}">${esc(row.absolute.text)}</text>`);
      } else if (Number.isFinite(row.value) && row.value > 0) {
        const met = row.limit ? (row.limit.lowerIsBetter ? row.value <= row.limit.value : row.value >= row.limit.value) : undefined;
        const color = met === undefined ? COLORS.neutral : met ? COLORS.pass : COLORS.miss;
        const a = xOf(1);
        const b = xOf(row.value);
        out.push(`<rect x="${Math.min(a, b)}" y="${y + 4}" width="${Math.max(1.5, Math.abs(b - a))}" height="${rowH - 8}" fill="${color}" opacity="0.85"/>`);
        const clipped = row.value > 2 ** hi || row.value < 2 ** lo ? '›' : '';
        const tx = row.value >= 1 ? b + 5 : b - 5;
        out.push(
          `<text x="${tx}" y="${y + 15}" font-size="11" text-anchor="${row.value >= 1 ? 'start' : 'end'}" fill="${COLORS.text}">${row.value.toFixed(2)}×${clipped}</text>`,
        );
      } else {
        out.push(`<text x="${xOf(1) + 5}" y="${y + 15}" font-size="11" fill="${COLORS.axis}">not measured</text>`);
      }
      if (row.limit) {
        const lx = xOf(row.limit.value);
        out.push(`<line x1="${lx}" y1="${y + 1}" x2="${lx}" y2="${y + rowH - 1}" stroke="#000000" stroke-width="2"/>`);
      }
      y += rowH;
    }
  }
  return { svg: out, height: plotH + 58 + 24 };
}

function scalePanel(r: BenchResults, x0: number, y0: number, width: number, height: number): string[] {
  const out: string[] = [];
  out.push(`<text x="${x0}" y="${y0 + 14}" font-size="14" font-weight="bold" fill="${COLORS.text}">Concurrent snapshots of small guests: wall time</text>`);
  wrap(`One worker. ${r.worker.hostLimitNote}.`, 75, 2).forEach((line, i) =>
    out.push(`<text x="${x0}" y="${y0 + 31 + i * 14}" font-size="11" fill="${COLORS.axis}">${esc(line)}</text>`),
  );
  if (!r.scale.length) {
    out.push(`<text x="${x0}" y="${y0 + 84}" font-size="12" fill="${COLORS.axis}">not run</text>`);
    return out;
  }
  const px = x0 + 50;
  const py = y0 + 64;
  const pw = width - 70;
  const ph = Math.max(160, height - 100);
  const maxN = Math.max(...r.scale.map((s) => s.n));
  const maxS = Math.max(...r.scale.map((s) => s.wallMs / 1000)) * 1.15 || 1;
  // A little room right of the last level for its label.
  const xOf = (n: number) => px + (n / (maxN * 1.1)) * pw;
  const yOf = (s: number) => py + ph - (s / maxS) * ph;
  const step = niceStep(maxS / 5);
  for (let s = 0; s <= maxS; s += step) {
    out.push(`<line x1="${px}" y1="${yOf(s)}" x2="${px + pw}" y2="${yOf(s)}" stroke="${COLORS.grid}"/>`);
    out.push(`<text x="${px - 6}" y="${yOf(s) + 4}" font-size="11" text-anchor="end" fill="${COLORS.axis}">${fmtNum(s)} s</text>`);
  }
  const levels = [...new Set(r.scale.map((s) => s.n))].sort((a, b) => a - b);
  for (const n of levels) out.push(`<text x="${xOf(n)}" y="${py + ph + 16}" font-size="11" text-anchor="middle" fill="${COLORS.axis}">${n}</text>`);
  out.push(`<text x="${px + pw / 2}" y="${py + ph + 32}" font-size="11" text-anchor="middle" fill="${COLORS.axis}">snapshots at once</text>`);
  out.push(`<line x1="${px}" y1="${py + ph}" x2="${px + pw}" y2="${py + ph}" stroke="${COLORS.axis}"/>`);
  out.push(`<line x1="${px}" y1="${py}" x2="${px}" y2="${py + ph}" stroke="${COLORS.axis}"/>`);
  const modes = [...new Set(r.scale.map((s) => s.mode))];
  modes.forEach((mode, i) => {
    const pts = levels
      .map((n) => {
        const at = r.scale.filter((s) => s.mode === mode && s.n === n);
        if (!at.length) return undefined;
        const walls = at.map((s) => s.wallMs / 1000).sort((a, b) => a - b);
        return { n, s: walls[Math.floor((walls.length - 1) / 2)] as number, failures: at.reduce((a, s) => a + s.failures, 0) };
      })
      .filter((p): p is { n: number; s: number; failures: number } => p !== undefined);
    const color = MODE_COLORS[mode];
    if (pts.length > 1) out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map((p) => `${xOf(p.n)},${yOf(p.s)}`).join(' ')}"/>`);
    for (const p of pts) {
      out.push(`<circle cx="${xOf(p.n)}" cy="${yOf(p.s)}" r="4" fill="${color}"/>`);
      if (p.failures)
        out.push(
          `<text x="${xOf(p.n)}" y="${yOf(p.s) + 16}" font-size="11" font-weight="bold" text-anchor="middle" fill="${COLORS.miss}">✗ ${p.failures}</text>`,
        );
    }
    out.push(`<rect x="${px + 10}" y="${py + 6 + i * 16}" width="12" height="4" fill="${color}"/>`);
    out.push(`<text x="${px + 28}" y="${py + 12 + i * 16}" font-size="11" fill="${COLORS.text}">${mode}</text>`);
  });
  // The values as a table under the chart: labels on close points would overlap.
  const ty = py + ph + 58;
  const colX = (i: number) => px + 40 + i * 110;
  out.push(`<text x="${px}" y="${ty}" font-size="11" font-weight="bold" fill="${COLORS.text}">at once</text>`);
  modes.forEach((mode, i) =>
    out.push(`<text x="${colX(i + 1)}" y="${ty}" font-size="11" font-weight="bold" text-anchor="end" fill="${MODE_COLORS[mode]}">${mode}</text>`),
  );
  levels.forEach((n, row) => {
    const y = ty + 16 * (row + 1);
    out.push(`<text x="${px}" y="${y}" font-size="11" fill="${COLORS.text}">${n}</text>`);
    modes.forEach((mode, i) => {
      const at = r.scale.filter((s) => s.mode === mode && s.n === n);
      if (!at.length) return;
      const walls = at.map((s) => s.wallMs / 1000).sort((a, b) => a - b);
      const failures = at.reduce((a, s) => a + s.failures, 0);
      const text = `${fmtNum(walls[Math.floor((walls.length - 1) / 2)] as number)} s${failures ? ` ✗${failures}` : ''}`;
      out.push(`<text x="${colX(i + 1)}" y="${y}" font-size="11" text-anchor="end" fill="${failures ? COLORS.miss : COLORS.text}">${text}</text>`);
    });
  });
  out.push(
    `<text x="${px}" y="${ty + 16 * (levels.length + 1) + 4}" font-size="10" fill="${COLORS.axis}">wall time, first start to last end (median of rounds); ✗n: n failed</text>`,
  );
  return out;
}

/** Splits text into at most `maxLines` lines of about `width` characters (the last one cut with …). */
function wrap(text: string, width: number, maxLines: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  if (lines.length > maxLines) {
    const kept = lines.slice(0, maxLines);
    kept[maxLines - 1] = `${kept[maxLines - 1]!.slice(0, width - 1)}…`;
    return kept;
  }
  return lines;
}

function niceStep(raw: number): number {
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function fmtNum(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1).replace(/\.0$/, '') : v.toFixed(2).replace(/\.?0+$/, '');
}

export function renderSvg(r: BenchResults): string {
  const width = 1200;
  const left = ratioPanel(r, 20, 70, 680);
  // The scale panel (chart 400 + its table) needs about 600 px.
  const levels = new Set(r.scale.map((s) => s.n)).size;
  const height = Math.max(r.scale.length ? 560 + 16 * levels : 420, 70 + left.height + 60);
  const passed = r.targets.filter((t) => t.pass === true).length;
  const missed = r.targets.filter((t) => t.pass === false).length;
  const na = r.targets.filter((t) => t.pass === null).length;
  const m = r.machine;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="20" y="28" font-size="18" font-weight="bold" fill="${COLORS.text}">vmsnap vs the bare commands (virsh suspend, qemu-img convert, virsh resume, curl)</text>`,
    `<text x="20" y="50" font-size="12" fill="${COLORS.axis}">${esc(`${r.startedAt} · ${m.nproc} CPU, ${(m.memoryMiB / 1024).toFixed(0)} GiB, load ${m.loadAverageStart[0]} → ${m.loadAverageEnd?.[0] ?? '?'} · targets: ${passed} met, ${missed} missed, ${na} not judged · shared, noisy machine`)}</text>`,
    ...left.svg,
    ...scalePanel(r, 730, 70, 450, 400),
    `<text x="20" y="${height - 12}" font-size="11" fill="${COLORS.axis}">${esc(`live mode: ${r.live.available ? 'measured' : `not yet available (${(r.live.reason ?? '').slice(0, 120)})`}`)}</text>`,
    '</svg>',
  ];
  return parts.join('\n') + '\n';
}
