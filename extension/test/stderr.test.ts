/** The server's stderr as output-channel lines: progress is info, logging levels and tracebacks keep theirs. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { StderrLine, StderrLines } from '../src/stderr';

const levels = (lines: StderrLine[]): string[] => lines.map((l) => `${l.level} ${l.text}`);

describe('StderrLines', () => {
  it('progress lines (rich plain lines, model loading) are info, not errors', () => {
    const s = new StderrLines();
    assert.deepEqual(
      levels(s.push('greentrack: loading model: tokenizer\ngreentrack: loading model: weights (float32, cpu)\n')),
      ['info greentrack: loading model: tokenizer', 'info greentrack: loading model: weights (float32, cpu)'],
    );
  });

  it('Python logging lines keep their level, with or without a timestamp or a process prefix', () => {
    const s = new StderrLines();
    const out = s.push(
      [
        'WARNING greentrack.engine: no RAPL meter; energy is estimated',
        'ERROR greentrack.lsp.server: completion failed',
        '2025-01-31 12:00:00,123 INFO greentrack.lsp: ready',
        'DEBUG greentrack.meters: sampled',
        'CRITICAL root: out of memory',
        '(EngineCore_0 pid=42) WARNING 01-31 12:00:00 [config.py:12] chunked prefill off',
        'INFO 01-31 12:00:01 [llm_engine.py:3] initialising',
        'INFORMATION is not a level',
        '',
      ].join('\n'),
    );
    assert.deepEqual(
      out.map((l) => l.level),
      ['warn', 'error', 'info', 'debug', 'error', 'warn', 'info', 'info'],
    );
    assert.equal(out[0].text, 'WARNING greentrack.engine: no RAPL meter; energy is estimated');
  });

  it('a traceback is an error to its last line, and indented lines continue the line before', () => {
    const s = new StderrLines();
    const out = s.push(
      [
        'ERROR greentrack.lsp.server: completion failed',
        'Traceback (most recent call last):',
        '  File "/x/server.py", line 1, in f',
        '    raise ValueError("bad")',
        'ValueError: bad',
        'Loading weights',
        'WARNING greentrack.config: two lines:',
        '  the second, indented',
        '/x/torch/utils.py:12: FutureWarning: `x` is deprecated',
        '  warnings.warn(',
        'error: no model at /nowhere',
        'greentrack: error: bad option',
        '',
      ].join('\n'),
    );
    assert.deepEqual(levels(out), [
      'error ERROR greentrack.lsp.server: completion failed',
      'error Traceback (most recent call last):',
      'error   File "/x/server.py", line 1, in f',
      'error     raise ValueError("bad")',
      'error ValueError: bad',
      'info Loading weights',
      'warn WARNING greentrack.config: two lines:',
      'warn   the second, indented',
      'warn /x/torch/utils.py:12: FutureWarning: `x` is deprecated',
      'warn   warnings.warn(',
      'error error: no model at /nowhere',
      'error greentrack: error: bad option',
    ]);
  });

  it('chained tracebacks stay errors across the blank line', () => {
    const s = new StderrLines();
    const out = s.push(
      'Traceback (most recent call last):\n  File "a", line 1\nKeyError: 1\n\n' +
        'During handling of the above exception, another exception occurred:\n\n' +
        'Traceback (most recent call last):\n  File "b", line 2\nRuntimeError: 2\nafter\n',
    );
    assert.deepEqual(
      out.map((l) => l.level),
      ['error', 'error', 'error', 'error', 'error', 'error', 'error', 'info'],
    );
  });

  it('lines split across chunks, CRLF, and ANSI colours', () => {
    const s = new StderrLines();
    assert.deepEqual(s.push('WARN'), []);
    assert.deepEqual(s.push('ING a: b\r'), []); // maybe the start of \r\n
    assert.deepEqual(levels(s.push('\n\x1b[1;31merror:\x1b[0m gone\n')), ['warn WARNING a: b', 'error error: gone']);
    assert.deepEqual(levels(s.push('tail without newline')), []);
    assert.deepEqual(levels(s.flush()), ['info tail without newline']);
    assert.deepEqual(s.flush(), []);
  });

  it('progress-bar redraws (lone \\r) are kept at most once per interval; the final state always', () => {
    let nowMs = 0;
    const s = new StderrLines(() => nowMs, 1000);
    const bar = (pct: number): string => `\rDownloading model.safetensors: ${pct}%|###`;
    const out: StderrLine[] = [];
    for (let pct = 0; pct <= 90; pct += 10) {
      out.push(...s.push(bar(pct)));
      nowMs += 300;
    }
    out.push(...s.push(`${bar(100)}\n`));
    assert.ok(out.every((l) => l.level === 'info'));
    assert.deepEqual(
      out.map((l) => l.text),
      [
        'Downloading model.safetensors: 0%|###',
        'Downloading model.safetensors: 40%|###',
        'Downloading model.safetensors: 80%|###',
        'Downloading model.safetensors: 100%|###',
      ],
    );
  });
});
