#!/usr/bin/env bash
# End-to-end smoke test of the compose stack, through scripts/up.sh (so it takes the offline
# path by itself where no registry is reachable).
#
#   scripts/smoke-test.sh
#
# It owns its stack: it starts one with `scripts/up.sh -d` in a compose project of its own
# (COMPOSE_PROJECT_NAME, default resilient-analytics-smoke), and removes it with its volumes
# at the end, also on failure, then checks that no container, volume or network of that
# project remains. A stack started by hand is not touched, but it holds port 8000: stop it
# first (scripts/up.sh down).
#
# Steps: wait until GET /health says healthy (and Docker's health check agrees); POST a metric
# (201); the summary counts it and the list holds it; `restart app`, healthy again, the point is
# still there; recreate every container (`up -d --force-recreate`), the point is still there
# (it lives on the volumes); with AUTH_MODE=required a read without a key gets 401, a key made
# with `resilient-analytics keys create` in the app container reads the point; `down -v`.
# Needs curl or python3 (curl is installed if neither is).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-resilient-analytics-smoke}
readonly PROJECT=$COMPOSE_PROJECT_NAME
readonly PORT=8000
readonly BASE_URL=http://127.0.0.1:$PORT
readonly HEALTH_TIMEOUT=120 # seconds, per wait
readonly UP=scripts/up.sh

started_at=$SECONDS
log() { printf '\n[smoke %3ds] %s\n' "$((SECONDS - started_at))" "$*" >&2; }
fail() { printf '\nSMOKE TEST FAILED: %s\n' "$*" >&2; exit 1; }

# --- HTTP: curl, else python3 ----------------------------------------------------------------

work=$(mktemp -d)
body_file=$work/body
trap 'rm -rf "$work"' EXIT # until the stack exists; then teardown

if ! command -v curl >/dev/null && ! command -v python3 >/dev/null; then
    [[ $(id -u) -eq 0 ]] || fail "neither curl nor python3 is installed"
    log "installing curl"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl >/dev/null; }
fi

# http METHOD PATH [JSON]: prints the status code (000: no answer); the body goes to $body_file.
# With $api_key set, the request carries it as a bearer token.
api_key=
http() {
    local method=$1 path=$2 json=${3:-}
    : >"$body_file"
    if command -v curl >/dev/null; then
        local args=(-sS -o "$body_file" -w '%{http_code}' --max-time 5 -X "$method")
        [[ -z $json ]] || args+=(-H 'content-type: application/json' --data "$json")
        [[ -z $api_key ]] || args+=(-H "authorization: Bearer $api_key")
        curl "${args[@]}" "$BASE_URL$path" 2>/dev/null || true
    else
        python3 - "$method" "$BASE_URL$path" "$json" "$body_file" "$api_key" <<'PY'
import sys, urllib.request, urllib.error
method, url, data, out, key = sys.argv[1:6]
headers = {"content-type": "application/json"} if data else {}
if key:
    headers["authorization"] = f"Bearer {key}"
req = urllib.request.Request(url, method=method, data=data.encode() if data else None,
                             headers=headers)
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except Exception:
    status, body = 0, b""
open(out, "wb").write(body)
print(f"{status:03d}")
PY
    fi
}

body() { cat "$body_file"; }
# json_number FIELD: the first top-level-looking "FIELD":<integer> of the body (serde_json
# writes compact JSON, so no jq is needed).
json_number() { grep -o "\"$1\":[0-9]*" "$body_file" | head -n 1 | cut -d: -f2; }

# --- the project's resources -----------------------------------------------------------------

project_filter=(--filter "label=com.docker.compose.project=$PROJECT")
leftovers() {
    {
        docker ps -aq "${project_filter[@]}" | sed 's/^/container /'
        docker volume ls -q "${project_filter[@]}" | sed 's/^/volume /'
        docker volume ls -q --filter "name=^${PROJECT}_" | sed 's/^/volume /'
        docker network ls -q "${project_filter[@]}" | sed 's/^/network /'
    } | sort -u
}

app_container() { docker ps -q "${project_filter[@]}" --filter label=com.docker.compose.service=app | head -n 1; }

teardown() {
    local status=$? left
    trap - EXIT
    set +e
    if [[ $status -ne 0 ]]; then
        log "failure: state and recent logs of the stack"
        "$UP" ps
        "$UP" logs --tail=60
    fi
    log "removing the stack and its volumes"
    "$UP" down -v --remove-orphans
    left=$(leftovers)
    if [[ -n $left ]]; then
        printf '%s\n' "$left" >&2
        printf '\nSMOKE TEST FAILED: resources of project %s remain after down -v\n' "$PROJECT" >&2
        status=1
    else
        log "no container, volume or network of project $PROJECT remains"
    fi
    rm -rf "$work"
    if [[ $status -eq 0 ]]; then log "SMOKE TEST PASSED"; fi
    exit "$status"
}

