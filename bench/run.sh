#!/usr/bin/env bash
# Benchmark harness for the figures of issue 4 (docs/benchmarks.md explains each one).
#
#   bench/run.sh [--quick | --points N | --soak MINUTES | --memory | --remote-write] [--strict]
#                [--keep-work]
#
#   --points N    points of batch data (default 10,000,000)
#   --quick       N = 200,000 (a few minutes; for checking the harness, not for the record)
#   --soak M      instead of the figures: measure the maximum single-write rate, then hold half
#                 of it for M minutes (oha, fixed rate) and report RSS and latency per minute
#   --memory      instead of the figures: peak RSS (VmHWM) under concurrent large requests, four
#                 scenarios, each against a freshly started server: 16 maximal batches (10,000
#                 points of 32 tags, just under 16 MiB), 16 ordinary batches (~1 MB, gzip), 64
#                 gzip bombs to /api/metrics/batch (16 KB inflating to ~16 MiB of [1,1,...])
#                 and 64 to /api/metrics (inflating far past 1 MiB); during the first and third a
#                 small client sends single writes and its p50/p99 is reported; target < 100 MB;
#                 report in bench/results/memory-<UTC time>.md (a few minutes)
#   --remote-write  instead of the figures: Prometheus remote write with 10,000 distinct series
#                 (examples/remote_write_load.rs: requests of 2,000 series x 5 samples, 4 in
#                 flight, one warm-up round that creates the series, then 20 rounds of new
#                 samples) against a fresh server on empty tables; then the same rows with psql
#                 \copy into bench_copy (like metrics including all), and as many points of
#                 JSON batches of one type; ratio remote write / \copy (target >= 0.40), and the
#                 server's peak RSS during the remote write (target <= 100 MB); report in
#                 bench/results/remote-write-<UTC time>.md (a few minutes). The full run ends
#                 with the same section (after emptying the tables) and adds its rows.
#   --strict      exit 2 when a target is missed (default: report only; also for --memory)
#   --keep-work   keep the temporary directory (data, logs, raw wrk output)
#
# What it does, on one machine, against 127.0.0.1 only: starts PostgreSQL (default durability)
# and Redis containers and the release binary; measures single POST throughput against
# /health/live with wrk; loads N generated points through POST /api/metrics/batch (first 10%,
# then the rest) and the same rows with psql's \copy; measures uncached summaries two ways at
# 10% and at 100% of N:
#   the user's way   right after each batch stage (first request within 10 s of its end, no
#                    VACUUM), through the main server, Redis FLUSHALL before every request, a new
#                    connection per request, no warm-up excluded; at 100% also again under a
#                    concurrent writer (oha, POST /api/metrics of the measured type at half the
#                    maximum rate it measures first); targets median <= 20 ms, p99 <= 50 ms
#   the current way  after VACUUM (ANALYZE), through a second server process that has no Redis,
#                    one keep-alive connection, 3 warm-up requests excluded; median <= 50 ms
# reads the server's peak RSS; prints one markdown table and writes it to
# bench/results/<UTC time>.md. Everything it started is removed on exit.
#
# Needs: root on Debian bookworm (it apt-get installs wrk, postgresql-client, curl, python3 when
# missing), a running Docker engine, oha (cargo install oha --locked when missing, except for
# --memory) and a Rust toolchain unless BENCH_BINARY is given.
# Environment (all optional):
#   BENCH_BINARY            a prebuilt server binary; otherwise `cargo build --release --locked`
#                           (SQLX_OFFLINE=true) builds target/release/resilient-analytics
#   BENCH_SOURCE            what BENCH_BINARY was built from (printed in the table)
#   BENCH_POSTGRES_IMAGE    default resilient-analytics/postgres:15-offline
#   BENCH_REDIS_IMAGE       default resilient-analytics/redis:7-offline (both built by
#                           scripts/build-offline-images.sh when missing)
#   BENCH_PG_PORT / BENCH_REDIS_PORT / BENCH_APP_PORT / BENCH_SUMMARY_PORT / BENCH_CLOSED_PORT
#                           host ports, default 25432 / 26379 / 28080 / 28081 / 28089
#   BENCH_WRK_THREADS / BENCH_WRK_CONNECTIONS / BENCH_WRK_DURATION / BENCH_WRK_WARMUP
#                           wrk load, default 1 / 64 / 15 (seconds) / 3 (seconds)
#   BENCH_BATCH_CONCURRENCY batch requests in flight, default 4
#   BENCH_SUMMARY_REQUESTS  measured summary requests per period, the current way, default 50
#                           (after 3 warm-up)
#   BENCH_USER_SUMMARY_REQUESTS
#                           measured summary requests per period, the user's way, default 30
#   BENCH_PG_SETTINGS       PostgreSQL flags, default "-c shared_buffers=1GB -c max_wal_size=4GB"
#   TMPDIR                  where the temporary directory goes (10 M points take ~1 GB there)
# For --memory (all optional):
#   BENCH_MEMORY_ROUNDS     rounds per scenario, each all its requests at once, default 3 (more
#                           while the small client is still sending, at most 30 and ~3 minutes)
#   BENCH_MEMORY_BATCHES / BENCH_MEMORY_BOMBS
#                           requests per round, default 16 / 64
#   BENCH_MEMORY_PROBE_REQUESTS / BENCH_MEMORY_PROBE_RATE
#                           the small client's single writes, at most 200, at 20 per second
#   BENCH_MEMORY_GUARD_MB   kill the server (and report it) when its RSS passes this, default 3072,
#                           so an unbounded server cannot take the shared machine's memory
# For --remote-write and the full run's remote-write section (all optional):
#   BENCH_RW_LOADER         a prebuilt remote_write_load example; otherwise `cargo build --release
#                           --locked --example remote_write_load` (SQLX_OFFLINE=true)
#   BENCH_RW_SERIES / BENCH_RW_SAMPLES / BENCH_RW_SERIES_PER_REQUEST
#                           default 10000 / 5 (per series per request) / 2000
#   BENCH_RW_ROUNDS         measured rounds (each: every series once), default 20 (1 M samples),
#                           4 with --quick
#   BENCH_RW_CONCURRENCY    requests in flight, default 4
#   BENCH_RW_MAX_SECONDS    the load's time bound (no request starts after it), default 900
#   BENCH_RW_PORT           the remote-write server's port, default 28082
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
BENCH_PY=$BENCH_DIR/bench.py

