// The console's views. Every view builds DOM nodes with `h` (text is always
// set as text, never parsed as HTML, so names and messages from the site
// cannot inject markup) and reads the site through `api`. Elements with
// event listeners carry `data-listens`, so `morph` (app.js) replaces them
// rather than patching them when they differ.

import { api, ApiError } from './api.js';

/** `h('td', {class: 'num'}, '12 s')`: an element with attributes and children. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on')) { el.addEventListener(k.slice(2), v); el.dataset.listens = ''; }
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An SVG element (charts). */
function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const HEALTH_SYMBOL = { normal: '✓', warning: '!', critical: '✗' };

/** Health as a badge with a symbol and the word (colour is never the only signal). */
export function health(word) {
  return h('span', { class: `badge ${word}` }, `${HEALTH_SYMBOL[word] || '?'} ${word}`);
}

function yesNo(ok, yes, no) {
  return h('span', { class: `badge ${ok ? 'yes' : 'no'}` }, ok ? `✓ ${yes}` : `✗ ${no}`);
}

/** "42 s", "3 min", "2 h 5 min", "3 d". */
export function duration(secs) {
  if (secs === null || secs === undefined) return '—';
  if (secs < 120) return `${secs} s`;
  if (secs < 7200) return `${Math.round(secs / 60)} min`;
  if (secs < 172800) return `${Math.floor(secs / 3600)} h ${Math.round((secs % 3600) / 60)} min`;
  return `${Math.round(secs / 86400)} d`;
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

// One formatter for every time shown: `toLocaleString` builds a new one
// per call, which costs more than the rest of an overview row.
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });

/** A local date and time for `rfc3339`. */
export function localTime(rfc3339) {
  return dateTime.format(new Date(rfc3339));
}

function when(rfc3339) {
  if (!rfc3339) return '—';
  const d = new Date(rfc3339);
  return h('time', { datetime: rfc3339, title: rfc3339 }, dateTime.format(d));
}

/** How long ago `rfc3339` was, as text ("3 h ago"); the exact time in its title. */
function ago(rfc3339) {
  const secs = Math.max(0, Math.round((Date.now() - new Date(rfc3339).getTime()) / 1000));
  return h('time', { datetime: rfc3339, title: localTime(rfc3339) }, `${duration(secs)} ago`);
}

/** A drill older than this is flagged: DR runbooks ask for one a month. */
const DRILL_DUE_SECONDS = 30 * 24 * 3600;

/** The age of the group's last successful test drill, flagged in text when overdue. */
function drillCell(g) {
  if (!g.last_drill_at) return h('td', { class: 'opt' }, '⚠ never drilled');
  const overdue = (Date.now() - new Date(g.last_drill_at).getTime()) / 1000 > DRILL_DUE_SECONDS;
  return h('td', { class: 'opt' }, overdue ? '⚠ ' : '', ago(g.last_drill_at), overdue ? ' (overdue)' : '');
}

function table(caption, headers, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('caption', { class: 'muted' }, caption),
      h('thead', {}, h('tr', {}, headers.map((c) => (typeof c === 'string'
        ? h('th', { scope: 'col' }, c) : h('th', { scope: 'col', class: c.class }, c.text))))),
      h('tbody', {}, rows)));
}

/** What losing this site now would cost, per group. */
function ifLost(g) {
  if (g.role === 'primary') {
    if (!g.last_pit) return 'nothing recoverable yet: initial replication has not finished';
    const lost = g.mode === 'sync' && g.sync_state === 'in-sync'
      ? 'no acknowledged write (in sync)'
      : g.continuous_lag_seconds != null
        ? `about ${lagText(g.continuous_lag_seconds)} of writes (streaming)`
        : `about ${duration(g.lag_seconds)} of writes${g.pending_bytes ? ` (${bytes(g.pending_bytes)} pending)` : ''}`;
    return `recover at ${g.partner} to PIT ${g.last_pit.id}; lose ${lost}`;
  }
  return `production stays at ${g.partner}; its protection is lost until this site returns`;
}

/** A continuous group's lag: seconds with a tenth below a minute. */
function lagText(secs) {
  return secs < 60 ? `${secs.toFixed(1)} s` : duration(Math.round(secs));
}

function rpoCell(g) {
  const within = g.lag_seconds <= g.rpo_seconds;
  if (g.role !== 'primary') return h('td', { class: 'num' }, duration(g.lag_seconds));
  return h('td', { class: 'num' }, `${duration(g.lag_seconds)} / ${duration(g.rpo_seconds)} `,
    yesNo(within, 'within RPO', 'over RPO'));
}

