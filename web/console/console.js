// The BFF's rule console: list, activate, roll back, upload, publish and
// dry-run promotion rules of the token's tenant. Plain ES module, no
// dependencies, nothing loaded from other hosts.
//
// It talks to `POST /graphql` and `POST /rules/components` with the
// rule-author token as `Authorization: Bearer <token>`. Every failure is
// shown in the error banner with its code (`extensions.code` from the BFF,
// or a code of the console's own such as NETWORK_ERROR).

const TOKEN_KEY = 'mall-bff.console.token';
const AUTO_REFRESH_MS = 5000;
const DEFAULT_LIMITS = {
  fuel: 5000000,
  memoryBytes: 4194304,
  timeoutMs: 50,
  maxInputBytes: 262144,
  maxOutputBytes: 262144,
  maxLogEntries: 64,
  maxDiscount: 0,
};
const LIMIT_FIELDS = Object.keys(DEFAULT_LIMITS);

const VERSION_FIELDS = `version component config stage priority stackingGroup failurePolicy
  scope { malls channels startsAt endsAt }
  limits { fuel memoryBytes timeoutMs maxInputBytes maxOutputBytes maxLogEntries maxDiscount }`;

const DEPLOYMENTS_QUERY = `query ConsoleDeployments {
  ruleDeployments {
    name status activeVersion quarantineReason updatedAt
    stats { evaluations failures consecutiveFailures lastFailureCode lastFailureDetail lastFuel }
    active { ${VERSION_FIELDS} }
    versions { ${VERSION_FIELDS} publishedAt publishedBy }
  }
}`;

const PUBLISH_MUTATION = `mutation ConsolePublish($input: PublishRuleInput!) {
  publishRule(input: $input) { name status activeVersion }
}`;
const ACTIVATE_MUTATION = `mutation ConsoleActivate($name: String!, $version: Int) {
  activateRule(name: $name, version: $version) { name status activeVersion }
}`;
const DEACTIVATE_MUTATION = `mutation ConsoleDeactivate($name: String!) {
  deactivateRule(name: $name) { name status }
}`;
const ROLLBACK_MUTATION = `mutation ConsoleRollback($name: String!) {
  rollbackRule(name: $name) { name status activeVersion }
}`;
// `applied` is the host's OrderPromotion, whose amount is a Money object.
const TEST_QUERY = `query ConsoleDryRun($input: TestRuleInput!) {
  testRule(input: $input) {
    ok failureCode failureDetail payable fuelUsed durationMicros logsDropped
    logs { level message }
    outcome {
      lineDiscounts { lineId amount label }
      orderDiscounts { amount label couponId }
      points { points amount label }
      hints { code message shortfall { amount } }
    }
    applied { ruleId label amount { amount } lineId couponId points }
  }
}`;

// ---------------------------------------------------------------- helpers

const $ = (id) => document.getElementById(id);

/** Builds an element: h('td', { class: 'num', dataset: { x: 1 } }, 'text', child). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'testid') el.dataset.testid = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Minor units to `¥12.34` (`-¥0.50` when negative). */
function yuan(minor) {
  if (minor === null || minor === undefined || minor === '') return '—';
  const value = typeof minor === 'object' ? minor.amount : minor;
  const n = Number(value);
  if (!Number.isFinite(n)) return String(value);
  const abs = Math.abs(Math.trunc(n));
  const whole = Math.floor(abs / 100).toLocaleString('en-US');
  return `${n < 0 ? '-' : ''}¥${whole}.${String(abs % 100).padStart(2, '0')}`;
}

const count = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));
const shortSha = (sha) => (sha ? `${sha.slice(0, 12)}…` : '—');
const statusWord = (status) => String(status || 'unknown').toLowerCase();

function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** An RFC 3339 instant to a `datetime-local` value in local time. */
function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** A `datetime-local` value (local time) to RFC 3339 UTC, or null. */
function fromLocalInput(value, what) {
  if (!value) return null;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) throw new ApiError('INVALID_FORM', `${what} is not a valid date and time`);
  return d.toISOString();
}

// ------------------------------------------------------------ errors, API

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

function asApiError(err) {
  if (err instanceof ApiError) return err;
  return new ApiError('CLIENT_ERROR', String((err && err.message) || err));
}

/** The first error of a `{errors: [...]}` body, with its code. */
function errorFromBody(body, status) {
  const errors = (body && Array.isArray(body.errors) && body.errors) || [];
  if (!errors.length) {
    return new ApiError(`HTTP_${status}`, `the BFF answered ${status} without an error body`, status);
  }
  const first = errors[0];
  const code = (first.extensions && first.extensions.code) || `HTTP_${status}`;
  const messages = errors.map((e) => {
    const where = Array.isArray(e.path) && e.path.length ? ` (at ${e.path.join('.')})` : '';
    return `${e.message || 'error'}${where}`;
  });
  return new ApiError(code, messages.join('; '), status);
}

function token() {
  return $('token').value.trim();
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra);
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  return headers;
}

