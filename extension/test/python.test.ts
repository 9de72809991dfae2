/** Which interpreter runs the server: candidate order and the real `import greentrack` check. */
import { state } from './vscodeStub';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { candidates, checkGreentrack, PythonNotFoundError, recordedPythonFile, resolvePython } from '../src/python';

const root = path.resolve(__dirname, '..', '..', '..');
const venvPython = path.join(root, '.venv', 'bin', 'python');
const log = (): void => undefined;

describe('interpreter candidates', () => {
  it('an explicit greentrack.pythonPath is the only candidate, with ~ and ${workspaceFolder} expanded', async () => {
    state.workspaceFolders = [{ uri: { fsPath: '/work/proj' }, name: 'proj' }];
    let r = await candidates('${workspaceFolder}/.venv/bin/python', '/ext', log);
    assert.deepEqual(r, { list: [{ python: '/work/proj/.venv/bin/python', source: 'setting greentrack.pythonPath' }], explicit: true });
    r = await candidates('~/venv/bin/python', '/ext', log);
    assert.equal(r.list[0].python, path.join(os.homedir(), 'venv/bin/python'));
    state.workspaceFolders = undefined;
  });

  it('otherwise: Python extension, GREENTRACK_PYTHON, the recorded file, .venv folders, python3', async () => {
    const config = fs.mkdtempSync(path.join(os.tmpdir(), 'gt-conf-'));
    const saved = { xdg: process.env.XDG_CONFIG_HOME, gp: process.env.GREENTRACK_PYTHON };
    process.env.XDG_CONFIG_HOME = config;
    process.env.GREENTRACK_PYTHON = '/opt/gt/bin/python';
    fs.mkdirSync(path.dirname(recordedPythonFile()), { recursive: true });
    fs.writeFileSync(recordedPythonFile(), '/recorded/python\n');
    state.workspaceFolders = [{ uri: { fsPath: '/work/proj' }, name: 'proj' }];
    state.extensions['ms-python.python'] = {
      isActive: true,
      exports: {
        environments: {
          getActiveEnvironmentPath: () => ({ path: '/selected/python' }),
          resolveEnvironment: async () => ({ executable: { uri: { fsPath: '/selected/bin/python3' } } }),
        },
      },
    };
    try {
      const r = await candidates('', '/ext', log);
      assert.equal(r.explicit, false);
      assert.deepEqual(
        r.list.map((c) => c.python),
        ['/selected/bin/python3', '/opt/gt/bin/python', '/recorded/python', '/ext/.venv/bin/python', '/work/proj/.venv/bin/python', 'python3'],
      );
    } finally {
      delete state.extensions['ms-python.python'];
      state.workspaceFolders = undefined;
      process.env.XDG_CONFIG_HOME = saved.xdg;
      if (saved.gp === undefined) delete process.env.GREENTRACK_PYTHON;
      else process.env.GREENTRACK_PYTHON = saved.gp;
      fs.rmSync(config, { recursive: true, force: true });
    }
  });
});

describe('checkGreentrack (real interpreters)', () => {
  it('reports a missing file without running it', async () => {
    assert.deepEqual(await checkGreentrack('/nonexistent/bin/python'), { ok: false, reason: 'no such file' });
  });

  it('says why when greentrack is not importable', async () => {
    const r = await checkGreentrack(process.execPath.replace(/node$/, 'node-not-python'));
    assert.equal(r.ok, false);
    const sys = await checkGreentrack('/usr/bin/python3');
    if (fs.existsSync('/usr/bin/python3') && !sys.ok) {
      assert.match(sys.reason, /No module named 'greentrack'|ModuleNotFoundError/);
    }
  });

  it('finds greentrack in the repository .venv (when set up)', { skip: !fs.existsSync(venvPython) && 'no .venv' }, async () => {
    const r = await checkGreentrack(venvPython);
    assert.ok(r.ok, JSON.stringify(r));
    const resolved = await resolvePython(venvPython, '/ext', log);
    assert.equal(resolved.python, venvPython);
  });

  it('an explicit interpreter without greentrack is an error that names it', async () => {
    await assert.rejects(resolvePython('/nonexistent/bin/python', '/ext', log), (e: unknown) => {
      assert.ok(e instanceof PythonNotFoundError);
      assert.ok(e.explicit);
      assert.match(e.message, /greentrack\.pythonPath \(\/nonexistent\/bin\/python\): no such file/);
      return true;
    });
  });
});
