/** Unit tests for the status bar's formatting (node:test; run by `npm test`). */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import {
  describeMethod,
  energyText,
  energyTooltip,
  formatCo2e,
  formatDuration,
  formatEnergy,
  formatPower,
  localDate,
  threeSignificant,
  TodayAccumulator,
} from '../src/format';
import { REPORT_CSP, withCsp } from '../src/html';
import type { EnergyParams } from '../src/protocol';

describe('formatEnergy', () => {
  const cases: [number, string][] = [
    [0, '0 J'],
    [3.214, '3.21 J'],
    [3.215001, '3.22 J'],
    [5, '5.00 J'],
    [32.14, '32.1 J'],
    [321.4, '321 J'],
    [999.4, '999 J'],
    [999.6, '1.00 kJ'], // rounds up across the threshold: never "1000 J"
    [1000, '1.00 kJ'],
    [1234.5, '1.23 kJ'],
    [45_600, '45.6 kJ'],
    [1_234_567, '1.23 MJ'],
    [2.5e9, '2500 MJ'], // beyond the largest prefix: whole
    [1, '1.00 J'],
    [0.99949, '999 mJ'],
    [0.9996, '1.00 J'], // never "1000 mJ"
    [0.5, '500 mJ'],
    [0.0123, '12.3 mJ'],
    [0.001, '1.00 mJ'],
    [0.000647, '647 µJ'], // as the report and the command line write it, not "0.647 mJ"
    [0.0000123, '12.3 µJ'],
    [0.00001, '10.0 µJ'],
    [0.000009, '9.00 µJ'],
    [1e-8, '0.0100 µJ'],
    [9.9e-9, '<0.01 µJ'],
    [1e-12, '<0.01 µJ'],
    [1.125, '1.13 J'], // an exact binary tie rounds half up, in units.py too
  ];
  for (const [j, text] of cases) {
    it(`${j} J → ${text}`, () => assert.equal(formatEnergy(j), text));
  }
  it('guards negative, NaN, infinite, null and undefined', () => {
    for (const bad of [-0.1, -1e-9, NaN, Infinity, -Infinity, null, undefined]) {
      assert.equal(formatEnergy(bad), '? J', String(bad));
    }
  });
  it('negative zero is zero', () => assert.equal(formatEnergy(-0), '0 J'));
  it('status bar text carries the zap icon', () => assert.equal(energyText(3.214), '$(zap) 3.21 J'));
  it('status bar text of a cache hit says so', () => assert.equal(energyText(0, true), '$(zap) 0 J · cached'));
});

describe('threeSignificant', () => {
  it('never uses exponent notation', () => {
    for (const v of [0.000123, 0.5, 9.999, 999.9, 1000, 123456789]) {
      assert.ok(!/e/i.test(threeSignificant(v)), `${v} → ${threeSignificant(v)}`);
    }
  });
});

describe('formatDuration, formatPower and formatCo2e', () => {
  it('milliseconds then seconds', () => {
    assert.equal(formatDuration(0), '0 ms');
    assert.equal(formatDuration(45.4), '45 ms');
    assert.equal(formatDuration(999.4), '999 ms');
    assert.equal(formatDuration(999.6), '1.00 s'); // never "1000 ms"
    assert.equal(formatDuration(1234), '1.23 s');
    assert.equal(formatDuration(NaN), '? ms');
    assert.equal(formatDuration(-5), '? ms');
  });
  it('µg, mg, g, kg', () => {
    assert.equal(formatCo2e(0), '0 g');
    assert.equal(formatCo2e(4.2e-7), '0.420 µg');
    assert.equal(formatCo2e(0.00042), '420 µg');
    assert.equal(formatCo2e(0.0042), '4.20 mg');
    assert.equal(formatCo2e(0.9996), '1.00 g');
    assert.equal(formatCo2e(4200), '4.20 kg');
    assert.equal(formatCo2e(1.2e6), '1.20 t');
    assert.equal(formatCo2e(undefined), '? g');
  });
  it('mW, W, kW', () => {
    assert.equal(formatPower(0.85), '850 mW');
    assert.equal(formatPower(247.3), '247 W');
    assert.equal(formatPower(1200), '1.20 kW');
    assert.equal(formatPower(-1), '? W');
  });
});

/** tests/fixtures/units.json: values and the text both sides write (units.py checks the same file). */
interface UnitCase {
  kind: 'energy' | 'power' | 'co2e' | 'duration_ms';
  value: number | string | null;
  text: string;
}

describe('the shared units fixture', () => {
  const file = path.resolve(__dirname, '..', '..', '..', 'tests', 'fixtures', 'units.json');
  const cases = JSON.parse(readFileSync(file, 'utf8')) as UnitCase[];
  const formatters: Record<UnitCase['kind'], (v: number | null) => string> = {
    energy: formatEnergy,
    power: formatPower,
    co2e: formatCo2e,
    duration_ms: formatDuration,
  };
  it('has cases of every kind', () => {
    assert.deepEqual(new Set(cases.map((c) => c.kind)), new Set(Object.keys(formatters)));
  });
  for (const c of cases) {
    // JSON has no NaN or infinities: the fixture writes them as strings.
    const value = typeof c.value === 'string' ? Number(c.value) : c.value;
    it(`${c.kind} ${String(c.value)} → ${c.text}`, () => assert.equal(formatters[c.kind](value), c.text));
  }
});

