/**
 * The server's custom notifications (docs/interfaces.md, "Language server protocol"): the shapes the
 * status bar reads. Plain types only, so unit tests can import them without VS Code.
 */

/** Method names of the server-to-client notifications. */
export const ENERGY_NOTIFICATION = 'greentrack/energy';
export const STATUS_NOTIFICATION = 'greentrack/status';

/** How a `greentrack/status` error's message starts when, in remote mode, the server cannot be reached. */
export const UNREACHABLE_PREFIX = 'server unreachable';

/** Command the server attaches to every inline completion item (it is the server's, not ours). */
export const ACCEPT_COMMAND = 'greentrack.accept';

/** One of the known values, or another string from a newer server (the known ones stay suggested). */
export type OpenString<Known extends string> = Known | (string & Record<never, never>);

export type EnergyMethod = 'measured' | 'attributed' | 'estimated';
export type Outcome = 'shown' | 'empty' | 'cancelled' | 'error' | 'cached';

/** `greentrack/energy`: one completion request that reached the model. Units: J, ms, g. */
export interface EnergyParams {
  completion_id: string;
  uri?: string;
  language_id?: string;
  model?: string;
  backend?: string;
  device?: string;
  prompt_tokens?: number;
  reused_prompt_tokens?: number;
  completion_tokens?: number;
  prefill_ms?: number;
  decode_ms?: number;
  latency_ms?: number;
  prefill_j?: number;
  decode_j?: number;
  total_j: number;
  method?: OpenString<EnergyMethod>;
  meter?: string;
  uncertainty_j?: number | null;
  co2e_g?: number;
  outcome?: OpenString<Outcome>;
  /** Optional: today's total for this developer from the database (all sessions), when the server sends it. */
  today_j?: number;
  /** Optional: today's completion count from the database, when the server sends it. */
  today_completions?: number;
}

export type ServerState = 'starting' | 'ready' | 'error';

/** `greentrack/status`: what to show before, during and after model loading. */
export interface StatusParams {
  state: OpenString<ServerState>;
  message?: string;
}