POINTS=10000000
MODE="full run"
SOAK_MINUTES=0
MEMORY=0
REMOTE_WRITE=0
STRICT=0
KEEP_WORK=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --points)
            [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -ge 10 ]] || { echo "--points needs a number >= 10" >&2; exit 2; }
            POINTS=$2; MODE="custom run"; shift 2 ;;
        --quick) POINTS=200000; MODE="quick run (--quick)"; shift ;;
        --soak)
            [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -ge 1 ]] || { echo "--soak needs whole minutes >= 1" >&2; exit 2; }
            SOAK_MINUTES=$2; MODE="soak run (--soak $2)"; shift 2 ;;
        --memory) MEMORY=1; MODE="memory run (--memory)"; shift ;;
        --remote-write) REMOTE_WRITE=1; MODE="remote-write run (--remote-write)"; shift ;;
        --strict) STRICT=1; shift ;;
        --keep-work) KEEP_WORK=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
[[ $POINTS -eq 10000000 && $MODE == "custom run" ]] && MODE="full run"
(( MEMORY + REMOTE_WRITE + (SOAK_MINUTES > 0) <= 1 )) \
    || { echo "--memory, --soak and --remote-write are separate runs" >&2; exit 2; }

PG_PORT=${BENCH_PG_PORT:-25432}
REDIS_PORT=${BENCH_REDIS_PORT:-26379}
APP_PORT=${BENCH_APP_PORT:-28080}
SUMMARY_PORT=${BENCH_SUMMARY_PORT:-28081}
CLOSED_PORT=${BENCH_CLOSED_PORT:-28089}
WRK_THREADS=${BENCH_WRK_THREADS:-1}
WRK_CONNECTIONS=${BENCH_WRK_CONNECTIONS:-64}
WRK_DURATION=${BENCH_WRK_DURATION:-15}
WRK_WARMUP=${BENCH_WRK_WARMUP:-3}
BATCH_CONCURRENCY=${BENCH_BATCH_CONCURRENCY:-4}
SUMMARY_REQUESTS=${BENCH_SUMMARY_REQUESTS:-50}
SUMMARY_WARMUP=3
USER_SUMMARY_REQUESTS=${BENCH_USER_SUMMARY_REQUESTS:-30}
[[ $USER_SUMMARY_REQUESTS =~ ^[0-9]+$ ]] && ((USER_SUMMARY_REQUESTS >= 1 && USER_SUMMARY_REQUESTS <= 1000)) \
    || { echo "BENCH_USER_SUMMARY_REQUESTS must be a whole number, 1-1000" >&2; exit 2; }
# The concurrent writer's oha run is stopped when the summaries under it are done; this bounds
# it should they hang (their own bound: 3 periods x requests x a 60 s socket timeout).
WRITER_LIMIT=1800
MEMORY_ROUNDS=${BENCH_MEMORY_ROUNDS:-3}
MEMORY_BATCHES=${BENCH_MEMORY_BATCHES:-16}
MEMORY_BOMBS=${BENCH_MEMORY_BOMBS:-64}
MEMORY_PROBE_REQUESTS=${BENCH_MEMORY_PROBE_REQUESTS:-200}
MEMORY_PROBE_RATE=${BENCH_MEMORY_PROBE_RATE:-20}
MEMORY_GUARD_MB=${BENCH_MEMORY_GUARD_MB:-3072}
for value in "$MEMORY_ROUNDS" "$MEMORY_BATCHES" "$MEMORY_BOMBS" "$MEMORY_PROBE_REQUESTS" "$MEMORY_PROBE_RATE" "$MEMORY_GUARD_MB"; do
    [[ $value =~ ^[0-9]+$ ]] || { echo "BENCH_MEMORY_* must be whole numbers (got $value)" >&2; exit 2; }
done
((MEMORY_ROUNDS >= 1 && MEMORY_ROUNDS <= 30 && MEMORY_BATCHES >= 1 && MEMORY_BATCHES <= 256 \
    && MEMORY_BOMBS >= 1 && MEMORY_BOMBS <= 256 && MEMORY_PROBE_REQUESTS <= 1000 \
    && MEMORY_PROBE_RATE >= 1 && MEMORY_GUARD_MB >= 200)) \
    || { echo "BENCH_MEMORY_*: rounds 1-30, batches and bombs 1-256, probe requests <= 1000, rate >= 1, guard >= 200 MB" >&2; exit 2; }
RW_SERIES=${BENCH_RW_SERIES:-10000}
RW_SAMPLES=${BENCH_RW_SAMPLES:-5}
RW_SERIES_PER_REQUEST=${BENCH_RW_SERIES_PER_REQUEST:-2000}
# A quick run checks the section with fewer rounds (200,000 samples).
RW_ROUNDS=${BENCH_RW_ROUNDS:-$([[ $MODE == "quick run (--quick)" ]] && echo 4 || echo 20)}
RW_CONCURRENCY=${BENCH_RW_CONCURRENCY:-4}
RW_MAX_SECONDS=${BENCH_RW_MAX_SECONDS:-900}
RW_PORT=${BENCH_RW_PORT:-28082}
for value in "$RW_SERIES" "$RW_SAMPLES" "$RW_SERIES_PER_REQUEST" "$RW_ROUNDS" "$RW_CONCURRENCY" "$RW_MAX_SECONDS"; do
    [[ $value =~ ^[0-9]+$ ]] && ((value >= 1)) || { echo "BENCH_RW_* must be whole numbers >= 1 (got $value)" >&2; exit 2; }
done
((RW_SAMPLES * RW_SERIES_PER_REQUEST <= 50000 && RW_ROUNDS <= 1000 && RW_MAX_SECONDS <= 3600)) \
    || { echo "BENCH_RW_*: at most 50,000 samples per request, 1000 rounds, 3600 s" >&2; exit 2; }
# Points of JSON batches for the comparison: as many as the measured remote-write samples.
RW_BATCH_POINTS=$((RW_SERIES * RW_SAMPLES * RW_ROUNDS))
RW_BATCH_TYPE=bench_rw_batch
PG_IMAGE=${BENCH_POSTGRES_IMAGE:-resilient-analytics/postgres:15-offline}
REDIS_IMAGE=${BENCH_REDIS_IMAGE:-resilient-analytics/redis:7-offline}
read -r -a PG_SETTINGS <<<"${BENCH_PG_SETTINGS:--c shared_buffers=1GB -c max_wal_size=4GB}"
METRIC_TYPE=bench_latency

