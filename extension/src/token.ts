/**
 * The bearer token for `greentrack.serverUrl` (remote mode), kept in VS Code's SecretStorage, one per server origin.
 * Asked for once when a server is set and no token is stored (dismissing it counts: the command "greentrack: Set
 * Server Token" asks again). The token reaches the language server only through its environment (GREENTRACK_TOKEN):
 * never on its command line, in settings or in the log.
 */
import * as vscode from 'vscode';
import { tokenSecretKey } from './settings';

/** What the input box says; the e2e test finds the box by it. */
export const TOKEN_PROMPT = 'greentrack server token';

export class ServerTokens {
  constructor(private readonly context: vscode.ExtensionContext) {}

  private askedKey(url: string): string {
    return `${tokenSecretKey(url)}:asked`;
  }

  /** The stored token for `url`'s server, if any. */
  async get(url: string): Promise<string | undefined> {
    const token = await this.context.secrets.get(tokenSecretKey(url));
    return token || undefined;
  }

  /** The stored token, or (the first time for this server) the one the user types now. */
  async getOrAskOnce(url: string): Promise<string | undefined> {
    const stored = await this.get(url);
    if (stored || this.context.globalState.get<boolean>(this.askedKey(url))) {
      return stored;
    }
    await this.context.globalState.update(this.askedKey(url), true);
    return this.ask(url);
  }

  /** Ask for the token of `url`'s server and store it; an empty answer removes the stored one (a server without
   * tokens); Escape keeps what was stored. Returns the token now in effect. */
  async ask(url: string): Promise<string | undefined> {
    const answer = await vscode.window.showInputBox({
      title: TOKEN_PROMPT,
      prompt: `The token for ${url} (\`greentrack token add YOUR_EMAIL\` on the server prints it). Empty: the server needs none.`,
      password: true,
      ignoreFocusOut: true,
      placeHolder: 'gt_…',
    });
    if (answer === undefined) {
      return this.get(url);
    }
    const token = answer.trim();
    if (token) {
      await this.context.secrets.store(tokenSecretKey(url), token);
      return token;
    }
    await this.context.secrets.delete(tokenSecretKey(url));
    return undefined;
  }
}
