/**
 * The extension's settings (`greentrack.*` in package.json), typed, and what the server receives of them
 * as `initializationOptions` / `workspace/didChangeConfiguration` (`{greentrack: {...}}`). The Python side
 * mirrors these names in `greentrack.config.EXTENSION_SETTINGS`; tests/test_extension_ids.py keeps them equal.
 */
import * as vscode from 'vscode';

export const SECTION = 'greentrack';

/** Command ids contributed in package.json. */
export const Commands = {
  showReport: 'greentrack.showReport',
  enable: 'greentrack.enable',
  disable: 'greentrack.disable',
  showLogs: 'greentrack.showLogs',
  doctor: 'greentrack.doctor',
  calibrate: 'greentrack.calibrate',
  restartServer: 'greentrack.restartServer',
} as const;

/** Languages the server is offered (the same as the `onLanguage:` activation events). */
export const LANGUAGES: readonly string[] = [
  'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'rust', 'java', 'c',
  'cpp', 'csharp', 'ruby', 'php', 'kotlin', 'scala', 'swift', 'shellscript', 'lua', 'r', 'julia', 'sql',
];

export type Backend = 'transformers' | 'vllm';
export type Device = 'auto' | 'cpu' | 'cuda';

/** What the user chose. Empty strings and null mean "the server's default". */
export interface GreentrackSettings {
  pythonPath: string;
  model: string;
  backend: Backend;
  device: Device;
  maxTokens: number;
  contextTokens: number;
  debounceMs: number;
  carbonIntensity: number | null;
  enabled: boolean;
}

/** Read the settings for a resource (or the window). */
export function getSettings(scope?: vscode.ConfigurationScope): GreentrackSettings {
  const c = vscode.workspace.getConfiguration(SECTION, scope);
  return {
    pythonPath: c.get<string>('pythonPath', '').trim(),
    model: c.get<string>('model', '').trim(),
    backend: c.get<Backend>('backend', 'transformers'),
    device: c.get<Device>('device', 'auto'),
    maxTokens: c.get<number>('maxTokens', 64),
    contextTokens: c.get<number>('contextTokens', 1024),
    debounceMs: c.get<number>('debounceMs', 150),
    carbonIntensity: c.get<number | null>('carbonIntensity', null),
    enabled: c.get<boolean>('enabled', true),
  };
}

/** The settings as the server reads them (`settings_from_client`): pythonPath is the client's business. */
export function serverOptions(s: GreentrackSettings): { greentrack: Omit<GreentrackSettings, 'pythonPath'> } {
  const { pythonPath: _unused, ...rest } = s;
  void _unused;
  return { greentrack: rest };
}

/** Command-line options for `greentrack <command>` that match the settings (`--model`, `--backend`, `--device`). */
export function cliOptions(s: GreentrackSettings): string[] {
  const args: string[] = [];
  if (s.model) {
    args.push('--model', s.model);
  }
  args.push('--backend', s.backend, '--device', s.device);
  return args;
}

/** Environment for greentrack child processes: the extension host's, plus the carbon intensity setting. */
export function childEnv(s: GreentrackSettings): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: '1' };
  if (typeof s.carbonIntensity === 'number' && Number.isFinite(s.carbonIntensity)) {
    env.GREENTRACK_CARBON_INTENSITY = String(s.carbonIntensity);
  }
  return env;
}