async function send(url, init) {
  try {
    return await fetch(url, init);
  } catch (err) {
    throw new ApiError('NETWORK_ERROR', `the BFF did not answer (${(err && err.message) || err})`);
  }
}

async function readJson(resp) {
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch (_) {
    return { errors: [{ message: text.slice(0, 300), extensions: { code: `HTTP_${resp.status}` } }] };
  }
}

/** Runs a GraphQL operation; any error (HTTP or GraphQL) is thrown as ApiError. */
async function gql(query, variables) {
  const resp = await send('/graphql', {
    method: 'POST',
    headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'application/json' }),
    body: JSON.stringify({ query, variables: variables || {} }),
  });
  const body = await readJson(resp);
  if (!body || (Array.isArray(body.errors) && body.errors.length) || !resp.ok || !body.data) {
    throw errorFromBody(body, resp.status);
  }
  return body.data;
}

// ------------------------------------------------------- banner, notices

let bannerSource = null;

/** Shows an error with its code; `source` lets a later success clear it. */
function showError(context, err, source) {
  const e = asApiError(err);
  $('error-context').textContent = context ? `${context}:` : '';
  $('error-code').textContent = e.code;
  $('error-message').textContent = e.message;
  $('error-banner').hidden = false;
  $('error-banner').dataset.code = e.code;
  bannerSource = source || context || null;
}

function clearError(source) {
  if (source && bannerSource !== source) return;
  $('error-banner').hidden = true;
  delete $('error-banner').dataset.code;
  bannerSource = null;
}

let noticeTimer = null;
function notice(text) {
  $('notice').textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { $('notice').textContent = ''; }, 8000);
}

// ------------------------------------------------------------------ token

function describeToken(t) {
  try {
    const payload = JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    const who = [payload.sub, payload.role, payload.tenant].filter(Boolean).join(' · ');
    const expired = payload.exp && payload.exp * 1000 < Date.now() ? ' (expired)' : '';
    return who ? `token: ${who}${expired}` : 'token set';
  } catch (_) {
    return 'token set';
  }
}

function setToken(t) {
  $('token').value = t;
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t);
    else localStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* private mode */ }
  $('token-status').textContent = t ? describeToken(t) : 'no token';
  state.deployments = [];
  state.selected = null;
  state.epoch += 1; // a listing made with the old token is dropped
  renderDeployments();
  if (t) refresh();
}

async function useDemoToken() {
  $('token-status').textContent = 'fetching…';
  try {
    const resp = await send('/dev/token?role=rule_author&subject=author-1', { headers: { Accept: 'application/json' } });
    if (resp.status === 404) {
      throw new ApiError('DEV_TOKENS_OFF', 'demo tokens exist only on a development BFF (GET /dev/token answered 404): paste a rule-author token', 404);
    }
    const body = await readJson(resp);
    if (!resp.ok || !body || !body.token) throw errorFromBody(body, resp.status);
    clearError('token');
    setToken(body.token);
    notice('Demo rule-author token (author-1) set.');
  } catch (err) {
    $('token-status').textContent = 'no demo token';
    showError('Demo token', err, 'token');
  }
}

// ------------------------------------------------------------ deployments

const state = {
  deployments: [],
  selected: null,
  epoch: 0, // bumped by every change, so an older listing never overwrites a newer one
  refreshing: null,
  rows: new Map(),
  detailSignature: '',
  formDirty: false,
  lastUpload: null,
};

const byName = (name) => state.deployments.find((d) => d.name === name);

/** The version whose settings describe the deployment: the active one, else the latest. */
function shownVersion(d) {
  return d.active || (d.versions && d.versions[0]) || null;
}

async function refresh() {
  if (!token()) {
    renderDeployments();
    return;
  }
  if (state.refreshing) {
    state.refreshAgain = true;
    return state.refreshing;
  }
  const epoch = state.epoch;
  $('refresh').disabled = true;
  state.refreshing = (async () => {
    try {
      const data = await gql(DEPLOYMENTS_QUERY);
      if (epoch === state.epoch) {
        state.deployments = data.ruleDeployments || [];
        renderDeployments();
        $('refreshed-at').textContent = `updated ${new Date().toLocaleTimeString()}`;
      } else {
        state.refreshAgain = true;
      }
      clearError('refresh');
    } catch (err) {
      showError('Listing the deployments', err, 'refresh');
    } finally {
      $('refresh').disabled = false;
      state.refreshing = null;
      if (state.refreshAgain) {
        state.refreshAgain = false;
        refresh();
      }
    }
  })();
  return state.refreshing;
}

function badge(status) {
  const word = statusWord(status);
  return h('span', { class: `badge badge-${word}`, testid: 'status' }, word);
}