/** The overview: sites, alerts, every group and what losing this site would cost. */
export function overview(state) {
  const o = state.overview;
  if (!o) return [h('h1', {}, 'Overview'), h('p', { 'aria-busy': 'true' }, 'Loading…')];
  const alerts = o.groups.filter((g) => g.health !== 'normal');
  const partners = o.partners.map((p) => h('div', { class: 'card' },
    h('h3', {}, p.name),
    h('dl', { class: 'kv' },
      h('dt', {}, 'Reachable'), h('dd', {}, yesNo(p.reachable, 'reachable', 'unreachable')),
      h('dt', {}, 'Round trip'), h('dd', {}, p.rtt_ms === null || p.rtt_ms === undefined ? '—' : `${p.rtt_ms.toFixed(1)} ms`),
      h('dt', {}, 'Address'), h('dd', {}, p.address),
      h('dt', {}, 'Console'), h('dd', {}, p.console_url
        ? h('a', { href: p.console_url, target: '_blank', rel: 'noopener' }, `Open ${p.name}'s console`)
        : 'not reachable from here'),
      p.last_error ? [h('dt', {}, 'Last error'), h('dd', { class: 'error' }, p.last_error)] : null)));
  const rows = o.groups.map((g) => h('tr', { 'data-group': g.name },
    h('th', { scope: 'row' }, h('a', { href: `#/groups/${encodeURIComponent(g.name)}` }, g.name)),
    h('td', {}, g.mode), h('td', {}, g.role),
    h('td', {}, g.state, g.sync_state ? ` (${g.sync_state})` : ''),
    h('td', {}, health(g.health)),
    rpoCell(g),
    h('td', { class: 'opt' }, g.last_pit ? [`#${g.last_pit.id} `, g.last_pit.name ? `“${g.last_pit.name}” ` : '', when(g.last_pit.created_at)] : '—'),
    drillCell(g),
    h('td', { class: 'opt' }, ifLost(g))));
  return [
    h('h1', {}, 'Overview'),
    h('section', { class: 'panel', 'aria-labelledby': 'sites-h' },
      h('h2', { id: 'sites-h' }, 'Sites'),
      h('div', { class: 'cards' },
        h('div', { class: 'card' }, h('h3', {}, `${o.site.name} (this site)`),
          h('dl', { class: 'kv' },
            h('dt', {}, 'Version'), h('dd', {}, o.site.version),
            h('dt', {}, 'Replication'), h('dd', {}, o.site.listen),
            h('dt', {}, 'NBD'), h('dd', {}, o.site.nbd))),
        partners.length ? partners : h('p', { class: 'muted' }, 'No partner yet: pair one with `offsite partner add`.'))),
    h('section', { class: 'panel', 'aria-labelledby': 'alerts-h' },
      h('h2', { id: 'alerts-h' }, `Alerts (${alerts.length})`),
      alerts.length
        ? h('ul', { class: 'alerts' }, alerts.map((g) => h('li', {}, health(g.health), ' ',
          h('a', { href: `#/groups/${encodeURIComponent(g.name)}` }, g.name), ': ', g.health_reason || g.state)))
        : h('p', {}, '✓ No alerts: every group is healthy.')),
    h('section', { class: 'panel', 'aria-labelledby': 'groups-h' },
      h('h2', { id: 'groups-h' }, `Groups (${o.groups.length})`),
      table('Replication groups at this site',
        ['Group', 'Mode', 'Role', 'State', 'Health', 'Lag / RPO',
          { text: 'Newest PIT', class: 'opt' }, { text: 'Last test drill', class: 'opt' },
          { text: 'If this site were lost now', class: 'opt' }],
        rows, 'No group yet: create one with `offsite group create`.')),
  ];
}

/**
 * The last action's outcome per page, so that a re-render (a live update,
 * the refresh after the action) shows it again instead of losing it.
 */
const outcomes = new Map();

function outcomeNode(o) {
  if (!o) return null;
  if (o.running) return h('span', { 'aria-busy': 'true' }, `${o.running}…`);
  // Focusable: a long result scrolls, and keyboard users must reach it.
  return h('div', { class: `result${o.error ? ' error' : ''}`, role: o.error ? 'alert' : 'status', tabindex: '0' }, o.text);
}

/** Where a page shows its actions' outcomes (`key`: the page). */
function outcomeBox(key, id) {
  const box = h('div', { id, 'aria-live': 'polite', 'data-outcome': key });
  const node = outcomeNode(outcomes.get(key));
  if (node) box.append(node);
  return box;
}

function showOutcome(key, o) {
  outcomes.set(key, o);
  for (const box of document.querySelectorAll(`[data-outcome="${CSS.escape(key)}"]`)) {
    box.replaceChildren(...[outcomeNode(o)].filter(Boolean));
  }
}

/** Runs an action, showing its result or error on page `key`; refreshes after. */
async function act(key, button, fn, refresh) {
  const label = button.textContent;
  button.disabled = true;
  showOutcome(key, { running: label });
  try {
    const r = await fn();
    showOutcome(key, { text: r === null ? `${label}: done` : JSON.stringify(r, null, 2) });
  } catch (e) {
    showOutcome(key, { error: true, text: e instanceof ApiError ? `${e.code}: ${e.message}` : String(e) });
  } finally {
    button.disabled = false;
    if (refresh) refresh();
  }
}

