// Plain FHIR load generator for bench/fhir-drain.sh: replays a list of requests
// ({method, url, body?}) against a FHIR base URL with C keep-alive workers, and prints
// {"requests", "seconds", "rps", "byStatus"} as JSON. Node's http only, no dependencies.
//   node fhir-loadgen.mjs <base-url> <requests.json> [concurrency]
import http from 'node:http';
import { readFileSync } from 'node:fs';

const [base, file, conc = '4'] = process.argv.slice(2);
const reqs = JSON.parse(readFileSync(file, 'utf8'));
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(conc) });
const byStatus = {};
let next = 0;

function send(r) {
  return new Promise((resolve, reject) => {
    const body = r.body ? JSON.stringify(r.body) : undefined;
    const u = new URL(base.replace(/\/$/, '') + '/' + r.url.replace(/^\//, ''));
    const req = http.request(u, {
      method: r.method,
      agent,
      headers: {
        accept: 'application/fhir+json',
        ...(body ? { 'content-type': 'application/fhir+json', 'content-length': Buffer.byteLength(body) } : {}),
      },
    }, (res) => {
      res.resume();
      res.on('end', () => { byStatus[res.statusCode] = (byStatus[res.statusCode] ?? 0) + 1; resolve(); });
    });
    req.on('error', reject);
    req.setTimeout(60_000, () => req.destroy(new Error('timeout')));
    if (body) req.write(body);
    req.end();
  });
}

async function worker() {
  while (next < reqs.length) {
    const r = reqs[next++];
    await send(r);
  }
}

const hardStop = setTimeout(() => { console.error('loadgen: 2 min hard stop'); process.exit(2); }, 120_000);
const t0 = process.hrtime.bigint();
await Promise.all(Array.from({ length: Number(conc) }, worker));
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
clearTimeout(hardStop);
agent.destroy();
console.log(JSON.stringify({ requests: reqs.length, seconds, rps: reqs.length / seconds, byStatus }));