function rowCells(d) {
  const v = shownVersion(d);
  const stats = d.stats || {};
  const latest = d.versions && d.versions[0] ? d.versions[0].version : null;
  const failure = stats.lastFailureCode
    ? h('code', { title: stats.lastFailureDetail || '', testid: 'last-failure' }, stats.lastFailureCode)
    : h('span', { class: 'muted', testid: 'last-failure' }, '—');
  const statusCell = h('td', {}, badge(d.status));
  if (d.status === 'QUARANTINED' && d.quarantineReason) {
    statusCell.append(h('div', { class: 'reason', testid: 'quarantine-reason' }, d.quarantineReason));
  }
  const act = (label, testid, title, run, disabled) => h('button', {
    type: 'button', testid, title, 'aria-label': `${title}`, disabled,
    onclick: (ev) => { ev.stopPropagation(); run(); },
  }, label);
  return [
    h('th', { scope: 'row' }, h('button', {
      type: 'button', class: 'link', testid: 'open-detail', 'aria-label': `Show ${d.name}`,
      onclick: (ev) => { ev.stopPropagation(); openDetail(d.name); },
    }, d.name)),
    statusCell,
    h('td', { testid: 'active-version' }, d.activeVersion ? `v${d.activeVersion}` : '—', latest && latest !== d.activeVersion ? h('span', { class: 'muted' }, ` (latest v${latest})`) : null),
    h('td', { testid: 'stage' }, v ? v.stage : '—'),
    h('td', { class: 'num', testid: 'priority' }, v ? v.priority : '—'),
    h('td', { testid: 'stacking-group' }, v && v.stackingGroup ? v.stackingGroup : h('span', { class: 'muted' }, '—')),
    h('td', { class: 'num', testid: 'evaluations', dataset: { value: stats.evaluations ?? '' } }, count(stats.evaluations)),
    h('td', { class: `num${stats.failures ? ' bad' : ''}`, testid: 'failures', dataset: { value: stats.failures ?? '' } }, count(stats.failures)),
    h('td', {}, failure),
    h('td', { class: 'actions' },
      act('Activate', 'activate', `Activate the latest version of ${d.name}${latest ? ` (v${latest})` : ''}`,
        () => mutate(`Activate ${d.name}`, ACTIVATE_MUTATION, { name: d.name }, 'activateRule'),
        d.status === 'ACTIVE' && latest === d.activeVersion),
      act('Deactivate', 'deactivate', `Deactivate ${d.name}`,
        () => mutate(`Deactivate ${d.name}`, DEACTIVATE_MUTATION, { name: d.name }, 'deactivateRule'),
        d.status === 'INACTIVE'),
      act('Roll back', 'rollback', d.versions && d.versions.length > 1 && d.activeVersion
        ? `Roll ${d.name} back to the version before the active one`
        : `${d.name} has no earlier version to roll back to`,
        () => mutate(`Roll back ${d.name}`, ROLLBACK_MUTATION, { name: d.name }, 'rollbackRule'),
        !(d.versions && d.versions.length > 1 && d.activeVersion))),
  ];
}

/** Updates the table in place (rows keyed by name), so buttons survive refreshes. */
function renderDeployments() {
  const body = $('deployments-body');
  const seen = new Set();
  for (const d of state.deployments) {
    seen.add(d.name);
    const signature = JSON.stringify(d);
    let row = state.rows.get(d.name);
    if (!row) {
      row = h('tr', { testid: 'deployment-row', class: 'clickable', onclick: () => openDetail(row.dataset.name) });
      state.rows.set(d.name, row);
    }
    row.dataset.name = d.name;
    row.dataset.status = d.status;
    row.dataset.activeVersion = d.activeVersion ?? '';
    row.classList.toggle('selected', state.selected === d.name);
    if (state.selected === d.name) row.setAttribute('aria-current', 'true');
    else row.removeAttribute('aria-current');
    if (row.signature !== signature) {
      row.signature = signature;
      row.replaceChildren(...rowCells(d));
    }
    body.append(row); // keeps the server's order (by name)
  }
  for (const [name, row] of state.rows) {
    if (!seen.has(name)) {
      row.remove();
      state.rows.delete(name);
    }
  }
  const empty = $('deployments-empty');
  if (!token()) {
    empty.textContent = 'Set a rule-author token to list the deployments.';
    empty.hidden = false;
  } else if (!state.deployments.length) {
    empty.textContent = 'No deployments yet: upload a component and publish one.';
    empty.hidden = false;
  } else {
    empty.hidden = true;
  }
  renderDrySources();
  renderDetail();
}

/** Runs a registry mutation, shows what it did, and refreshes. */
async function mutate(label, query, variables, field) {
  const row = state.rows.get(variables.name);
  const buttons = row ? [...row.querySelectorAll('button')] : [];
  buttons.forEach((b) => { b.disabled = true; });
  state.epoch += 1;
  try {
    const data = await gql(query, variables);
    const result = data[field];
    const d = byName(result.name);
    if (d) {
      d.status = result.status;
      if ('activeVersion' in result) d.activeVersion = result.activeVersion;
    }
    clearError(label);
    clearError('refresh');
    notice(`${label}: now ${statusWord(result.status)}${result.activeVersion ? ` on v${result.activeVersion}` : ''}.`);
  } catch (err) {
    showError(label, err, label);
  }
  if (row) row.signature = ''; // rebuilt, so re-enabled, whatever the answer
  renderDeployments();
  state.epoch += 1;
  await refresh();
}

// ------------------------------------------------------------------ detail

