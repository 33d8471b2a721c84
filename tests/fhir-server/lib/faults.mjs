// Fault injection for the test-only endpoint POST /$test/fail.
//
// A rule says which requests it matches and what happens to them. Rules are
// checked in creation order; the first active matching rule wins. A rule with
// `count` fires that many times and then stays listed as exhausted; without
// `count` it fires until removed (DELETE /$test/fail[/<id>] or /$test/reset).
//
// Invariants: matching is pure (no I/O, no clock); the only state change is the
// `hits`/`seen` counters of the rule that fired, done by fire().

import { identifierTokenMatches } from './repository.mjs';

const RULE_KEYS = new Set([
  'status', 'count', 'skip', 'method', 'resourceType', 'device', 'deviceReference', 'identifier',
  'urlContains', 'bodyContains', 'retryAfter', 'headers', 'outcome', 'body', 'contentType', 'delayMs',
  'action', 'when', 'endpoint', 'note',
]);

const ISSUE_CODE = {
  400: 'invalid', 401: 'login', 403: 'forbidden', 404: 'not-found', 405: 'not-supported', 408: 'timeout',
  409: 'conflict', 410: 'deleted', 412: 'conflict', 413: 'too-costly', 415: 'not-supported', 422: 'processing',
  429: 'throttled', 500: 'exception', 502: 'transient', 503: 'transient', 504: 'timeout',
};

/** Validates and normalises a rule posted by a test; throws Error with a message on bad input. */
export function parseRule(input, id) {
  if (!input || typeof input !== 'object' || Array.isArray(input)) throw new Error('rule must be a JSON object');
  for (const k of Object.keys(input)) if (!RULE_KEYS.has(k)) throw new Error(`unknown rule field "${k}"`);
  const action = input.action ?? 'respond';
  if (!['respond', 'close', 'delay'].includes(action)) throw new Error('action must be respond, close or delay');
  const when = input.when ?? 'before';
  if (!['before', 'after'].includes(when)) throw new Error('when must be before or after');
  const endpoint = input.endpoint ?? 'fhir';
  if (!['fhir', 'token'].includes(endpoint)) throw new Error('endpoint must be fhir or token');
  if (action === 'respond') {
    if (!Number.isInteger(input.status) || input.status < 200 || input.status > 599) {
      throw new Error('status must be an integer HTTP status 200..599 (required unless action is close or delay)');
    }
  }
  for (const k of ['count', 'skip', 'delayMs']) {
    if (input[k] !== undefined && (!Number.isInteger(input[k]) || input[k] < 0)) throw new Error(`${k} must be a non-negative integer`);
  }
  const list = (v) => (v === undefined ? undefined : (Array.isArray(v) ? v : [v]).map(String));
  return {
    id,
    status: input.status,
    count: input.count,
    skip: input.skip ?? 0,
    method: list(input.method)?.map((m) => m.toUpperCase()),
    resourceType: list(input.resourceType),
    device: input.device,
    deviceReference: input.deviceReference,
    identifier: input.identifier,
    urlContains: input.urlContains,
    bodyContains: input.bodyContains,
    retryAfter: input.retryAfter,
    headers: input.headers ?? {},
    outcome: input.outcome,
    body: input.body,
    contentType: input.contentType,
    delayMs: input.delayMs ?? 0,
    action,
    when,
    endpoint,
    note: input.note,
    seen: 0,
    hits: 0,
  };
}

/**
 * Request context a rule is matched against.
 * @typedef {{endpoint: 'fhir'|'token', method: string, resourceType: string, url: string,
 *            bodyText: string, resource?: object, query?: Record<string, any>,
 *            headers?: Record<string, any>}} FaultContext
 */