STARTED_UTC=$(date -u +%Y-%m-%dT%H:%M:%S)
RESULT_PREFIX=
[[ $SOAK_MINUTES -eq 0 ]] || RESULT_PREFIX=soak-
[[ $MEMORY -eq 0 ]] || RESULT_PREFIX=memory-
[[ $REMOTE_WRITE -eq 0 ]] || RESULT_PREFIX=remote-write-
RESULT_FILE=$BENCH_DIR/results/$RESULT_PREFIX$(date -u -d "$STARTED_UTC" +%Y%m%dT%H%M%SZ).md
PG_NAME=ra-bench-postgres-$$
REDIS_NAME=ra-bench-redis-$$
WORK=
PIDS=()

log() { printf '==> [%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '\nbench: error: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$? pid alive
    trap - EXIT INT TERM
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive -eq 0 ]] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    docker rm -fv "$PG_NAME" "$REDIS_NAME" >/dev/null 2>&1
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_WORK -eq 1 ]]; then
            echo "bench: work directory kept: $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls `command...` every half second until it succeeds, for at most `limit` seconds.
wait_for() {
    local what=$1 limit=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what"
        sleep 0.5
    done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# One statement; bounded (VACUUM and percentile_cont over 10 M rows take a while, not this long).
sql() { timeout 1800 psql -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

fact() { printf '%s\t%s\n' "$1" "$2" >>"$WORK/facts.tsv"; }

json_get() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# --- prerequisites ----------------------------------------------------------------------------

ensure_tools() {
    local missing=()
    [[ $MEMORY -eq 1 || $REMOTE_WRITE -eq 1 ]] || command -v wrk >/dev/null || missing+=(wrk)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    if [[ ${#missing[@]} -gt 0 ]]; then
        [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: install them, or run as root"
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${missing[@]}" >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; } \
            || die "apt-get install ${missing[*]} failed"
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 must be 3.11 or newer"
    # The soak and the full run's concurrent writer hold a fixed rate with oha.
    if [[ $MEMORY -eq 0 && $REMOTE_WRITE -eq 0 ]] && ! command -v oha >/dev/null; then
        command -v cargo >/dev/null || die "the soak and the concurrent writer need oha: cargo install oha --locked"
        log "installing oha (cargo install oha --locked; a few minutes)"
        cargo install oha --locked >/dev/null 2>&1 || die "cargo install oha failed"
    fi
    command -v docker >/dev/null || die "docker CLI not found"
    docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine"
}

ensure_images() {
    if docker image inspect "$PG_IMAGE" >/dev/null 2>&1 && docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1; then
        return
    fi
    if [[ $PG_IMAGE == resilient-analytics/* || $REDIS_IMAGE == resilient-analytics/* ]]; then
        log "building the stand-in images (scripts/build-offline-images.sh)"
        "$REPO/scripts/build-offline-images.sh"
    fi
    for image in "$PG_IMAGE" "$REDIS_IMAGE"; do
        docker image inspect "$image" >/dev/null 2>&1 || docker pull -q "$image" >/dev/null 2>&1 \
            || die "image $image is neither present nor pullable"
    done
}

ensure_binary() {
    if [[ -n ${BENCH_BINARY:-} ]]; then
        BINARY=$(realpath "$BENCH_BINARY")
        SOURCE=${BENCH_SOURCE:-"BENCH_BINARY, source not given"}
    else
        command -v cargo >/dev/null || die "cargo not found: install Rust, or set BENCH_BINARY"
        log "cargo build --release --locked (SQLX_OFFLINE=true)"
        (cd "$REPO" && SQLX_OFFLINE=true cargo build --release --locked) \
            || die "the build failed; build elsewhere and set BENCH_BINARY (see docs/benchmarks.md)"
        local target_dir=${CARGO_TARGET_DIR:-$REPO/target}
        [[ $target_dir == /* ]] || target_dir=$REPO/$target_dir
        BINARY=$target_dir/release/resilient-analytics
        SOURCE="working tree at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
        [[ -z $(git -C "$REPO" status --porcelain 2>/dev/null) ]] || SOURCE+=" with uncommitted changes"
    fi
    [[ -x $BINARY ]] || die "no executable server binary at $BINARY"
}

# The remote-write load generator (examples/remote_write_load.rs), for --remote-write and the
# full run; not for --memory and --soak.
ensure_loader() {
    [[ $MEMORY -eq 0 && $SOAK_MINUTES -eq 0 ]] || return 0
    if [[ -n ${BENCH_RW_LOADER:-} ]]; then
        RW_LOADER=$(realpath "$BENCH_RW_LOADER")
    else
        command -v cargo >/dev/null || die "cargo not found: install Rust, or set BENCH_RW_LOADER"
        log "cargo build --release --locked --example remote_write_load (SQLX_OFFLINE=true)"
        (cd "$REPO" && SQLX_OFFLINE=true cargo build --release --locked --example remote_write_load) \
            || die "the load generator's build failed; build it elsewhere and set BENCH_RW_LOADER"
        local target_dir=${CARGO_TARGET_DIR:-$REPO/target}
        [[ $target_dir == /* ]] || target_dir=$REPO/$target_dir
        RW_LOADER=$target_dir/release/examples/remote_write_load
    fi
    [[ -x $RW_LOADER ]] || die "no executable load generator at $RW_LOADER"
}

check_ports() {
    local port
    for port in "$PG_PORT" "$REDIS_PORT" "$APP_PORT" "$SUMMARY_PORT" "$CLOSED_PORT" "$RW_PORT"; do
        ! port_in_use "$port" || die "port $port on 127.0.0.1 is in use; choose others (BENCH_*_PORT)"
    done
}

# --- services ---------------------------------------------------------------------------------

start_containers() {
    log "starting PostgreSQL ($PG_IMAGE, ${PG_SETTINGS[*]}) on 127.0.0.1:$PG_PORT"
    # The data directory is an anonymous volume (removed with the container): a plain directory
    # on the host's file system rather than the container's overlay layer.
    docker run -d --name "$PG_NAME" --label resilient-analytics.bench=1 --shm-size=1g \
        -p "127.0.0.1:$PG_PORT:5432" -v /var/lib/postgresql/data \
        -e POSTGRES_PASSWORD=postgres -e POSTGRES_DB=analytics \
        "$PG_IMAGE" postgres "${PG_SETTINGS[@]}" >/dev/null
    log "starting Redis ($REDIS_IMAGE) on 127.0.0.1:$REDIS_PORT"
    docker run -d --name "$REDIS_NAME" --label resilient-analytics.bench=1 \
        -p "127.0.0.1:$REDIS_PORT:6379" "$REDIS_IMAGE" >/dev/null
    # The server and psql talk to the containers' own addresses on the bridge network, as an
    # app container would: through the published ports, docker's userland proxy would copy
    # every byte and take a large share of these 2 cores.
    PG_ADDR=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$PG_NAME")
    REDIS_ADDR=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$REDIS_NAME")
    [[ -n $PG_ADDR && -n $REDIS_ADDR ]] || die "cannot find the containers' addresses"
    export PGHOST=$PG_ADDR PGPORT=5432 PGUSER=postgres PGPASSWORD=postgres PGDATABASE=analytics \
        PGCONNECT_TIMEOUT=3
    wait_for "PostgreSQL" 120 pg_answers
    wait_for "Redis" 60 redis_answers
    [[ $(sql "show fsync") == on && $(sql "show synchronous_commit") == on ]] \
        || die "PostgreSQL is not at its default durability (fsync and synchronous_commit must be on)"
}

pg_answers() { sql "select 1" >/dev/null 2>&1; }
redis_answers() { [[ $(timeout 5 docker exec "$REDIS_NAME" redis-cli ping 2>/dev/null) == PONG ]]; }

# start_server NAME PORT REDIS_URL: the binary with a clean environment, from the work
# directory (so no .env file of the repository is read); sets SERVER_PID.
start_server() {
    local name=$1 port=$2 redis_url=$3
    (
        cd "$WORK"
        exec env -i PATH="$PATH" HOME="$WORK" \
            APP_HOST=127.0.0.1 APP_PORT="$port" \
            DATABASE_URL="postgres://postgres:postgres@$PG_ADDR:5432/analytics" \
            REDIS_URL="$redis_url" \
            RATE_LIMIT_REQUESTS=100000000 RATE_LIMIT_WINDOW_SECONDS=60 \
            EXTERNAL_SERVICE_FAILURE_RATE=0 RUST_LOG=warn SHUTDOWN_GRACE_PERIOD_SECONDS=5 \
            "$BINARY"
    ) >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
}

# health_is PORT PID STATUS: /health reports STATUS; dies if the process has exited.
health_is() {
    kill -0 "$2" 2>/dev/null || die "the server on port $1 exited; its log: $(tail -n 20 "$WORK"/*.log)"
    curl -fsS --max-time 2 "http://127.0.0.1:$1/health" 2>/dev/null | grep -q "\"status\":\"$3\""
}

# --- measurements -----------------------------------------------------------------------------

# wrk_warmup URL [wrk options...], then wrk_measure NAME URL [wrk options...] (with --latency,
# output parsed into $WORK/wrk-NAME.json). Same threads, connections and timeout for both.
wrk_load() { WRK_LOAD=(-t"$WRK_THREADS" -c"$WRK_CONNECTIONS" --timeout 10s); }
wrk_warmup() {
    local url=$1
    shift
    wrk_load
    log "wrk warm-up ${WRK_WARMUP}s: $url"
    wrk "${WRK_LOAD[@]}" -d"${WRK_WARMUP}s" "$@" "$url" >"$WORK/wrk-warmup.txt"
}
wrk_measure() {
    local name=$1 url=$2
    shift 2
    wrk_load
    log "wrk ${WRK_DURATION}s: wrk ${WRK_LOAD[*]} -d${WRK_DURATION}s --latency $* $url"
    wrk "${WRK_LOAD[@]}" -d"${WRK_DURATION}s" --latency "$@" "$url" | tee "$WORK/wrk-$name.txt" >&2
    python3 "$BENCH_PY" wrk --file "$WORK/wrk-$name.txt" --result "$WORK/wrk-$name.json" >/dev/null
}

single_write_ratio() {
    local live=http://127.0.0.1:$APP_PORT/health/live post=http://127.0.0.1:$APP_PORT/api/metrics
    local script=(-s "$BENCH_DIR/post_metric.lua")
    wrk_warmup "$live"
    wrk_measure live "$live"
    wrk_warmup "$post" "${script[@]}"
    sleep 2 # requests in flight when the warm-up stopped
    local before after requests non2xx stored
    before=$(sql "select count(*) from metrics where metric_type = 'bench_single'")
    wrk_measure post "$post" "${script[@]}"
    sleep 2 # requests in flight when wrk stopped
    after=$(sql "select count(*) from metrics where metric_type = 'bench_single'")
    requests=$(json_get "$WORK/wrk-post.json" requests)
    non2xx=$(json_get "$WORK/wrk-post.json" non_2xx)
    stored=$((after - before))
    [[ $non2xx -eq 0 ]] \
        || die "POST /api/metrics: $non2xx of $requests responses were not 2xx (server log: $WORK/app.log; use --keep-work)"
    # Every 201 is a committed row; a few more rows may come from requests in flight at the end.
    ((stored >= requests && stored <= requests + WRK_CONNECTIONS)) \
        || die "POST /api/metrics: wrk counted $requests responses, but $stored rows were stored"
    fact post_rows_stored "$stored"
}

# load_stage a|b: batch stage through the API, timed.
load_stage() {
    sql "checkpoint"
    log "batch stage $1: POST /api/metrics/batch, $BATCH_CONCURRENCY concurrent"
    python3 "$BENCH_PY" batch --data "$WORK/data" --stage "$1" --port "$APP_PORT" \
        --concurrency "$BATCH_CONCURRENCY" --result "$WORK/batch-$1.json"
}

# measure_summaries a|b LOADED [EXTRA]: uncached summaries through the summary server, and the
# exact count and percentiles from the raw rows for comparison; EXTRA rows of the type came from
# the concurrent writer after the load.
measure_summaries() {
    local stage=$1 loaded=$2 extra=${3:-0} began
    began=$SECONDS
    sql "vacuum (analyze)"
    fact "vacuum_$stage" "$((SECONDS - began))s"
    log "uncached summaries the current way at $loaded points ($SUMMARY_WARMUP warm-up + $SUMMARY_REQUESTS per period)"
    python3 "$BENCH_PY" summary --port "$SUMMARY_PORT" --type "$METRIC_TYPE" \
        --requests "$SUMMARY_REQUESTS" --warmup "$SUMMARY_WARMUP" --expect-count "$loaded" \
        --extra-rows "$extra" --result "$WORK/summary-$stage.json"
    sql "select json_build_object('count', count(*), 'percentiles',
                percentile_cont(array[0.5, 0.95, 0.99]) within group (order by value))
         from metrics where metric_type = '$METRIC_TYPE'" >"$WORK/exact-$stage.json"
}

# user_summaries NAME LOADED LABEL [summary-user options...]: summaries the user's way through
# the main server (bench.py summary-user), into $WORK/NAME.json.
user_summaries() {
    local name=$1 loaded=$2 label=$3
    shift 3
    python3 "$BENCH_PY" summary-user --port "$APP_PORT" --redis-port "$REDIS_PORT" \
        --type "$METRIC_TYPE" --requests "$USER_SUMMARY_REQUESTS" --expect-count "$loaded" \
        --label "$label" --count-deltas --result "$WORK/$name.json" "$@"
}

# user_after_load a|b LOADED: the user's way right after the batch stage: no VACUUM, nothing in
# between but reading the end of the load (the report checks the first request started within
# 10 s of it).
user_after_load() {
    local stage=$1 loaded=$2 ended
    ended=$(json_get "$WORK/batch-$stage.json" ended_unix)
    log "summaries the user's way right after the load, at $loaded points ($USER_SUMMARY_REQUESTS per period, FLUSHALL before each, new connections)"
    user_summaries "user-load-$stage" "$loaded" "(right after the load)" --load-ended "$ended"
}

# writer_body: the concurrent writer's point. Of the measured type, so that every write
# invalidates the summaries being measured and leaves a delta for the fold; a tag of its own.
writer_body() {
    printf '{"timestamp":"%s","value":75.5,"type":"%s","tags":{"host":"bench-writer"}}' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$METRIC_TYPE"
}

# user_under_writer LOADED: the maximum single-write rate of that point (oha, as many as it
# can on $WRK_CONNECTIONS connections, after a warm-up), then a fixed-rate writer at half of it
# (oha -q) for as long as the user's-way summaries take. Not wrk's figure from the single-write
# ratio: that point is of type bench_single, which invalidates nothing measured here, and wrk is
# not the tool that holds the rate. Sets WRITER_ROWS (rows of the type added by both runs).
user_under_writer() {
    local loaded=$1 post=http://127.0.0.1:$APP_PORT/api/metrics body rate pid stored
    local oha_args=(--no-tui --output-format json -m POST -H 'content-type: application/json')
    body=$(writer_body)
    log "the maximum write rate of the writer's point: oha -z ${WRK_WARMUP}s warm-up, then -z 10s -c $WRK_CONNECTIONS"
    timeout 60 oha -z "${WRK_WARMUP}s" -c "$WRK_CONNECTIONS" "${oha_args[@]}" -d "$body" "$post" \
        >"$WORK/writer-warmup.json" || die "oha (writer warm-up) failed"
    timeout 60 oha -z 10s -c "$WRK_CONNECTIONS" "${oha_args[@]}" -d "$body" "$post" \
        >"$WORK/writer-max.json" || die "oha (maximum write rate) failed"
    rate=$(python3 -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"] / 2))' "$WORK/writer-max.json")
    ((rate >= 1)) || die "the maximum write rate measured is below 2 writes/s"
    fact writer_type "$METRIC_TYPE"
    fact writer_rate "$rate"
    fact writer_max_load "oha -c$WRK_CONNECTIONS -z10s after a ${WRK_WARMUP}s warm-up"
    sleep 2 # requests in flight when oha stopped
    log "concurrent writer: $rate writes/s (oha -q $rate -c $WRK_CONNECTIONS), summaries the user's way under it"
    timeout "$((WRITER_LIMIT + 60))" oha -z "${WRITER_LIMIT}s" -q "$rate" -c "$WRK_CONNECTIONS" \
        "${oha_args[@]}" -d "$body" "$post" >"$WORK/writer.json" &
    pid=$!
    PIDS+=("$pid")
    sleep 2 # the writer at its rate before the first request
    user_summaries user-writer-b "$loaded" "(under a concurrent writer)"
    # SIGINT: oha stops and still prints its JSON (`timeout` passes the signal on).
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    stop_server "$pid" # reaped and forgotten (SIGTERM, then SIGKILL, if it is still there)
    [[ -s $WORK/writer.json ]] || die "the concurrent writer (oha) left no result"
    sleep 2 # requests in flight when oha stopped
    stored=$(sql "select count(*) from metrics where metric_type = '$METRIC_TYPE'")
    WRITER_ROWS=$((stored - loaded))
    fact writer_rows "$WRITER_ROWS"
}

copy_load() {
    log "psql \\copy of the same rows into metrics_copy"
    sql "create table metrics_copy (like metrics including all)"
    [[ $(sql "select attidentity from pg_attribute where attrelid = 'metrics_copy'::regclass and attname = 'id'") == a ]] \
        || die "metrics_copy did not get the identity column"
    # The batch points (one type, no tags) are one series; series_id is not null, so the
    # copied rows get the id the service gave that series, as a default of the column.
    local series stage
    series=$(sql "select id from metric_series where tenant = 'default' and metric_type = '$METRIC_TYPE' and tags = '{}'")
    [[ $series =~ ^[0-9]+$ ]] || die "no series of the batch points ($METRIC_TYPE without tags) in metric_series"
    sql "alter table metrics_copy alter column series_id set default $series"
    for stage in a b; do
        sql "checkpoint"
        python3 "$BENCH_PY" copy --data "$WORK/data" --stage "$stage" --result "$WORK/copy-$stage.json"
    done
    [[ $(sql "select count(*) from metrics_copy") -eq $POINTS ]] || die "metrics_copy does not hold $POINTS rows"
    sql "drop table metrics_copy"
}

# log_summary FILE: how many WARN/ERROR lines, and the first one without colour codes.
log_summary() {
    local pattern=' (WARN|ERROR) |"level":"(WARN|ERROR)"' plain count first
    plain=$(sed 's/\x1b\[[0-9;]*m//g' "$1")
    count=$(grep -cE "$pattern" <<<"$plain" || true)
    first=$(grep -m1 -E "$pattern" <<<"$plain" | cut -c1-160 || true)
    printf '%s WARN/ERROR lines%s' "$count" "${first:+ (first: $first)}"
}

peak_rss_kb() {
    kill -0 "$1" 2>/dev/null || die "server process $1 is gone"
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

record_machine() {
    local mem_kb cpu
    mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    fact started "$STARTED_UTC"
    fact mode "$MODE"
    fact points "$POINTS"
    fact nproc "$(nproc)"
    fact cpu "${cpu:-unknown CPU model}"
    fact memory "$(awk -v kb="$mem_kb" 'BEGIN { printf "%.1f GiB", kb / 1048576 }')"
    fact kernel "$(uname -r)"
    fact pg_version "$(sql "show server_version")"
    fact pg_image "$PG_IMAGE"
    fact redis_version "$(docker exec "$REDIS_NAME" redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
    fact redis_image "$REDIS_IMAGE"
    fact wrk_version "$({ command -v wrk >/dev/null && wrk -v 2>&1 || true; } | awk 'NR == 1 { print $1, $2 }')"
    fact rustc_version "$(rustc --version 2>/dev/null || echo 'rustc not installed')"
    fact psql_version "$(psql --version | awk '{ print $3 }')"
    fact python_version "$(python3 -c 'import platform; print(platform.python_version())')"
    fact binary "$BINARY (sha256 $(sha256sum "$BINARY" | cut -c1-12))"
    fact source "$SOURCE"
    fact settings "PostgreSQL: ${PG_SETTINGS[*]}, everything else default (fsync=on, synchronous_commit=on, checked); servers: RUST_LOG=warn, RATE_LIMIT_REQUESTS=100000000 (limiter in the path), EXTERNAL_SERVICE_FAILURE_RATE=0"
    fact wrk_load "wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${WRK_DURATION}s after a ${WRK_WARMUP}s warm-up"
}

# soak: half of the measured single-write rate, one oha run per minute; after each, the server's
# current RSS. The point is the single-write benchmark's (bench/post_metric.lua).
soak() {
    local rate post=http://127.0.0.1:$APP_PORT/api/metrics minute body
    rate=$(python3 -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["requests_per_second"] / 2))' "$WORK/wrk-post.json")
    fact soak_rate "$rate"
    body=$(printf '{"timestamp":"%s","value":75.5,"type":"bench_soak","tags":{"host":"bench-1"}}' "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
    for minute in $(seq "$SOAK_MINUTES"); do
        log "soak minute $minute/$SOAK_MINUTES: $rate writes/s (oha -q $rate -c $WRK_CONNECTIONS)"
        timeout 120 oha -z 60s -q "$rate" -c "$WRK_CONNECTIONS" --no-tui --output-format json \
            -m POST -H 'content-type: application/json' -d "$body" "$post" >"$WORK/soak-$minute.json" \
            || die "oha failed in minute $minute"
        kill -0 "$APP_PID" 2>/dev/null || die "the server exited during the soak"
        printf '%s\t%s\n' "$minute" "$(awk '/^VmRSS:/ { print $2 }' "/proc/$APP_PID/status")" >>"$WORK/soak-rss.tsv"
    done
}

soak_run() {
    start_containers
    log "starting the server on 127.0.0.1:$APP_PORT (RUST_LOG=warn)"
    start_server app "$APP_PORT" "redis://$REDIS_ADDR:6379/0"
    APP_PID=$SERVER_PID
    wait_for "the server to be healthy" 120 health_is "$APP_PORT" "$APP_PID" healthy
    record_machine
    fact oha_version "$(oha --version | awk '{ print $2 }')"
    log "the maximum single-write rate (as in the single-write ratio)"
    single_write_ratio
    soak
    fact elapsed "$((SECONDS / 60))m$((SECONDS % 60))s"
    fact log_lines "server: $(log_summary "$WORK/app.log")"
    mkdir -p "$BENCH_DIR/results"
    python3 "$BENCH_PY" soak-report --work "$WORK" --minutes "$SOAK_MINUTES" --out "$RESULT_FILE"
}

# stop_server PID: SIGTERM, then SIGKILL after 10 s; reaped and forgotten, so the cleanup never
# signals a pid that a later, unrelated process may have been given.
stop_server() {
    local pid=$1 kept=() p
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

# memory_scenario NAME CONCURRENCY PROBE_REQUESTS: a fresh server, the scenario (bench.py
# memory, which reads its /proc status throughout), the server stopped again.
memory_scenario() {
    local name=$1 concurrency=$2 probe=$3 log_name=memory-$1
    log "memory scenario $name: starting a fresh server on 127.0.0.1:$APP_PORT"
    start_server "$log_name" "$APP_PORT" "redis://$REDIS_ADDR:6379/0"
    local pid=$SERVER_PID
    wait_for "the server to be healthy" 120 health_is "$APP_PORT" "$pid" healthy
    sleep 1 # idle: past start-up and the first health checks
    log "memory scenario $name: $concurrency concurrent requests per round, at least $MEMORY_ROUNDS rounds$([[ $probe -gt 0 ]] && echo ", a small client sending up to $probe single writes at $MEMORY_PROBE_RATE/s")"
    python3 "$BENCH_PY" memory --scenario "$name" --port "$APP_PORT" --pid "$pid" \
        --concurrency "$concurrency" --rounds "$MEMORY_ROUNDS" --probe-requests "$probe" \
        --probe-rate "$MEMORY_PROBE_RATE" --guard-mb "$MEMORY_GUARD_MB" \
        --result "$WORK/memory-$name.json" \
        || { stop_server "$pid"; die "memory scenario $name failed (server log: $WORK/$log_name.log)"; }
    stop_server "$pid"
    MEMORY_LOGS+="$name: $(log_summary "$WORK/$log_name.log"); "
}

memory_run() {
    start_containers
    record_machine
    fact memory_settings "Rounds: at least $MEMORY_ROUNDS per scenario, all of a round's requests released at once (each on its own connection), more rounds while the small client is still sending. Small client (scenarios 1 and 3): up to $MEMORY_PROBE_REQUESTS single POST /api/metrics writes at $MEMORY_PROBE_RATE/s, each on its own connection (open loop), until the load ends; latency from sending to the response. Guard: the server is killed if its RSS passes $MEMORY_GUARD_MB MB. Servers: RATE_LIMIT_REQUESTS=100000000 per 60 s (limiter in the path, never hit), RUST_LOG=warn."
    MEMORY_LOGS=
    memory_scenario maximal "$MEMORY_BATCHES" "$MEMORY_PROBE_REQUESTS"
    memory_scenario ordinary "$MEMORY_BATCHES" 0
    memory_scenario batch-bomb "$MEMORY_BOMBS" "$MEMORY_PROBE_REQUESTS"
    memory_scenario single-bomb "$MEMORY_BOMBS" 0
    fact elapsed "$((SECONDS / 60))m$((SECONDS % 60))s"
    fact log_lines "${MEMORY_LOGS%; }"
    mkdir -p "$BENCH_DIR/results"
    local report_args=(--work "$WORK" --out "$RESULT_FILE") report_rc=0
    [[ $STRICT -eq 0 ]] || report_args+=(--strict)
    python3 "$BENCH_PY" memory-report "${report_args[@]}" || report_rc=$?
    case $report_rc in
        0) ;;
        2) echo "bench: targets missed (--strict); see $RESULT_FILE" >&2; exit 2 ;;
        *) die "the memory report failed (exit $report_rc)" ;;
    esac
}

# The columns a remote-write sample fills, in the order of the exported CSV.
RW_COLUMNS="tenant, metric_type, value, recorded_at, tags, series_id, source"

# PostgreSQL's container's CPU counter: cgroup v1 cpuacct.usage (ns) or v2 cpu.stat; sets
# PG_CPU_FILE (empty when neither is found: the CPU figures are then left out).
find_pg_cpu_file() {
    local id candidate
    id=$(docker inspect -f '{{.Id}}' "$PG_NAME")
    PG_CPU_FILE=
    for candidate in "/sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage" \
        "/sys/fs/cgroup/system.slice/docker-$id.scope/cpu.stat" "/sys/fs/cgroup/docker/$id/cpu.stat"; do
        [[ -r $candidate ]] && { PG_CPU_FILE=$candidate; return; }
    done
}

# cpu_counters PID: "<utime+stime ticks of PID> <PostgreSQL's CPU ns> <1-minute load average>",
# "-" where unreadable (the same counters the load generator reads).
cpu_counters() {
    local ticks ns=- load
    ticks=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
    if [[ -n $PG_CPU_FILE ]]; then
        ns=$(awk '$1 == "usage_usec" { print $2 * 1000; found = 1 } NF == 1 && !found { print $1 }' "$PG_CPU_FILE" || true)
    fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "${ticks:--} ${ns:--} $load"
}

# remote_write_section: Prometheus remote write (examples/remote_write_load.rs) against a
# freshly started server process, so its VmHWM is the remote write's own; then the rows it
# stored, exported (not timed), loaded with psql \copy into bench_copy; then JSON batches of as
# many points through the same server. Writes rw-load.json, copy-rw.json, batch-rw-{a,b}.json
# and the rw_* facts. Needs the JSON batch data in $WORK/rw-batch-data.
remote_write_section() {
    local url=http://127.0.0.1:$RW_PORT/api/v1/write pid rows stage
    log "remote write: starting a fresh server on 127.0.0.1:$RW_PORT (RUST_LOG=warn)"
    start_server rw "$RW_PORT" "redis://$REDIS_ADDR:6379/0"
    pid=$SERVER_PID
    wait_for "the remote-write server to be healthy" 120 health_is "$RW_PORT" "$pid" healthy
    # After the server's start-up, which creates the tables on a fresh database.
    fact rw_tables "$(sql "select format('metrics %s rows, metric_series %s rows', (select count(*) from metrics), (select count(*) from metric_series))")"
    sleep 1 # idle: past start-up and the first health checks
    fact rw_idle_rss_kb "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")"
    find_pg_cpu_file
    fact clock_ticks "$(getconf CLK_TCK)"
    sql "checkpoint"
    log "remote write: $RW_SERIES series, $RW_SERIES_PER_REQUEST series x $RW_SAMPLES samples per request, $RW_CONCURRENCY in flight, 1 warm-up + $RW_ROUNDS rounds (at most ${RW_MAX_SECONDS}s)"
    timeout "$((RW_MAX_SECONDS + 180))" "$RW_LOADER" --url "$url" --series "$RW_SERIES" \
        --samples-per-series "$RW_SAMPLES" --series-per-request "$RW_SERIES_PER_REQUEST" \
        --warmup-rounds 1 --rounds "$RW_ROUNDS" --concurrency "$RW_CONCURRENCY" \
        --max-seconds "$RW_MAX_SECONDS" --cpu-pid "$pid" ${PG_CPU_FILE:+--cpu-file "$PG_CPU_FILE"} \
        --result "$WORK/rw-load.json" 2>&1 | tee "$WORK/rw-load.txt" >&2 \
        || { stop_server "$pid"; die "the remote-write load failed (see above; server log: $WORK/rw.log, use --keep-work)"; }
    fact rw_rss_kb "$(peak_rss_kb "$pid")"
    sleep 1 # nothing is in flight (the loader waited for every answer); the fold may still run
    rows=$(sql "select count(*) from metrics where source = 'prometheus'")
    fact rw_rows_stored "$rows"
    ((rows > 0)) || die "the remote write stored no rows"
    log "remote write: exporting the $rows rows it stored to CSV (not timed)"
    sql "\\copy (select $RW_COLUMNS from metrics where source = 'prometheus' order by id) to '$WORK/rw.csv' with (format csv)"
    log "psql \\copy of the same rows into bench_copy"
    sql "create table bench_copy (like metrics including all)"
    [[ $(sql "select attidentity from pg_attribute where attrelid = 'bench_copy'::regclass and attname = 'id'") == a ]] \
        || die "bench_copy did not get the identity column"
    sql "checkpoint"
    local before
    before=$(cpu_counters "$pid")
    python3 "$BENCH_PY" copy --csv "$WORK/rw.csv" --expect-rows "$rows" --table bench_copy \
        --columns "$RW_COLUMNS" --result "$WORK/copy-rw.json"
    fact rw_copy_cpu "$before $(cpu_counters "$pid")"
    sql "drop table bench_copy"
    rm -f "$WORK/rw.csv"
    for stage in a b; do
        sql "checkpoint"
        log "JSON batches for comparison, stage $stage: POST /api/metrics/batch (type $RW_BATCH_TYPE), $BATCH_CONCURRENCY concurrent"
        before=$(cpu_counters "$pid")
        python3 "$BENCH_PY" batch --data "$WORK/rw-batch-data" --stage "$stage" --port "$RW_PORT" \
            --concurrency "$BATCH_CONCURRENCY" --result "$WORK/batch-rw-$stage.json"
        fact "rw_batch_${stage}_cpu" "$before $(cpu_counters "$pid")"
    done
    fact rw_rss_after_batch_kb "$(peak_rss_kb "$pid")"
    stop_server "$pid"
    fact rw_log_lines "$(log_summary "$WORK/rw.log")"
    fact rw_notes "Remote write: examples/remote_write_load.rs (release build), bodies encoded and snappy-compressed before timing; samples/s of the measured rounds = samples answered 204 ÷ the wall time from the first request to the last response; the warm-up round (every series once, creating the $RW_SERIES series in metric_series) is reported apart and not in the ratio; no Authorization header (AUTH_MODE=off, tenant default; the rate limiter is in the path). \\copy: the rows the remote write stored (warm-up included), exported in id order with \\copy to CSV (not timed), loaded after a CHECKPOINT with psql -c \"\\copy bench_copy ($RW_COLUMNS) from ... csv\" (timed by bench.py, psql start-up included) into bench_copy, created \`like metrics including all\` (columns, defaults, identity, checks, all five indexes including the partial unique metrics_received_sample_idx), then dropped. JSON batches: $RW_BATCH_POINTS generated points of type $RW_BATCH_TYPE without tags (bench.py generate, in 10,000-point gzip files), sent to the same server after the \\copy, each stage after a CHECKPOINT."
}

remote_write_run() {
    log "generating $RW_BATCH_POINTS points of JSON batches for the comparison (before any timing)"
    python3 "$BENCH_PY" generate --points "$RW_BATCH_POINTS" --out "$WORK/rw-batch-data" --type "$RW_BATCH_TYPE"
    start_containers
    record_machine
    remote_write_section
    fact elapsed "$((SECONDS / 60))m$((SECONDS % 60))s"
    mkdir -p "$BENCH_DIR/results"
    local report_args=(--work "$WORK" --out "$RESULT_FILE") report_rc=0
    [[ $STRICT -eq 0 ]] || report_args+=(--strict)
    python3 "$BENCH_PY" remote-write-report "${report_args[@]}" || report_rc=$?
    case $report_rc in
        0) ;;
        2) echo "bench: targets missed (--strict); see $RESULT_FILE" >&2; exit 2 ;;
        *) die "the remote-write report failed (exit $report_rc)" ;;
    esac
}

# --- main -------------------------------------------------------------------------------------

ensure_tools
ensure_images
ensure_binary
ensure_loader
check_ports
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ra-bench.XXXXXX")
: >"$WORK/facts.tsv"
if [[ $SOAK_MINUTES -gt 0 ]]; then
    log "work directory $WORK; $MODE"
    soak_run
    exit 0
fi
if [[ $MEMORY -eq 1 ]]; then
    log "work directory $WORK; $MODE"
    memory_run
    exit 0
fi
if [[ $REMOTE_WRITE -eq 1 ]]; then
    log "work directory $WORK; $MODE"
    remote_write_run
    exit 0
fi
log "work directory $WORK; N = $POINTS points ($MODE)"

log "generating $POINTS points (before any timing)"
python3 "$BENCH_PY" generate --points "$POINTS" --out "$WORK/data" --type "$METRIC_TYPE"
python3 "$BENCH_PY" generate --points "$RW_BATCH_POINTS" --out "$WORK/rw-batch-data" --type "$RW_BATCH_TYPE"
STAGE_A=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["stages"]["a"]["points"])' "$WORK/data/manifest.json")

start_containers
log "starting the server on 127.0.0.1:$APP_PORT (RUST_LOG=warn)"
start_server app "$APP_PORT" "redis://$REDIS_ADDR:6379/0"
APP_PID=$SERVER_PID
wait_for "the server to be healthy" 120 health_is "$APP_PORT" "$APP_PID" healthy
log "starting the summary server on 127.0.0.1:$SUMMARY_PORT, Redis on closed port $CLOSED_PORT (no cache)"
start_server summary "$SUMMARY_PORT" "redis://127.0.0.1:$CLOSED_PORT/0"
SUMMARY_PID=$SERVER_PID
wait_for "the summary server to be up without Redis" 60 health_is "$SUMMARY_PORT" "$SUMMARY_PID" degraded
record_machine
fact oha_version "$(oha --version | awk '{ print $2 }')"

log "step 2: single-write throughput ratio"
single_write_ratio
rss=$(peak_rss_kb "$APP_PID")
fact rss_after_single_kb "$rss"

log "step 3: batch ingest, first $STAGE_A points"
load_stage a
log "step 5: uncached summaries at $STAGE_A points"
user_after_load a "$STAGE_A"
measure_summaries a "$STAGE_A"
log "step 3: batch ingest, remaining $((POINTS - STAGE_A)) points"
load_stage b
log "step 5: uncached summaries at $POINTS points"
rss=$(peak_rss_kb "$APP_PID")
fact rss_after_batch_kb "$rss"
user_after_load b "$POINTS"
user_under_writer "$POINTS"
measure_summaries b "$POINTS" "$WRITER_ROWS"
copy_load

log "step 4: peak RSS"
rss=$(peak_rss_kb "$APP_PID")
fact rss_kb "$rss"
rss=$(peak_rss_kb "$SUMMARY_PID")
fact rss_summary_kb "$rss"

log "step 7: remote write (as --remote-write, from empty tables)"
stop_server "$APP_PID"
stop_server "$SUMMARY_PID"
sql "truncate metrics, metric_series, metric_rollups, metric_rollup_deltas"
remote_write_section
fact elapsed "$((SECONDS / 60))m$((SECONDS % 60))s"
fact log_lines "server: $(log_summary "$WORK/app.log"); summary server: $(log_summary "$WORK/summary.log") (Redis unreachable is expected there)"
fact notes "The first 10% of the batch data is every tenth point, so it also spans the 30 days (daily and hourly windows are populated at both sizes). Batch and \\copy rates are over the two stages' load times (pauses excluded), each stage after a CHECKPOINT. Summaries the user's way: right after each batch stage (no VACUUM; the delay from the end of the load to the first and last request is in the table), and at N again under a concurrent writer (oha -q, half the maximum rate of the same point, type $METRIC_TYPE, so every write invalidates the measured summaries); through the main server, Redis FLUSHALL (not timed) before every request, each request on a new TCP connection and timed from before the connect to the last byte, none excluded, median and nearest-rank p99 of $USER_SUMMARY_REQUESTS sequential requests per period (X-Cache MISS checked). Summaries the current way: second server process with REDIS_URL on closed port $CLOSED_PORT (no cache; X-Cache MISS checked), one keep-alive connection, $SUMMARY_WARMUP warm-up requests per period excluded, median and nearest-rank p99 of $SUMMARY_REQUESTS sequential requests, after VACUUM (ANALYZE) (which took $(awk -F'\t' '$1 ~ /^vacuum_/ { printf "%s%s", sep, $2; sep = " and " }' "$WORK/facts.tsv")), and at N after the writer. Each uncached summary also awaits the simulated enrichment call (50-150 ms), concurrently with the query. metrics_copy is \`like metrics including all\` (columns, defaults, identity, constraints, indexes), with series_id defaulting to the batch points' one series, without whatever else the service maintains on insert."

log "step 6: report"
mkdir -p "$BENCH_DIR/results"
report_args=(--work "$WORK" --out "$RESULT_FILE")
[[ $STRICT -eq 0 ]] || report_args+=(--strict)
report_rc=0
python3 "$BENCH_PY" report "${report_args[@]}" || report_rc=$?
case $report_rc in
    0) ;;
    2) echo "bench: targets missed (--strict); see $RESULT_FILE" >&2; exit 2 ;;
    *) die "the report failed (exit $report_rc)" ;;
esac
