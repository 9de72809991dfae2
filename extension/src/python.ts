/**
 * Which Python runs the server: the first interpreter, in order, where `import greentrack` works —
 * the `greentrack.pythonPath` setting (only that one, when set), the Python extension's selected
 * interpreter, `GREENTRACK_PYTHON`, the interpreter recorded by scripts/vscode-install.sh
 * (`~/.config/greentrack/python`), a `.venv` next to the extension or in the workspace, then `python3`.
 */
import * as cp from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as vscode from 'vscode';

/** Where the set-up script records the interpreter it installed greentrack into. */
export function recordedPythonFile(): string {
  const base = process.env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  return path.join(base, 'greentrack', 'python');
}

export interface Candidate {
  python: string;
  source: string;
}

export interface Resolved {
  python: string;
  source: string;
  /** greentrack's version in that interpreter. */
  version: string;
}

/** No interpreter could import greentrack: `tried` says which and why. */
export class PythonNotFoundError extends Error {
  constructor(
    readonly tried: { candidate: Candidate; reason: string }[],
    readonly explicit: boolean,
  ) {
    super(
      explicit
        ? `greentrack is not importable with greentrack.pythonPath (${tried[0]?.candidate.python}): ${tried[0]?.reason}`
        : 'greentrack is not installed in any Python found (' +
            tried.map((t) => t.candidate.python).join(', ') +
            '). Run the set-up from the README, or set greentrack.pythonPath.',
    );
  }
}

function expandPath(p: string): string {
  let out = p.trim();
  if (out.startsWith('~')) {
    out = path.join(os.homedir(), out.slice(1));
  }
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  if (folder) {
    out = out.replace(/\$\{workspaceFolder\}/g, folder);
    if (!path.isAbsolute(out) && (out.includes('/') || out.includes('\\'))) {
      out = path.resolve(folder, out);
    }
  }
  return out;
}

interface PythonExtensionApi {
  environments?: {
    getActiveEnvironmentPath(resource?: vscode.Uri): { path: string } | undefined;
    resolveEnvironment(env: { path: string } | string): Promise<{ executable: { uri?: vscode.Uri } } | undefined>;
  };
}

function withTimeout<T>(p: Thenable<T>, ms: number): Promise<T | undefined> {
  return Promise.race([
    Promise.resolve(p),
    new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), ms)),
  ]);
}

/** The interpreter selected in the Python extension (ms-python.python), if installed. */
async function pythonExtensionInterpreter(log: (m: string) => void): Promise<string | undefined> {
  const ext = vscode.extensions.getExtension<PythonExtensionApi>('ms-python.python');
  if (!ext) {
    return undefined;
  }
  try {
    const api = ext.isActive ? ext.exports : await withTimeout(ext.activate(), 10_000);
    const envs = api?.environments;
    if (!envs) {
      return undefined;
    }
    const resource = vscode.window.activeTextEditor?.document.uri ?? vscode.workspace.workspaceFolders?.[0]?.uri;
    const active = envs.getActiveEnvironmentPath(resource);
    if (!active) {
      return undefined;
    }
    const resolved = await withTimeout(envs.resolveEnvironment(active), 10_000);
    return resolved?.executable.uri?.fsPath ?? active.path;
  } catch (e) {
    log(`Python extension: could not read the selected interpreter: ${String(e)}`);
    return undefined;
  }
}

/** The candidates, in order, without duplicates. */
export async function candidates(
  pythonPath: string,
  extensionPath: string,
  log: (m: string) => void,
): Promise<{ list: Candidate[]; explicit: boolean }> {
  if (pythonPath) {
    return { list: [{ python: expandPath(pythonPath), source: 'setting greentrack.pythonPath' }], explicit: true };
  }
  const list: Candidate[] = [];
  const fromExt = await pythonExtensionInterpreter(log);
  if (fromExt) {
    list.push({ python: fromExt, source: 'the Python extension' });
  }
  if (process.env.GREENTRACK_PYTHON) {
    list.push({ python: expandPath(process.env.GREENTRACK_PYTHON), source: 'GREENTRACK_PYTHON' });
  }
  try {
    const recorded = fs.readFileSync(recordedPythonFile(), 'utf8').trim();
    if (recorded) {
      list.push({ python: recorded, source: recordedPythonFile() });
    }
  } catch {
    // not recorded: fine
  }
  const venvPython = process.platform === 'win32' ? path.join('.venv', 'Scripts', 'python.exe') : path.join('.venv', 'bin', 'python');
  list.push({ python: path.join(extensionPath, venvPython), source: 'the extension folder' });
  for (const folder of vscode.workspace.workspaceFolders ?? []) {
    list.push({ python: path.join(folder.uri.fsPath, venvPython), source: `workspace ${folder.name}` });
  }
  list.push({ python: process.platform === 'win32' ? 'python' : 'python3', source: 'PATH' });
  const seen = new Set<string>();
  return {
    list: list.filter((c) => (seen.has(c.python) ? false : (seen.add(c.python), true))),
    explicit: false,
  };
}

/** `python -c "import greentrack"`: the version, or why not. */
export function checkGreentrack(python: string, timeoutMs = 30_000): Promise<{ ok: true; version: string } | { ok: false; reason: string }> {
  return new Promise((resolve) => {
    if (path.isAbsolute(python) && !fs.existsSync(python)) {
      resolve({ ok: false, reason: 'no such file' });
      return;
    }
    cp.execFile(
      python,
      ['-c', 'import greentrack; print(greentrack.__version__)'],
      { timeout: timeoutMs, env: process.env },
      (err, stdout, stderr) => {
        if (err) {
          const last = String(stderr).trim().split('\n').pop() || err.message;
          resolve({ ok: false, reason: last });
        } else {
          resolve({ ok: true, version: String(stdout).trim() });
        }
      },
    );
  });
}

/** The first candidate where greentrack imports; throws PythonNotFoundError otherwise. */
export async function resolvePython(pythonPath: string, extensionPath: string, log: (m: string) => void): Promise<Resolved> {
  const { list, explicit } = await candidates(pythonPath, extensionPath, log);
  const tried: { candidate: Candidate; reason: string }[] = [];
  for (const c of list) {
    const r = await checkGreentrack(c.python);
    if (r.ok) {
      return { python: c.python, source: c.source, version: r.version };
    }
    log(`Python ${c.python} (${c.source}): greentrack not importable: ${r.reason}`);
    tried.push({ candidate: c, reason: r.reason });
  }
  throw new PythonNotFoundError(tried, explicit);
}