function deviceMatches(rule, ctx, lookupDevice) {
  const r = ctx.resource;
  if (rule.deviceReference !== undefined) {
    const ref = r?.device?.reference ?? (r?.resourceType === 'Device' && r.id ? `Device/${r.id}` : undefined);
    const urlRef = ctx.resourceType === 'Device' ? /^\/?(Device\/[^/?]+)/.exec(ctx.url)?.[1] : undefined;
    if (ref !== rule.deviceReference && urlRef !== rule.deviceReference) return false;
  }
  if (rule.device !== undefined) {
    let ok = false;
    if (r?.resourceType === 'Device') ok = identifierTokenMatches(r.identifier, rule.device);
    else if (r?.device) {
      if (r.device.identifier) ok = identifierTokenMatches(r.device.identifier, rule.device);
      const m = /^Device\/([^/]+)/.exec(r.device.reference ?? '');
      if (!ok && m) ok = identifierTokenMatches(lookupDevice(m[1])?.identifier, rule.device);
    }
    if (!ok && ctx.resourceType === 'Device' && typeof ctx.query?.identifier === 'string') {
      ok = ctx.query.identifier === rule.device;
    }
    if (!ok) return false;
  }
  return true;
}

/** True when `rule` applies to `ctx` (ignores count/skip). */
export function ruleMatches(rule, ctx, lookupDevice) {
  if (rule.endpoint !== ctx.endpoint) return false;
  if (rule.method && !rule.method.includes(ctx.method)) return false;
  if (rule.resourceType && !rule.resourceType.includes(ctx.resourceType)) return false;
  if (rule.urlContains !== undefined && !ctx.url.includes(rule.urlContains)) return false;
  if (rule.bodyContains !== undefined && !ctx.bodyText.includes(rule.bodyContains)) return false;
  if (rule.identifier !== undefined) {
    const r = ctx.resource;
    const fromBody = r && identifierTokenMatches(r.identifier, rule.identifier);
    const fromQuery = typeof ctx.query?.identifier === 'string' && ctx.query.identifier === rule.identifier;
    const ine = ctx.headers?.['if-none-exist'];
    const fromHeader = typeof ine === 'string' && new URLSearchParams(ine).get('identifier') === rule.identifier;
    if (!fromBody && !fromQuery && !fromHeader) return false;
  }
  if (!deviceMatches(rule, ctx, lookupDevice)) return false;
  return true;
}

export class Faults {
  constructor() {
    this.rules = [];
    this.nextId = 1;
  }

  add(input) {
    const rule = parseRule(input, String(this.nextId));
    this.nextId++;
    this.rules.push(rule);
    return rule;
  }

  remove(id) {
    const before = this.rules.length;
    this.rules = this.rules.filter((r) => r.id !== id);
    return this.rules.length !== before;
  }

  clear() {
    this.rules = [];
  }

  active(rule) {
    return rule.count === undefined || rule.hits < rule.count;
  }

  /**
   * Finds the first active rule matching ctx and counts the match; returns the
   * rule when it fires (past its `skip`), else undefined.
   */
  fire(ctx, lookupDevice, filter = () => true) {
    for (const rule of this.rules) {
      if (!this.active(rule) || !filter(rule) || !ruleMatches(rule, ctx, lookupDevice)) continue;
      rule.seen++;
      if (rule.seen <= rule.skip) continue;
      rule.hits++;
      return rule;
    }
    return undefined;
  }

  /** True when some active rule would match ctx (does not count). */
  wouldMatch(ctx, lookupDevice, filter = () => true) {
    return this.rules.some((r) => this.active(r) && filter(r) && ruleMatches(r, ctx, lookupDevice));
  }

  list() {
    return this.rules.map((r) => ({ ...r, active: this.active(r) }));
  }
}

/** The OperationOutcome an injected failure returns unless the rule gives its own. */
export function injectedOutcome(rule) {
  if (rule.outcome) return rule.outcome;
  return {
    resourceType: 'OperationOutcome',
    issue: [
      {
        severity: 'error',
        code: ISSUE_CODE[rule.status] ?? (rule.status >= 500 ? 'exception' : 'processing'),
        diagnostics: `injected by /$test/fail rule ${rule.id}${rule.note ? ` (${rule.note})` : ''}`,
      },
    ],
  };
}
