// iomt-edge FHIR R4 test server: Medplum's @medplum/fhir-router over a validating
// in-memory repository (lib/repository.mjs), behind this node:http wrapper, plus
// test-only control endpoints under /$test/ that a production server would not
// have (reset, fault injection, request stats/log, an OAuth2 token endpoint).
//
// Usage: node [--experimental-websocket] server.mjs [--port N] [options]   (see README.md)
//
// Invariants:
// - Listens on loopback only. The first stdout line is `LISTENING 127.0.0.1:<port>`
//   (the real port, also when started with port 0); everything else goes to stderr.
// - FHIR requests are processed one at a time (a promise queue), so a transaction
//   rollback can never undo another request's writes. Fault delays are spent
//   before entering the queue.
// - A transaction Bundle is all-or-nothing: the store is snapshotted before it
//   and restored when the router's outcome is not OK or it throws.
// - /$test/* endpoints are never subject to bearer auth, and only /$test/oauth/token
//   is subject to fault rules (those with endpoint "token").

import http from 'node:http';
import { parseArgs } from 'node:util';
import { getSearchParameters, getStatus, isOk, normalizeOperationOutcome } from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import { loadDefinitions } from './lib/definitions.mjs';
import { Faults, injectedOutcome } from './lib/faults.mjs';
import { OAuth } from './lib/oauth.mjs';
import { TestRepository } from './lib/repository.mjs';

const VERSION = '0.1.0';
const MAX_BODY = 64 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const FOCUS_TYPES = ['Patient', 'Device', 'Observation', 'Encounter'];
const RESULT_PARAMS = new Set([
  '_id', '_lastUpdated', '_tag', '_profile', '_security', '_source', '_text', '_content', '_list', '_has', '_type',
  '_query', '_filter', '_sort', '_count', '_offset', '_include', '_revinclude', '_summary', '_total', '_elements',
  '_contained', '_containedType', '_format', '_pretty',
]);

// ---------------------------------------------------------------- configuration

function envFlag(name) {
  const v = process.env[name];
  return v !== undefined && !['', '0', 'false', 'no', 'off'].includes(v.toLowerCase());
}

