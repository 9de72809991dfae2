/**
 * Runs one `greentrack` command-line command (`<python> -m greentrack ...`) for the commands palette,
 * its output streamed to the output channel, cancellable.
 */
import * as cp from 'node:child_process';
import * as vscode from 'vscode';

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
    const lines = (chunk: string, sink: (l: string) => void): void => {
      for (const line of chunk.split(/\r?\n/)) {
        if (line.trim()) {
          sink(line);
        }
      }
    };
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      stdout += d;
      lines(d, (l) => {
        channel.info(l);
        onLine?.(l);
      });
    });
    child.stderr.on('data', (d: string) => {
      stderr += d;
      lines(d, (l) => {
        channel.warn(l);
        onLine?.(l);
      });
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
