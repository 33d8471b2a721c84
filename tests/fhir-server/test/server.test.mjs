// Protocol tests of the FHIR test server over real HTTP (node:test).
// Starts one server through start.sh on port 0 (so it also checks the LISTENING
// line), resets it before each test, and stops it by PID at the end.
// Run: node --test tests/fhir-server/test/   (after start.sh --install-only)

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const fixture = (name) => JSON.parse(readFileSync(join(root, 'fixtures', 'valid', name), 'utf8'));
const FJ = { 'content-type': 'application/fhir+json' };

let server;
let base;

async function startServer(args) {
  const child = spawn(join(root, 'start.sh'), ['--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const line = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no LISTENING line within 60 s: ${err}`)), 60000);
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(out.slice(0, nl));
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${err}`)));
  });
  const m = /^LISTENING (127\.0\.0\.1:\d+)$/.exec(line);
  assert.ok(m, `first stdout line must be LISTENING host:port, got ${JSON.stringify(line)}`);
  return { child, base: `http://${m[1]}` };
}

async function stopServer(s) {
  if (!s || s.child.exitCode !== null) return;
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  await exited;
}

async function call(method, path, { body, headers = {}, raw } = {}) {
  const res = await fetch(base + path, {
    method,
    headers: body !== undefined && raw === undefined ? { ...FJ, ...headers } : headers,
    body: raw ?? (body !== undefined ? JSON.stringify(body) : undefined),
  });
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}

const control = (path, body) => call('POST', `/$test/${path}`, { raw: body === undefined ? undefined : JSON.stringify(body), headers: { 'content-type': 'application/json' } });

function hrObservation(id, identifierValue, deviceRef = 'Device/fixture-device') {
  const o = fixture('observation-hr-sampleddata.json');
  if (id) o.id = id;
  else delete o.id;
  o.identifier = [{ system: 'urn:test:obs', value: identifierValue ?? id ?? 'x' }];
  o.device = { reference: deviceRef };
  return o;
}

before(async () => {
  server = await startServer([]);
  base = server.base;
});
after(async () => stopServer(server));
beforeEach(async () => {
  const r = await control('reset', { tokens: true });
  assert.equal(r.status, 200);
  await control('oauth/config', { requireAuth: false, tokenLifetime: 3600, clientSecret: 'iomt-agent-secret' });
});

describe('versioning', () => {
  test('integer versions, ETag, Location, 201 on update-as-create then 200', async () => {
    const o = hrObservation('v1');
    let r = await call('PUT', '/Observation/v1', { body: o });
    assert.equal(r.status, 201);
    assert.equal(r.headers.get('etag'), 'W/"1"');
    assert.equal(r.headers.get('location'), `${base}/Observation/v1/_history/1`);
    assert.ok(r.headers.get('last-modified'));
    r = await call('PUT', '/Observation/v1', { body: o, headers: { 'if-match': 'W/"1"' } });
    assert.equal(r.status, 200);
    assert.equal(r.json.meta.versionId, '2');
    assert.equal(r.headers.get('location'), null);
    r = await call('PUT', '/Observation/v1', { body: o, headers: { 'if-match': '2' } }); // bare version id accepted
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('etag'), 'W/"3"');
  });

  test('stale If-Match -> 412, and exactly one of 8 concurrent writers wins', async () => {
    const o = hrObservation('c1');
    await call('PUT', '/Observation/c1', { body: o });
    const stale = await call('PUT', '/Observation/c1', { body: o, headers: { 'if-match': 'W/"7"' } });
    assert.equal(stale.status, 412);
    assert.equal(stale.json.resourceType, 'OperationOutcome');
    const results = await Promise.all(
      Array.from({ length: 8 }, () => call('PUT', '/Observation/c1', { body: o, headers: { 'if-match': 'W/"1"' } }))
    );
    const statuses = results.map((r) => r.status).sort();
    assert.deepEqual(statuses, [200, 412, 412, 412, 412, 412, 412, 412]);
  });

  test('If-Match on a missing resource -> 412', async () => {
    const r = await call('PUT', '/Observation/nope', { body: hrObservation('nope'), headers: { 'if-match': 'W/"1"' } });
    assert.equal(r.status, 412);
  });

  test('history is newest first and stable across reads; vread; delete -> 410', async () => {
    const o = hrObservation('h1');
    await call('PUT', '/Observation/h1', { body: o });
    await call('PUT', '/Observation/h1', { body: o });
    await call('PUT', '/Observation/h1', { body: o });
    for (let i = 0; i < 2; i++) {
      // Medplum's own readHistory reversed its array in place on every read.
      const h = await call('GET', '/Observation/h1/_history');
      assert.equal(h.json.type, 'history');
      assert.deepEqual(h.json.entry.map((e) => e.resource.meta.versionId), ['3', '2', '1']);
      assert.deepEqual(h.json.entry.map((e) => e.response.status), ['200', '200', '201']);
    }
    assert.equal((await call('GET', '/Observation/h1/_history/2')).json.meta.versionId, '2');
    assert.equal((await call('GET', '/Observation/h1/_history/9')).status, 404);
    assert.equal((await call('DELETE', '/Observation/h1')).status, 200);
    const gone = await call('GET', '/Observation/h1');
    assert.equal(gone.status, 410);
    assert.equal(gone.json.resourceType, 'OperationOutcome');
    const h = await call('GET', '/Observation/h1/_history');
    assert.equal(h.json.entry[0].request.method, 'DELETE');
  });
});

describe('search', () => {
  test('identifier search: system|value, value only, exact case; on Observation, Device, Patient, Encounter', async () => {
    await call('POST', '/Observation', { body: hrObservation(undefined, 'Obs-1') });
    await call('POST', '/Observation', { body: hrObservation(undefined, 'obs-1') });
    const count = async (q) => (await call('GET', q)).json.total;
    assert.equal(await count('/Observation?identifier=urn:test:obs%7CObs-1'), 1);
    assert.equal(await count('/Observation?identifier=Obs-1'), 1);
    assert.equal(await count('/Observation?identifier=urn:other%7CObs-1'), 0);
    assert.equal(await count('/Observation?identifier=urn:test:obs%7CObs-1,urn:test:obs%7Cobs-1'), 2);
    const d = fixture('device.json');
    delete d.id;
    delete d.patient;
    await call('POST', '/Device', { body: d });
    const p = fixture('patient.json');
    delete p.id;
    await call('POST', '/Patient', { body: p });
    const e = { resourceType: 'Encounter', status: 'in-progress', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'IMP' }, identifier: [{ system: 'urn:enc', value: 'E-1' }] };
    await call('POST', '/Encounter', { body: e });
    assert.equal(await count('/Device?identifier=urn:iomt-edge:device%7CMON-42-SERIAL-7'), 1);
    assert.equal(await count('/Patient?identifier=urn:oid:1.2.36.146.595.217.0.1%7CMRN-0001'), 1);
    assert.equal(await count('/Encounter?identifier=urn:enc%7CE-1'), 1);
    assert.equal(await count('/Encounter?identifier=urn:enc%7Ce-1'), 0);
  });

  test('searchset has fullUrl, self and next links', async () => {
    for (let i = 0; i < 3; i++) await call('POST', '/Observation', { body: hrObservation(undefined, `p${i}`) });
    const r = await call('GET', '/Observation?_count=2');
    assert.equal(r.json.total, 3);
    assert.equal(r.json.entry.length, 2);
    assert.ok(r.json.entry.every((e) => e.fullUrl.startsWith(`${base}/Observation/`)));
    const next = r.json.link.find((l) => l.relation === 'next');
    assert.ok(next, 'next link');
    const r2 = await fetch(next.url).then((x) => x.json());
    assert.equal(r2.entry.length, 1);
  });

  test('conditional create: 201, 200, 412 on two matches; type prefix and unknown params rejected', async () => {
    const pat = (v) => ({ resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: v }] });
    const ine = { 'if-none-exist': 'identifier=urn:mrn|A' };
    assert.equal((await call('POST', '/Patient', { body: pat('A'), headers: ine })).status, 201);
    assert.equal((await call('POST', '/Patient', { body: pat('A'), headers: ine })).status, 200);
    await call('POST', '/Patient', { body: pat('A') });
    assert.equal((await call('POST', '/Patient', { body: pat('A'), headers: ine })).status, 412);
    assert.equal((await call('POST', '/Patient', { body: pat('B'), headers: { 'if-none-exist': 'Patient?identifier=urn:mrn|B' } })).status, 400);
    assert.equal((await call('POST', '/Patient', { body: pat('B'), headers: { 'if-none-exist': 'identifer=urn:mrn|B' } })).status, 400);
  });
});

