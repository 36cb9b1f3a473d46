// The console's shell: login, the hash router, the live stream and the
// views' refreshes. Everything the console knows comes from the site's API.

import { api, ApiError, login, logout, resume, stream } from './api.js';
import * as views from './views.js';

const { h } = views;

const state = {
  overview: null,
  events: [],
  eventFilter: '',
  es: null,
  // False from the login form until a session starts: a page render still
  // awaiting the API when the session ends must not draw over the form.
  signedIn: false,
};

const main = document.getElementById('main');
const top = document.getElementById('top');
const live = document.getElementById('live');
const toast = document.getElementById('toast');

function notify(text) {
  toast.textContent = text;
  toast.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { toast.hidden = true; }, 8000);
}

function showLogin(message) {
  if (state.es) { state.es.close(); state.es = null; }
  state.signedIn = false;
  rendering += 1; // drops any render in flight
  top.hidden = true;
  const token = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true });
  const err = h('p', { class: 'error', role: 'alert' }, message || '');
  const form = h('form', { 'aria-labelledby': 'login-h' },
    h('label', { for: 'token' }, 'API token (the file api.token in the site\'s data directory)', token),
    h('button', { type: 'submit' }, 'Log in'), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await login(token.value);
      token.value = '';
      start();
    } catch (x) {
      err.textContent = x instanceof ApiError ? x.message : String(x);
      token.focus();
    }
  });
  main.replaceChildren(h('section', { class: 'login panel' },
    h('h1', { id: 'login-h' }, 'offsite console'), form));
  token.focus();
}

function currentRoute() {
  const parts = (location.hash.replace(/^#\/?/, '') || '').split('/').map(decodeURIComponent);
  return { view: parts[0] || '', arg: parts[1] };
}

function markNav(view) {
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.getAttribute('href').replace(/^#\/?/, '');
    if (target === view || (target === '' && view === 'groups')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

let rendering = 0;

/**
 * Brings `parent`'s children to `fresh` in place: nodes that kept their
 * shape are patched (text, attributes), so a live update neither moves the
 * focus nor swallows a click nor resets what the operator typed. An element
 * with listeners (`data-listens`) that differs in any way is replaced, so
 * its listeners are always the fresh ones.
 */
function morph(parent, fresh) {
  const old = Array.from(parent.childNodes);
  if (old.length !== fresh.length) {
    parent.replaceChildren(...fresh);
    return;
  }
  fresh.forEach((n, i) => patch(parent, old[i], n));
}

function patch(parent, a, b) {
  if (a.nodeType !== b.nodeType || a.nodeName !== b.nodeName) {
    parent.replaceChild(b, a);
    return;
  }
  if (a.nodeType === Node.TEXT_NODE) {
    if (a.data !== b.data) a.data = b.data;
    return;
  }
  if (a.nodeType !== Node.ELEMENT_NODE) {
    parent.replaceChild(b, a);
    return;
  }
  if ('listens' in b.dataset) {
    if (!a.isEqualNode(b)) parent.replaceChild(b, a);
    return;
  }
  for (const { name } of Array.from(a.attributes)) {
    if (!b.hasAttribute(name)) a.removeAttribute(name);
  }
  for (const { name, value } of Array.from(b.attributes)) {
    if (a.getAttribute(name) !== value) a.setAttribute(name, value);
  }
  morph(a, Array.from(b.childNodes));
}

/** Renders the current route; `keepFocus`: a live update of the same page. */
async function render(keepFocus) {
  if (!state.signedIn) return;
  const ticket = ++rendering;
  const { view, arg } = currentRoute();
  markNav(view);
  let nodes;
  try {
    switch (view) {
      case '': nodes = views.overview(state); break;
      case 'groups': nodes = await views.group(arg, () => render(true)); break;
      case 'events': nodes = views.events(state, render); break;
      case 'volumes': nodes = await views.volumes(); break;
      case 'vms': nodes = await views.vms(); break;
      case 'partners': nodes = await views.partners(); break;
      case 'access': nodes = await views.access(); break;
      case 'plans': nodes = arg ? await views.planHistory(arg, () => render(true)) : await views.plans(() => render(true)); break;
      default: nodes = [h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the overview'))];
    }
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { showLogin(e.message); return; }
    nodes = [h('h1', {}, 'Error'), h('p', { class: 'error', role: 'alert' }, e instanceof ApiError ? `${e.code}: ${e.message}` : String(e))];
  }
  // A newer render started meanwhile, or the session ended.
  if (ticket !== rendering || !state.signedIn) return;
  const fresh = nodes.flat().filter(Boolean);
  // A live update patches the page in place; a new route replaces it.
  if (keepFocus) morph(main, fresh);
  else main.replaceChildren(...fresh);
  document.title = `${view ? `${view} · ` : ''}offsite console`;
}

async function start() {
  state.signedIn = true;
  top.hidden = false;
  // The first screen needs the site and the overview only: fetch both at
  // once and render, then open the live stream and load the event log.
  const [site, overview] = await Promise.all([api('GET', '/site'), api('GET', '/overview')]);
  document.getElementById('site-name').textContent = `site ${site.name}`;
  state.overview = overview;
  render(false);
  state.es = stream({
    onOverview: (o) => {
      state.overview = o;
      const { view } = currentRoute();
      if (view === '' || view === 'groups') render(true);
    },
    onEvent: (e) => {
      if (state.events.some((x) => x.id === e.id)) return;
      state.events.unshift(e);
      if (state.events.length > 2000) state.events.length = 2000;
      if (currentRoute().view === 'events') render(true);
    },
    onState: (s) => {
      live.textContent = s === 'live' ? '● live' : '○ reconnecting…';
      if (s !== 'live') {
        // The stream fails for a lost network and for an ended session
        // alike; ask which.
        resume().then((info) => { if (!info) showLogin('The session has ended; log in again.'); }, () => {});
      }
    },
  });
  const recent = (await api('GET', '/events?limit=200')).slice().reverse();
  const seen = new Set(state.events.map((e) => e.id));
  state.events = state.events.concat(recent.filter((e) => !seen.has(e.id)));
  state.events.sort((x, y) => y.id - x.id);
  if (currentRoute().view === 'events') render(true);
}

document.getElementById('logout').addEventListener('click', async () => {
  // Close the stream first: it would otherwise reconnect into a refusal.
  if (state.es) { state.es.close(); state.es = null; }
  try { await logout(); } catch (e) { notify(String(e.message || e)); }
  showLogin('Logged out.');
});
window.addEventListener('hashchange', () => { render(false); main.focus(); });
// A page going away gives its live stream's connection back at once: a
// browser keeps six HTTP/1.1 connections per host, and streams left open
// by earlier pages made the next page wait for one.
window.addEventListener('pagehide', () => { if (state.es) { state.es.close(); state.es = null; } });
window.addEventListener('unhandledrejection', (e) => notify(`error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));

resume().then((info) => (info ? start() : showLogin('')), (e) => showLogin(String(e.message || e)));