function actionButton(label, key, fn, refresh, cls) {
  const b = h('button', { type: 'button', class: cls, 'data-listens': '' });
  b.textContent = label;
  b.addEventListener('click', () => act(key, b, fn, refresh));
  return b;
}

const CHART = { w: 760, h: 140, left: 56, right: 8, top: 8, bottom: 22 };

/** Lag over time: it grows until a cycle succeeds, then drops to that cycle's age. */
function lagPoints(cycles, now) {
  const pts = [];
  let cut = null;
  for (const c of cycles) {
    if (c.error || !c.finished_at) continue;
    const f = Date.parse(c.finished_at);
    const st = Date.parse(c.started_at);
    if (cut !== null) pts.push([f, (f - cut) / 1000]);
    pts.push([f, (f - st) / 1000]);
    cut = st;
  }
  if (cut !== null) pts.push([now, (now - cut) / 1000]);
  return pts;
}

/** A chart of the group's last hours: lag (line) and bytes per cycle (bars), with a text summary. */
function history(g, cycles, hours) {
  const now = Date.now();
  // A young group's chart spans its life (at least 5 minutes), not 6 empty hours.
  const first = cycles.length ? Date.parse(cycles[0].started_at) : now;
  const t0 = Math.max(now - hours * 3600 * 1000, Math.min(first, now - 300 * 1000));
  const span = duration(Math.round((now - t0) / 1000));
  const { w, h: hh, left, right, top, bottom } = CHART;
  const x = (t) => left + ((t - t0) / (now - t0)) * (w - left - right);
  const lag = lagPoints(cycles, now).filter(([t]) => t >= t0);
  const maxLag = Math.max(g.rpo_seconds, ...lag.map(([, v]) => v), 1);
  const maxBytes = Math.max(1, ...cycles.map((c) => c.bytes));
  const y = (v, max) => top + (1 - v / max) * (hh - top - bottom);
  const failed = cycles.filter((c) => c.error).length;
  const shipped = cycles.reduce((a, c) => a + c.bytes, 0);
  const axis = (label) => [
    svg('line', { x1: left, y1: hh - bottom, x2: w - right, y2: hh - bottom, class: 'axis' }),
    svg('text', { x: left, y: hh - 6, class: 'tick' }, `${span} ago`),
    svg('text', { x: w - right, y: hh - 6, class: 'tick end' }, 'now'),
    svg('text', { x: left - 4, y: top + 10, class: 'tick end' }, label),
  ];
  const lagChart = svg('svg', { viewBox: `0 0 ${w} ${hh}`, class: 'chart', role: 'img', 'aria-labelledby': 'lag-title' },
    svg('title', { id: 'lag-title' }, `Lag over the last ${span}; RPO ${duration(g.rpo_seconds)}`),
    axis(duration(Math.round(maxLag))),
    svg('line', { x1: left, x2: w - right, y1: y(g.rpo_seconds, maxLag), y2: y(g.rpo_seconds, maxLag), class: 'rpo' }),
    svg('text', { x: w - right, y: y(g.rpo_seconds, maxLag) - 3, class: 'tick end' }, 'RPO'),
    lag.length ? svg('polyline', { class: 'lag', points: lag.map(([t, v]) => `${x(t).toFixed(1)},${y(v, maxLag).toFixed(1)}`).join(' ') }) : null);
  const bytesChart = svg('svg', { viewBox: `0 0 ${w} ${hh}`, class: 'chart', role: 'img', 'aria-labelledby': 'bytes-title' },
    svg('title', { id: 'bytes-title' }, `Bytes per cycle over the last ${span}`),
    axis(bytes(maxBytes)),
    cycles.map((c) => {
      const cx = x(Date.parse(c.started_at));
      if (c.error) return svg('text', { x: cx, y: hh - bottom - 2, class: 'fail' }, '✗');
      const top_ = y(c.bytes, maxBytes);
      return svg('line', { x1: cx, x2: cx, y1: hh - bottom, y2: Math.min(top_, hh - bottom - 1), class: 'bar' });
    }));
  const worst = lag.length ? Math.max(...lag.map(([, v]) => v)) : null;
  return [
    h('p', {}, `Cycles in the last ${hours} h: ${cycles.length}, ${bytes(shipped)} shipped, ${failed} failed; `,
      worst === null ? 'no successful cycle yet.' : `highest lag ${duration(Math.round(worst))} (RPO ${duration(g.rpo_seconds)}).`),
    h('figure', {}, lagChart, h('figcaption', { class: 'muted' }, 'Lag (line) against the RPO (dashed)')),
    h('figure', {}, bytesChart, h('figcaption', { class: 'muted' }, 'Bytes shipped per cycle (bars; ✗: a failed cycle)')),
  ];
}