describe('validation and errors', () => {
  test('invalid Observation -> 400 OperationOutcome with expressions; nothing stored', async () => {
    const o = hrObservation(undefined, 'bad');
    o.valueSampledData.period = '15s';
    o.unknownField = 1;
    const r = await call('POST', '/Observation', { body: o });
    assert.equal(r.status, 400);
    assert.equal(r.json.resourceType, 'OperationOutcome');
    const exprs = r.json.issue.flatMap((i) => i.expression ?? []);
    assert.ok(exprs.some((x) => x.includes('period')), JSON.stringify(exprs));
    assert.ok(exprs.includes('Observation.unknownField'), JSON.stringify(exprs));
    assert.equal((await call('GET', '/Observation?identifier=bad')).json.total, 0);
  });

  test('status outside the required value set -> 400', async () => {
    const o = hrObservation('s1');
    o.status = 'done';
    const r = await call('PUT', '/Observation/s1', { body: o });
    assert.equal(r.status, 400);
    assert.deepEqual(r.json.issue[0].expression, ['Observation.status']);
  });

  test('protocol errors: bad JSON 400, wrong media type 415, id mismatch 400, unknown 404', async () => {
    assert.equal((await call('POST', '/Observation', { raw: '{"x":', headers: FJ })).status, 400);
    assert.equal((await call('POST', '/Observation', { raw: '{}', headers: { 'content-type': 'text/plain' } })).status, 415);
    assert.equal((await call('PUT', '/Observation/a', { body: hrObservation('b') })).status, 400);
    const nf = await call('GET', '/Observation/none');
    assert.equal(nf.status, 404);
    assert.equal(nf.json.issue[0].code, 'not-found');
  });

  test('POST ignores a client id (R4)', async () => {
    const r = await call('POST', '/Observation', { body: hrObservation('client-id') });
    assert.equal(r.status, 201);
    assert.notEqual(r.json.id, 'client-id');
  });

  test('profile validation (opt-in) answers 422', async () => {
    await call('POST', '/$test/config', { raw: JSON.stringify({ validateProfiles: true }), headers: { 'content-type': 'application/json' } });
    try {
      const o = fixture('observation-hr-quantity.json'); // claims heartrate
      delete o.id;
      o.code.coding[0].code = '9279-1'; // violates the fixed code of heartrate
      const r = await call('POST', '/Observation', { body: o });
      assert.equal(r.status, 422, r.text);
      assert.equal(r.json.resourceType, 'OperationOutcome');
    } finally {
      await call('POST', '/$test/config', { raw: JSON.stringify({ validateProfiles: false }), headers: { 'content-type': 'application/json' } });
    }
  });
});

