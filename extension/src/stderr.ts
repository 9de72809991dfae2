/**
 * The server's stderr, line by line, with a log level for each line, for the output channel. Left to
 * vscode-languageclient, every stderr chunk shows as `[error]`, yet most of it is progress (model
 * download and loading, tqdm bars, rich's "greentrack: loading model: …" lines). Here a line is `info`
 * unless it says otherwise: Python logging's `LEVEL name: message` (with an optional timestamp or a
 * `(process)` prefix, as vLLM writes it), the CLI's `error: …`, `…: SomeWarning: …` from the warnings
 * module, and tracebacks. Indented lines continue the level of the line before (multi-line records).
 * A redraw of a progress bar (a segment ended by a lone `\r`) is kept at most once per
 * `progressIntervalMs`; the bar's final state, ended by `\n`, always. Pure, so unit tests cover it.
 */

export type StderrLevel = 'debug' | 'info' | 'warn' | 'error';

export interface StderrLine {
  level: StderrLevel;
  text: string;
}

// eslint-disable-next-line no-control-regex -- ANSI escapes are what this strips
const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]/g;
/** `[2025-01-31 12:00:00,123] LEVEL`, `(EngineCore pid=1) LEVEL 01-31 12:00:00 […]`, `LEVEL name: …`. */
const LOGGING =
  /^(?:\([^)]*\)\s+)?\[?(?:\d{4}-\d\d-\d\d[ T][\d:.,]+\]?\s+)?\[?(CRITICAL|FATAL|ERROR|WARNING|WARN|INFO|DEBUG|TRACE)\]?(?=[\s:]|$)/;
const LEVELS: Record<string, StderrLevel> = {
  CRITICAL: 'error',
  FATAL: 'error',
  ERROR: 'error',
  WARNING: 'warn',
  WARN: 'warn',
  INFO: 'info',
  DEBUG: 'debug',
  TRACE: 'debug',
};
/** The CLI's one-line domain error (`error: …`), also behind a program name (`greentrack: error: …`). */
const CLI_ERROR = /^(?:[\w.-]+: )?(?:error|fatal):\s/i;
/** warnings.showwarning: `/path/file.py:12: FutureWarning: …`. */
const PY_WARNING = /^\S.*:\d+: \w*Warning: /;
const TRACEBACK = /^Traceback \(most recent call last\):/;
const CHAINED = /^(?:During handling of the above exception|The above exception was the direct cause)/;

export class StderrLines {
  private pending = '';
  private inTraceback = false;
  private lastLevel: StderrLevel = 'info';
  private lastProgressMs = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly now: () => number = Date.now,
    private readonly progressIntervalMs = 1000,
  ) {}

  /** Feed a chunk of stderr; returns the lines it completed. */
  push(chunk: string): StderrLine[] {
    this.pending += chunk;
    const out: StderrLine[] = [];
    for (;;) {
      const at = this.pending.search(/[\r\n]/);
      if (at < 0) {
        break;
      }
      let progress = false;
      let end = at + 1;
      if (this.pending[at] === '\r') {
        if (at + 1 === this.pending.length) {
          break; // a `\r\n` may be split across chunks: wait for the next one
        }
        if (this.pending[at + 1] === '\n') {
          end = at + 2;
        } else {
          progress = true;
        }
      }
      const segment = this.pending.slice(0, at);
      this.pending = this.pending.slice(end);
      const line = this.classify(segment, progress);
      if (line) {
        out.push(line);
      }
    }
    return out;
  }

  /** The unterminated rest, when the stream ends. */
  flush(): StderrLine[] {
    const rest = this.pending;
    this.pending = '';
    const line = this.classify(rest.replace(/\r$/, ''), false);
    return line ? [line] : [];
  }

  private classify(raw: string, progress: boolean): StderrLine | undefined {
    const text = raw.replace(ANSI, '').trimEnd();
    if (!text.trim()) {
      return undefined;
    }
    if (progress) {
      const nowMs = this.now();
      if (nowMs - this.lastProgressMs < this.progressIntervalMs) {
        return undefined;
      }
      this.lastProgressMs = nowMs;
      this.lastLevel = 'info';
      return { level: 'info', text: text.trim() };
    }
    const level = this.levelOf(text);
    this.lastLevel = level;
    return { level, text };
  }

  private levelOf(text: string): StderrLevel {
    const indented = /^\s/.test(text);
    const logging = LOGGING.exec(text);
    if (logging) {
      this.inTraceback = false;
      return LEVELS[logging[1]];
    }
    if (TRACEBACK.test(text) || CHAINED.test(text)) {
      this.inTraceback = true;
      return 'error';
    }
    if (this.inTraceback) {
      // Frames are indented; the first line that is not is the exception itself, the traceback's last.
      this.inTraceback = indented;
      return 'error';
    }
    if (indented) {
      return this.lastLevel;
    }
    if (CLI_ERROR.test(text)) {
      return 'error';
    }
    if (PY_WARNING.test(text)) {
      return 'warn';
    }
    return 'info';
  }
}