function openDetail(name) {
  state.selected = name;
  state.detailSignature = '';
  const d = byName(name);
  if (d && !state.formDirty) loadIntoForm(d, shownVersion(d));
  renderDeployments();
  $('detail').hidden = false;
  $('detail-title').focus({ preventScroll: true });
  $('detail').scrollIntoView({ block: 'nearest' });
}

function closeDetail() {
  state.selected = null;
  $('detail').hidden = true;
  renderDeployments();
}

function scopeText(scope) {
  if (!scope) return 'everywhere, always';
  const malls = scope.malls && scope.malls.length ? scope.malls.join(', ') : 'every mall';
  const channels = scope.channels && scope.channels.length ? scope.channels.join(', ') : 'every channel';
  const window = scope.startsAt || scope.endsAt
    ? `${scope.startsAt ? when(scope.startsAt) : '…'} → ${scope.endsAt ? when(scope.endsAt) : '…'}`
    : 'always';
  return `${malls}; ${channels}; ${window}`;
}

function kv(pairs) {
  return pairs.flatMap(([k, v, testid]) => [h('dt', {}, k), h('dd', { testid }, v)]);
}

function prettyConfig(config) {
  try {
    return JSON.stringify(JSON.parse(config), null, 2);
  } catch (_) {
    return config;
  }
}

function renderDetail() {
  const d = state.selected ? byName(state.selected) : null;
  if (!state.selected) {
    $('detail').hidden = true;
    return;
  }
  if (!d) {
    if (state.deployments.length) closeDetail();
    return;
  }
  const signature = JSON.stringify(d);
  if (signature === state.detailSignature) return;
  state.detailSignature = signature;

  $('detail').dataset.name = d.name;
  $('detail-title').textContent = d.name;
  $('detail-status').replaceChildren(badge(d.status));
  const q = $('detail-quarantine');
  q.hidden = d.status !== 'QUARANTINED';
  q.textContent = d.status === 'QUARANTINED'
    ? `Quarantined: ${d.quarantineReason || 'repeated failures'}. Activating a version clears the quarantine.`
    : '';

  const s = d.stats || {};
  $('detail-stats').replaceChildren(...kv([
    ['Evaluations', count(s.evaluations), 'stat-evaluations'],
    ['Failures', `${count(s.failures)} (${count(s.consecutiveFailures)} in a row)`, 'stat-failures'],
    ['Last failure', s.lastFailureCode ? `${s.lastFailureCode}${s.lastFailureDetail ? ` — ${s.lastFailureDetail}` : ''}` : '—', 'stat-last-failure'],
    ['Fuel, last run', count(s.lastFuel), 'stat-last-fuel'],
    ['Updated', when(d.updatedAt), 'stat-updated'],
  ]));

  const a = d.active;
  $('detail-active').replaceChildren(a
    ? h('div', {},
      h('dl', { class: 'kv' }, ...kv([
        ['Version', `v${a.version}`],
        ['Component', h('code', { class: 'sha', testid: 'active-component' }, a.component)],
        ['Stage · priority', `${a.stage} · ${a.priority}`],
        ['Stacking group', a.stackingGroup || '—'],
        ['On failure', a.failurePolicy],
        ['Scope', scopeText(a.scope)],
        ['Limits', a.limits
          ? `fuel ${count(a.limits.fuel)}, memory ${count(a.limits.memoryBytes)} B, timeout ${a.limits.timeoutMs} ms, input ${count(a.limits.maxInputBytes)} B, output ${count(a.limits.maxOutputBytes)} B, ${a.limits.maxLogEntries} log entries, max discount ${a.limits.maxDiscount ? yuan(a.limits.maxDiscount) : 'none'}`
          : '—'],
      ])),
      h('pre', { class: 'config', testid: 'detail-config' }, prettyConfig(a.config)))
    : h('p', { class: 'muted' }, 'No active version.'));

  const rows = (d.versions || []).map((v) => {
    const running = d.status === 'ACTIVE' && d.activeVersion === v.version;
    return h('tr', { testid: 'version-row', dataset: { version: v.version } },
      h('th', { scope: 'row' }, `v${v.version}`, d.activeVersion === v.version ? h('span', { class: 'muted' }, ' (active)') : null),
      h('td', {}, v.stage),
      h('td', { class: 'num' }, v.priority),
      h('td', {}, v.stackingGroup || '—'),
      h('td', {}, v.failurePolicy),
      h('td', {}, h('code', { title: v.component, testid: 'version-component' }, shortSha(v.component))),
      h('td', {}, h('code', { class: 'config-inline', title: v.config }, v.config)),
      h('td', {}, when(v.publishedAt), v.publishedBy ? h('div', { class: 'muted' }, `by ${v.publishedBy}`) : null),
      h('td', { class: 'actions' },
        h('button', {
          type: 'button', testid: 'activate-version', dataset: { version: v.version }, disabled: running,
          'aria-label': `Activate ${d.name} version ${v.version}`,
          onclick: () => mutate(`Activate ${d.name} v${v.version}`, ACTIVATE_MUTATION, { name: d.name, version: v.version }, 'activateRule'),
        }, running ? 'Running' : `Activate v${v.version}`),
        h('button', {
          type: 'button', testid: 'load-version', 'aria-label': `Load ${d.name} version ${v.version} into the publish form`,
          onclick: () => { loadIntoForm(d, v); notice(`Publish form filled from ${d.name} v${v.version}.`); },
        }, 'Load')));
  });
  $('detail-versions').replaceChildren(...rows);
}

