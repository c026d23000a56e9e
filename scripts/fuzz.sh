#!/usr/bin/env bash
# Fuzzes the API with schemathesis (from PyPI) against /openapi.json: every operation, every
# check (server errors, status codes, response schemas and headers, positive and negative
# data), on a server of its own.
#
#   scripts/fuzz.sh
#
# It starts PostgreSQL and Redis containers on free 127.0.0.1 ports (the stand-in images that
# scripts/build-offline-images.sh builds, or FUZZ_POSTGRES_IMAGE / FUZZ_REDIS_IMAGE), builds
# and starts the server (debug profile, AUTH_MODE=required with a key of every scope made by
# `resilient-analytics keys create` and sent with every request, rate limit and failed-
# authentication limit raised out of the way, failure rate 0), installs schemathesis into target/fuzz-venv, runs it with fuzz/schemathesis.toml and the
# hooks in fuzz/hooks.py, and removes everything it started, also on failure.
# FUZZ_EXAMPLES sets the examples per operation (default 100). Exit status: schemathesis'.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

readonly SCHEMATHESIS_VERSION=4.32.5
readonly PG_IMAGE=${FUZZ_POSTGRES_IMAGE:-resilient-analytics/postgres:15-offline}
readonly REDIS_IMAGE=${FUZZ_REDIS_IMAGE:-resilient-analytics/redis:7-offline}
readonly EXAMPLES=${FUZZ_EXAMPLES:-100}
readonly NAME=ra-fuzz-$$
readonly VENV=$repo/target/fuzz-venv

log() { printf '==> %s\n' "$*" >&2; }
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    docker rm -fv "$NAME-postgres" "$NAME-redis" >/dev/null 2>&1 || true
}
trap cleanup EXIT

for image in "$PG_IMAGE" "$REDIS_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 || scripts/build-offline-images.sh
done

log "PostgreSQL and Redis containers"
docker run -d --name "$NAME-postgres" -p 127.0.0.1::5432 \
    -e POSTGRES_PASSWORD=postgres -e POSTGRES_DB=analytics "$PG_IMAGE" >/dev/null
docker run -d --name "$NAME-redis" -p 127.0.0.1::6379 "$REDIS_IMAGE" >/dev/null
host_port() { docker port "$1" "$2/tcp" | head -n1 | sed 's/.*://'; }
pg_port=$(host_port "$NAME-postgres" 5432)
redis_port=$(host_port "$NAME-redis" 6379)
app_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

log "building the server and making its key"
SQLX_OFFLINE=true cargo build --locked --quiet
binary=${CARGO_TARGET_DIR:-target}/debug/resilient-analytics
database_url="postgres://postgres:postgres@127.0.0.1:$pg_port/analytics"
key=
for _ in $(seq 60); do
    # The command applies the migrations first; it fails until PostgreSQL accepts connections.
    if created=$(env -i PATH="$PATH" DATABASE_URL="$database_url" "$binary" keys create \
        --tenant fuzz --scopes read,write,admin 2>/dev/null); then
        key=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["key"])' "$created")
        break
    fi
    sleep 1
done
[[ -n $key ]] || { log "no key could be made"; exit 1; }

log "starting the server on 127.0.0.1:$app_port"
env -i PATH="$PATH" APP_HOST=127.0.0.1 APP_PORT="$app_port" \
    DATABASE_URL="$database_url" REDIS_URL="redis://127.0.0.1:$redis_port/0" \
    AUTH_MODE=required AUTH_FAILURE_LIMIT=100000000/60 \
    RATE_LIMIT_REQUESTS=100000000 EXTERNAL_SERVICE_FAILURE_RATE=0 RUST_LOG=warn \
    "$binary" >"$repo/target/fuzz-server.log" 2>&1 &
server_pid=$!
healthy=
for _ in $(seq 120); do
    if python3 - "$app_port" <<'EOF' 2>/dev/null; then healthy=1; break; fi
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if json.load(r)["status"] == "healthy" else 1)
EOF
    sleep 1
done
[[ -n $healthy ]] || { log "the server did not become healthy; its log:"; cat "$repo/target/fuzz-server.log" >&2; exit 1; }

log "schemathesis $SCHEMATHESIS_VERSION (in $VENV)"
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"

log "fuzzing every operation of /openapi.json with every check ($EXAMPLES examples each)"
status=0
(
    cd fuzz
    SCHEMATHESIS_HOOKS=hooks PYTHONPATH=. "$VENV/bin/schemathesis" --config-file schemathesis.toml \
        run "http://127.0.0.1:$app_port/openapi.json" --header "Authorization: Bearer $key" \
        --checks all --max-examples "$EXAMPLES" --workers 1 --request-timeout 20 \
        --max-failures 20 --no-color
) || status=$?
if grep -E '"level":"ERROR"|ERROR' "$repo/target/fuzz-server.log" >/dev/null; then
    log "the server logged errors:"
    grep -E 'ERROR' "$repo/target/fuzz-server.log" | head -n 20 >&2
    status=1
fi
exit "$status"
