/** runGreentrack: a real child process's output reaches the channel whole lines at a time, each at its level. */
import './vscodeStub';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import type * as vscode from 'vscode';
import { runGreentrack } from '../src/run';

/** Records what reaches the output channel, as `level text`. */
function recordingChannel(): { channel: vscode.LogOutputChannel; lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (text: string): void => {
    lines.push(`${level} ${text}`);
  };
  const channel = { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  return { channel: channel as unknown as vscode.LogOutputChannel, lines };
}

describe('runGreentrack', () => {
  it('splits output into lines across chunks; stderr progress is info, an error line an error', async () => {
    // Stands in for `python -m greentrack …`: writes lines in pieces, with pauses so they arrive as separate chunks.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gt-run-'));
    const script = path.join(dir, 'python');
    fs.writeFileSync(
      script,
      [
        '#!/bin/sh',
        'printf "greentrack: Loading embedded (cpu, float32): tok" >&2; sleep 0.2',
        'printf "enizer\\nWARNING greentrack.x: slow\\n" >&2; sleep 0.2',
        'printf "meter  wor"; sleep 0.2; printf "ks\\nlast line without newline"',
        'printf "error: no model at /nowhere" >&2',
        'exit 1',
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
    const { channel, lines } = recordingChannel();
    const seen: string[] = [];
    const result = await runGreentrack(script, ['doctor'], process.env, channel, undefined, (l) => seen.push(l));
    fs.rmSync(dir, { recursive: true, force: true });
    assert.equal(result.code, 1);
    assert.deepEqual(lines, [
      `info $ ${script} -m greentrack doctor`,
      'info greentrack: Loading embedded (cpu, float32): tokenizer',
      'warn WARNING greentrack.x: slow',
      'info meter  works',
      'info last line without newline',
      'error error: no model at /nowhere',
      'info exit code 1',
    ]);
    assert.deepEqual(seen, lines.slice(1, -1).map((l) => l.slice(l.indexOf(' ') + 1)));
    assert.ok(result.stderr.endsWith('error: no model at /nowhere'));
  });
});
