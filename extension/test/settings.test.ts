/** Settings as the extension reads them and hands them on: remote mode's URL, arguments, environment and token. */
import { state } from './vscodeStub';
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import {
  childEnv,
  getSettings,
  lspArgs,
  lspEnv,
  normalizeServerUrl,
  serverOptions,
  serverUrlProblem,
  tokenSecretKey,
} from '../src/settings';
import { ServerTokens, TOKEN_PROMPT } from '../src/token';

/** A stand-in ExtensionContext: SecretStorage and globalState in memory. */
function fakeContext(): { context: never; secrets: Map<string, string>; global: Map<string, unknown> } {
  const secrets = new Map<string, string>();
  const global = new Map<string, unknown>();
  const context = {
    secrets: {
      get: async (key: string) => secrets.get(key),
      store: async (key: string, value: string) => void secrets.set(key, value),
      delete: async (key: string) => void secrets.delete(key),
    },
    globalState: {
      get: <T>(key: string) => global.get(key) as T | undefined,
      update: async (key: string, value: unknown) => void global.set(key, value),
    },
  };
  return { context: context as never, secrets, global };
}

describe('settings', () => {
  beforeEach(() => {
    state.config = {};
    state.inputAnswers.length = 0;
    state.inputBoxes.length = 0;
  });

  it('reads greentrack.serverUrl trimmed, and keeps it (with pythonPath) away from the server options', () => {
    state.config['greentrack.serverUrl'] = '  http://gpu.example.com:8765/ ';
    state.config['greentrack.pythonPath'] = '/usr/bin/python3';
    const s = getSettings();
    assert.equal(s.serverUrl, 'http://gpu.example.com:8765');
    const sent = serverOptions(s).greentrack as Record<string, unknown>;
    assert.equal('serverUrl' in sent, false);
    assert.equal('pythonPath' in sent, false);
    assert.equal(sent.maxTokens, 64);
    assert.equal(getSettings().serverUrl, 'http://gpu.example.com:8765');
    state.config['greentrack.serverUrl'] = '';
    assert.equal(getSettings().serverUrl, '');
  });

  it('sends greentrack.suggestionCache to the server: on unless turned off', () => {
    assert.equal(serverOptions(getSettings()).greentrack.suggestionCache, true);
    state.config['greentrack.suggestionCache'] = false;
    assert.equal(serverOptions(getSettings()).greentrack.suggestionCache, false);
  });

  it('hands greentrack.carbonIntensity to child processes as the server takes it; unset: the default', () => {
    const inherited = process.env.GREENTRACK_CARBON_INTENSITY;
    assert.equal(childEnv(getSettings()).GREENTRACK_CARBON_INTENSITY, inherited);
    state.config['greentrack.carbonIntensity'] = 120;
    assert.equal(childEnv(getSettings()).GREENTRACK_CARBON_INTENSITY, '120');
    state.config['greentrack.carbonIntensity'] = ' FRA ';
    assert.equal(childEnv(getSettings()).GREENTRACK_CARBON_INTENSITY, 'FRA');
    for (const unset of [null, '', '  ']) {
      state.config['greentrack.carbonIntensity'] = unset;
      assert.equal(childEnv(getSettings()).GREENTRACK_CARBON_INTENSITY, inherited);
      assert.equal(serverOptions(getSettings()).greentrack.carbonIntensity, unset);
    }
  });

  it('starts lsp --server URL in remote mode, with the token only in the environment', () => {
    const local = { ...getSettings(), serverUrl: '' };
    assert.deepEqual(lspArgs(local), ['lsp']);
    const remote = { ...local, serverUrl: 'http://127.0.0.1:8765' };
    assert.deepEqual(lspArgs(remote), ['lsp', '--server', 'http://127.0.0.1:8765']);
    const env = lspEnv({ PATH: '/bin' }, 'gt_secret');
    assert.equal(env.GREENTRACK_TOKEN, 'gt_secret');
    assert.equal(env.PATH, '/bin');
    assert.ok(!lspArgs(remote).some((a) => a.includes('gt_secret')));
    assert.equal(lspEnv({ GREENTRACK_TOKEN: 'from-shell' }, undefined).GREENTRACK_TOKEN, 'from-shell');
    assert.equal(lspEnv({}, undefined).GREENTRACK_TOKEN, undefined);
  });

  it('checks the server URL and keys tokens by the server origin', () => {
    assert.equal(normalizeServerUrl(' https://h:1/// '), 'https://h:1');
    assert.equal(normalizeServerUrl(undefined), '');
    assert.equal(serverUrlProblem('http://127.0.0.1:8765'), undefined);
    assert.equal(serverUrlProblem('https://greentrack.team.example.com/base'), undefined);
    assert.match(serverUrlProblem('127.0.0.1:8765') ?? '', /http/);
    assert.match(serverUrlProblem('ftp://h') ?? '', /http:\/\/ or https:\/\//);
    assert.match(serverUrlProblem('not a url') ?? '', /not a URL/);
    assert.match(serverUrlProblem('http://h/?x=1') ?? '', /query/);
    assert.equal(tokenSecretKey('http://h:8765/base'), 'greentrack.serverToken:http://h:8765');
    assert.notEqual(tokenSecretKey('http://a:1'), tokenSecretKey('http://b:1'));
  });

  it('asks for a server token once, stores it secretly, and asks again only on request', async () => {
    const { context, secrets } = fakeContext();
    const tokens = new ServerTokens(context);
    const url = 'http://127.0.0.1:8765';
    state.inputAnswers.push(' gt_abc ');
    assert.equal(await tokens.getOrAskOnce(url), 'gt_abc');
    assert.equal(state.inputBoxes.length, 1);
    assert.equal(state.inputBoxes[0].password, true);
    assert.equal(state.inputBoxes[0].title, TOKEN_PROMPT);
    assert.equal(secrets.get(tokenSecretKey(url)), 'gt_abc');
    assert.equal(await tokens.getOrAskOnce(url), 'gt_abc');
    assert.equal(state.inputBoxes.length, 1, 'a stored token is not asked for again');

    // Dismissed the first time: not asked again at the next start; the command asks.
    const other = 'http://gpu.example.com:8765';
    state.inputAnswers.push(undefined);
    assert.equal(await tokens.getOrAskOnce(other), undefined);
    assert.equal(await tokens.getOrAskOnce(other), undefined);
    assert.equal(state.inputBoxes.length, 2);
    state.inputAnswers.push('gt_other');
    assert.equal(await tokens.ask(other), 'gt_other');
    // Escape keeps it; an empty answer removes it (a server without tokens).
    state.inputAnswers.push(undefined);
    assert.equal(await tokens.ask(other), 'gt_other');
    state.inputAnswers.push('  ');
    assert.equal(await tokens.ask(other), undefined);
    assert.equal(secrets.has(tokenSecretKey(other)), false);
  });
});