// ------------------------------------------------------------------ upload

async function upload(ev) {
  ev.preventDefault();
  const file = $('upload-file').files[0];
  const out = $('upload-result');
  if (!file) return;
  $('upload-button').disabled = true;
  out.replaceChildren(h('p', { class: 'muted' }, `Uploading ${file.name}…`));
  try {
    const bytes = await file.arrayBuffer();
    const resp = await send('/rules/components', {
      method: 'POST',
      headers: authHeaders({ 'Content-Type': 'application/wasm', Accept: 'application/json' }),
      body: bytes,
    });
    const body = await readJson(resp);
    if (!resp.ok || !body || !body.sha256) throw errorFromBody(body, resp.status);
    state.lastUpload = { sha256: body.sha256, size: body.size, file: file.name };
    out.replaceChildren(
      h('p', { testid: 'upload-ok' },
        h('span', { class: 'badge badge-active' }, 'uploaded'), ' ', h('strong', {}, file.name), ' · ',
        h('span', { testid: 'upload-size' }, count(body.size)), ' bytes'),
      h('p', {}, 'sha256 ', h('code', { class: 'sha', testid: 'upload-sha' }, body.sha256)),
    );
    $('pub-component').value = body.sha256;
    $('dry-source').value = '';
    $('publish-source').textContent = `Component: ${file.name} (just uploaded).`;
    updateDryNote();
    clearError('upload');
    notice(`Uploaded ${file.name}; its sha256 is in the publish form.`);
  } catch (err) {
    const e = asApiError(err);
    out.replaceChildren(h('p', { class: 'error', testid: 'upload-error', dataset: { code: e.code } },
      h('code', { testid: 'upload-error-code' }, e.code), ' ', e.message));
    showError(`Upload ${file.name}`, e, 'upload');
  } finally {
    $('upload-button').disabled = !$('upload-file').files.length;
  }
}

// ----------------------------------------------------------- publish form

function limitInputs() {
  return [...document.querySelectorAll('#pub-limits [data-limit]')];
}

function setLimits(limits, on) {
  for (const input of limitInputs()) {
    const key = input.dataset.limit;
    input.value = limits && limits[key] !== undefined && limits[key] !== null ? limits[key] : DEFAULT_LIMITS[key];
  }
  $('pub-limits-on').checked = !!on;
  $('pub-limits').hidden = !on;
}

function sameLimits(a, b) {
  return LIMIT_FIELDS.every((k) => Number(a[k]) === Number(b[k]));
}

function resetForm() {
  $('pub-name').value = '';
  $('pub-component').value = state.lastUpload ? state.lastUpload.sha256 : '';
  $('pub-config').value = '{}';
  $('pub-stage').value = 'ITEM';
  $('pub-priority').value = '';
  $('pub-group').value = '';
  $('pub-malls').value = '';
  for (const box of document.querySelectorAll('#publish-form input[name=channel]')) box.checked = false;
  $('pub-starts').value = '';
  $('pub-ends').value = '';
  $('pub-policy').value = 'SKIP';
  setLimits(DEFAULT_LIMITS, false);
  $('pub-activate').checked = false;
  $('publish-source').textContent = state.lastUpload
    ? `New deployment of ${state.lastUpload.file}.`
    : 'New deployment: upload a component first.';
  $('publish-result').replaceChildren();
  state.formDirty = false;
  checkConfig();
  updateDryNote();
}

/** Fills the publish form from a version, to publish a new version of it. */
function loadIntoForm(d, v) {
  if (!v) return;
  $('pub-name').value = d.name;
  $('pub-component').value = v.component || '';
  $('pub-config').value = v.config || '';
  $('pub-stage').value = v.stage || 'ITEM';
  $('pub-priority').value = v.priority ?? '';
  $('pub-group').value = v.stackingGroup || '';
  const scope = v.scope || {};
  $('pub-malls').value = (scope.malls || []).join(', ');
  for (const box of document.querySelectorAll('#publish-form input[name=channel]')) {
    box.checked = (scope.channels || []).includes(box.value);
  }
  $('pub-starts').value = toLocalInput(scope.startsAt);
  $('pub-ends').value = toLocalInput(scope.endsAt);
  $('pub-policy').value = v.failurePolicy || 'SKIP';
  const limits = v.limits || DEFAULT_LIMITS;
  setLimits(limits, !sameLimits(limits, DEFAULT_LIMITS));
  $('pub-activate').checked = false;
  const latest = d.versions && d.versions[0] ? d.versions[0].version : v.version;
  $('publish-source').textContent = `Loaded from ${d.name} v${v.version}; publishing makes v${latest + 1}.`;
  $('publish-result').replaceChildren();
  state.formDirty = false;
  checkConfig();
  updateDryNote();
}