/** The time typed into each group's "newest PIT at or before" picker. */
const chosenTimes = new Map();

/** A group: status, volumes, PITs and the actions an operator takes on it. */
export async function group(name, rerender) {
  const path = `/groups/${encodeURIComponent(name)}`;
  const hours = 6;
  const [g, pits, cycles, vols, partners] = await Promise.all([api('GET', path), api('GET', `${path}/pits`).catch(() => []),
    api('GET', `${path}/cycles?hours=${hours}`).catch(() => []), api('GET', '/volumes').catch(() => []),
    api('GET', '/partners').catch(() => [])]);
  // The same group's page at the partner, when its console is reachable.
  const there = partners.find((p) => p.name === g.partner && p.console_url);
  const elsewhere = there
    ? h('a', { href: `${there.console_url.replace(/\/?$/, '/')}#/groups/${encodeURIComponent(name)}`, target: '_blank', rel: 'noopener' },
      `open ${g.partner}'s console`)
    : `${g.partner}'s console is not reachable from here`;
  const volume = new Map(vols.map((v) => [v.name, v]));
  const out = `group:${name}`;
  const pitChoice = h('select', { id: 'pit-choice', name: 'pit' },
    h('option', { value: '' }, 'newest'),
    pits.slice().reverse().map((p) => h('option', { value: String(p.id) },
      `#${p.id}${p.name ? ` “${p.name}”` : ''} ${localTime(p.created_at)}${p.app_consistent ? ' · app-consistent' : ''}`)));
  // A time instead of a PIT: the newest PIT at or before it (what
  // "recover to before the attack at 14:05" means with PITs).
  const at = h('input', { id: 'pit-at', type: 'datetime-local', step: '1', 'data-listens': '' });
  const atResult = h('output', { for: 'pit-at', id: 'pit-at-result' });
  const resolveAt = () => {
    const t = new Date(at.value).getTime();
    const p = Number.isNaN(t) ? null : pits.filter((x) => new Date(x.created_at).getTime() <= t).pop();
    pitChoice.value = p ? String(p.id) : '';
    atResult.textContent = Number.isNaN(t) ? ''
      : p ? `→ PIT #${p.id} of ${localTime(p.created_at)}` : '✗ no PIT that old: the newest is chosen';
  };
  // Kept across live re-renders, like an action's outcome.
  at.value = chosenTimes.get(name) || '';
  if (at.value) resolveAt();
  at.addEventListener('change', () => { chosenTimes.set(name, at.value); resolveAt(); });
  const pitName = h('input', { id: 'pit-name', name: 'pit-name', autocomplete: 'off' });
  // Quiesce the group's VMs around the cut (their quiesce hooks), for an
  // application-consistent PIT.
  const quiesce = h('input', { id: 'pit-quiesce', name: 'pit-quiesce', type: 'checkbox' });
  const refresh = () => rerender();
  const primary = g.role === 'primary';
  const actions = [];
  if (primary) {
    actions.push(h('div', { class: 'actions' },
      h('label', { for: 'pit-name' }, 'PIT name (optional)', pitName),
      h('label', { for: 'pit-quiesce', class: 'check' }, quiesce, 'quiesce the VMs (app-consistent)'),
      actionButton('Sync now', out, () => api('POST', `${path}/sync`, { pit_name: pitName.value || null, no_wait: false, quiesce: quiesce.checked }), refresh),
      g.state === 'paused'
        ? actionButton('Resume', out, () => api('POST', `${path}/resume`), refresh, 'secondary')
        : actionButton('Pause', out, () => api('POST', `${path}/pause`), refresh, 'secondary'),
      actionButton('Verify', out, () => api('POST', `${path}/verify`), refresh, 'secondary'),
      actionButton('Prepare planned failover', out, () => api('POST', `${path}/failover/prepare`), refresh, 'secondary')));
  } else {
    const confirmBox = h('div', { id: 'unplanned' },
      confirming.has(name) ? unplanned(g, path, pitChoice, out, refresh) : null);
    actions.push(h('div', { class: 'actions' },
      h('label', { for: 'pit-choice' }, 'Point in time', pitChoice),
      h('label', { for: 'pit-at' }, 'or the newest PIT at or before', at, atResult),
      actionButton('Test failover', out, () => api('POST', `${path}/failover`, { pit: pitChoice.value || null, test: true }), refresh),
      actionButton('Stop test', out, () => api('POST', `${path}/failover/stop-test`), refresh, 'secondary'),
      actionButton('Planned failover', out, () => api('POST', `${path}/failover`, { pit: pitChoice.value || null }), refresh, 'secondary'),
      (() => {
        const b = h('button', { type: 'button', class: 'danger', 'data-listens': '' }, 'Unplanned failover…');
        b.addEventListener('click', () => { confirming.add(name); refresh(); });
        return b;
      })(),
      actionButton('Commit failover', out, () => api('POST', `${path}/failover/commit`), refresh, 'secondary'),
      actionButton('Revert failover', out, () => api('POST', `${path}/failover/revert`), refresh, 'secondary')),
    confirmBox);
  }
  // Reverse shows its dry run first (what each site changed since they
  // diverged), then asks for the choice that dry run calls for.
  const reverseBox = h('div', { id: 'reverse' }, reversing.has(name) ? reverseConfirm(name, path, reversing.get(name), out, refresh) : null);
  actions.push(h('div', { class: 'actions' },
    actionButton('Reverse…', out, async () => {
      const dry = await api('POST', `${path}/reverse`, { dry_run: true });
      reversing.set(name, dry);
      return dry;
    }, refresh, 'secondary')), reverseBox);
  return [
    h('p', {}, h('a', { href: '#/' }, '← Overview')),
    h('h1', {}, `Group ${g.name} `, health(g.health)),
    g.health_reason ? h('p', { class: 'error', role: 'status' }, g.health_reason) : null,
    h('section', { class: 'panel', 'aria-labelledby': 'status-h' },
      h('h2', { id: 'status-h' }, 'Status'),
      h('dl', { class: 'kv' },
        h('dt', {}, 'Role here'), h('dd', {}, g.role),
        h('dt', {}, 'Partner'), h('dd', {}, g.partner),
        h('dt', {}, 'Mode'), h('dd', {}, g.mode, g.sync_state ? ` (${g.sync_state})` : ''),
        h('dt', {}, 'State'), h('dd', {}, g.state),
        g.continuous_lag_seconds != null
          ? [h('dt', {}, 'Lag'), h('dd', {}, `${lagText(g.continuous_lag_seconds)} of writes not yet on the replica`,
            ` (sealed every ${duration(g.seal_interval_seconds || g.rpo_seconds)})`)]
          : [h('dt', {}, 'Lag'), h('dd', {}, duration(g.lag_seconds), ` (RPO ${duration(g.rpo_seconds)})`)],
        h('dt', {}, 'Pending'), h('dd', {}, bytes(g.pending_bytes)),
        h('dt', {}, 'PITs kept'), h('dd', {}, String(g.keep)),
        h('dt', {}, 'Last test drill'), h('dd', {}, g.last_drill_at ? ago(g.last_drill_at) : '⚠ never'),
        h('dt', {}, 'App-consistent PIT'), h('dd', {}, g.last_app_consistent_pit
          ? [`#${g.last_app_consistent_pit.id} `, ago(g.last_app_consistent_pit.created_at)]
          : 'none', g.app_consistent_every_seconds ? ` (one every ${duration(g.app_consistent_every_seconds)})` : ''),
        g.quiesce_error ? [h('dt', {}, 'Quiesce failed'), h('dd', { class: 'error' }, `⚠ ${g.quiesce_error}`)] : null,
        g.test_failover_pit ? [h('dt', {}, 'Test failover'), h('dd', {}, `running from PIT ${g.test_failover_pit}`)] : null,
        g.last_error ? [h('dt', {}, 'Last error'), h('dd', { class: 'error' }, g.last_error)] : null,
        h('dt', {}, 'If this site were lost now'), h('dd', {}, ifLost(g)))),
    h('section', { class: 'panel', 'aria-labelledby': 'actions-h' },
      h('h2', { id: 'actions-h' }, 'Actions'),
      h('p', { class: 'muted', id: 'elsewhere' }, primary
        ? `Test failover, failover, commit and revert run at ${g.partner}, the site holding the replicas: `
        : `Failover runs here, at the site holding the replicas; pause, sync, verify and prepare run at ${g.partner}, the primary: `,
      elsewhere, '.'),
      actions, outcomeBox(out, 'action-result')),
    h('section', { class: 'panel', 'aria-labelledby': 'history-h' },
      h('h2', { id: 'history-h' }, `The last ${hours} hours`),
      primary ? history(g, cycles, hours) : h('p', { class: 'muted' }, `Cycles are recorded at the primary, ${g.partner}; its console charts them.`)),
    h('section', { class: 'panel', 'aria-labelledby': 'volumes-h' },
      h('h2', { id: 'volumes-h' }, 'Volumes'),
      table(`Volumes of group ${g.name}`, ['Volume', 'Size', 'Dirty (not yet at the replica)', { text: 'Export', class: 'opt' }],
        g.volumes.map((name) => {
          const v = volume.get(name);
          return h('tr', {}, h('th', { scope: 'row' }, name),
            h('td', { class: 'num' }, v ? bytes(v.size_bytes) : '—'), h('td', { class: 'num' }, v ? bytes(v.dirty_bytes) : '—'),
            h('td', { class: 'opt' }, v ? v.url : 'not served here'));
        }), 'No volume.')),
    h('section', { class: 'panel', 'aria-labelledby': 'pits-h' },
      h('h2', { id: 'pits-h' }, `Points in time (${pits.length})`),
      pits.length
        ? h('ol', { class: 'timeline', reversed: true }, pits.slice().reverse().map((p) => h('li', {},
          `#${p.id} `, p.name ? h('strong', {}, `“${p.name}” `) : null, when(p.created_at), ` · ${bytes(p.bytes)}`,
          // A word, not a colour only: app-consistent PITs mount without
          // journal replay; the others are crash-consistent.
          p.app_consistent ? [' ', h('span', { class: 'badge app-consistent', title: 'cut while every VM was quiesced or cleanly stopped' }, 'app-consistent')] : null)))
        : h('p', { class: 'muted' }, 'No PIT yet.')),
  ];
}

