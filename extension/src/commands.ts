/**
 * The commands in the palette (ids in package.json): the weekly report in a webview, enable/disable,
 * logs, doctor, calibrate, restart, and the server token (remote mode). `greentrack.accept` is the server's command (registered by the
 * language client from the server's executeCommandProvider), so it is not declared here.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { ServerManager } from './client';
import { withCsp } from './html';
import { lastLine, runGreentrack } from './run';
import { childEnv, cliOptions, Commands, getSettings, SECTION } from './settings';
import type { ServerTokens } from './token';

export function registerCommands(
  context: vscode.ExtensionContext,
  server: ServerManager,
  channel: vscode.LogOutputChannel,
  tokens: ServerTokens,
): void {
  let reportPanel: vscode.WebviewPanel | undefined;

  const python = async (): Promise<string | undefined> => {
    try {
      return (await server.python()).python;
    } catch (e) {
      void vscode.window.showErrorMessage(e instanceof Error ? e.message : String(e));
      return undefined;
    }
  };

  const failed = async (what: string, detail: string): Promise<void> => {
    const logs = 'Show Logs';
    const choice = await vscode.window.showErrorMessage(`greentrack ${what} failed: ${detail}`, logs);
    if (choice === logs) {
      channel.show(true);
    }
  };

  const showReport = async (): Promise<void> => {
    const py = await python();
    if (!py) {
      return;
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'greentrack-report-'));
    const out = path.join(dir, 'report.html');
    const settings = getSettings();
    try {
      const result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Window, title: 'greentrack: building the report' },
        () => runGreentrack(py, ['report', '--format', 'html', '--out', out], childEnv(settings), channel),
      );
      if (result.code !== 0 || !fs.existsSync(out)) {
        await failed('report', lastLine(result.stderr) || `exit code ${result.code}`);
        return;
      }
      const html = fs.readFileSync(out, 'utf8');
      if (!reportPanel) {
        reportPanel = vscode.window.createWebviewPanel(
          'greentrack.report',
          'greentrack: this week',
          vscode.ViewColumn.Active,
          { enableScripts: false, localResourceRoots: [] },
        );
        reportPanel.onDidDispose(() => (reportPanel = undefined), undefined, context.subscriptions);
      } else {
        reportPanel.reveal();
      }
      reportPanel.webview.html = withCsp(html);
    } catch (e) {
      await failed('report', e instanceof Error ? e.message : String(e));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };

  const setEnabled = async (enabled: boolean): Promise<void> => {
    await vscode.workspace.getConfiguration(SECTION).update('enabled', enabled, vscode.ConfigurationTarget.Global);
    void vscode.window.setStatusBarMessage(`greentrack completions ${enabled ? 'enabled' : 'disabled'}`, 3000);
  };

  const doctor = async (): Promise<void> => {
    const py = await python();
    if (!py) {
      return;
    }
    channel.show(true);
    const settings = getSettings();
    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: 'greentrack: doctor' },
      () => runGreentrack(py, ['doctor', ...cliOptions(settings)], childEnv(settings), channel),
    );
    if (result.code !== 0) {
      await failed('doctor', lastLine(result.stderr) || `exit code ${result.code}`);
    }
  };

  const calibrate = async (allowEstimate = false): Promise<void> => {
    const py = await python();
    if (!py) {
      return;
    }
    const settings = getSettings();
    const args = ['calibrate', ...cliOptions(settings), ...(allowEstimate ? ['--allow-estimate'] : [])];
    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: 'greentrack: calibrating', cancellable: true },
      (progress, token) =>
        runGreentrack(py, args, childEnv(settings), channel, token, (line) =>
          progress.report({ message: line.slice(0, 120) }),
        ),
    );
    if (result.code === 0) {
      const restart = 'Restart Server';
      const choice = await vscode.window.showInformationMessage('greentrack: calibration stored; a restarted server uses it.', restart);
      if (choice === restart) {
        await server.restart('calibrated');
      }
    } else if (result.code !== null) {
      const detail = lastLine(result.stderr) || `exit code ${result.code}`;
      if (!allowEstimate && result.stderr.includes('--allow-estimate')) {
        // No energy counter here: calibrating the estimate is possible, and itself an estimate.
        const anyway = 'Calibrate the Estimate Anyway';
        const choice = await vscode.window.showWarningMessage(`greentrack: ${detail}`, anyway, 'Show Logs');
        if (choice === anyway) {
          await calibrate(true);
        } else if (choice === 'Show Logs') {
          channel.show(true);
        }
        return;
      }
      await failed('calibrate', detail);
    }
  };

  const setServerToken = async (): Promise<void> => {
    const url = getSettings().serverUrl;
    if (!url) {
      const open = 'Set greentrack.serverUrl';
      const choice = await vscode.window.showInformationMessage(
        'greentrack: no server is set (greentrack.serverUrl); completions run on this machine.',
        open,
      );
      if (choice === open) {
        await vscode.commands.executeCommand('workbench.action.openSettings', 'greentrack.serverUrl');
      }
      return;
    }
    const before = await tokens.get(url);
    const after = await tokens.ask(url);
    if (after !== before) {
      channel.info(`server token for ${url} ${after ? 'stored' : 'removed'}`);
      await server.restart('the server token changed');
    }
  };

  context.subscriptions.push(
    vscode.commands.registerCommand(Commands.showReport, showReport),
    vscode.commands.registerCommand(Commands.enable, () => setEnabled(true)),
    vscode.commands.registerCommand(Commands.disable, () => setEnabled(false)),
    vscode.commands.registerCommand(Commands.showLogs, () => channel.show()),
    vscode.commands.registerCommand(Commands.doctor, doctor),
    vscode.commands.registerCommand(Commands.calibrate, () => calibrate(false)),
    vscode.commands.registerCommand(Commands.restartServer, () => server.restart('asked by the user')),
    vscode.commands.registerCommand(Commands.setServerToken, setServerToken),
  );
}