function checkConfig() {
  const text = $('pub-config').value;
  const note = $('pub-config-note');
  if (!text.trim()) {
    note.textContent = 'empty config';
    note.className = 'note';
    return;
  }
  try {
    JSON.parse(text);
    note.textContent = 'valid JSON';
    note.className = 'note ok';
  } catch (err) {
    note.textContent = `not valid JSON (${err.message}); the rule decides whether it accepts it`;
    note.className = 'note warn';
  }
}

function intField(id, what) {
  const raw = $(id).value.trim();
  if (raw === '') return null;
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new ApiError('INVALID_FORM', `${what} must be a whole number`);
  return n;
}

function formLimits() {
  if (!$('pub-limits-on').checked) return null;
  const limits = {};
  for (const input of limitInputs()) {
    const key = input.dataset.limit;
    const n = Number(input.value.trim());
    if (input.value.trim() === '' || !Number.isInteger(n) || n < 0) {
      throw new ApiError('INVALID_FORM', `limit ${key} must be a whole number ≥ 0`);
    }
    limits[key] = n;
  }
  return limits;
}

function publishInput() {
  const name = $('pub-name').value.trim();
  const component = $('pub-component').value.trim().toLowerCase();
  if (!name) throw new ApiError('INVALID_FORM', 'the deployment needs a name');
  if (!component) throw new ApiError('INVALID_FORM', 'the component sha256 is missing: upload a component or load a deployment');
  const input = {
    name,
    component,
    config: $('pub-config').value,
    stage: $('pub-stage').value,
    failurePolicy: $('pub-policy').value,
    activate: $('pub-activate').checked,
  };
  const priority = intField('pub-priority', 'priority');
  if (priority !== null) input.priority = priority;
  const group = $('pub-group').value.trim();
  if (group) input.stackingGroup = group;
  const scope = {
    malls: $('pub-malls').value.split(',').map((m) => m.trim()).filter(Boolean),
    channels: [...document.querySelectorAll('#publish-form input[name=channel]:checked')].map((b) => b.value),
  };
  const startsAt = fromLocalInput($('pub-starts').value, 'the start');
  const endsAt = fromLocalInput($('pub-ends').value, 'the end');
  if (startsAt) scope.startsAt = startsAt;
  if (endsAt) scope.endsAt = endsAt;
  if (startsAt && endsAt && endsAt <= startsAt) throw new ApiError('INVALID_FORM', 'the end must be after the start');
  input.scope = scope;
  const limits = formLimits();
  if (limits) input.limits = limits;
  return input;
}

async function publish(ev) {
  ev.preventDefault();
  const out = $('publish-result');
  const button = $('publish');
  let input;
  try {
    input = publishInput();
  } catch (err) {
    const e = asApiError(err);
    out.replaceChildren(h('p', { class: 'error', testid: 'publish-error', dataset: { code: e.code } }, h('code', {}, e.code), ' ', e.message));
    showError('Publish', e, 'publish');
    return;
  }
  button.disabled = true;
  out.replaceChildren(h('p', { class: 'muted' }, `Publishing ${input.name}…`));
  state.epoch += 1;
  try {
    const data = await gql(PUBLISH_MUTATION, { input });
    const r = data.publishRule;
    out.replaceChildren(h('p', { testid: 'publish-ok' },
      h('span', { class: `badge badge-${statusWord(r.status)}` }, statusWord(r.status)), ' ',
      `Published ${r.name}${r.activeVersion ? `; active version v${r.activeVersion}` : ''}.`));
    clearError('publish');
    notice(`Published ${r.name} (${statusWord(r.status)}).`);
    state.formDirty = false;
  } catch (err) {
    const e = asApiError(err);
    out.replaceChildren(h('p', { class: 'error', testid: 'publish-error', dataset: { code: e.code } }, h('code', {}, e.code), ' ', e.message));
    showError(`Publish ${input.name}`, e, 'publish');
  } finally {
    button.disabled = false;
  }
  state.epoch += 1;
  await refresh();
}

// ----------------------------------------------------------------- dry run

/** A useful sample: a gold member, three lines (¥230.00), a chosen coupon, points. */
function defaultCart() {
  const now = Date.now();
  const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
  return {
    kind: 'CART',
    mallId: 'mall-1',
    channel: 'APP',
    member: { level: 'gold', points: 5000, tags: [] },
    lines: [
      { id: 'line-1', sku: 'sku-coffee-beans', store: 'store-1', category: 'food', tags: [], unitPrice: 3400, quantity: 2 },
      { id: 'line-2', sku: 'sku-linen-shirt', store: 'store-2', category: 'fashion', tags: [], unitPrice: 8900, quantity: 1 },
      {
        id: 'line-3', sku: 'sku-earbuds', store: 'store-3', category: 'electronics', tags: [], unitPrice: 7300, quantity: 1,
        flashSale: { price: 5900, startsAt: iso(now - 3600e3), endsAt: iso(now + 3600e3) },
      },
    ],
    heldCoupons: [{ id: 'coupon-20-off', title: '¥20 off orders over ¥150', amountOff: 2000, minSpend: 15000 }],
    chosenCoupons: ['coupon-20-off'],
    pointsToUse: 1000,
  };
}