describe('bundles', () => {
  const txBundle = (type, obsStatus) => ({
    resourceType: 'Bundle',
    type,
    entry: [
      {
        fullUrl: 'urn:uuid:0b0b0b0b-1111-4111-8111-111111111111',
        resource: { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: 'TX' }] },
        request: { method: 'POST', url: 'Patient', ifNoneExist: 'identifier=urn:mrn|TX' },
      },
      {
        resource: { ...hrObservation(undefined, 'tx-obs'), status: obsStatus, subject: { reference: 'urn:uuid:0b0b0b0b-1111-4111-8111-111111111111' } },
        request: { method: 'PUT', url: 'Observation?identifier=urn:test:obs|tx-obs' },
      },
    ],
  });

  test('transaction resolves urn:uuid refs and reports etags; a failing one is rolled back', async () => {
    const ok = await call('POST', '/', { body: txBundle('transaction', 'final') });
    assert.equal(ok.status, 200);
    assert.equal(ok.json.type, 'transaction-response');
    assert.deepEqual(ok.json.entry.map((e) => e.response.etag), ['W/"1"', 'W/"1"']);
    const obs = (await call('GET', '/Observation?identifier=tx-obs')).json.entry[0].resource;
    assert.match(obs.subject.reference, /^Patient\/[^/]+$/);
    const before = (await call('GET', '/$test/stats')).json.store;
    const bad = txBundle('transaction', 'done');
    bad.entry[0].resource.identifier[0].value = 'TX2';
    bad.entry[0].request.ifNoneExist = 'identifier=urn:mrn|TX2';
    const r = await call('POST', '/', { body: bad });
    assert.equal(r.status, 400);
    assert.deepEqual((await call('GET', '/$test/stats')).json.store, before);
  });

  test('batch answers per entry', async () => {
    const b = txBundle('batch', 'done');
    delete b.entry[0].fullUrl;
    b.entry[1].resource.subject = { reference: 'Patient/x' };
    const r = await call('POST', '/', { body: b });
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.entry.map((e) => e.response.status), ['201', '400']);
  });
});

