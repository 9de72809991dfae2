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
  setServerToken: 'greentrack.setServerToken',
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
  /** A `greentrack serve` to take completions from (remote mode); empty: the model runs in the server process. */
  serverUrl: string;
  model: string;
  backend: Backend;
  device: Device;
  maxTokens: number;
  contextTokens: number;
  debounceMs: number;
  /** gCO2e/kWh, or an ISO 3166-1 alpha-3 country code (as `GREENTRACK_CARBON_INTENSITY`); null or '': the default. */
  carbonIntensity: number | string | null;
  enabled: boolean;
  /** Serve what is typed into a suggestion still shown from the server's suggestion cache (0 J, no model work). */
  suggestionCache: boolean;
}

/** Read the settings for a resource (or the window). */
export function getSettings(scope?: vscode.ConfigurationScope): GreentrackSettings {
  const c = vscode.workspace.getConfiguration(SECTION, scope);
  return {
    pythonPath: c.get<string>('pythonPath', '').trim(),
    serverUrl: normalizeServerUrl(c.get<string>('serverUrl', '')),
    model: c.get<string>('model', '').trim(),
    backend: c.get<Backend>('backend', 'transformers'),
    device: c.get<Device>('device', 'auto'),
    maxTokens: c.get<number>('maxTokens', 64),
    contextTokens: c.get<number>('contextTokens', 1024),
    debounceMs: c.get<number>('debounceMs', 150),
    carbonIntensity: c.get<number | string | null>('carbonIntensity', null),
    enabled: c.get<boolean>('enabled', true),
    suggestionCache: c.get<boolean>('suggestionCache', true),
  };
}

/** The settings as the server reads them (`settings_from_client`): pythonPath and serverUrl are the client's
 * (which interpreter starts the server, and whether with `--server`). */
export function serverOptions(s: GreentrackSettings): {
  greentrack: Omit<GreentrackSettings, 'pythonPath' | 'serverUrl'>;
} {
  const { pythonPath: _python, serverUrl: _server, ...rest } = s;
  void _python;
  void _server;
  return { greentrack: rest };
}

/** `greentrack.serverUrl` as the language server takes it: trimmed, without trailing slashes ('' when unset). */
export function normalizeServerUrl(url: string | undefined): string {
  return (url ?? '').trim().replace(/\/+$/, '');
}

/** Why `url` cannot be a server's base URL (undefined when it can): http(s) with a host, no query or fragment. */
export function serverUrlProblem(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `greentrack.serverUrl "${url}" is not a URL (e.g. http://127.0.0.1:8765)`;
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    return `greentrack.serverUrl must start with http:// or https://, not "${parsed.protocol}"`;
  }
  if (!parsed.hostname) {
    return `greentrack.serverUrl "${url}" has no host`;
  }
  if (parsed.search || parsed.hash) {
    return `greentrack.serverUrl is the server's base URL, without ?query or #fragment: "${url}"`;
  }
  return undefined;
}

/** The secret-storage key of the token for one server (tokens are per server: its origin). */
export function tokenSecretKey(url: string): string {
  let origin = url;
  try {
    origin = new URL(url).origin;
  } catch {
    // kept as given: serverUrlProblem reports it
  }
  return `greentrack.serverToken:${origin}`;
}

/** The language server's arguments after `-m greentrack`: `lsp`, and `--server URL` in remote mode. */
export function lspArgs(s: GreentrackSettings): string[] {
  return s.serverUrl ? ['lsp', '--server', s.serverUrl] : ['lsp'];
}

/** The language server's environment: the extension host's, and the token (remote mode) in GREENTRACK_TOKEN, never
 * on the command line. Without a stored token, a GREENTRACK_TOKEN of the extension host's environment applies. */
export function lspEnv(base: NodeJS.ProcessEnv, token: string | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base, PYTHONUNBUFFERED: '1' };
  if (token) {
    env.GREENTRACK_TOKEN = token;
  }
  return env;
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

/** Environment for greentrack child processes: the extension host's, plus the carbon intensity setting (a number or
 * a country code, as the language server takes it; unset: the host's `GREENTRACK_CARBON_INTENSITY`, else 475). */
export function childEnv(s: GreentrackSettings): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: '1' };
  const intensity = s.carbonIntensity;
  if ((typeof intensity === 'number' && Number.isFinite(intensity)) || (typeof intensity === 'string' && intensity.trim())) {
    env.GREENTRACK_CARBON_INTENSITY = String(intensity).trim();
  }
  return env;
}
