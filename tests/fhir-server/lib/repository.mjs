// TestRepository: Medplum's in-memory MemoryRepository with the changes a test
// server needs to behave more like a production FHIR R4 server.
//
// What it changes (each closes a gap measured against the plain MemoryRepository):
// - Validation on every write (create, update, conditional create/update, patch,
//   transaction/batch entries): all of them funnel through createResourceSync, so
//   that is the single hook. Base-resource validation (Medplum validateResource)
//   gives 400; a small table of required-binding codes (Observation.status, ...)
//   that Medplum does not check gives 400; optional core-profile validation
//   (meta.profile) gives 422; optional reference checks give 400.
// - Integer version ids "1", "2", ... (Medplum uses random UUIDs). The version of a
//   new write is the length of the resource's history, so it is strictly
//   increasing per resource, also across delete and re-create.
// - readHistory does not mutate the stored history (Medplum reverses the internal
//   array in place, so every second history read came back oldest-first), returns
//   entries newest first with fullUrl/request/response, and works for deleted
//   resources.
// - Reading a deleted resource answers 410 Gone (Medplum: 404).
// - Identifier token search is case-sensitive (Medplum matches case-insensitively,
//   so conditional creates conflated identifiers differing only in case).
// - snapshot()/restore() give transaction rollback; both are shallow copies of the
//   two-level maps, which is sound because stored resource objects are never
//   mutated after the write that stored them (reads return deep copies).

import { OperationOutcomeError, Operator, validateResource } from '@medplum/core';
import { MemoryRepository } from '@medplum/fhir-router';

/** Required bindings the agent's resources use that Medplum's validator does not check. */
export const REQUIRED_CODES = {
  Observation: {
    status: ['registered', 'preliminary', 'final', 'amended', 'corrected', 'cancelled', 'entered-in-error', 'unknown'],
  },
  Device: { status: ['active', 'inactive', 'entered-in-error', 'unknown'] },
  Patient: { gender: ['male', 'female', 'other', 'unknown'] },
  Encounter: {
    status: ['planned', 'arrived', 'triaged', 'in-progress', 'onleave', 'finished', 'cancelled', 'entered-in-error', 'unknown'],
  },
};

function outcome(id, issues) {
  return { resourceType: 'OperationOutcome', id, issue: issues };
}

/** Splits a token search value on unescaped commas (FHIR OR). */
function splitOr(value) {
  const out = [];
  let cur = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && i + 1 < value.length) {
      cur += value[i + 1];
      i++;
    } else if (c === ',') {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out;
}

/** Case-sensitive identifier token match (`system|value`, `|value`, `value`, `system|`). */
export function identifierTokenMatches(identifiers, token) {
  const list = Array.isArray(identifiers) ? identifiers : identifiers ? [identifiers] : [];
  for (const alt of splitOr(token)) {
    const bar = alt.indexOf('|');
    for (const id of list) {
      if (bar < 0) {
        if (id.value === alt) return true;
      } else {
        const system = alt.slice(0, bar);
        const value = alt.slice(bar + 1);
        const systemOk = system === '' ? id.system === undefined : id.system === system;
        const valueOk = value === '' || id.value === value;
        if (systemOk && valueOk) return true;
      }
    }
  }
  return false;
}

/** Collects literal relative references `Type/id` anywhere in a resource. */
function collectReferences(node, path, out) {
  if (Array.isArray(node)) {
    node.forEach((v, i) => collectReferences(v, `${path}[${i}]`, out));
  } else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'contained') continue;
      if (k === 'reference' && typeof v === 'string') out.push({ reference: v, path: `${path}.reference` });
      else collectReferences(v, `${path}.${k}`, out);
    }
  }
}

export class TestRepository extends MemoryRepository {
  /**
   * @param {{validate: boolean, validateProfiles: boolean, checkReferences: boolean,
   *          profiles: Map<string, object>, baseUrl: () => string}} options
   */
  constructor(options) {
    super();
    this.options = options;
    // stored version object -> { method, status }: how each version came to be.
    this.versionInfo = new WeakMap();
  }

  /** Throws OperationOutcomeError when `resource` must be rejected. */
  checkResource(resource) {
    if (!this.options.validate) return;
    // Throws OperationOutcomeError (400) carrying every error issue.
    validateResource(resource);
    const issues = [];
    for (const [element, codes] of Object.entries(REQUIRED_CODES[resource.resourceType] ?? {})) {
      const v = resource[element];
      if (v !== undefined && !codes.includes(v)) {
        issues.push({
          severity: 'error',
          code: 'code-invalid',
          details: { text: `Value "${v}" is not in the required value set (${codes.join(' | ')})` },
          expression: [`${resource.resourceType}.${element}`],
        });
      }
    }
    if (issues.length) throw new OperationOutcomeError(outcome(undefined, issues));
    if (this.options.checkReferences) this.checkReferences(resource);
    if (this.options.validateProfiles) {
      for (const url of resource.meta?.profile ?? []) {
        const profile = this.options.profiles.get(url.split('|')[0]);
        if (!profile) continue;
        try {
          validateResource(resource, { profile });
        } catch (err) {
          if (!(err instanceof OperationOutcomeError)) throw err;
          // business-rule maps to HTTP 422 in Medplum's getStatus().
          throw new OperationOutcomeError(outcome('business-rule', err.outcome.issue ?? []));
        }
      }
    }
  }