/** Groups whose reverse is being confirmed, with its dry run. */
const reversing = new Map();

/** The reverse's confirmation: both sides' changes, and the choice they call for. */
function reverseConfirm(name, path, dry, out, refresh) {
  const sides = dry.split_brain ? dry.split_brain.sites : [];
  const diverged = sides.filter((x) => x.written_bytes > 0);
  const done = () => { reversing.delete(name); };
  const go = (label, body, cls) => {
    const b = h('button', { type: 'button', class: cls, 'data-listens': '' }, label);
    b.addEventListener('click', () => { done(); act(out, b, () => api('POST', `${path}/reverse`, body), refresh); });
    return b;
  };
  const cancel = h('button', { type: 'button', class: 'secondary', onclick: () => { done(); refresh(); } }, 'Cancel');
  return h('div', { class: 'confirm', role: 'group', 'aria-labelledby': 'reverse-h' },
    h('h3', { id: 'reverse-h' }, 'Reverse replication'),
    sides.length ? table('What each site wrote since they diverged', ['Site', 'Generation', 'Written since'],
      sides.map((x) => h('tr', {}, h('th', { scope: 'row' }, x.site), h('td', {}, x.generation), h('td', { class: 'num' }, bytes(x.written_bytes)))), '') : null,
    diverged.length > 1
      ? [h('p', { class: 'error' }, '✗ Split brain: both sites wrote since they diverged. Choose the site whose changes are discarded (they are kept as a named PIT there).'),
        h('div', { class: 'actions' }, sides.map((x) => go(`Reverse, discarding the changes on ${x.site}`, { discard_changes_on: x.site, dry_run: false }, 'danger')), cancel)]
      : [h('p', {}, diverged.length
        ? `${diverged[0].site} wrote ${bytes(diverged[0].written_bytes)} the other site does not have; reverse keeps this site's data.`
        : '✓ No split brain: reverse makes this site the primary and its partner the replica.'),
      h('div', { class: 'actions' }, go('Confirm reverse', { dry_run: false }), cancel)]);
}

