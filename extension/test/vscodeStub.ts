/**
 * A minimal stand-in for the `vscode` module, so unit tests can load the status bar and interpreter
 * lookup under plain Node. Import it before any module that imports `vscode`. Only what those modules
 * touch is here; the real VS Code is exercised by tests/e2e_vscode.
 */
import Module from 'node:module';

export interface FakeItem {
  id: string;
  text: string;
  tooltip: unknown;
  command: unknown;
  name: string;
  backgroundColor: unknown;
  shown: boolean;
  disposed: boolean;
}

export const state = {
  items: [] as FakeItem[],
  config: {} as Record<string, unknown>,
  workspaceFolders: undefined as { uri: { fsPath: string }; name: string }[] | undefined,
  extensions: {} as Record<string, unknown>,
  /** Answers `window.showInputBox` gives, in order (undefined: Escape); the options it was shown with. */
  inputAnswers: [] as (string | undefined)[],
  inputBoxes: [] as Record<string, unknown>[],
};

class MarkdownString {
  value: string;
  supportThemeIcons = false;
  constructor(value = '') {
    this.value = value;
  }
  appendMarkdown(s: string): this {
    this.value += s;
    return this;
  }
  appendText(s: string): this {
    this.value += s;
    return this;
  }
}

class ThemeColor {
  constructor(readonly id: string) {}
}

const fake = {
  MarkdownString,
  ThemeColor,
  StatusBarAlignment: { Left: 1, Right: 2 },
  window: {
    createStatusBarItem(id: string): FakeItem & { show(): void; dispose(): void } {
      const item = {
        id,
        text: '',
        tooltip: undefined as unknown,
        command: undefined as unknown,
        name: '',
        backgroundColor: undefined as unknown,
        shown: false,
        disposed: false,
        show() {
          item.shown = true;
        },
        dispose() {
          item.disposed = true;
        },
      };
      state.items.push(item);
      return item;
    },
    activeTextEditor: undefined,
    async showInputBox(options: Record<string, unknown>): Promise<string | undefined> {
      state.inputBoxes.push(options);
      return state.inputAnswers.shift();
    },
  },
  workspace: {
    get workspaceFolders() {
      return state.workspaceFolders;
    },
    getConfiguration(section: string) {
      return {
        get<T>(key: string, fallback: T): T {
          const v = state.config[`${section}.${key}`];
          return v === undefined ? fallback : (v as T);
        },
      };
    },
  },
  extensions: {
    getExtension(id: string) {
      return state.extensions[id];
    },
  },
};

type Resolver = (request: string, ...rest: unknown[]) => string;
const mod = Module as unknown as { _resolveFilename: Resolver; _cache: Record<string, unknown> };
const original = mod._resolveFilename;
mod._resolveFilename = function (request: string, ...rest: unknown[]): string {
  return request === 'vscode' ? 'vscode' : original.call(this, request, ...rest);
};
mod._cache['vscode'] = { id: 'vscode', filename: 'vscode', loaded: true, exports: fake };
