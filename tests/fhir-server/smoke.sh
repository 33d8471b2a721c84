#!/usr/bin/env bash
# Smoke test of the FHIR test server over real HTTP with curl: versioned PUT and
# read-back, If-Match 412, identifier search, history, validation (400),
# conditional create, transaction rollback, fault injection, OAuth and reset.
#
# Starts its own server (start.sh, port 0) and stops it by PID, unless
# FHIR_SMOKE_URL=http://127.0.0.1:<port> points at one already running (which
# it then resets). `smoke.sh --validate` also runs validate.sh over everything
# the smoke test stored. Exits non-zero when any check fails; the last line is
# "N passed, N failed".
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
with_validator=0
[ "${1:-}" = "--validate" ] && with_validator=1

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }

if [ -n "${FHIR_SMOKE_URL:-}" ]; then
  ROOT="${FHIR_SMOKE_URL%/}"
else
  "$here/start.sh" --port 0 >"$tmp/server.out" 2>"$tmp/server.err" &
  server_pid=$!
  for _ in $(seq 1 600); do
    if grep -q '^LISTENING ' "$tmp/server.out" 2>/dev/null; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "server exited early:" >&2
      cat "$tmp/server.err" >&2
      exit 1
    fi
    sleep 0.1
  done
  addr="$(sed -n 's/^LISTENING //p' "$tmp/server.out" | head -1)"
  if [ -z "$addr" ]; then
    echo "server did not print LISTENING within 60 s" >&2
    cat "$tmp/server.err" >&2
    exit 1
  fi
  ROOT="http://$addr"
fi
BASE="$ROOT"   # FHIR base (the server runs without --base-path here)
echo "smoke test against $BASE"

# call METHOD PATH [curl args...]: sets STATUS; body in $tmp/body, headers in $tmp/headers.
call() {
  local method=$1 path=$2
  shift 2
  STATUS="$(curl -sS -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' -X "$method" "$BASE$path" "$@")" || STATUS="curl-error"
}
header() { grep -i "^$1:" "$tmp/headers" | head -1 | cut -d' ' -f2- | tr -d '\r'; }
# py EXPR: evaluates a Python expression over d = the JSON body.
py() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$tmp/body" 2>/dev/null; }
check() { # check NAME CONDITION-COMMAND...
  local name=$1
  shift
  if "$@"; then ok "$name"; else bad "$name (HTTP $STATUS: $(head -c 300 "$tmp/body" 2>/dev/null))"; fi
}
is() { [ "$1" = "$2" ]; }
FJ=(-H 'Content-Type: application/fhir+json')
JS=(-H 'Content-Type: application/json')

call POST '/$test/reset'
check "reset" is "$STATUS" 200

# 1. CapabilityStatement
call GET /metadata
check "GET /metadata is a 4.0.1 CapabilityStatement" is "$STATUS $(py "d['resourceType'], d['fhirVersion']")" "200 CapabilityStatement 4.0.1"

# 2. PUT (update-as-create) an Observation with SampledData
python3 - "$here/fixtures/valid/observation-hr-sampleddata.json" "$tmp/obs.json" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
o["id"] = "smoke-hr-1"
o["identifier"] = [{"system": "urn:iomt-edge:smoke", "value": "smoke-hr-1"}]
json.dump(o, open(sys.argv[2], "w"))
EOF
call PUT /Observation/smoke-hr-1 "${FJ[@]}" --data-binary @"$tmp/obs.json"
check "PUT new Observation -> 201" is "$STATUS" 201
check "PUT -> ETag W/\"1\"" is "$(header ETag)" 'W/"1"'
check "PUT -> Location .../Observation/smoke-hr-1/_history/1" is "$(header Location)" "$BASE/Observation/smoke-hr-1/_history/1"

# 3. read it back
call GET /Observation/smoke-hr-1
check "GET -> 200 with ETag W/\"1\"" is "$STATUS $(header ETag)" '200 W/"1"'
same="$(python3 - "$tmp/obs.json" "$tmp/body" <<'EOF'
import json, sys
sent, got = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
got.pop("meta", None)
print(sent == got)
EOF
)"
check "read-back equals what was sent (besides meta)" is "$same" True

# 4. versioned update
call PUT /Observation/smoke-hr-1 "${FJ[@]}" -H 'If-Match: W/"1"' --data-binary @"$tmp/obs.json"
check "PUT If-Match W/\"1\" -> 200, version 2" is "$STATUS $(header ETag) $(py "d['meta']['versionId']")" '200 W/"2" 2'

# 5. stale If-Match
call PUT /Observation/smoke-hr-1 "${FJ[@]}" -H 'If-Match: W/"1"' --data-binary @"$tmp/obs.json"
check "PUT stale If-Match -> 412 OperationOutcome" is "$STATUS $(py "d['resourceType']")" "412 OperationOutcome"

# 6. identifier search
call GET "/Observation?identifier=urn:iomt-edge:smoke%7Csmoke-hr-1"
check "search identifier=system|value -> 1 hit" is "$STATUS $(py "d['type'], d['total'], d['entry'][0]['resource']['id']")" "200 searchset 1 smoke-hr-1"
call GET "/Observation?identifier=smoke-hr-1"
check "search identifier=value -> 1 hit" is "$(py "d['total']")" 1
call GET "/Observation?identifier=urn:other%7Csmoke-hr-1"
check "search with another system -> 0 hits" is "$(py "d['total']")" 0
call GET "/Observation?identifier=urn:iomt-edge:smoke%7CSMOKE-HR-1"
check "identifier search is case-sensitive -> 0 hits" is "$(py "d['total']")" 0