/** Groups whose unplanned-failover confirmation is open (kept across re-renders). */
const confirming = new Set();

/** Unplanned failover: shows the data-loss estimate, then asks for the group's name. */
function unplanned(g, path, pitChoice, out, refresh) {
  const typed = h('input', { id: 'confirm-name', autocomplete: 'off', 'data-listens': '' });
  const go = h('button', { type: 'button', class: 'danger', disabled: true, 'data-listens': '' }, 'Fail over without the primary');
  typed.addEventListener('input', () => { go.disabled = typed.value !== g.name; });
  go.addEventListener('click', () => {
    confirming.delete(g.name);
    act(out, go, () => api('POST', `${path}/failover`, { pit: pitChoice.value || null, force: true }), refresh);
  });
  const cancel = h('button', { type: 'button', class: 'secondary', onclick: () => { confirming.delete(g.name); refresh(); } }, 'Cancel');
  const newest = g.last_pit ? `PIT ${g.last_pit.id} of ${localTime(g.last_pit.created_at)}` : 'no PIT';
  return h('div', { class: 'confirm', role: 'group', 'aria-labelledby': 'confirm-h' },
    h('h3', { id: 'confirm-h' }, 'Unplanned failover'),
    h('p', {}, `The volumes are made from ${pitChoice.value ? `PIT ${pitChoice.value}` : newest}. `,
      `Writes at ${g.partner} after it (about ${duration(g.lag_seconds)}) are not here and are lost if ${g.partner} never returns.`),
    h('label', { for: 'confirm-name' }, `Type the group's name (${g.name}) to confirm`, typed),
    h('div', { class: 'actions' }, go, cancel));
}

