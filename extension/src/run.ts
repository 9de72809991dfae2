/**
 * Runs one `greentrack` command-line command (`<python> -m greentrack ...`) for the commands palette,
 * its output streamed to the output channel line by line (stdout as info, stderr at each line's level:
 * model loading progress is info, errors are errors; see stderr.ts), cancellable.
 */
import * as cp from 'node:child_process';
import * as vscode from 'vscode';
import { StderrLine, StderrLines } from './stderr';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `python -m greentrack <args>`; resolves when it exits (or is cancelled: the process is killed). */
export function runGreentrack(
  python: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  channel: vscode.LogOutputChannel,
  token?: vscode.CancellationToken,
  onLine?: (line: string) => void,
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const full = ['-m', 'greentrack', ...args];
    channel.info(`$ ${python} ${full.join(' ')}`);
    const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    const child = cp.spawn(python, full, { env, ...(cwd ? { cwd } : {}) });
    let stdout = '';
    let stderr = '';
    let stdoutRest = ''; // a line not finished in this chunk
    const stdoutLine = (line: string): void => {
      if (line.trim()) {
        channel.info(line);
        onLine?.(line);
      }
    };
    const stderrLines = new StderrLines();
    const stderrLine = (line: StderrLine): void => {
      channel[line.level](line.text);
      onLine?.(line.text);
    };
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      stdout += d;
      const parts = (stdoutRest + d).split(/\r?\n/);
      stdoutRest = parts.pop() ?? '';
      parts.forEach(stdoutLine);
    });
    child.stderr.on('data', (d: string) => {
      stderr += d;
      stderrLines.push(d).forEach(stderrLine);
    });
    const cancel = token?.onCancellationRequested(() => {
      channel.info('cancelled');
      child.kill('SIGTERM');
    });
    child.on('error', (e) => {
      cancel?.dispose();
      reject(e);
    });
    child.on('close', (code) => {
      cancel?.dispose();
      stdoutLine(stdoutRest);
      stderrLines.flush().forEach(stderrLine);
      channel.info(`exit code ${code}`);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The last non-empty line of a command's error output: the one clear line the CLI promises. */
export function lastLine(text: string): string {
  const lines = text.trim().split(/\r?\n/).filter((l) => l.trim());
  return lines[lines.length - 1] ?? '';
}