# --- checks ----------------------------------------------------------------------------------

wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT)) attempt status=""
    for ((attempt = 1; attempt <= HEALTH_TIMEOUT; attempt++)); do
        status=$(http GET /health)
        if [[ $status == 200 ]] && grep -q '"status":"healthy"' "$body_file"; then
            log "healthy after $attempt attempt(s): $(body)"
            return 0
        fi
        ((SECONDS < deadline)) || break
        sleep 2
    done
    fail "GET /health not healthy within ${HEALTH_TIMEOUT}s; last answer: $status $(body)"
}

# Docker's own health check (the image's HEALTHCHECK, `resilient-analytics healthcheck`).
wait_container_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT)) attempt id state=""
    for ((attempt = 1; attempt <= HEALTH_TIMEOUT; attempt++)); do
        id=$(app_container)
        state=$([[ -z $id ]] || docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" || true)
        if [[ $state == healthy ]]; then
            log "app container's health check: healthy"
            return 0
        fi
        ((SECONDS < deadline)) || break
        sleep 2
    done
    fail "the app container's health check did not report healthy within ${HEALTH_TIMEOUT}s (last: ${state:-no container})"
}

# When the app container (last) started.
started_of_app() {
    local id
    id=$(app_container)
    [[ -n $id ]] || fail "no running app container"
    docker inspect -f '{{.State.StartedAt}}' "$id"
}

# check_point_kept ID TYPE: the list holds the point and the summary counts it.
check_point_kept() {
    local id=$1 type=$2 status count
    status=$(http GET "/api/metrics/list?type=$type")
    [[ $status == 200 ]] || fail "GET /api/metrics/list: $status $(body)"
    grep -q "\"id\":${id}[,}]" "$body_file" || fail "point $id missing from the list: $(body)"
    status=$(http GET "/api/metrics/summary?type=$type")
    [[ $status == 200 ]] || fail "GET /api/metrics/summary: $status $(body)"
    count=$(json_number count)
    [[ -n $count && $count -ge 1 ]] || fail "summary does not count the point: $(body)"
    log "point $id is listed; summary count=$count"
}

# --- run -------------------------------------------------------------------------------------

command -v docker >/dev/null || fail "docker CLI not found"

if [[ -n $(leftovers) ]]; then
    log "project $PROJECT has leftovers from an earlier run; removing them"
    "$UP" down -v --remove-orphans
fi
if timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then
    fail "port $PORT is already in use (a stack started by hand? scripts/up.sh down)"
fi

trap teardown EXIT

log "starting the stack: $UP -d"
step=$SECONDS
"$UP" -d || fail "scripts/up.sh -d failed (exit $?)"
log "stack started in $((SECONDS - step))s"

step=$SECONDS
wait_healthy
wait_container_healthy
log "ready in $((SECONDS - step))s"

metric_type=smoke-$(date -u +%Y%m%d%H%M%S)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
status=$(http POST /api/metrics "{\"timestamp\":\"$now\",\"value\":1.5,\"type\":\"$metric_type\"}")
[[ $status == 201 ]] || fail "POST /api/metrics: expected 201, got $status $(body)"
id=$(json_number id)
[[ -n $id ]] || fail "POST /api/metrics: no id in $(body)"
log "POST /api/metrics -> 201, id $id"
check_point_kept "$id" "$metric_type"

log "restarting the app: $UP restart app"
before=$(started_of_app)
"$UP" restart app || fail "scripts/up.sh restart app failed (exit $?)"
after=$(started_of_app)
[[ $before != "$after" ]] || fail "the app container was not restarted"
wait_healthy
check_point_kept "$id" "$metric_type"

log "recreating every container: $UP -d --force-recreate"
before=$(app_container)
"$UP" -d --force-recreate || fail "scripts/up.sh -d --force-recreate failed (exit $?)"
[[ $(app_container) != "$before" ]] || fail "the app container was not recreated"
wait_healthy
check_point_kept "$id" "$metric_type"

log "requiring keys, as README's Securing it says: AUTH_MODE=required $UP -d"
AUTH_MODE=required "$UP" -d || fail "AUTH_MODE=required scripts/up.sh -d failed (exit $?)"
wait_healthy
status=$(http GET "/api/metrics/list?type=$metric_type")
[[ $status == 401 ]] || fail "a read without a key: expected 401, got $status $(body)"
created=$("$UP" exec -T app resilient-analytics keys create --tenant default --scopes admin,write,read) \
    || fail "keys create in the app container failed"
api_key=$(grep -o '"key":"ra_[0-9a-f_]*"' <<<"$created" | cut -d'"' -f4)
[[ -n $api_key ]] || fail "keys create printed no key: $created"
log "made a key with the command line in the app container"
check_point_kept "$id" "$metric_type"