function parseConfig(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      'base-path': { type: 'string' },
      'no-validate': { type: 'boolean' },
      'validate-profiles': { type: 'boolean' },
      'check-references': { type: 'boolean' },
      'require-auth': { type: 'boolean' },
      'client-id': { type: 'string' },
      'client-secret': { type: 'string' },
      'token-lifetime': { type: 'string' },
      log: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stderr.write(
      'usage: server.mjs [PORT] [--port N] [--base-path /fhir] [--no-validate] [--validate-profiles]\n' +
        '                  [--check-references] [--require-auth] [--client-id ID] [--client-secret S]\n' +
        '                  [--token-lifetime SECONDS] [--log]\n' +
        'env: PORT FHIR_BASE_PATH VALIDATE=0 VALIDATE_PROFILES=1 CHECK_REFERENCES=1 REQUIRE_AUTH=1\n' +
        '     OAUTH_CLIENT_ID OAUTH_CLIENT_SECRET OAUTH_TOKEN_LIFETIME FHIR_LOG=1\n'
    );
    process.exit(0);
  }
  const portText = values.port ?? positionals[0] ?? process.env.PORT ?? '0';
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid port ${portText}`);
  const host = values.host ?? process.env.HOST ?? '127.0.0.1';
  if (!/^127\.\d+\.\d+\.\d+$/.test(host) && host !== '::1') throw new Error(`host must be a loopback address, got ${host}`);
  let basePath = values['base-path'] ?? process.env.FHIR_BASE_PATH ?? '';
  basePath = basePath.replace(/\/+$/, '');
  if (basePath && !basePath.startsWith('/')) basePath = '/' + basePath;
  if (basePath.startsWith('/$test')) throw new Error('base path must not start with /$test');
  const lifetimeText = values['token-lifetime'] ?? process.env.OAUTH_TOKEN_LIFETIME ?? '3600';
  const tokenLifetime = Number(lifetimeText);
  if (!Number.isFinite(tokenLifetime) || tokenLifetime < 0) throw new Error(`invalid token lifetime ${lifetimeText}`);
  const validateEnv = process.env.VALIDATE;
  return {
    port,
    host,
    basePath,
    validate: !values['no-validate'] && !(validateEnv !== undefined && !envFlag('VALIDATE')),
    validateProfiles: !!values['validate-profiles'] || envFlag('VALIDATE_PROFILES'),
    checkReferences: !!values['check-references'] || envFlag('CHECK_REFERENCES'),
    requireAuth: !!values['require-auth'] || envFlag('REQUIRE_AUTH'),
    clientId: values['client-id'] ?? process.env.OAUTH_CLIENT_ID ?? 'iomt-agent',
    clientSecret: values['client-secret'] ?? process.env.OAUTH_CLIENT_SECRET ?? 'iomt-agent-secret',
    tokenLifetime,
    log: !!values.log || envFlag('FHIR_LOG'),
  };
}

// ---------------------------------------------------------------- helpers

function oo(code, text, extra = {}) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text }, ...extra }] };
}

function send(res, status, body, headers = {}, contentType = FHIR_JSON) {
  if (res.headersSent || res.destroyed) return;
  const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { ...(text ? { 'Content-Type': contentType } : {}), ...headers });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function queryObject(searchParams) {
  const q = Object.create(null);
  for (const [k, v] of searchParams) {
    const cur = q[k];
    q[k] = cur === undefined ? v : Array.isArray(cur) ? [...cur, v] : [cur, v];
  }
  return q;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Names in `params` that are not search parameters of `type` (modifiers and chains stripped). */
function unknownParams(type, params) {
  const known = getSearchParameters(type) ?? {};
  const bad = [];
  for (const name of params.keys()) {
    const code = name.split(/[:.]/)[0];
    if (!RESULT_PARAMS.has(code) && !known[code] && !name.startsWith('_has:')) bad.push(name);
  }
  return bad;
}

function isJsonType(ct) {
  return /^application\/(fhir\+json|json|json-patch\+json)\b/i.test(ct) || /^application\/[a-z.+-]*\+json\b/i.test(ct);
}

// ---------------------------------------------------------------- server state

const config = parseConfig(process.argv.slice(2));
const defs = loadDefinitions();
const state = {
  origin: `http://${config.host}:${config.port}`,
  validate: config.validate,
  validateProfiles: config.validateProfiles,
  checkReferences: config.checkReferences,
};
const repoOptions = {
  get validate() {
    return state.validate;
  },
  get validateProfiles() {
    return state.validateProfiles;
  },
  get checkReferences() {
    return state.checkReferences;
  },
  profiles: defs.profiles,
  baseUrl: () => state.origin + config.basePath,
};
const repo = new TestRepository(repoOptions);
const router = new FhirRouter();
const faults = new Faults();
const oauth = new OAuth({
  clientId: config.clientId,
  clientSecret: config.clientSecret,
  tokenLifetime: config.tokenLifetime,
  requireAuth: config.requireAuth,
});
const startedAt = new Date().toISOString();

function newStats() {
  return {
    since: new Date().toISOString(),
    total: 0,
    injected: 0,
    byMethod: {},
    byType: {},
    byStatus: {},
    byMethodType: {},
    byMethodTypeStatus: {},
    entries: { total: 0, byMethodTypeStatus: {} },
    token: { total: 0, byStatus: {} },
  };
}
let stats = newStats();
let requestLog = [];
let seq = 0;
const MAX_LOG = 10000;

function bump(obj, key) {
  obj[key] = (obj[key] ?? 0) + 1;
}