describe('fault injection', () => {
  test('next N requests fail with 503 and Retry-After, then recover; stats count them', async () => {
    const rule = await control('fail', { status: 503, count: 2, retryAfter: 7 });
    assert.equal(rule.status, 201);
    for (let i = 0; i < 2; i++) {
      const r = await call('GET', '/Patient');
      assert.equal(r.status, 503);
      assert.equal(r.headers.get('retry-after'), '7');
      assert.equal(r.json.resourceType, 'OperationOutcome');
    }
    assert.equal((await call('GET', '/Patient')).status, 200);
    const s = (await call('GET', '/$test/stats')).json;
    assert.equal(s.byMethodTypeStatus['GET Patient 503'], 2);
    assert.equal(s.byMethodTypeStatus['GET Patient 200'], 1);
    assert.equal(s.injected, 2);
  });

  test("400 for one device's Observations (by identifier, resolved through Device/<id>), also per batch entry", async () => {
    const d = fixture('device.json');
    delete d.id;
    delete d.patient;
    const dev = (await call('POST', '/Device', { body: d })).json;
    await control('fail', { status: 400, resourceType: 'Observation', device: 'urn:iomt-edge:device|MON-42-SERIAL-7' });
    assert.equal((await call('POST', '/Observation', { body: hrObservation(undefined, 'a', `Device/${dev.id}`) })).status, 400);
    assert.equal((await call('POST', '/Observation', { body: hrObservation(undefined, 'b', 'Device/other') })).status, 201);
    const batch = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [hrObservation(undefined, 'c', 'Device/other'), hrObservation(undefined, 'd', `Device/${dev.id}`)].map((resource) => ({
        resource,
        request: { method: 'POST', url: 'Observation' },
      })),
    };
    const r = await call('POST', '/', { body: batch });
    assert.deepEqual(r.json.entry.map((e) => e.response.status), ['201', '400']);
    assert.equal((await call('GET', '/Observation?identifier=d')).json.total, 0);
    assert.equal((await call('GET', '/Observation?identifier=c')).json.total, 1);
  });

  test('when=after commits the write but answers the error (lost response)', async () => {
    await control('fail', { status: 504, count: 1, when: 'after', method: 'PUT' });
    const r = await call('PUT', '/Observation/lost', { body: hrObservation('lost') });
    assert.equal(r.status, 504);
    assert.equal((await call('GET', '/Observation/lost')).status, 200);
  });

  test('429 with skip, close the connection, remove rules', async () => {
    const { json } = await control('fail', { status: 429, skip: 1, count: 1, retryAfter: 1 });
    assert.equal((await call('GET', '/Patient')).status, 200);
    assert.equal((await call('GET', '/Patient')).status, 429);
    assert.equal((await call('GET', '/Patient')).status, 200);
    assert.equal((await call('DELETE', `/$test/fail/${json.rule.id}`)).status, 200);
    await control('fail', { action: 'close', count: 1 });
    await assert.rejects(fetch(`${base}/Patient`));
    assert.equal((await call('GET', '/Patient')).status, 200);
    assert.equal((await control('fail', { status: 'x' })).status, 400);
  });

  test('request log records conditional headers for assertions', async () => {
    await call('PUT', '/Observation/l1', { body: hrObservation('l1') });
    await call('PUT', '/Observation/l1', { body: hrObservation('l1'), headers: { 'if-match': 'W/"1"' } });
    const log = (await call('GET', '/$test/log')).json.entries.filter((e) => e.method === 'PUT');
    assert.deepEqual(log.map((e) => [e.status, e.ifMatch ?? null]), [[201, null], [200, 'W/"1"']]);
  });
});

