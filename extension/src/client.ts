/**
 * Starts, stops and restarts the language client (`<python> -m greentrack lsp` over stdio; with
 * `greentrack.serverUrl` set, `lsp --server URL`, the token from SecretStorage in its environment).
 * Start/stop run one at a time; restart requests that arrive while one is waiting share it, so a burst
 * of setting changes restarts the server once. The server's notifications go to the status bar; its stderr
 * goes to the output channel line by line, each at its own level (stderr.ts: progress is info, not error).
 * With `GREENTRACK_DEBUGPY=host:port` in the environment (.vscode/launch.json's "Extension + server") the
 * server runs under `python -m debugpy --connect host:port`, so the Python debugger listening there attaches.
 */
import * as readline from 'node:readline';
import type { Readable } from 'node:stream';
import * as vscode from 'vscode';
import {
  LanguageClient,
  LanguageClientOptions,
  RevealOutputChannelOn,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';
import { ENERGY_NOTIFICATION, EnergyParams, STATUS_NOTIFICATION, StatusParams } from './protocol';
import { PythonNotFoundError, Resolved, resolvePython } from './python';
import { SerialRunner } from './serial';
import { StderrLine, StderrLines } from './stderr';
import { getSettings, LANGUAGES, lspArgs, lspEnv, SECTION, serverOptions, serverUrlProblem } from './settings';
import type { EnergyStatusBar } from './statusBar';
import { ServerTokens } from './token';

export class ServerManager implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private resolved: Resolved | undefined;
  private readonly serial = new SerialRunner();
  private stopping = false;
  private disposed = false;
  /** Restarts asked for whose stop has not begun: the running client is about to go. */
  private restartsQueued = 0;

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly channel: vscode.LogOutputChannel,
    private readonly statusBar: EnergyStatusBar,
    private readonly tokens: ServerTokens,
  ) {}

  /** The interpreter the server runs with (resolved anew when the server is not running). */
  async python(): Promise<Resolved> {
    if (this.resolved) {
      return this.resolved;
    }
    return resolvePython(getSettings().pythonPath, this.context.extensionPath, (m) => this.channel.info(m));
  }

  start(): Promise<void> {
    return this.serial.run(() => this.doStart());
  }

  /** Restart once, however many times it is asked before the restart begins. */
  restart(reason: string): Promise<void> {
    const { promise, coalesced } = this.serial.restart(async () => {
      this.channel.info(`restarting the server: ${reason}`);
      this.restartsQueued -= 1;
      await this.doStop();
      await this.doStart();
    });
    if (coalesced) {
      this.channel.info(`restart (${reason}): one is already queued`);
    } else {
      this.restartsQueued += 1;
    }
    return promise;
  }

  stop(): Promise<void> {
    return this.serial.run(() => this.doStop());
  }

  private async doStart(): Promise<void> {
    if (this.disposed || this.client) {
      return;
    }
    const settings = getSettings();
    this.statusBar.starting('Looking for a Python with greentrack installed…');
    let resolved: Resolved;
    try {
      resolved = await resolvePython(settings.pythonPath, this.context.extensionPath, (m) => this.channel.info(m));
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      this.channel.error(message);
      this.statusBar.error(message);
      if (e instanceof PythonNotFoundError) {
        void this.offerSetup(message);
      }
      return;
    }
    this.resolved = resolved;
    let token: string | undefined;
    if (settings.serverUrl) {
      const problem = serverUrlProblem(settings.serverUrl);
      if (problem) {
        this.channel.error(problem);
        this.statusBar.error(problem);
        return;
      }
      this.statusBar.starting(`Connecting to ${settings.serverUrl}…`);
      token = await this.tokens.getOrAskOnce(settings.serverUrl);
      if (this.disposed || this.client) {
        return;
      }
    }
    const args = lspArgs(settings);
    this.channel.info(
      `starting: ${resolved.python} -m greentrack ${args.join(' ')} (greentrack ${resolved.version}, from ${resolved.source})` +
        (settings.serverUrl ? (token ? '; token from secret storage' : '; no token stored') : ''),
    );

    const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    const debugpy = process.env.GREENTRACK_DEBUGPY?.trim();
    if (debugpy) {
      this.channel.info(`GREENTRACK_DEBUGPY: the server connects to the Python debugger at ${debugpy}`);
    }
    const server: ServerOptions = {
      command: resolved.python,
      // -Xfrozen_modules=off: debugpy warns that breakpoints in frozen stdlib modules may be missed otherwise.
      args: [...(debugpy ? ['-Xfrozen_modules=off', '-m', 'debugpy', '--connect', debugpy] : []), '-m', 'greentrack', ...args],
      // No `transport`: stdio without the `--stdio` argument vscode-languageclient would append.
      // The extension host's environment (GREENTRACK_DB, GREENTRACK_DEVELOPER, ...) applies to the server; the
      // token travels only there (GREENTRACK_TOKEN), never in the arguments.
      options: { env: lspEnv(process.env, token), ...(cwd ? { cwd } : {}) },
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: LANGUAGES.flatMap((language) => [
        { scheme: 'file', language },
        { scheme: 'untitled', language },
      ]),
      initializationOptions: serverOptions(settings),
      synchronize: { configurationSection: SECTION },
      outputChannel: this.channel,
      traceOutputChannel: this.channel,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      stdioOptions: { stdout: pipeLines, stderr: pipeStderr },
      middleware: {
        // A setting change that restarts the server (greentrack.pythonPath) also reaches the old client here,
        // as it stops: sending would fail ("Starting server failed"). The new server reads every setting anew.
        workspace: {
          didChangeConfiguration: (sections, next) =>
            this.restartsQueued > 0 || this.stopping || this.client !== client ? Promise.resolve() : next(sections),
        },
        provideInlineCompletionItems: (document, position, context, token, next) =>
          getSettings(document.uri).enabled ? next(document, position, context, token) : null,
      },
    };
    const client = new LanguageClient('greentrack', 'greentrack', server, clientOptions);
    this.client = client;
    client.onNotification(STATUS_NOTIFICATION, (p: StatusParams) => {
      this.channel.info(`server status: ${p.state}${p.message ? ` — ${p.message}` : ''}`);
      this.statusBar.onStatus(p);
    });
    client.onNotification(ENERGY_NOTIFICATION, (p: EnergyParams) => {
      this.channel.debug(`energy: ${JSON.stringify(p)}`);
      this.statusBar.onEnergy(p);
    });
    client.onDidChangeState((e) => {
      if (e.newState === State.Stopped && !this.stopping && this.client === client) {
        this.statusBar.error('The greentrack server stopped. Run "greentrack: Restart Language Server"; see "greentrack: Show Logs".');
      }
    });
    this.statusBar.starting('Starting the greentrack server…');
    try {
      await client.start();
    } catch (e) {
      const message = `The greentrack server did not start: ${e instanceof Error ? e.message : String(e)}`;
      this.channel.error(message);
      this.statusBar.error(message);
      this.client = undefined;
      try {
        await client.dispose();
      } catch {
        // already gone
      }
    }
  }

  private async doStop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.resolved = undefined;
    if (!client) {
      return;
    }
    this.stopping = true;
    try {
      if (client.state !== State.Stopped) {
        await client.stop(5000);
      }
    } catch (e) {
      this.channel.warn(`stopping the server: ${String(e)}`);
    } finally {
      this.stopping = false;
    }
  }

  private async offerSetup(message: string): Promise<void> {
    const setup = 'Open Setup Instructions';
    const choose = 'Set greentrack.pythonPath';
    const choice = await vscode.window.showErrorMessage(message, setup, choose);
    if (choice === setup) {
      await openSetupInstructions(this.context);
    } else if (choice === choose) {
      await vscode.commands.executeCommand('workbench.action.openSettings', 'greentrack.pythonPath');
    }
  }

  dispose(): void {
    this.disposed = true;
    void this.stop();
  }
}

