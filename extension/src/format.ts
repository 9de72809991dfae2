/**
 * Pure formatting for the status bar and its tooltip: joules, watts, milliseconds, grams of CO2e, and the
 * tooltip's Markdown. No VS Code import, so `npm test` checks it under plain Node, and the end-to-end
 * test formats the database's `total_j` with exactly this rule.
 *
 * The numbers mirror `server/greentrack/units.py` string for string (the command line, the report and the
 * servers write figures there): three significant digits, the SI prefix that puts the rounded figure in
 * [1, 1000) (`647 µJ`, not `0.647 mJ`), rounding before the prefix is chosen, whole numbers beyond the
 * largest prefix, `<0.01` below a hundredth of the smallest. `tests/fixtures/units.json` holds values and
 * their text for both sides, and `tests/test_units.py` compares both on generated values.
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

/** A unit ladder, smallest first: [power of ten, unit]. One entry has power 0 (the base unit). */
export type Units = readonly (readonly [number, string])[];

export const ENERGY_UNITS: Units = [[-6, 'µJ'], [-3, 'mJ'], [0, 'J'], [3, 'kJ'], [6, 'MJ']];
export const POWER_UNITS: Units = [[-3, 'mW'], [0, 'W'], [3, 'kW'], [6, 'MW']];
export const CO2E_UNITS: Units = [[-6, 'µg'], [-3, 'mg'], [0, 'g'], [3, 'kg'], [6, 't']];

/** `value` in units of 10**power: multiply or divide by an exact power of ten, as units.py does. */
function scaled(value: number, power: number): number {
  return power < 0 ? value * 10 ** -power : value / 10 ** power;
}

function known(value: number | null | undefined): value is number {
  return value !== null && value !== undefined && Number.isFinite(value) && value >= 0;
}

/**
 * `value` (in the base unit) with the unit of `units` that fits. `0` → `0 J`; below a hundredth of the
 * smallest unit → `<0.01 µJ`; negative, NaN, infinite, null or undefined → `? J`.
 */
export function formatQuantity(value: number | null | undefined, units: Units): string {
  const base = units.find(([power]) => power === 0)?.[1] ?? '';
  if (!known(value)) {
    return `${UNKNOWN} ${base}`;
  }
  if (value === 0) {
    return `0 ${base}`;
  }
  const [smallestPower, smallestUnit] = units[0];
  if (scaled(value, smallestPower) < 0.01) {
    return `<0.01 ${smallestUnit}`;
  }
  for (const [power, unit] of units.slice(0, -1)) {
    const text = threeSignificant(scaled(value, power));
    if (Number(text) < 1000) {
      return `${text} ${unit}`;
    }
  }
  const [power, unit] = units[units.length - 1];
  return `${threeSignificant(scaled(value, power))} ${unit}`;
}

/** An energy: `647 µJ`, `125 mJ`, `3.21 J`, `12.5 kJ`, `34.0 MJ`. Units: `energyJ` in J. */
export function formatEnergy(energyJ: number | null | undefined): string {
  return formatQuantity(energyJ, ENERGY_UNITS);
}

/** A power: `850 mW`, `247 W`, `1.20 kW`. Units: `powerW` in W. */
export function formatPower(powerW: number | null | undefined): string {
  return formatQuantity(powerW, POWER_UNITS);
}

/** A duration: whole milliseconds below a second (`45 ms`), else seconds (`1.23 s`); `? ms` when unknown. Units: ms. */
export function formatDuration(durationMs: number | null | undefined): string {
  if (!known(durationMs)) {
    return `${UNKNOWN} ms`;
  }
  const wholeMs = Math.round(durationMs);
  if (wholeMs < 1000) {
    return `${wholeMs} ms`;
  }
  return `${threeSignificant(durationMs / 1000)} s`;
}

/** A mass of CO2e: `µg`, `mg`, `g`, `kg` or `t` as fits. Units: `massG` in g. */
export function formatCo2e(massG: number | null | undefined): string {
  return formatQuantity(massG, CO2E_UNITS);
}

