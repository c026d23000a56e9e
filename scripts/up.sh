#!/usr/bin/env bash
# Runs the service stack (PostgreSQL, Redis, the app) with docker compose, on any machine.
#
#   scripts/up.sh [up options]        build and start: `up --build [options]` (e.g. -d)
#   scripts/up.sh up [up options]     the same
#   scripts/up.sh <command> [args]    any other compose command on the same stack:
#                                     down -v, ps, logs -f app, restart app, exec postgres psql ...
#   scripts/up.sh --scale [...]       the same on the scale stack (docker-compose.scale.yml):
#                                     nginx on :8000 in front of app-1..3 (also on 127.0.0.1:
#                                     8001..8003), a Redis Cluster of 3 masters + 3 replicas,
#                                     PostgreSQL; `--scale -d`, `--scale down -v`, `--scale ps`
#
# Where the upstream images (postgres:16, redis:7-alpine, rust:1-bookworm, debian:bookworm-slim)
# are present or can be pulled, this is `docker compose up --build` on docker-compose.yml.
# Where they cannot (no registry), it builds local stand-ins from Debian packages
# (scripts/build-offline-images.sh), builds the binary on the host, and runs
#   compose -f docker-compose.yml -f docker-compose.offline.yml up --build
# (see that file). That path needs root, a Debian bookworm host, and Rust (cargo).
#
# Uses `docker compose` if available, else `docker-compose`. Environment:
#   RA_STACK_MODE=online|offline   skip the detection (offline: use the stand-ins even where
#                                  the upstream images could be pulled)
#   PULL_TIMEOUT                   seconds allowed per image pull while detecting (default 600)
#   COMPOSE_PROJECT_NAME           as for compose (global compose options cannot be passed here)
#   CARGO_TARGET_DIR               where cargo puts the binary (default target)
#   BOOTSTRAP_ADMIN_KEY            with --scale: the first admin key (the scale stack requires keys)
# `down` always includes the offline override, so it removes the volumes of either mode.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

scale=0
if [[ ${1:-} == --scale ]]; then
    scale=1
    shift
fi

UPSTREAM_IMAGES=("${POSTGRES_IMAGE:-postgres:16}" "${REDIS_IMAGE:-redis:7-alpine}"
    debian:bookworm-slim rust:1-bookworm)
ONLINE_FILES=(-f docker-compose.yml)
OFFLINE_FILES=(-f docker-compose.yml -f docker-compose.offline.yml)
if [[ $scale -eq 1 ]]; then
    UPSTREAM_IMAGES+=("${NGINX_IMAGE:-nginx:1.27}")
    ONLINE_FILES+=(-f docker-compose.scale.yml)
    OFFLINE_FILES+=(-f docker-compose.scale.yml)
fi
readonly UPSTREAM_IMAGES ONLINE_FILES OFFLINE_FILES
readonly STANDIN_POSTGRES=resilient-analytics/postgres:15-offline
readonly CONTEXT=target/offline-context
readonly BINARY=resilient-analytics

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }

case "${1:-}" in
    -h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' is installed"
fi

# No arguments or options only: up. Otherwise the first argument is the compose command.
if [[ $# -eq 0 || $1 == -* ]]; then
    command=up
else
    command=$1
    shift
fi

image_present() { docker image inspect "$1" >/dev/null 2>&1; }

# True when every upstream image is present or can be pulled (stops at the first that cannot:
# without a registry that fails at once).
upstream_usable() {
    local image output
    for image in "${UPSTREAM_IMAGES[@]}"; do
        image_present "$image" && continue
        log "pulling $image"
        if ! output=$(timeout "${PULL_TIMEOUT:-600}" docker pull -q "$image" 2>&1); then
            log "cannot use $image: $(tail -n 1 <<<"$output")"
            return 1
        fi
    done
}

# The mode of an existing stack, without pulling: the image of its postgres container, else
# whether the upstream images are here.
current_mode() {
    local id image
    id=$("${compose[@]}" "${ONLINE_FILES[@]}" ps -q postgres 2>/dev/null | head -n 1 || true)
    if [[ -n $id ]] && image=$(docker inspect -f '{{.Config.Image}}' "$id" 2>/dev/null); then
        [[ $image == "$STANDIN_POSTGRES" ]] && echo offline || echo online
        return
    fi
    for image in "${UPSTREAM_IMAGES[@]}"; do
        image_present "$image" || { echo offline; return; }
    done
    echo online
}

# Stand-in images, the binary built on the host, and the build context holding only it.
prepare_offline() {
    run scripts/build-offline-images.sh

    local codename
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null || true)
    [[ $codename == bookworm ]] \
        || log "warning: this host is '${codename:-unknown}', not bookworm: the binary may need a newer glibc than the runtime image has"
    if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
        PATH=$HOME/.cargo/bin:$PATH
    fi
    command -v cargo >/dev/null \
        || die "cargo not found: install Rust (https://rustup.rs; see rust-version in Cargo.toml)"
    run env SQLX_OFFLINE=true cargo build --release --locked

    local built=${CARGO_TARGET_DIR:-target}/release/$BINARY
    mkdir -p "$CONTEXT"
    find "$CONTEXT" -mindepth 1 -maxdepth 1 ! -name "$BINARY" -exec rm -rf {} +
    if cmp -s "$built" "$CONTEXT/$BINARY"; then
        log "$CONTEXT/$BINARY is up to date"
    else
        run install -m 0755 "$built" "$CONTEXT/$BINARY"
    fi
}

# The scale stack's stand-ins (docker-compose.scale.yml takes its Redis and nginx images from
# these variables; the offline override names only the base services').
use_offline_images() {
    export REDIS_IMAGE=resilient-analytics/redis:7-offline NGINX_IMAGE=resilient-analytics/nginx:offline
}

# Starts the stack with the given files. The scale stack's app-N run the image the base `app`
# service builds; that service is in the profile `single` there, so it is built by name.
start() {
    local files=("$@")
    if [[ $scale -eq 1 ]]; then
        run "${compose[@]}" "${files[@]}" --profile single build app
        run "${compose[@]}" "${files[@]}" up "${up_args[@]}"
    else
        run "${compose[@]}" "${files[@]}" up --build "${up_args[@]}"
    fi
}

mode=${RA_STACK_MODE:-}
case "$mode" in
    "" | online | offline) ;;
    *) die "RA_STACK_MODE must be online or offline, not '$mode'" ;;
esac

if [[ $command == up ]]; then
    if [[ -z $mode ]]; then
        log "checking the upstream images: ${UPSTREAM_IMAGES[*]}"
        if upstream_usable; then mode=online; else mode=offline; fi
    fi
    log "mode: $mode"
    up_args=("$@")
    if [[ $mode == offline ]]; then
        prepare_offline
        [[ $scale -eq 0 ]] || use_offline_images
        start "${OFFLINE_FILES[@]}"
    else
        start "${ONLINE_FILES[@]}"
    fi
    exit
fi

# The override's build context must exist for compose to load the file, even for `down`.
mkdir -p "$CONTEXT"
if [[ $command == down ]]; then
    files=("${OFFLINE_FILES[@]}")
else
    [[ -n $mode ]] || mode=$(current_mode)
    if [[ $mode == offline ]]; then files=("${OFFLINE_FILES[@]}"); else files=("${ONLINE_FILES[@]}"); fi
fi
[[ $scale -eq 0 || $mode == online ]] || use_offline_images
run "${compose[@]}" "${files[@]}" "$command" "$@"
