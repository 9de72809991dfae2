/**
 * The status bar item: "starting" until the server says ready, then the last suggestion's energy
 * (`$(zap) 3.21 J`; `$(zap) 0 J · cached` for one served from the suggestion cache) with a tooltip of phases,
 * tokens, method, CO2e and today's total; an error state with the server's message. In remote mode a server that
 * cannot be reached shows as "server unreachable" (a warning: the language server reconnects by itself, and typing
 * never waits for it) until the server says ready again.
 * Fed by `greentrack/status` and `greentrack/energy`; clicking opens the report.
 */
import * as vscode from 'vscode';
import { energyText, energyTooltip, fromSuggestionCache, TodayAccumulator } from './format';
import { type EnergyParams, type StatusParams, UNREACHABLE_PREFIX } from './protocol';
import { Commands } from './settings';

/** The item's id; in the DOM it is `greentrack.greentrack.energy` (publisher.name.id). */
export const STATUS_ITEM_ID = 'energy';

export class EnergyStatusBar implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private readonly today = new TodayAccumulator();
  private last: EnergyParams | undefined;
  private state: string = 'starting';
  private enabled = true;

  constructor() {
    this.item = vscode.window.createStatusBarItem(STATUS_ITEM_ID, vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'greentrack energy';
    this.item.command = Commands.showReport;
    this.starting('greentrack is starting');
    this.item.show();
  }

  /** Before the server is ready (also while the model loads). */
  starting(message: string): void {
    this.state = 'starting';
    this.item.text = '$(sync~spin) greentrack starting…';
    this.item.tooltip = message;
    this.item.backgroundColor = undefined;
  }

  /** The server cannot work: show its message until something else happens. */
  error(message: string): void {
    this.state = 'error';
    this.item.text = '$(error) greentrack';
    const md = new vscode.MarkdownString();
    md.appendMarkdown('**greentrack: error**\n\n');
    md.appendText(message);
    md.appendMarkdown('\n\nClick to open this week\'s report; run *greentrack: Show Logs* for details.');
    this.item.tooltip = md;
    this.item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
  }

  /** Remote mode: the server cannot be reached now; the language server keeps trying. */
  unreachable(message: string): void {
    this.state = 'unreachable';
    this.item.text = '$(debug-disconnect) greentrack: server unreachable';
    const md = new vscode.MarkdownString();
    md.appendMarkdown('**greentrack: server unreachable**\n\n');
    md.appendText(message);
    md.appendMarkdown('\n\nReconnecting by itself; until then there are no suggestions (typing is never held up).');
    this.item.tooltip = md;
    this.item.backgroundColor = new vscode.ThemeColor('statusBarItem.warningBackground');
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.render();
  }

  onStatus(p: StatusParams): void {
    switch (p.state) {
      case 'starting':
        this.starting(p.message || 'greentrack is loading the model');
        return;
      case 'error':
        if (p.message?.startsWith(UNREACHABLE_PREFIX)) {
          this.unreachable(p.message);
        } else {
          this.error(p.message || 'the server reported an error');
        }
        return;
      case 'ready':
        this.state = p.state;
        this.render();
        return;
      default:
        return;
    }
  }

  onEnergy(p: EnergyParams): void {
    this.last = p;
    this.today.add(p);
    if (this.state === 'starting') {
      this.state = 'ready';
    }
    this.render();
  }

  private render(): void {
    if (this.state === 'starting' || this.state === 'error' || this.state === 'unreachable') {
      return;
    }
    this.item.backgroundColor = undefined;
    if (!this.enabled) {
      this.item.text = '$(circle-slash) greentrack off';
      this.item.tooltip = 'greentrack completions are disabled (greentrack.enable turns them on). Click for this week\'s report.';
      return;
    }
    if (!this.last) {
      this.item.text = '$(zap) greentrack';
      this.item.tooltip = 'greentrack is ready: the energy of the next suggestion shows here. Click for this week\'s report.';
      return;
    }
    this.item.text = energyText(this.last.total_j, fromSuggestionCache(this.last));
    const md = new vscode.MarkdownString(energyTooltip(this.last, this.today.total()));
    md.supportThemeIcons = true;
    this.item.tooltip = md;
  }

  dispose(): void {
    this.item.dispose();
  }
}
