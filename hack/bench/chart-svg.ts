/**
 * A line chart of pods created over time, one line per system, as a standalone SVG (no dependencies): what
 * docs/benchmarks.md shows for each scenario, drawn from the run's own data.
 */

/** One line: seconds after the row started at which each pod was first seen. */
export interface Series {
  label: string;
  seconds: readonly number[];
}

const COLORS = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
const W = 720;
const H = 360;
const M = { left: 64, right: 16, top: 52, bottom: 44 };

/** A round step for about `n` ticks over `max`: 1, 2 or 5 times a power of ten. */
export function niceStep(max: number, n = 6): number {
  const raw = Math.max(max, 1e-9) / n;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const f = raw / pow;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * pow;
}

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const num = (n: number): string => (Math.round(n * 10) / 10).toString();

/** The cumulative count as at most `points` (x, y) pairs, steps kept. */
function cumulative(seconds: readonly number[], points = 300): [number, number][] {
  const sorted = [...seconds].sort((a, b) => a - b);
  const every = Math.max(1, Math.floor(sorted.length / points));
  const out: [number, number][] = [[0, 0]];
  sorted.forEach((t, i) => {
    if (i % every === 0 || i === sorted.length - 1) out.push([t, i + 1]);
  });
  return out;
}

/** The SVG of `series` under `title`. */
export function podsCreatedChart(title: string, series: readonly Series[]): string {
  const maxT = Math.max(1, ...series.flatMap((s) => s.seconds));
  const maxN = Math.max(1, ...series.map((s) => s.seconds.length));
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const x = (t: number): number => M.left + (t / maxT) * pw;
  const y = (n: number): number => M.top + ph - (n / maxN) * ph;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${String(W)}" height="${String(H)}" viewBox="0 0 ${String(W)} ${String(H)}" font-family="sans-serif" font-size="12">`,
    `<rect width="${String(W)}" height="${String(H)}" fill="#fff"/>`,
    `<text x="${String(M.left)}" y="20" font-size="14" font-weight="bold">${esc(title)}</text>`,
  ];
  const xs = niceStep(maxT);
  for (let t = 0; t <= maxT + 1e-9; t += xs) {
    parts.push(
      `<line x1="${num(x(t))}" y1="${String(M.top)}" x2="${num(x(t))}" y2="${String(M.top + ph)}" stroke="#eee"/>`,
      `<text x="${num(x(t))}" y="${String(M.top + ph + 16)}" text-anchor="middle">${num(t)}</text>`,
    );
  }
  const ys = niceStep(maxN);
  for (let n = 0; n <= maxN + 1e-9; n += ys) {
    parts.push(
      `<line x1="${String(M.left)}" y1="${num(y(n))}" x2="${String(M.left + pw)}" y2="${num(y(n))}" stroke="#eee"/>`,
      `<text x="${String(M.left - 6)}" y="${num(y(n) + 4)}" text-anchor="end">${String(Math.round(n))}</text>`,
    );
  }
  parts.push(
    `<rect x="${String(M.left)}" y="${String(M.top)}" width="${String(pw)}" height="${String(ph)}" fill="none" stroke="#999"/>`,
    `<text x="${num(M.left + pw / 2)}" y="${String(H - 8)}" text-anchor="middle">seconds after the first job (or bare pod) was due</text>`,
    `<text transform="translate(14 ${num(M.top + ph / 2)}) rotate(-90)" text-anchor="middle">pods created</text>`,
  );
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length] ?? "#000";
    const path = cumulative(s.seconds)
      .map(([t, n], j) => `${j === 0 ? "M" : "L"}${num(x(t))},${num(y(n))}`)
      .join(" ");
    parts.push(`<path d="${path}" fill="none" stroke="${color}" stroke-width="2"/>`);
    // The legend sits in a row above the plot, clear of the lines.
    const lx = M.left + i * 220;
    parts.push(
      `<line x1="${String(lx)}" y1="36" x2="${String(lx + 24)}" y2="36" stroke="${color}" stroke-width="3"/>`,
      `<text x="${String(lx + 30)}" y="40">${esc(`${s.label} (${String(s.seconds.length)})`)}</text>`,
    );
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}