/** The `meter` of a suggestion served from the suggestion cache (docs/interfaces.md): no model work, exactly 0 J. */
export const CACHE_METER = 'cache';

/** Whether `e` was served from the suggestion cache: outcome `cached`, or `cancelled` with the cache's meter. */
export function fromSuggestionCache(e: Pick<EnergyParams, 'meter' | 'outcome'>): boolean {
  return e.meter === CACHE_METER || e.outcome === 'cached';
}

/** The status bar text for the last suggestion: `$(zap) 3.21 J`; one served from the suggestion cache
 * (`cached`) says so: `$(zap) 0 J · cached`. */
export function energyText(energyJ: number | null | undefined, cached = false): string {
  return `$(zap) ${formatEnergy(energyJ)}${cached ? ' · cached' : ''}`;
}

/** Say plainly how a figure was obtained. */
export function describeMethod(method: string | undefined, meter: string | undefined): string {
  const via = meter ? ` (meter: \`${meter}\`)` : '';
  if (meter === CACHE_METER && method === 'measured') {
    return `measured — no model work was done, so exactly 0 J${via}`;
  }
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

/** The total's interval fields of `greentrack/energy` (docs/interfaces.md); absent from older servers. */
interface IntervalFields {
  interval_low_j?: number | null;
  interval_high_j?: number | null;
  interval_coverage?: number | null;
  interval_basis?: string | null;
}

/** "90 % interval: 41.2 J – 52.0 J (basis)", or the range with its basis where it states no coverage; '' if none. */
export function intervalLine(e: EnergyParams & IntervalFields): string {
  if (e.interval_low_j === null || e.interval_low_j === undefined) return '';
  if (e.interval_high_j === null || e.interval_high_j === undefined) return '';
  const range = `${formatEnergy(e.interval_low_j)} – ${formatEnergy(e.interval_high_j)}`;
  const basis = e.interval_basis ? ` (${escapeMarkdown(e.interval_basis)})` : '';
  if (e.interval_coverage === null || e.interval_coverage === undefined) return `Range: ${range}${basis}`;
  return `${Math.round(100 * e.interval_coverage)} % interval: ${range}${basis}`;
}

/** The tooltip for the last suggestion, as Markdown (a table of phases, then tokens, method, CO2e, today). */
export function energyTooltip(e: EnergyParams, today: TodayTotal): string {
  const plusMinus =
    e.uncertainty_j === null || e.uncertainty_j === undefined ? '' : ` ± ${formatEnergy(e.uncertainty_j)}`;
  const interval = intervalLine(e);
  const outcome = e.outcome ? ` (${escapeMarkdown(e.outcome)})` : '';
  const cached = fromSuggestionCache(e);
  const lines: string[] = [`**greentrack** — last suggestion${outcome}`, ''];
  if (cached) {
    lines.push('Served from the suggestion cache: what you typed is the start of an earlier suggestion for this ' +
      'place, and its rest was shown again with no model work.', '');
  }
  lines.push(
    '| phase | energy | time |',
    '| --- | ---: | ---: |',
    `| prefill | ${formatEnergy(e.prefill_j)} | ${formatDuration(e.prefill_ms)} |`,
    `| decode | ${formatEnergy(e.decode_j)} | ${formatDuration(e.decode_ms)} |`,
    `| **total** | **${formatEnergy(e.total_j)}**${plusMinus} | ${formatDuration(e.latency_ms ?? sum(e.prefill_ms, e.decode_ms))} |`,
    '',
  );
  if (interval) lines.push(`${interval}; ± is the worst-case bound`, '');
  const prompt = e.prompt_tokens ?? 0;
  const reused = e.reused_prompt_tokens ?? 0;
  lines.push(
    cached
      ? 'Tokens: none computed'
      : `Tokens: ${prompt} prompt (${reused} reused from cache), ${e.completion_tokens ?? 0} generated`,
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