function record(entry) {
  entry.seq = ++seq;
  if (entry.endpoint === 'token') {
    stats.token.total++;
    bump(stats.token.byStatus, String(entry.status));
  } else {
    stats.total++;
    bump(stats.byMethod, entry.method);
    bump(stats.byType, entry.resourceType);
    bump(stats.byStatus, String(entry.status));
    bump(stats.byMethodType, `${entry.method} ${entry.resourceType}`);
    bump(stats.byMethodTypeStatus, `${entry.method} ${entry.resourceType} ${entry.status}`);
    if (entry.injected) stats.injected++;
    for (const e of entry.entries ?? []) {
      stats.entries.total++;
      bump(stats.entries.byMethodTypeStatus, `${e.method} ${e.resourceType} ${e.status}`);
    }
  }
  requestLog.push(entry);
  if (requestLog.length > MAX_LOG) requestLog = requestLog.slice(-MAX_LOG);
  if (config.log) {
    process.stderr.write(`${entry.method} ${entry.url} -> ${entry.status}${entry.injected ? ` (injected by rule ${entry.injected})` : ''}\n`);
  }
}

// Single promise queue: every store-touching operation runs alone.
let chain = Promise.resolve();
function serial(fn) {
  const p = chain.then(fn, fn);
  chain = p.catch(() => {});
  return p;
}

const lookupDevice = (id) => repo.resources.get('Device')?.get(id);

// ---------------------------------------------------------------- CapabilityStatement

function capabilityStatement(origin) {
  const base = origin + config.basePath;
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  const rest = {
    mode: 'server',
    documentation: 'Test-only server for iomt-edge. Not for production use.',
    resource: defs.resourceTypes.map((type) => {
      const r = {
        type,
        interaction: interactions.map((code) => ({ code })),
        versioning: 'versioned',
        readHistory: true,
        updateCreate: true,
        conditionalCreate: true,
        conditionalRead: 'not-supported',
        conditionalUpdate: true,
        conditionalDelete: 'single',
      };
      if (FOCUS_TYPES.includes(type)) {
        r.searchParam = Object.values(getSearchParameters(type) ?? {})
          .map((sp) => ({ name: sp.code, type: sp.type }))
          .sort((a, b) => a.name.localeCompare(b.name));
      }
      return r;
    }),
    interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
  };
  if (oauth.config.requireAuth) {
    rest.security = {
      extension: [
        {
          url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
          extension: [{ url: 'token', valueUri: `${origin}/$test/oauth/token` }],
        },
      ],
      service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'OAuth' }] }],
    };
  }
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: startedAt,
    kind: 'instance',
    software: { name: 'iomt-edge FHIR test server (Medplum fhir-router 5.2.13, in-memory)', version: VERSION },
    implementation: { description: 'iomt-edge FHIR R4 test server', url: base },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    patchFormat: ['application/json-patch+json'],
    rest: [rest],
  };
}

// ---------------------------------------------------------------- FHIR request processing

/** Adds fullUrl and self/next links to a searchset Bundle (Medplum gives neither). */
function decorateSearchset(bundle, origin, relPath, searchParams) {
  const base = origin + config.basePath;
  for (const e of bundle.entry ?? []) {
    if (e.resource?.resourceType && e.resource.id) e.fullUrl = `${base}/${e.resource.resourceType}/${e.resource.id}`;
  }
  const self = `${base}/${relPath}${searchParams.toString() ? '?' + searchParams : ''}`;
  const link = [{ relation: 'self', url: self }];
  const count = Number(searchParams.get('_count'));
  const offset = Number(searchParams.get('_offset') ?? 0) || 0;
  const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
  if (Number.isInteger(count) && count > 0 && typeof bundle.total === 'number' && offset + matches < bundle.total) {
    const next = new URLSearchParams(searchParams);
    next.set('_offset', String(offset + count));
    link.push({ relation: 'next', url: `${base}/${relPath}?${next}` });
  }
  bundle.link = link;
}

