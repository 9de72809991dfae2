/** The status bar's states, driven as the server drives it (node:test, `vscode` stubbed). */
import { state } from './vscodeStub';
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import type { EnergyParams } from '../src/protocol';
import { EnergyStatusBar, STATUS_ITEM_ID } from '../src/statusBar';

const energy = (total_j: number, extra: Partial<EnergyParams> = {}): EnergyParams => ({
  completion_id: `c-${total_j}`,
  total_j,
  prefill_j: total_j / 4,
  decode_j: (3 * total_j) / 4,
  method: 'estimated',
  meter: 'estimate',
  outcome: 'shown',
  ...extra,
});

const markdown = (tooltip: unknown): string => (tooltip as { value: string }).value;

describe('EnergyStatusBar', () => {
  beforeEach(() => {
    state.items.length = 0;
  });

  it('says starting until the server is ready, then the energy of each suggestion', () => {
    const bar = new EnergyStatusBar();
    const item = state.items[0];
    assert.equal(item.id, STATUS_ITEM_ID);
    assert.ok(item.shown);
    assert.equal(item.command, 'greentrack.showReport');
    assert.equal(item.text, '$(sync~spin) greentrack starting…');
    bar.onStatus({ state: 'starting', message: 'loading embedded' });
    assert.match(item.text, /starting/);
    assert.equal(item.tooltip, 'loading embedded');
    bar.onStatus({ state: 'ready', message: 'embedded on cpu' });
    assert.equal(item.text, '$(zap) greentrack');
    bar.onEnergy(energy(3.214));
    assert.equal(item.text, '$(zap) 3.21 J');
    bar.onEnergy(energy(0.0456));
    assert.equal(item.text, '$(zap) 45.6 mJ');
    const tooltip = markdown(item.tooltip);
    assert.match(tooltip, /Today: 3\.26 J over 2 suggestions/);
    assert.match(tooltip, /estimated — no energy counter on this machine/);
  });

  it('shows the server error, and recovers when the server is ready again', () => {
    const bar = new EnergyStatusBar();
    const item = state.items[0];
    bar.onStatus({ state: 'error', message: 'cannot load model foo' });
    assert.equal(item.text, '$(error) greentrack');
    assert.match(markdown(item.tooltip), /cannot load model foo/);
    assert.equal((item.backgroundColor as { id: string }).id, 'statusBarItem.errorBackground');
    bar.onEnergy(energy(1)); // energy alone does not hide an error
    assert.equal(item.text, '$(error) greentrack');
    bar.onStatus({ state: 'ready' });
    assert.equal(item.text, '$(zap) 1.00 J');
    assert.equal(item.backgroundColor, undefined);
  });

  it('shows an unreachable server as such, and the last energy again once it is back', () => {
    const bar = new EnergyStatusBar();
    const item = state.items[0];
    bar.onStatus({ state: 'ready', message: 'embedded at http://127.0.0.1:8765' });
    bar.onEnergy(energy(1.5));
    bar.onStatus({ state: 'error', message: 'server unreachable: http://127.0.0.1:8765: connection refused' });
    assert.equal(item.text, '$(debug-disconnect) greentrack: server unreachable');
    assert.match(markdown(item.tooltip), /connection refused/);
    assert.match(markdown(item.tooltip), /Reconnecting by itself/);
    assert.equal((item.backgroundColor as { id: string }).id, 'statusBarItem.warningBackground');
    bar.onEnergy(energy(2)); // a completion whose energy came late does not hide it
    assert.match(item.text, /server unreachable/);
    bar.onStatus({ state: 'ready', message: 'embedded at http://127.0.0.1:8765' });
    assert.equal(item.text, '$(zap) 2.00 J');
    assert.equal(item.backgroundColor, undefined);
    bar.onStatus({ state: 'error', message: 'the server refused the token' }); // other errors stay errors
    assert.equal(item.text, '$(error) greentrack');
  });

  it('says off while disabled, and shows the last energy again when enabled', () => {
    const bar = new EnergyStatusBar();
    const item = state.items[0];
    bar.onStatus({ state: 'ready' });
    bar.onEnergy(energy(2500));
    assert.equal(item.text, '$(zap) 2.50 kJ');
    bar.setEnabled(false);
    assert.equal(item.text, '$(circle-slash) greentrack off');
    bar.setEnabled(true);
    assert.equal(item.text, '$(zap) 2.50 kJ');
  });

  it('says a suggestion served from the suggestion cache cost no model work, and the next one is a figure again', () => {
    const bar = new EnergyStatusBar();
    const item = state.items[0];
    bar.onStatus({ state: 'ready' });
    bar.onEnergy(energy(1.5));
    const cached = { prompt_tokens: 0, completion_tokens: 0, method: 'measured', meter: 'cache', uncertainty_j: 0 };
    bar.onEnergy(energy(0, { ...cached, outcome: 'cached' }));
    assert.equal(item.text, '$(zap) 0 J · cached');
    const tooltip = markdown(item.tooltip);
    assert.match(tooltip, /last suggestion \(cached\)/);
    assert.match(tooltip, /Served from the suggestion cache: .*earlier suggestion .*no model work/);
    assert.match(tooltip, /\*\*0 J\*\* ± 0 J/);
    assert.match(tooltip, /Method: measured — no model work was done, so exactly 0 J \(meter: `cache`\)/);
    assert.match(tooltip, /Tokens: none computed/);
    assert.doesNotMatch(tooltip, /energy counter read around each phase|reused from cache/);
    assert.match(tooltip, /Today: 1\.50 J over 2 suggestions/); // a cache hit is a suggestion, at 0 J
    bar.onEnergy(energy(0, { ...cached, outcome: 'cancelled' })); // cancelled like any suggestion: still the cache's
    assert.equal(item.text, '$(zap) 0 J · cached');
    assert.match(markdown(item.tooltip), /last suggestion \(cancelled\)/);
    bar.onEnergy(energy(0, { outcome: 'empty' })); // 0 J from the model (nothing generated) is not a cache hit
    assert.equal(item.text, '$(zap) 0 J');
    assert.doesNotMatch(markdown(item.tooltip), /suggestion cache/);
    bar.onEnergy(energy(2));
    assert.equal(item.text, '$(zap) 2.00 J');
  });

  it('ignores unknown states and guards a bad energy', () => {
    const bar = new EnergyStatusBar();
    const item = state.items[0];
    bar.onStatus({ state: 'ready' });
    bar.onStatus({ state: 'something-new' });
    assert.equal(item.text, '$(zap) greentrack');
    bar.onEnergy(energy(NaN));
    assert.equal(item.text, '$(zap) ? J');
    bar.dispose();
    assert.ok(item.disposed);
  });
});