  checkReferences(resource) {
    const refs = [];
    collectReferences(resource, resource.resourceType, refs);
    const issues = [];
    for (const { reference, path } of refs) {
      const m = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(\/_history\/.*)?$/.exec(reference);
      if (!m) continue; // contained (#x), urn:uuid:, absolute URLs: not checked
      if (!this.resources.get(m[1])?.has(m[2])) {
        issues.push({
          severity: 'error',
          code: 'processing',
          details: { text: `Resource ${m[1]}/${m[2]} not found, specified in path: ${path}` },
          expression: [path],
        });
      }
    }
    if (issues.length) throw new OperationOutcomeError(outcome(undefined, issues));
  }

  createResourceSync(resource, options, update = false) {
    this.checkResource(resource);
    const existed = resource.id !== undefined && !!this.resources.get(resource.resourceType)?.has(resource.id);
    const out = super.createResourceSync(resource, options, update);
    const versions = this.history.get(out.resourceType).get(out.id);
    const stored = versions[versions.length - 1];
    const vid = String(versions.length);
    stored.meta.versionId = vid;
    out.meta.versionId = vid;
    this.versionInfo.set(stored, { method: update ? 'PUT' : 'POST', status: existed ? '200' : '201' });
    return out;
  }

  isDeleted(resourceType, id) {
    return !this.resources.get(resourceType)?.has(id) && (this.history.get(resourceType)?.get(id)?.length ?? 0) > 0;
  }

  async readResource(resourceType, id) {
    if (this.isDeleted(resourceType, id)) {
      throw new OperationOutcomeError(
        outcome('gone', [{ severity: 'error', code: 'deleted', details: { text: `${resourceType}/${id} was deleted` } }])
      );
    }
    return super.readResource(resourceType, id);
  }

  async readHistory(resourceType, id, opts) {
    const versions = this.history.get(resourceType)?.get(id);
    if (!versions?.length) {
      throw new OperationOutcomeError(
        outcome('not-found', [{ severity: 'error', code: 'not-found', details: { text: 'Not found' } }])
      );
    }
    const base = this.options.baseUrl();
    let entries = [...versions].reverse().map((v) => {
      const info = this.versionInfo.get(v) ?? { method: 'PUT', status: '200' };
      return {
        fullUrl: `${base}/${resourceType}/${id}`,
        resource: structuredClone(v),
        request: { method: info.method, url: info.method === 'POST' ? resourceType : `${resourceType}/${id}` },
        response: {
          status: info.status,
          etag: `W/"${v.meta.versionId}"`,
          lastModified: v.meta.lastUpdated,
        },
      };
    });
    if (this.isDeleted(resourceType, id)) {
      entries.unshift({
        fullUrl: `${base}/${resourceType}/${id}`,
        request: { method: 'DELETE', url: `${resourceType}/${id}` },
        response: { status: '200' },
      });
    }
    const total = entries.length;
    if (opts?.offset) entries = entries.slice(opts.offset);
    if (opts?.limit !== undefined && !Number.isNaN(opts.limit)) entries = entries.slice(0, opts.limit);
    return { resourceType: 'Bundle', type: 'history', total, ...(entries.length ? { entry: entries } : {}) };
  }

  async readVersion(resourceType, id, versionId) {
    const v = this.history.get(resourceType)?.get(id)?.find((r) => r.meta?.versionId === versionId);
    if (!v) {
      throw new OperationOutcomeError(
        outcome('not-found', [{ severity: 'error', code: 'not-found', details: { text: 'Not found' } }])
      );
    }
    return structuredClone(v);
  }

  searchSync(request) {
    const exact = (request.filters ?? []).filter((f) => f.code === 'identifier' && f.operator === Operator.EQUALS);
    if (exact.length === 0) return super.searchSync(request);
    const full = super.searchSync({ ...request, offset: undefined, count: undefined });
    let entries = (full.entry ?? []).filter((e) =>
      exact.every((f) => identifierTokenMatches(e.resource.identifier, f.value))
    );
    const total = entries.length;
    if (request.offset !== undefined) entries = entries.slice(request.offset);
    if (request.count !== undefined) entries = entries.slice(0, request.count);
    return { ...full, entry: entries.length ? entries : undefined, total };
  }

  /** Resource counts per type (current versions only). */
  counts() {
    const out = {};
    for (const [type, m] of this.resources) if (m.size) out[type] = m.size;
    return out;
  }

  /** Shallow two-level copy of the store, for transaction rollback. */
  snapshot() {
    const copy = (outer, inner) => new Map([...outer].map(([k, v]) => [k, new Map([...v].map(([id, x]) => [id, inner(x)]))]));
    return { resources: copy(this.resources, (x) => x), history: copy(this.history, (arr) => arr.slice()) };
  }

  restore(snap) {
    this.resources.clear();
    this.history.clear();
    for (const [k, v] of snap.resources) this.resources.set(k, v);
    for (const [k, v] of snap.history) this.history.set(k, v);
  }
}