/** The site's event log, newest first, filterable, live. */
export function events(state, rerender) {
  // The typed text is the input's value, not an attribute: a live update
  // then finds the input unchanged and keeps it (and the focus in it).
  const filter = h('input', { id: 'event-filter', type: 'search', autocomplete: 'off', 'data-listens': '' });
  filter.value = state.eventFilter || '';
  filter.addEventListener('input', () => { state.eventFilter = filter.value; rerender(true); });
  const f = (state.eventFilter || '').toLowerCase();
  const shown = state.events.filter((e) => !f || `${e.kind} ${e.subject || ''} ${e.message}`.toLowerCase().includes(f));
  return [
    h('h1', {}, 'Events'),
    h('label', { for: 'event-filter' }, 'Filter (kind, subject or text)', filter),
    table('Site events, newest first', ['Time', 'Kind', 'Subject', 'Message'],
      shown.slice(0, 500).map((e) => h('tr', {}, h('td', {}, when(e.at)), h('td', {}, e.kind), h('td', {}, e.subject || ''), h('td', {}, e.message))),
      'No event matches.'),
  ];
}

export async function volumes() {
  const vs = await api('GET', '/volumes');
  return [h('h1', {}, 'Volumes'), table('Volumes of this site',
    ['Volume', 'Size', 'Role', 'State', 'Dirty', 'Connections', { text: 'Export', class: 'opt' }],
    vs.map((v) => h('tr', {}, h('th', { scope: 'row' }, v.name), h('td', { class: 'num' }, bytes(v.size_bytes)),
      h('td', {}, v.role), h('td', {}, v.state), h('td', { class: 'num' }, bytes(v.dirty_bytes)),
      h('td', { class: 'num' }, String(v.connections)), h('td', { class: 'opt' }, v.url))),
    'No volume yet.')];
}

export async function vms() {
  const list = await api('GET', '/vms');
  return [h('h1', {}, 'VMs'), table('VMs protected at this site', ['VM', 'Volumes', 'Start hook', 'Stop hook', { text: 'Created', class: 'opt' }],
    list.map((v) => h('tr', {}, h('th', { scope: 'row' }, v.name), h('td', {}, v.volumes.join(', ')),
      h('td', {}, v.start || '—'), h('td', {}, v.stop || '—'), h('td', { class: 'opt' }, when(v.created_at)))),
    'No VM yet.')];
}

export async function partners() {
  const list = await api('GET', '/partners');
  return [h('h1', {}, 'Partners'), table('Paired sites',
    ['Partner', 'Reachable', 'Round trip', 'Address', { text: 'Fingerprint', class: 'opt' }, 'Last error'],
    list.map((p) => h('tr', {}, h('th', { scope: 'row' }, p.name), h('td', {}, yesNo(p.reachable, 'reachable', 'unreachable')),
      h('td', { class: 'num' }, p.rtt_ms === null || p.rtt_ms === undefined ? '—' : `${p.rtt_ms.toFixed(1)} ms`),
      h('td', {}, p.address), h('td', { class: 'opt' }, p.fingerprint), h('td', { class: 'error' }, p.last_error || ''))),
    'No partner yet.')];
}

export async function access() {
  const list = await api('GET', '/authz');
  return [h('h1', {}, 'Access'), table('Authorization entries: which partner may replicate what to this site',
    ['Allowed primary', 'Storage location', 'Security tag', { text: 'Created', class: 'opt' }],
    list.map((a) => h('tr', {}, h('th', { scope: 'row' }, a.allowed_primary), h('td', {}, a.storage_location),
      h('td', {}, a.security_tag || '—'), h('td', { class: 'opt' }, when(a.created_at)))),
    'No authorization entry: no partner may replicate to this site.')];
}

/** A plan's tiers: the VMs of each priority and the steps after it. */
function tiers(p) {
  const byTier = new Map();
  for (const v of p.vms) {
    if (!byTier.has(v.priority)) byTier.set(v.priority, { vms: [], steps: [] });
    byTier.get(v.priority).vms.push(v);
  }
  for (const st of p.steps) {
    if (!byTier.has(st.after_tier)) byTier.set(st.after_tier, { vms: [], steps: [] });
    byTier.get(st.after_tier).steps.push(st);
  }
  const order = Array.from(byTier.keys()).sort((x, y) => x - y);
  if (!order.length) return h('p', { class: 'muted' }, 'No VM or step yet.');
  return h('ol', { class: 'timeline' }, order.map((t) => {
    const { vms, steps } = byTier.get(t);
    return h('li', {},
      h('strong', {}, t === 0 ? 'Before tier 1' : `Tier ${t}`), ': ',
      vms.map((v) => `${v.vm} (${v.group}${v.wait_for ? `, waits for ${v.wait_for}` : ''})`).join(', ') || '—',
      steps.length ? h('ul', {}, steps.map((st) => h('li', {},
        `${st.kind} “${st.name}”: ${st.prompt || st.command || ''}${st.skip_in_test ? ' (skipped in tests)' : ''}`))) : null);
  }));
}