const sample: EnergyParams = {
  completion_id: 'c1',
  model: 'embedded',
  backend: 'transformers',
  device: 'cpu',
  prompt_tokens: 312,
  reused_prompt_tokens: 280,
  completion_tokens: 12,
  prefill_ms: 45.2,
  decode_ms: 120.4,
  latency_ms: 170,
  prefill_j: 1.234,
  decode_j: 2.345,
  total_j: 3.579,
  method: 'estimated',
  meter: 'cpu-tdp',
  uncertainty_j: 0.9,
  co2e_g: 0.00047,
  outcome: 'shown',
};

describe('energyTooltip', () => {
  it('has phases, tokens, method in plain words, uncertainty, CO2e and today', () => {
    const md = energyTooltip(sample, { sessionJ: 10.5, sessionCount: 3 });
    assert.match(md, /\| prefill \| 1\.23 J \| 45 ms \|/);
    assert.match(md, /\| decode \| 2\.35 J \| 120 ms \|/);
    assert.match(md, /\*\*3\.58 J\*\* ± 900 mJ \| 170 ms/);
    assert.match(md, /312 prompt \(280 reused from cache\), 12 generated/);
    assert.match(md, /estimated — no energy counter on this machine \(meter: `cpu-tdp`\)/);
    assert.match(md, /CO2e: 470 µg/);
    assert.match(md, /Today: 10\.5 J over 3 suggestions in this window/);
    assert.doesNotMatch(md, /all sessions/);
  });
  it('omits ± when the uncertainty is unknown, adds the database total when sent', () => {
    const md = energyTooltip({ ...sample, uncertainty_j: null }, { sessionJ: 1, sessionCount: 1, databaseJ: 2500, databaseCount: 40 });
    assert.doesNotMatch(md, /±/);
    assert.match(md, /over 1 suggestion in this window; 2\.50 kJ over 40 in all sessions/);
  });
  it('shows the interval with its coverage, or a range that claims none', () => {
    const stated = { ...sample, interval_low_j: 3.1, interval_high_j: 4.0, interval_coverage: 0.9, interval_basis: 'errors of completions' };
    const md = energyTooltip(stated, { sessionJ: 1, sessionCount: 1 });
    assert.match(md, /90 % interval: 3\.10 J – 4\.00 J \(errors of completions\); ± is the worst-case bound/);
    const bound = { ...stated, interval_coverage: null, interval_basis: 'worst-case bound' };
    assert.match(energyTooltip(bound, { sessionJ: 1, sessionCount: 1 }), /Range: 3\.10 J – 4\.00 J \(worst-case bound\)/);
    assert.doesNotMatch(energyTooltip(sample, { sessionJ: 1, sessionCount: 1 }), /interval|Range/);
  });
  it('names measured and attributed methods', () => {
    assert.match(describeMethod('measured', 'nvml'), /^measured — .*nvml/);
    assert.equal(describeMethod('measured', 'cache'), 'measured — no model work was done, so exactly 0 J (meter: `cache`)');
    assert.match(describeMethod('attributed', 'rapl'), /^attributed — .*rapl/);
  });
});

describe('TodayAccumulator', () => {
  it('sums today and starts again at local midnight', () => {
    const acc = new TodayAccumulator();
    const day1 = new Date(2026, 10, 22, 23, 59);
    const day2 = new Date(2026, 10, 23, 0, 1);
    acc.add({ completion_id: 'a', total_j: 1.5 }, day1);
    let t = acc.add({ completion_id: 'b', total_j: 2.5 }, day1);
    assert.deepEqual([t.sessionJ, t.sessionCount], [4, 2]);
    t = acc.add({ completion_id: 'c', total_j: 1 }, day2);
    assert.deepEqual([t.sessionJ, t.sessionCount], [1, 1]);
    assert.equal(localDate(day2), '2026-11-23');
  });
  it('ignores a non-finite energy in the sum but counts the completion; keeps the server total', () => {
    const acc = new TodayAccumulator();
    acc.add({ completion_id: 'a', total_j: NaN });
    const t = acc.add({ completion_id: 'b', total_j: 2, today_j: 99, today_completions: 7 });
    assert.deepEqual([t.sessionJ, t.sessionCount, t.databaseJ, t.databaseCount], [2, 2, 99, 7]);
  });
});

describe('withCsp', () => {
  it('puts the CSP first in <head> and drops a looser one', () => {
    const out = withCsp('<html><head><meta http-equiv="Content-Security-Policy" content="default-src *"><title>r</title></head><body><svg></svg></body></html>');
    assert.ok(out.includes(REPORT_CSP));
    assert.ok(!out.includes('default-src *'));
    assert.ok(out.indexOf(REPORT_CSP) < out.indexOf('<title>'));
    assert.ok(!REPORT_CSP.includes('script-src'));
  });
  it('wraps a fragment', () => {
    assert.match(withCsp('<p>hi</p>'), /^<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy"/);
  });
});
