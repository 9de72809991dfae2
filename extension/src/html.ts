/**
 * The report webview's safety: a Content-Security-Policy that allows the report's inline styles and inline
 * SVG only (no scripts, no network). Pure, so unit tests check it without VS Code.
 */

/** Content-Security-Policy for the report: inline styles and inline SVG, images as data: URIs; no scripts. */
export const REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:;";

/** Put the report's CSP first in its <head> (or wrap a fragment in a document that has it). */
export function withCsp(html: string): string {
  const meta = `<meta http-equiv="Content-Security-Policy" content="${REPORT_CSP}">`;
  // A CSP meta tag already in the report might be looser: drop it, ours governs.
  const cleaned = html.replace(/<meta[^>]+http-equiv=["']?content-security-policy["']?[^>]*>/gi, '');
  if (/<head[^>]*>/i.test(cleaned)) {
    return cleaned.replace(/<head[^>]*>/i, (m) => `${m}\n${meta}`);
  }
  return `<!DOCTYPE html><html><head>${meta}<meta charset="utf-8"></head><body>${cleaned}</body></html>`;
}