function resetCart() {
  $('dry-cart').value = JSON.stringify(defaultCart(), null, 2);
}

function renderDrySources() {
  const select = $('dry-source');
  const names = state.deployments.map((d) => d.name);
  const current = [...select.options].slice(1).map((o) => o.value);
  if (names.join('\n') !== current.join('\n')) {
    const value = select.value;
    select.replaceChildren(select.options[0],
      ...names.map((n) => h('option', { value: n }, `deployment ${n}`)));
    select.value = names.includes(value) ? value : '';
  }
  updateDryNote();
}

/** Whether the dry run of a deployment takes config and stage from the form. */
function formEditsDeployment(name) {
  return name && $('pub-name').value.trim() === name;
}

function updateDryNote() {
  const source = $('dry-source').value;
  const note = $('dry-config-source');
  if (!source) {
    note.textContent = 'Runs the component, config, stage and limits in the publish form.';
  } else if (formEditsDeployment(source)) {
    note.textContent = `Runs ${source}'s component (active, else latest version) with the config, stage and limits in the publish form.`;
  } else {
    const d = byName(source);
    const v = d && shownVersion(d);
    note.textContent = `Runs ${source}${v ? ` v${v.version}` : ''} as published (its own config and stage). Load it into the publish form to try another config.`;
  }
}

function dryRunInput() {
  let cart;
  try {
    cart = JSON.parse($('dry-cart').value);
  } catch (err) {
    throw new ApiError('INVALID_SAMPLE_CART', `the sample cart is not valid JSON: ${err.message}`);
  }
  if (!cart || typeof cart !== 'object' || !Array.isArray(cart.lines)) {
    throw new ApiError('INVALID_SAMPLE_CART', 'the sample cart must be an object with a "lines" array');
  }
  const source = $('dry-source').value;
  const input = { cart };
  const fromForm = () => {
    input.config = $('pub-config').value;
    input.stage = $('pub-stage').value;
    const limits = formLimits();
    if (limits) input.limits = limits;
  };
  if (source) {
    input.deployment = source;
    if (formEditsDeployment(source)) fromForm();
  } else {
    const component = $('pub-component').value.trim().toLowerCase();
    if (!component) {
      throw new ApiError('INVALID_FORM', 'nothing to run: upload a component (or fill its sha256), or pick a deployment');
    }
    input.component = component;
    fromForm();
  }
  return input;
}

function cartSubtotal(cart) {
  try {
    return cart.lines.reduce((sum, l) => sum + Number(l.unitPrice || 0) * Number(l.quantity ?? 1), 0);
  } catch (_) {
    return null;
  }
}

