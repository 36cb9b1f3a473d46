// The console's only way to the site: the REST API under /api/v1 with the
// session cookie (sent by the browser, unreadable by scripts) and the
// session's CSRF token on every action, plus the live stream.

let csrf = null;

/** An API error as the site reported it: stable code, message saying what to do. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function parse(r) {
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    const code = data && data.code ? data.code : `http_${r.status}`;
    const message = data && data.message ? data.message : (text || r.statusText);
    throw new ApiError(r.status, code, message);
  }
  return data;
}

/** Calls the API: `api('GET', '/groups')`, `api('POST', '/groups/g/sync', {...})`. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrf || '';
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  return parse(await fetch(`/api/v1${path}`, init));
}

/** Logs in with the site's API token; the token is sent once, in a POST body. */
export async function login(token) {
  const r = await fetch('/console/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    credentials: 'same-origin',
    body: JSON.stringify({ token }),
  });
  const info = await parse(r);
  csrf = info.csrf;
  return info;
}

/** A reloaded page: the session cookie may still be valid (null: it is not). */
export async function resume() {
  const r = await fetch('/console/session', { credentials: 'same-origin', cache: 'no-store' });
  const info = await parse(r);
  csrf = info ? info.csrf : null;
  return info;
}

export async function logout() {
  const r = await fetch('/console/logout', {
    method: 'POST',
    headers: { 'X-CSRF-Token': csrf || '' },
    credentials: 'same-origin',
  });
  csrf = null;
  return parse(r);
}

/**
 * The live stream: `overview` snapshots whenever something changes and each
 * new site `event`. Reconnects by itself (EventSource does); `onState`
 * hears 'live' / 'reconnecting'.
 */
export function stream({ onOverview, onEvent, onState }) {
  const es = new EventSource('/api/v1/stream');
  es.addEventListener('overview', (e) => onOverview(JSON.parse(e.data)));
  es.addEventListener('event', (e) => onEvent(JSON.parse(e.data)));
  es.onopen = () => onState('live');
  es.onerror = () => onState('reconnecting');
  return es;
}