# 7. history and vread
call GET /Observation/smoke-hr-1/_history
check "_history -> 2 versions, newest first" is "$STATUS $(py "d['type'], d['total'], [e['resource']['meta']['versionId'] for e in d['entry']]")" "200 history 2 ['2', '1']"
call GET /Observation/smoke-hr-1/_history/1
check "vread _history/1 -> 200" is "$STATUS $(py "d['meta']['versionId']")" "200 1"

# 8. validation: invalid resources -> 400 OperationOutcome
python3 - "$tmp/obs.json" "$tmp/bad1.json" "$tmp/bad2.json" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
del o["id"]
o["valueSampledData"]["period"] = "15s"
json.dump(o, open(sys.argv[2], "w"))
o["valueSampledData"]["period"] = 1000
del o["status"]
json.dump(o, open(sys.argv[3], "w"))
EOF
call POST /Observation "${FJ[@]}" --data-binary @"$tmp/bad1.json"
check "period \"15s\" -> 400 OperationOutcome naming period" is "$STATUS $(py "d['resourceType'], any('period' in x for i in d['issue'] for x in i.get('expression', []))")" "400 OperationOutcome True"
call POST /Observation "${FJ[@]}" --data-binary @"$tmp/bad2.json"
check "missing status -> 400" is "$STATUS $(py "d['resourceType']")" "400 OperationOutcome"
call POST /Observation "${FJ[@]}" --data-binary '{"resourceType":'
check "malformed JSON -> 400" is "$STATUS" 400

# 9. not found
call GET /Observation/does-not-exist
check "unknown id -> 404 OperationOutcome" is "$STATUS $(py "d['resourceType']")" "404 OperationOutcome"

# 10. conditional create
pat='{"resourceType":"Patient","identifier":[{"system":"urn:iomt-edge:mrn","value":"SMOKE-1"}]}'
call POST /Patient "${FJ[@]}" -H 'If-None-Exist: identifier=urn:iomt-edge:mrn|SMOKE-1' --data-binary "$pat"
first="$STATUS $(py "d['id']")"
call POST /Patient "${FJ[@]}" -H 'If-None-Exist: identifier=urn:iomt-edge:mrn|SMOKE-1' --data-binary "$pat"
second="$STATUS $(py "d['id']")"
check "conditional create: 201 then 200 with the same id" is "${first%% *} ${second%% *} $([ "${first#* }" = "${second#* }" ] && echo same)" "201 200 same"

# 11. transaction with an invalid entry is rolled back
cat >"$tmp/tx.json" <<'EOF'
{"resourceType":"Bundle","type":"transaction","entry":[
 {"fullUrl":"urn:uuid:5f0c1c1e-1111-4111-8111-111111111111",
  "resource":{"resourceType":"Patient","identifier":[{"system":"urn:iomt-edge:mrn","value":"SMOKE-TX"}]},
  "request":{"method":"POST","url":"Patient"}},
 {"resource":{"resourceType":"Observation","status":"done","code":{"text":"x"},
   "subject":{"reference":"urn:uuid:5f0c1c1e-1111-4111-8111-111111111111"}},
  "request":{"method":"POST","url":"Observation"}}]}
EOF
call POST / "${FJ[@]}" --data-binary @"$tmp/tx.json"
check "transaction with an invalid entry -> 400" is "$STATUS" 400
call GET "/Patient?identifier=urn:iomt-edge:mrn%7CSMOKE-TX"
check "... and nothing of it was written" is "$(py "d['total']")" 0

# 12. fault injection
call POST '/$test/fail' "${JS[@]}" --data-binary '{"status":503,"count":1,"retryAfter":2}'
check "add fault rule" is "$STATUS" 201
call GET /Patient
check "injected 503 with Retry-After: 2" is "$STATUS $(header Retry-After)" "503 2"
call GET /Patient
check "next request is normal again" is "$STATUS" 200

# 13. stats
call GET '/$test/stats'
check "stats count the 412 PUT" is "$(py "d['byMethodTypeStatus'].get('PUT Observation 412')")" 1

# 14. OAuth
call POST '/$test/oauth/config' "${JS[@]}" --data-binary '{"requireAuth":true,"tokenLifetime":60}'
call GET /Patient
check "auth on: no token -> 401 with WWW-Authenticate Bearer" is "$STATUS $(header WWW-Authenticate | cut -d' ' -f1)" "401 Bearer"
call POST '/$test/oauth/token' -d grant_type=client_credentials -d client_id=iomt-agent -d client_secret=wrong
check "wrong secret -> 401 invalid_client" is "$STATUS $(py "d['error']")" "401 invalid_client"
call POST '/$test/oauth/token' -u iomt-agent:iomt-agent-secret -d grant_type=client_credentials
check "client_credentials -> Bearer token" is "$STATUS $(py "d['token_type'], d['expires_in']")" "200 Bearer 60"
token="$(py "d['access_token']")"
call GET /Patient -H "Authorization: Bearer $token"
check "request with the token -> 200" is "$STATUS" 200
call POST '/$test/oauth/expire'
call GET /Patient -H "Authorization: Bearer $token"
check "expired token -> 401 invalid_token" is "$STATUS $(header WWW-Authenticate | grep -c invalid_token)" "401 1"
call POST '/$test/oauth/config' "${JS[@]}" --data-binary '{"requireAuth":false}'

if [ "$with_validator" = 1 ]; then
  if "$here/validate.sh" -q --server "$ROOT" >"$tmp/validate.out" 2>&1; then
    ok "validate.sh over the stored resources"
  else
    bad "validate.sh over the stored resources: $(cat "$tmp/validate.out")"
  fi
fi

# 15. reset
call POST '/$test/reset'
call GET "/Observation?_summary=count"
check "reset empties the store" is "$(py "d['total']")" 0

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