/** A run's steps with their status, as the run goes. */
export function runSteps(r) {
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { class: 'muted' }, `Run ${r.id} (${r.mode}): ${r.status}${r.waiting_for ? ` — waiting: ${r.waiting_for}` : ''}`),
    h('thead', {}, h('tr', {}, ['#', 'Step', 'Kind', 'Tier', 'Site', 'Status', 'Took'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, r.steps.map((st) => h('tr', {},
      h('td', { class: 'num' }, String(st.index)), h('td', {}, st.name), h('td', {}, st.kind),
      h('td', { class: 'num' }, st.tier === null || st.tier === undefined ? '' : String(st.tier)),
      h('td', {}, st.site), h('td', {}, stepStatus(st.status)),
      h('td', { class: 'num' }, st.duration_ms === null || st.duration_ms === undefined ? '' : `${(st.duration_ms / 1000).toFixed(1)} s`))))));
}

const STEP_SYMBOL = { succeeded: '✓', failed: '✗', running: '▶', waiting: '…', pending: '·', skipped: '–' };

function stepStatus(s) {
  const cls = s === 'failed' ? 'critical' : s === 'succeeded' ? 'normal' : 'warning';
  return h('span', { class: `badge ${cls}` }, `${STEP_SYMBOL[s] || '?'} ${s}`);
}

/** Live progress of the plans' runs started from this page. */
const progress = new Map();

/** Runs a plan action and shows the run's steps while it goes (polling its report). */
function planAction(label, p, body, rerender, cls) {
  const key = 'plans';
  const path = `/plans/${encodeURIComponent(p.name)}`;
  return actionButton(label, key, async () => {
    const poll = setInterval(async () => {
      try {
        const runs = await api('GET', `${path}/runs`);
        const newest = runs[runs.length - 1];
        if (newest) {
          progress.set(p.name, await api('GET', `/plan-runs/${encodeURIComponent(newest.id)}`));
          rerender();
        }
      } catch { /* the run's own answer reports failures */ }
    }, 1000);
    try {
      const r = await api('POST', `${path}/${label === 'Continue' ? 'continue' : 'run'}`, body ? body() : undefined);
      progress.set(p.name, r);
      return r;
    } finally {
      clearInterval(poll);
    }
  }, rerender, cls);
}

/** Plans: tiers and steps, run in any mode with live step progress, continue at a prompt. */
export async function plans(rerender) {
  const list = await api('GET', '/plans');
  const cards = list.map((p) => {
    const mode = h('select', { id: `mode-${p.name}`, name: 'mode' },
      ['test', 'cleanup', 'planned', 'disaster', 'reprotect', 'failback'].map((m) => h('option', { value: m }, m)));
    const run = progress.get(p.name);
    return h('div', { class: 'card', 'data-plan': p.name },
      h('h3', {}, p.name),
      h('p', { class: 'muted' }, `protected at ${p.protected_site}, recovered at ${p.recovery_site}${p.description ? ` — ${p.description}` : ''}`),
      h('p', {}, `Groups: ${p.groups.join(', ') || '—'}`),
      tiers(p),
      h('div', { class: 'actions' },
        h('label', { for: `mode-${p.name}` }, 'Mode', mode),
        planAction('Run', p, () => ({ mode: mode.value }), rerender),
        planAction('Continue', p, null, rerender, 'secondary'),
        h('a', { href: `#/plans/${encodeURIComponent(p.name)}` }, 'History and reports')),
      run ? runSteps(run) : null);
  });
  return [h('h1', {}, 'Recovery plans'), list.length ? h('div', { class: 'plans' }, cards) : h('p', { class: 'muted' }, 'No plan yet.'),
    outcomeBox('plans', 'plan-result')];
}

/** Which run's report is open on a plan's history page. */
const openReport = new Map();

/** A plan's runs, newest first, each with its report shown inline on demand. */
export async function planHistory(name, rerender) {
  const runs = await api('GET', `/plans/${encodeURIComponent(name)}/runs`);
  const shown = openReport.get(name);
  const rows = runs.slice().reverse().map((r) => h('tr', {},
    h('th', { scope: 'row' }, r.id), h('td', {}, r.mode), h('td', {}, stepStatus(r.status)), h('td', {}, when(r.started_at)),
    h('td', { class: 'num' }, r.rto_seconds === null || r.rto_seconds === undefined ? '—' : `${r.rto_seconds.toFixed(1)} s`),
    h('td', {}, h('button', {
      type: 'button', class: 'secondary', 'aria-pressed': shown === r.id ? 'true' : 'false',
      onclick: () => { openReport.set(name, shown === r.id ? null : r.id); rerender(); },
    }, shown === r.id ? `Hide report ${r.id}` : `Report ${r.id}`))));
  return [h('p', {}, h('a', { href: '#/plans' }, '← Plans')), h('h1', {}, `Plan ${name}: runs`),
    table('Runs of the plan, newest first', ['Run', 'Mode', 'Status', 'Started', 'RTO', 'Report'], rows, 'No run yet.'),
    shown ? h('iframe', { class: 'report', src: `/api/v1/plan-runs/${encodeURIComponent(shown)}/report.html`, title: `Report of run ${shown}`, sandbox: '' }) : null];
}