describe('oauth', () => {
  const form = (o) => ({ raw: new URLSearchParams(o).toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } });
  const basic = (id, secret) => 'Basic ' + Buffer.from(`${id}:${secret}`).toString('base64');

  test('bearer enforcement, token via Basic and via form, wrong secret, expiry, discovery', async () => {
    await control('oauth/config', { requireAuth: true, tokenLifetime: 1 });
    const noTok = await call('GET', '/Observation');
    assert.equal(noTok.status, 401);
    assert.match(noTok.headers.get('www-authenticate'), /^Bearer/);
    assert.equal((await call('GET', '/metadata')).status, 200, 'metadata stays public');
    const meta = (await call('GET', '/metadata')).json;
    const tokenUrl = meta.rest[0].security.extension[0].extension[0].valueUri;
    assert.equal(tokenUrl, `${base}/$test/oauth/token`);

    const wrong = await call('POST', '/$test/oauth/token', { ...form({ grant_type: 'client_credentials' }), headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic('iomt-agent', 'nope') } });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.json.error, 'invalid_client');
    const badGrant = await call('POST', '/$test/oauth/token', form({ grant_type: 'password', client_id: 'iomt-agent', client_secret: 'iomt-agent-secret' }));
    assert.equal(badGrant.json.error, 'unsupported_grant_type');

    const viaForm = await call('POST', '/$test/oauth/token', form({ grant_type: 'client_credentials', client_id: 'iomt-agent', client_secret: 'iomt-agent-secret' }));
    assert.equal(viaForm.status, 200);
    assert.equal(viaForm.json.token_type, 'Bearer');
    assert.equal(viaForm.json.expires_in, 1);
    assert.equal(viaForm.headers.get('cache-control'), 'no-store');
    const auth = { authorization: `Bearer ${viaForm.json.access_token}` };
    assert.equal((await call('GET', '/Observation', { headers: auth })).status, 200);
    await new Promise((r) => setTimeout(r, 1100));
    const expired = await call('GET', '/Observation', { headers: auth });
    assert.equal(expired.status, 401);
    assert.match(expired.headers.get('www-authenticate'), /invalid_token/);

    const viaBasic = await call('POST', '/$test/oauth/token', { ...form({ grant_type: 'client_credentials' }), headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic('iomt-agent', 'iomt-agent-secret') } });
    assert.equal(viaBasic.status, 200);
    await control('oauth/expire');
    assert.equal((await call('GET', '/Observation', { headers: { authorization: `Bearer ${viaBasic.json.access_token}` } })).status, 401);
    const s = (await call('GET', '/$test/stats')).json;
    assert.equal(s.auth.issued, 2);
    assert.equal(s.auth.expired, 2);
  });

  test('token endpoint faults (endpoint=token) do not touch FHIR requests', async () => {
    await control('fail', { endpoint: 'token', status: 503, count: 1, retryAfter: 3 });
    assert.equal((await call('GET', '/Patient')).status, 200);
    const r = await call('POST', '/$test/oauth/token', form({ grant_type: 'client_credentials', client_id: 'iomt-agent', client_secret: 'iomt-agent-secret' }));
    assert.equal(r.status, 503);
    assert.equal(r.headers.get('retry-after'), '3');
  });
});

describe('startup options', () => {
  test('--require-auth, --base-path and custom client credentials from the command line', async () => {
    const s2 = await startServer(['--require-auth', '--base-path', '/fhir', '--client-id', 'c1', '--client-secret', 's1', '--token-lifetime', '5']);
    try {
      assert.equal((await fetch(`${s2.base}/fhir/Patient`)).status, 401);
      assert.equal((await fetch(`${s2.base}/Patient`)).status, 404);
      const tok = await fetch(`${s2.base}/$test/oauth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'grant_type=client_credentials&client_id=c1&client_secret=s1',
      }).then((r) => r.json());
      assert.equal(tok.expires_in, 5);
      const r = await fetch(`${s2.base}/fhir/Patient`, { headers: { authorization: `Bearer ${tok.access_token}` } });
      assert.equal(r.status, 200);
      const created = await fetch(`${s2.base}/fhir/Patient`, {
        method: 'POST',
        headers: { ...FJ, authorization: `Bearer ${tok.access_token}` },
        body: JSON.stringify({ resourceType: 'Patient' }),
      });
      assert.match(created.headers.get('location'), new RegExp(`^${s2.base}/fhir/Patient/[^/]+/_history/1$`));
    } finally {
      await stopServer(s2);
    }
  });
});