function table(testid, headers, rows, rowTestid) {
  if (!rows.length) return h('p', { class: 'muted', testid }, 'none');
  return h('table', { class: 'grid', testid },
    h('thead', {}, h('tr', {}, ...headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, ...rows.map(({ cells, kind }) => h('tr', { testid: rowTestid, dataset: kind ? { kind } : undefined },
      ...cells.map((c) => (c && c.cls ? h('td', { class: c.cls }, c.v) : h('td', {}, c)))))));
}

function renderDryResult(r, input) {
  const out = $('dry-result');
  const o = r.outcome || { lineDiscounts: [], orderDiscounts: [], points: null, hints: [] };
  const num = (v) => ({ cls: 'num', v });
  const proposed = [
    ...(o.lineDiscounts || []).map((d) => ({ kind: 'line-discount', cells: ['line', d.lineId, num(yuan(d.amount)), d.label] })),
    ...(o.orderDiscounts || []).map((d) => ({ kind: 'order-discount', cells: ['order', d.couponId ? `coupon ${d.couponId}` : 'order', num(yuan(d.amount)), d.label] })),
    ...(o.points ? [{ kind: 'points', cells: ['points', `${count(o.points.points)} points`, num(yuan(o.points.amount)), o.points.label] }] : []),
    ...(o.hints || []).map((hint) => ({ kind: 'hint', cells: ['hint', hint.code, num(hint.shortfall ? `${yuan(hint.shortfall)} short` : '—'), hint.message] })),
  ];
  const applied = (r.applied || []).map((a) => ({
    cells: [a.ruleId, a.label, num(yuan(a.amount)), a.lineId || '—', a.couponId || '—', num(a.points ? count(a.points) : '—')],
  }));
  const subtotal = cartSubtotal(input.cart);
  const head = r.ok
    ? h('p', { class: 'dry-head' }, h('span', { class: 'badge badge-active', testid: 'dry-status', dataset: { ok: 'true' } }, 'ok'),
      ' The rule ran and its outcome passed the host\'s checks.')
    : h('p', { class: 'dry-head error' }, h('span', { class: 'badge badge-quarantined', testid: 'dry-status', dataset: { ok: 'false' } }, 'failed'), ' ',
      h('code', { testid: 'dry-failure-code' }, r.failureCode || 'UNKNOWN'), ' ',
      h('span', { testid: 'dry-failure-detail' }, r.failureDetail || ''));
  out.replaceChildren(
    head,
    h('dl', { class: 'kv' }, ...kv([
      ['Ran', input.deployment ? `deployment ${input.deployment}` : `component ${shortSha(input.component)}`, 'dry-ran'],
      ['Cart subtotal', subtotal === null ? '—' : yuan(subtotal), 'dry-subtotal'],
      ['Payable after the rule', yuan(r.payable), 'dry-payable'],
      ['Fuel used', h('span', { testid: 'dry-fuel', dataset: { value: r.fuelUsed } }, count(r.fuelUsed)), null],
      ['Duration', h('span', { testid: 'dry-duration', dataset: { value: r.durationMicros } }, `${count(r.durationMicros)} µs`), null],
    ])),
    h('h3', {}, 'Proposed by the rule'),
    table('dry-outcome', ['Kind', 'Target', 'Amount', 'Label / message'], proposed, 'outcome-row'),
    h('h3', {}, 'What the host would apply'),
    table('dry-applied', ['Rule', 'Label', 'Amount', 'Line', 'Coupon', 'Points'], applied, 'applied-row'),
    h('h3', {}, 'Logs', r.logsDropped ? h('span', { class: 'warn', testid: 'dry-logs-dropped' }, ` (${r.logsDropped} dropped over the bound)`) : null),
    (r.logs || []).length
      ? h('ol', { class: 'logs', testid: 'dry-logs' }, ...r.logs.map((l) => h('li', { class: `log-${l.level}` },
        h('span', { class: 'lvl' }, l.level), ' ', l.message)))
      : h('p', { class: 'muted', testid: 'dry-logs' }, 'no log entries'),
  );
}

async function dryRun(ev) {
  ev.preventDefault();
  const out = $('dry-result');
  let input;
  try {
    input = dryRunInput();
  } catch (err) {
    const e = asApiError(err);
    out.replaceChildren(h('p', { class: 'error', testid: 'dry-error', dataset: { code: e.code } }, h('code', {}, e.code), ' ', e.message));
    showError('Dry run', e, 'dry-run');
    return;
  }
  $('dry-run').disabled = true;
  out.replaceChildren(h('p', { class: 'muted' }, 'Running…'));
  try {
    const data = await gql(TEST_QUERY, { input });
    renderDryResult(data.testRule, input);
    if (data.testRule.ok) clearError('dry-run');
    else showError('Dry run: the rule failed', new ApiError(data.testRule.failureCode || 'UNKNOWN', data.testRule.failureDetail || ''), 'dry-run');
  } catch (err) {
    const e = asApiError(err);
    out.replaceChildren(h('p', { class: 'error', testid: 'dry-error', dataset: { code: e.code } }, h('code', {}, e.code), ' ', e.message));
    showError('Dry run', e, 'dry-run');
  } finally {
    $('dry-run').disabled = false;
  }
}

// -------------------------------------------------------------------- wiring

function init() {
  $('error-dismiss').addEventListener('click', () => clearError());
  $('token').addEventListener('change', () => setToken(token()));
  $('use-demo-token').addEventListener('click', useDemoToken);
  $('clear-token').addEventListener('click', () => setToken(''));
  $('refresh').addEventListener('click', () => refresh());
  $('detail-close').addEventListener('click', closeDetail);
  $('detail-dry-run').addEventListener('click', () => {
    $('dry-source').value = state.selected || '';
    updateDryNote();
    $('dry-form').scrollIntoView({ block: 'nearest' });
    $('dry-source').focus({ preventScroll: true });
  });
  $('detail-load-form').addEventListener('click', () => {
    const d = byName(state.selected);
    if (d) {
      loadIntoForm(d, shownVersion(d));
      notice(`Publish form filled from ${d.name}.`);
    }
  });
  $('upload-file').addEventListener('change', () => {
    $('upload-button').disabled = !$('upload-file').files.length;
  });
  $('upload-form').addEventListener('submit', upload);
  $('publish-form').addEventListener('submit', publish);
  $('publish-form').addEventListener('input', () => { state.formDirty = true; });
  $('publish-form').addEventListener('change', () => { state.formDirty = true; });
  $('publish-reset').addEventListener('click', resetForm);
  $('pub-config').addEventListener('input', checkConfig);
  $('pub-name').addEventListener('input', updateDryNote);
  $('pub-limits-on').addEventListener('change', () => { $('pub-limits').hidden = !$('pub-limits-on').checked; });
  $('dry-source').addEventListener('change', updateDryNote);
  $('dry-form').addEventListener('submit', dryRun);
  $('dry-cart-reset').addEventListener('click', resetCart);

  resetCart();
  resetForm();
  let saved = '';
  try { saved = localStorage.getItem(TOKEN_KEY) || ''; } catch (_) { /* private mode */ }
  setToken(saved);

  setInterval(() => {
    if ($('auto-refresh').checked && token() && document.visibilityState === 'visible') refresh();
  }, AUTO_REFRESH_MS);
}

init();
