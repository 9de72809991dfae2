/**
 * Entry point: wires the output channel, the status bar, the language client and the commands, and
 * reacts to setting changes (pythonPath or serverUrl → restart; enabled → status bar; the rest reach the server
 * live through workspace/didChangeConfiguration).
 */
import * as vscode from 'vscode';
import { ServerManager } from './client';
import { registerCommands } from './commands';
import { getSettings, SECTION } from './settings';
import { EnergyStatusBar } from './statusBar';
import { ServerTokens } from './token';

let server: ServerManager | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const channel = vscode.window.createOutputChannel('greentrack', { log: true });
  const statusBar = new EnergyStatusBar();
  statusBar.setEnabled(getSettings().enabled);
  const tokens = new ServerTokens(context);
  server = new ServerManager(context, channel, statusBar, tokens);
  context.subscriptions.push(channel, statusBar, server);
  registerCommands(context, server, channel, tokens);

  const manager = server;
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration(`${SECTION}.pythonPath`)) {
        void manager.restart('greentrack.pythonPath changed');
      } else if (e.affectsConfiguration(`${SECTION}.serverUrl`)) {
        void manager.restart('greentrack.serverUrl changed');
      }
      if (e.affectsConfiguration(`${SECTION}.enabled`)) {
        statusBar.setEnabled(getSettings().enabled);
      }
    }),
  );
  watchPythonExtension(context, manager);
  await manager.start();
}

/** When the interpreter comes from the Python extension, follow its changes. */
function watchPythonExtension(context: vscode.ExtensionContext, manager: ServerManager): void {
  interface Api {
    environments?: { onDidChangeActiveEnvironmentPath?: vscode.Event<unknown> };
  }
  const ext = vscode.extensions.getExtension<Api>('ms-python.python');
  if (!ext) {
    return;
  }
  void Promise.resolve(ext.isActive ? ext.exports : ext.activate()).then(
    (api) => {
      const event = api?.environments?.onDidChangeActiveEnvironmentPath;
      if (event) {
        context.subscriptions.push(
          event(() => {
            if (!getSettings().pythonPath) {
              void manager.restart('the Python extension selected another interpreter');
            }
          }),
        );
      }
    },
    () => undefined,
  );
}

export async function deactivate(): Promise<void> {
  await server?.stop();
  server = undefined;
}
