/**
 * Pure formatting for the status bar and its tooltip: joules, milliseconds, grams of CO2e, and the
 * tooltip's Markdown. No VS Code import, so `npm test` checks it under plain Node, and the end-to-end
 * test formats the database's `total_j` with exactly this rule.
 */
import type { EnergyParams } from './protocol';

/** Shown for a value that is not a finite, non-negative number. */
export const UNKNOWN = '?';

/**
 * Three significant digits, without exponent notation (`3.21`, `32.1`, `321`, `5.00`).
 * Values that round to 1000 or more are written whole (`1000`, `1234`).
 */
export function threeSignificant(value: number): string {
  if (value === 0) {
    return '0';
  }
  const text = value.toPrecision(3);
  // 999.6 → "1.00e+3": write rounded-up values (and everything from 1000) whole instead.
  return Math.abs(value) >= 999.5 || /e\+/.test(text) ? Math.round(value).toString() : text;
}

/**
 * An energy in joules with the unit that fits: mJ below 1 J, J below 1 kJ, kJ above.
 * Rounding happens before the unit is chosen, so 0.9996 J reads `1.00 J`, never `1000 mJ`.
 * `0` → `0 J`; below 0.01 mJ → `<0.01 mJ`; negative, NaN or infinite → `? J`.
 *
 * Units: `energyJ` in J.
 */
export function formatEnergy(energyJ: number | null | undefined): string {
  if (energyJ === null || energyJ === undefined || !Number.isFinite(energyJ) || energyJ < 0) {
    return `${UNKNOWN} J`;
  }
  if (energyJ === 0) {
    return '0 J';
  }
  const mJ = energyJ * 1e3;
  if (mJ < 0.01) {
    return '<0.01 mJ';
  }
  if (Number(threeSignificant(mJ)) < 1000) {
    return `${threeSignificant(mJ)} mJ`;
  }
  if (Number(threeSignificant(energyJ)) < 1000) {
    return `${threeSignificant(energyJ)} J`;
  }
  return `${threeSignificant(energyJ / 1e3)} kJ`;
}

/** A duration in milliseconds: `45 ms`, `1.23 s`; `? ms` when unknown. Units: `durationMs` in ms. */
export function formatDuration(durationMs: number | null | undefined): string {
  if (durationMs === null || durationMs === undefined || !Number.isFinite(durationMs) || durationMs < 0) {
    return `${UNKNOWN} ms`;
  }
  if (durationMs < 1000) {
    return `${Math.round(durationMs)} ms`;
  }
  return `${threeSignificant(durationMs / 1e3)} s`;
}

/** A mass of CO2e: `µg`, `mg`, `g` or `kg` as fits. Units: `massG` in g. */
export function formatCo2e(massG: number | null | undefined): string {
  if (massG === null || massG === undefined || !Number.isFinite(massG) || massG < 0) {
    return `${UNKNOWN} g`;
  }
  if (massG === 0) {
    return '0 g';
  }
  const ug = massG * 1e6;
  if (Number(threeSignificant(ug)) < 1000) {
    return `${threeSignificant(ug)} µg`;
  }
  const mg = massG * 1e3;
  if (Number(threeSignificant(mg)) < 1000) {
    return `${threeSignificant(mg)} mg`;
  }
  if (Number(threeSignificant(massG)) < 1000) {
    return `${threeSignificant(massG)} g`;
  }
  return `${threeSignificant(massG / 1e3)} kg`;
}

/** The status bar text for the last suggestion: `$(zap) 3.21 J`. */
export function energyText(energyJ: number | null | undefined): string {
  return `$(zap) ${formatEnergy(energyJ)}`;
}

/** Say plainly how a figure was obtained. */
export function describeMethod(method: string | undefined, meter: string | undefined): string {
  const via = meter ? ` (meter: \`${meter}\`)` : '';
  switch (method) {
    case 'measured':
      return `measured — an energy counter read around each phase${via}`;
    case 'attributed':
      return `attributed — counter energy split over the phases by their timestamps${via}`;
    case 'estimated':
      return `estimated — no energy counter on this machine${via}`;
    default:
      return `${method ?? 'unknown method'}${via}`;
  }
}