/** Adds etag and versioned location to batch/transaction-response entries (Medplum gives neither). */
function decorateBatchResponse(bundle) {
  for (const e of bundle.entry ?? []) {
    const r = e.resource;
    const vid = r?.meta?.versionId;
    if (!e.response || !r?.id || !vid || r.resourceType === 'OperationOutcome') continue;
    e.response.etag = `W/"${vid}"`;
    if (r.meta.lastUpdated) e.response.lastModified = r.meta.lastUpdated;
    if (e.response.location && !e.response.location.includes('/_history/')) {
      e.response.location = `${r.resourceType}/${r.id}/_history/${vid}`;
    }
  }
}

function entryType(url) {
  const path = String(url ?? '').split('?')[0].replace(/^\/+/, '');
  return path.split('/')[0] || 'system';
}

/** Runs one request through the router (inside the queue) with rollback for transactions. */
async function runRouter(fhirReq, isTransaction) {
  const snap = isTransaction ? repo.snapshot() : undefined;
  try {
    const result = await router.handleRequest(fhirReq, repo);
    if (snap && !isOk(result[0])) repo.restore(snap);
    return result;
  } catch (err) {
    if (snap) repo.restore(snap);
    return [normalizeOperationOutcome(err)];
  }
}

async function handleFhir(req, res, url, raw, origin, logEntry) {
  const method = req.method === 'HEAD' ? 'GET' : req.method;
  const rel = url.pathname.slice(config.basePath.length).replace(/^\/+/, '').replace(/\/+$/, '');
  const segs = rel ? rel.split('/') : [];
  const resourceType = segs.length === 0 ? (method === 'POST' ? 'Bundle' : 'system') : decodeURIComponent(segs[0]);
  logEntry.method = method;
  logEntry.resourceType = resourceType;

  const reply = (status, body, headers = {}) => {
    logEntry.status = status;
    send(res, status, req.method === 'HEAD' ? undefined : body, headers);
  };

  if (method === 'GET' && rel === 'metadata') return reply(200, capabilityStatement(origin));

  // Bearer auth (before faults: a real server rejects unauthenticated requests first).
  const denied = oauth.check(req.headers.authorization, Date.now());
  if (denied) return reply(401, oo('login', denied.message), { 'WWW-Authenticate': denied.wwwAuthenticate });

  // Body
  let body;
  const bodyText = raw.toString('utf8');
  const ct = req.headers['content-type'] ?? '';
  const searchParams = new URLSearchParams(url.search);
  if (raw.length > 0) {
    if (/^application\/x-www-form-urlencoded\b/i.test(ct) && method === 'POST' && segs[1] === '_search') {
      body = queryObject(new URLSearchParams(bodyText));
    } else if (ct && !isJsonType(ct)) {
      return reply(415, oo('not-supported', `Unsupported Content-Type ${ct}; use application/fhir+json`));
    } else {
      try {
        body = JSON.parse(bodyText);
      } catch (err) {
        return reply(400, oo('structure', `Request body is not valid JSON: ${err.message}`));
      }
    }
  } else if (['POST', 'PUT'].includes(method) && segs[1] !== '_search') {
    return reply(400, oo('required', 'Request body is required'));
  }

  // Faults: whole request first, then (for Bundles at the base) per entry.
  const isBundleAtBase = segs.length === 0 && method === 'POST' && body?.resourceType === 'Bundle';
  const isTransaction = isBundleAtBase && body.type === 'transaction';
  const isBatch = isBundleAtBase && body.type === 'batch';
  const ctx = {
    endpoint: 'fhir',
    method,
    resourceType,
    url: rel + url.search,
    bodyText,
    resource: body && typeof body === 'object' && !Array.isArray(body) ? body : undefined,
    query: queryObject(searchParams),
    headers: req.headers,
  };
  let wholeRule = faults.fire(ctx, lookupDevice);
  const entryRules = new Map(); // entry index -> rule (batch only)
  if (!wholeRule && isBundleAtBase && Array.isArray(body.entry)) {
    for (let i = 0; i < body.entry.length; i++) {
      const e = body.entry[i] ?? {};
      const eurl = String(e.request?.url ?? '');
      const ectx = {
        endpoint: 'fhir',
        method: String(e.request?.method ?? '').toUpperCase(),
        resourceType: entryType(eurl),
        url: eurl,
        bodyText: JSON.stringify(e.resource ?? null),
        resource: e.resource,
        query: queryObject(new URLSearchParams(eurl.includes('?') ? eurl.slice(eurl.indexOf('?') + 1) : '')),
        headers: e.request?.ifNoneExist ? { 'if-none-exist': e.request.ifNoneExist } : {},
      };
      const rule = faults.fire(ectx, lookupDevice);
      if (!rule) continue;
      if (isTransaction || !isBatch || rule.action !== 'respond') {
        wholeRule = rule; // a transaction fails as a whole
        break;
      }
      entryRules.set(i, rule);
    }
  }
  if (wholeRule) {
    logEntry.injected = wholeRule.id;
    if (wholeRule.delayMs) await sleep(wholeRule.delayMs);
    if (wholeRule.action === 'close') {
      logEntry.status = 0;
      res.socket?.destroy();
      return;
    }
  } else {
    for (const r of entryRules.values()) if (r.delayMs) await sleep(r.delayMs);
  }
  const injectResponse = (rule) => {
    const headers = { ...rule.headers };
    if (rule.retryAfter !== undefined) headers['Retry-After'] = String(rule.retryAfter);
    logEntry.status = rule.status;
    if (rule.body !== undefined) {
      send(res, rule.status, req.method === 'HEAD' ? undefined : rule.body, headers, rule.contentType ?? 'text/plain');
    } else send(res, rule.status, req.method === 'HEAD' ? undefined : injectedOutcome(rule), headers);
  };
  if (wholeRule?.action === 'respond' && wholeRule.when === 'before') return injectResponse(wholeRule);

  // Wrapper-level protocol checks the router does not make.
  const headers = { ...req.headers };
  if (typeof headers['if-match'] === 'string' && !headers['if-match'].includes('"')) {
    headers['if-match'] = `"${headers['if-match'].trim()}"`; // accept a bare version id
  }
  const ine = headers['if-none-exist'];
  if (typeof ine === 'string') {
    if (ine.includes('?')) {
      return reply(400, oo('invalid', 'If-None-Exist must hold only the search parameters (the part after "?"), without the resource type'));
    }
    const bad = unknownParams(resourceType, new URLSearchParams(ine));
    if (bad.length) return reply(400, oo('not-supported', `Unknown search parameter(s) in If-None-Exist: ${bad.join(', ')}`));
  }
  const isSearch = method === 'GET' && segs.length === 1 && !rel.startsWith('$');
  if ((isSearch || (method === 'PUT' && segs.length === 1)) && /handling=strict/i.test(String(headers.prefer ?? ''))) {
    const bad = unknownParams(resourceType, searchParams);
    if (bad.length) return reply(400, oo('not-supported', `Unknown search parameter(s): ${bad.join(', ')}`));
  }
  if (method === 'POST' && segs.length === 1 && body && typeof body === 'object' && 'id' in body) {
    body = { ...body };
    delete body.id; // R4 create: the server SHALL ignore a client id
  }

  let routerBody = body;
  if (entryRules.size > 0) {
    const keep = body.entry.filter((_, i) => !(entryRules.get(i)?.when === 'before'));
    routerBody = { ...body, entry: keep };
  }

  const fhirReq = {
    method,
    url: rel + url.search,
    pathname: '',
    body: routerBody,
    params: {},
    query: queryObject(searchParams),
    headers,
    config: { transactions: true },
  };

  const [outcome, resource] = await serial(async () => {
    const existed = method === 'PUT' && segs.length === 2 ? !!repo.resources.get(resourceType)?.has(decodeURIComponent(segs[1])) : true;
    if (!existed && headers['if-match']) {
      // RFC 9110 13.1.1: If-Match on a resource with no current version fails the precondition
      // (Medplum answers 404).
      return [{ resourceType: 'OperationOutcome', id: 'precondition-failed', issue: [{ severity: 'error', code: 'conflict', details: { text: `Precondition Failed: ${resourceType}/${segs[1]} has no current version` } }] }];
    }
    const result = await runRouter(fhirReq, isTransaction);
    if (method === 'PUT' && segs.length === 2 && !existed && result[0]?.id === 'ok') return [{ ...result[0], id: 'created' }, result[1]];
    return result;
  });

  // Per-entry injected failures in a batch: splice them into the batch-response.
  if (entryRules.size > 0 && resource?.resourceType === 'Bundle') {
    const out = [];
    let j = 0;
    for (let i = 0; i < body.entry.length; i++) {
      const rule = entryRules.get(i);
      const routed = rule?.when === 'before' ? undefined : resource.entry?.[j++];
      if (rule) out.push({ response: { status: String(rule.status), outcome: injectedOutcome(rule) } });
      else out.push(routed ?? {});
    }
    resource.entry = out;
    logEntry.injected = [...new Set([...entryRules.values()].map((r) => r.id))].join(',');
  }

  if (isBundleAtBase && Array.isArray(body.entry)) {
    logEntry.bundleType = body.type;
    logEntry.entries = body.entry.map((e, i) => ({
      method: String(e?.request?.method ?? ''),
      url: String(e?.request?.url ?? ''),
      resourceType: entryType(e?.request?.url),
      ifMatch: e?.request?.ifMatch,
      ifNoneExist: e?.request?.ifNoneExist,
      status: resource?.resourceType === 'Bundle' ? String(resource.entry?.[i]?.response?.status ?? '').split(' ')[0] : String(getStatus(outcome)),
    }));
  }

  if (wholeRule?.action === 'respond' && wholeRule.when === 'after') return injectResponse(wholeRule);

  const status = getStatus(outcome);
  if (!isOk(outcome)) {
    const { id: _ignored, ...clean } = outcome;
    return reply(status, clean);
  }
  const out = {};
  if (resource && resource.resourceType !== 'Bundle' && resource.resourceType !== 'OperationOutcome' && resource.id && resource.meta?.versionId) {
    out.ETag = `W/"${resource.meta.versionId}"`;
    if (resource.meta.lastUpdated) out['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201) out.Location = `${origin}${config.basePath}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
  }
  if (resource?.resourceType === 'Bundle' && resource.type === 'searchset') decorateSearchset(resource, origin, rel, searchParams);
  if (resource?.resourceType === 'Bundle' && /^(batch|transaction)-response$/.test(resource.type ?? '')) decorateBatchResponse(resource);
  const prefer = String(req.headers.prefer ?? '');
  let responseBody = resource ?? { ...outcome, id: undefined };
  if (/return=minimal/i.test(prefer)) responseBody = undefined;
  else if (/return=OperationOutcome/i.test(prefer)) responseBody = { ...outcome, id: undefined };
  return reply(status, responseBody, out);
}

// ---------------------------------------------------------------- /$test control endpoints

function json(res, status, body, headers = {}) {
  send(res, status, body, headers, 'application/json; charset=utf-8');
}

function parseJsonBody(raw) {
  if (raw.length === 0) return {};
  return JSON.parse(raw.toString('utf8'));
}

async function handleControl(req, res, url, raw, origin) {
  const p = url.pathname;
  const m = req.method;
  try {
    if (p === '/$test/oauth/token' && m === 'POST') {
      const logEntry = { endpoint: 'token', method: m, url: p, resourceType: '$oauth', at: new Date().toISOString() };
      const rule = faults.fire(
        { endpoint: 'token', method: m, resourceType: '$oauth', url: p, bodyText: raw.toString('utf8'), headers: req.headers },
        lookupDevice
      );
      if (rule) {
        logEntry.injected = rule.id;
        if (rule.delayMs) await sleep(rule.delayMs);
        if (rule.action === 'close') {
          logEntry.status = 0;
          record(logEntry);
          res.socket?.destroy();
          return;
        }
        if (rule.action === 'respond') {
          const headers = { ...rule.headers };
          if (rule.retryAfter !== undefined) headers['Retry-After'] = String(rule.retryAfter);
          logEntry.status = rule.status;
          record(logEntry);
          if (rule.body !== undefined) return send(res, rule.status, rule.body, headers, rule.contentType ?? 'text/plain');
          return json(res, rule.status, { error: rule.status === 429 ? 'slow_down' : 'temporarily_unavailable', error_description: `injected by rule ${rule.id}` }, headers);
        }
      }
      const ct = req.headers['content-type'] ?? '';
      let r;
      if (raw.length > 0 && !/^application\/x-www-form-urlencoded\b/i.test(ct)) {
        r = { status: 400, headers: {}, body: { error: 'invalid_request', error_description: 'use Content-Type application/x-www-form-urlencoded' } };
      } else {
        r = oauth.token(new URLSearchParams(raw.toString('utf8')), req.headers.authorization, Date.now());
      }
      logEntry.status = r.status;
      record(logEntry);
      return json(res, r.status, r.body, r.headers);
    }
    if (p === '/$test/reset' && m === 'POST') {
      const body = parseJsonBody(raw);
      await serial(() => {
        repo.clear();
        faults.clear();
        stats = newStats();
        requestLog = [];
        if (body.tokens) oauth.revoke();
      });
      return json(res, 200, { ok: true });
    }
    if (p === '/$test/stats' && m === 'GET') {
      return json(res, 200, { ...stats, auth: { ...oauth.stats }, store: repo.counts(), faults: faults.list() });
    }
    if (p === '/$test/log' && m === 'GET') {
      const since = Number(url.searchParams.get('since') ?? 0) || 0;
      return json(res, 200, { entries: requestLog.filter((e) => e.seq > since) });
    }
    if (p === '/$test/fail') {
      if (m === 'GET') return json(res, 200, { rules: faults.list() });
      if (m === 'DELETE') {
        faults.clear();
        return json(res, 200, { ok: true });
      }
      if (m === 'POST') {
        const body = parseJsonBody(raw);
        const rules = (Array.isArray(body) ? body : [body]).map((b) => faults.add(b));
        return json(res, 201, Array.isArray(body) ? { rules } : { rule: rules[0] });
      }
    }
    const del = /^\/\$test\/fail\/([^/]+)$/.exec(p);
    if (del && m === 'DELETE') {
      return faults.remove(del[1]) ? json(res, 200, { ok: true }) : json(res, 404, { error: `no rule ${del[1]}` });
    }
    if (p === '/$test/oauth/config') {
      if (m === 'GET') return json(res, 200, oauth.publicConfig());
      if (m === 'POST') return json(res, 200, oauth.configure(parseJsonBody(raw)));
    }
    if (p === '/$test/oauth/expire' && m === 'POST') {
      oauth.expire(Date.now());
      return json(res, 200, { ok: true });
    }
    if (p === '/$test/oauth/revoke' && m === 'POST') {
      oauth.revoke();
      return json(res, 200, { ok: true });
    }
    if (p === '/$test/config') {
      if (m === 'POST') {
        const body = parseJsonBody(raw);
        for (const k of ['validate', 'validateProfiles', 'checkReferences']) if (body[k] !== undefined) state[k] = !!body[k];
      }
      if (m === 'GET' || m === 'POST') {
        return json(res, 200, {
          version: VERSION,
          node: process.version,
          basePath: config.basePath,
          fhirBase: origin + config.basePath,
          validate: state.validate,
          validateProfiles: state.validateProfiles,
          checkReferences: state.checkReferences,
          oauth: oauth.publicConfig(),
        });
      }
    }
    if (p === '/$test/export' && m === 'GET') {
      // All current resources as NDJSON (for validate.py).
      const lines = await serial(() => {
        const out = [];
        for (const byId of repo.resources.values()) for (const r of byId.values()) out.push(JSON.stringify(r));
        return out;
      });
      return send(res, 200, lines.length ? lines.join('\n') + '\n' : '', {}, 'application/fhir+ndjson');
    }
    return json(res, 404, { error: `no test endpoint ${m} ${p}` });
  } catch (err) {
    return json(res, 400, { error: err.message });
  }
}

// ---------------------------------------------------------------- HTTP server

const server = http.createServer(async (req, res) => {
  const started = performance.now();
  let url;
  try {
    url = new URL(req.url ?? '/', 'http://localhost');
  } catch {
    return send(res, 400, oo('invalid', 'bad request URL'));
  }
  const origin = `http://${req.headers.host ?? `${config.host}:${server.address()?.port}`}`;
  let raw;
  try {
    raw = await readBody(req);
  } catch (err) {
    return send(res, err.status ?? 400, oo('too-costly', err.message));
  }
  if (url.pathname.startsWith('/$test/')) return handleControl(req, res, url, raw, origin);
  if (url.pathname === '/healthz') return json(res, 200, { ok: true });
  if (url.pathname === '/.well-known/smart-configuration' && req.method === 'GET') {
    return json(res, 200, {
      token_endpoint: `${origin}/$test/oauth/token`,
      grant_types_supported: ['client_credentials'],
      token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
      capabilities: [],
    });
  }
  const logEntry = {
    endpoint: 'fhir',
    at: new Date().toISOString(),
    method: req.method,
    url: url.pathname + url.search,
    resourceType: '',
    ifMatch: req.headers['if-match'],
    ifNoneExist: req.headers['if-none-exist'],
    ifNoneMatch: req.headers['if-none-match'],
    prefer: req.headers.prefer,
    contentType: req.headers['content-type'],
    authorization: /^bearer /i.test(req.headers.authorization ?? '') ? 'bearer' : req.headers.authorization ? 'other' : 'none',
  };
  const base = config.basePath;
  if (base && url.pathname !== base && !url.pathname.startsWith(base + '/')) {
    logEntry.status = 404;
    send(res, 404, oo('not-found', `No FHIR endpoint here; the FHIR base is ${origin}${base}`));
  } else {
    try {
      await handleFhir(req, res, url, raw, origin, logEntry);
    } catch (err) {
      logEntry.status = 500;
      send(res, 500, oo('exception', `test server error: ${err?.message ?? err}`));
      process.stderr.write(`error: ${err?.stack ?? err}\n`);
    }
  }
  logEntry.ms = Math.round((performance.now() - started) * 10) / 10;
  if (logEntry.status === undefined) logEntry.status = res.statusCode;
  record(logEntry);
});

server.keepAliveTimeout = 5000;
server.listen(config.port, config.host, () => {
  const { port } = server.address();
  state.origin = `http://${config.host}:${port}`;
  process.stdout.write(`LISTENING ${config.host}:${port}\n`);
  process.stderr.write(
    `fhir test server ${VERSION} on node ${process.version}: FHIR base ${state.origin}${config.basePath || '/'}; ` +
      `definitions indexed in ${defs.millis} ms; validate=${state.validate} profiles=${state.validateProfiles} ` +
      `references=${state.checkReferences} requireAuth=${config.requireAuth}\n`
  );
});

let closing = false;
function shutdown(signal) {
  if (closing) return;
  closing = true;
  process.stderr.write(`fhir test server: ${signal}, closing\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