/** Lines of a stream the server does not speak LSP on, as info. */
function pipeLines(input: Readable, channel: vscode.LogOutputChannel): void {
  readline.createInterface({ input, crlfDelay: Infinity, terminal: false }).on('line', (line) => channel.info(line));
}

/** The server's stderr, each line at its level (progress and model loading are info; see stderr.ts). */
function pipeStderr(input: Readable, channel: vscode.LogOutputChannel): void {
  const lines = new StderrLines();
  const write = (line: StderrLine): void => channel[line.level](line.text);
  input.setEncoding('utf8');
  input.on('data', (chunk: string) => lines.push(chunk).forEach(write));
  input.on('end', () => lines.flush().forEach(write));
}

/** The README's set-up section, rendered (it ships in the .vsix, where vsce names it readme.md). */
export async function openSetupInstructions(context: vscode.ExtensionContext): Promise<void> {
  for (const name of ['README.md', 'readme.md']) {
    const readme = vscode.Uri.joinPath(context.extensionUri, name);
    try {
      await vscode.workspace.fs.stat(readme);
    } catch {
      continue;
    }
    await vscode.commands.executeCommand('markdown.showPreview', readme);
    return;
  }
  void vscode.window.showInformationMessage(
    'Set up greentrack: in its repository run `bash scripts/setup.sh`, then set greentrack.pythonPath to `.venv/bin/python` there.',
  );
}