/** Today's running total, as the tooltip shows it. Units: `sessionJ`, `databaseJ` in J. */
export interface TodayTotal {
  /** Sum of today's `greentrack/energy` notifications seen by this window. */
  sessionJ: number;
  sessionCount: number;
  /** Today's total from the server (all sessions), when it sends one. */
  databaseJ?: number;
  databaseCount?: number;
}

function escapeMarkdown(text: string): string {
  return text.replace(/([\\`*_{}[\]()#+!|<>])/g, '\\$1');
}

/** The tooltip for the last suggestion, as Markdown (a table of phases, then tokens, method, CO2e, today). */
export function energyTooltip(e: EnergyParams, today: TodayTotal): string {
  const plusMinus =
    e.uncertainty_j === null || e.uncertainty_j === undefined ? '' : ` ± ${formatEnergy(e.uncertainty_j)}`;
  const outcome = e.outcome ? ` (${escapeMarkdown(e.outcome)})` : '';
  const lines: string[] = [
    `**greentrack** — last suggestion${outcome}`,
    '',
    '| phase | energy | time |',
    '| --- | ---: | ---: |',
    `| prefill | ${formatEnergy(e.prefill_j)} | ${formatDuration(e.prefill_ms)} |`,
    `| decode | ${formatEnergy(e.decode_j)} | ${formatDuration(e.decode_ms)} |`,
    `| **total** | **${formatEnergy(e.total_j)}**${plusMinus} | ${formatDuration(e.latency_ms ?? sum(e.prefill_ms, e.decode_ms))} |`,
    '',
  ];
  const prompt = e.prompt_tokens ?? 0;
  const reused = e.reused_prompt_tokens ?? 0;
  lines.push(
    `Tokens: ${prompt} prompt (${reused} reused from cache), ${e.completion_tokens ?? 0} generated`,
    '',
    `Method: ${describeMethod(e.method, e.meter)}`,
    '',
    `CO2e: ${formatCo2e(e.co2e_g)}`,
    '',
  );
  let todayLine = `Today: ${formatEnergy(today.sessionJ)} over ${today.sessionCount} suggestion${today.sessionCount === 1 ? '' : 's'} in this window`;
  if (today.databaseJ !== undefined && Number.isFinite(today.databaseJ)) {
    const n = today.databaseCount === undefined ? '' : ` over ${today.databaseCount}`;
    todayLine += `; ${formatEnergy(today.databaseJ)}${n} in all sessions`;
  }
  lines.push(todayLine, '');
  const where = [e.model, e.backend, e.device].filter((s): s is string => Boolean(s)).map(escapeMarkdown);
  if (where.length) {
    lines.push(`Model: ${where.join(' · ')}`, '');
  }
  lines.push('Click for this week\'s report.');
  return lines.join('\n');
}

function sum(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined ? undefined : a + b;
}

/** Local calendar date `YYYY-MM-DD`, the key that resets today's total at midnight. */
export function localDate(now: Date): string {
  const pad = (n: number): string => n.toString().padStart(2, '0');
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

/** Accumulates today's energy from notifications; starts again when the local date changes. */
export class TodayAccumulator {
  private date = '';
  private energyJ = 0;
  private count = 0;
  private databaseJ: number | undefined;
  private databaseCount: number | undefined;

  add(e: EnergyParams, now: Date = new Date()): TodayTotal {
    const today = localDate(now);
    if (today !== this.date) {
      this.date = today;
      this.energyJ = 0;
      this.count = 0;
      this.databaseJ = undefined;
      this.databaseCount = undefined;
    }
    if (Number.isFinite(e.total_j) && e.total_j >= 0) {
      this.energyJ += e.total_j;
    }
    this.count += 1;
    if (typeof e.today_j === 'number') {
      this.databaseJ = e.today_j;
      this.databaseCount = e.today_completions;
    }
    return this.total();
  }

  total(): TodayTotal {
    return {
      sessionJ: this.energyJ,
      sessionCount: this.count,
      databaseJ: this.databaseJ,
      databaseCount: this.databaseCount,
    };
  }
}
