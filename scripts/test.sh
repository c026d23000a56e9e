#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against real PostgreSQL and Redis
# containers started by testcontainers, and with real senders (Prometheus, the OpenTelemetry
# Python SDK; scripts/install-test-tools.sh installs them). Needs a running Docker engine.
#
#   scripts/test.sh [cargo test arguments...]
#
# The integration tests use TEST_POSTGRES_IMAGE / TEST_REDIS_IMAGE ("name:tag"), defaulting to
# the upstream postgres:16-alpine and redis:7-alpine. When those can be neither found nor
# pulled (a machine without a registry), stand-ins are built from Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

usable() { docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >/dev/null 2>&1; }

if [[ -z ${TEST_POSTGRES_IMAGE:-} || -z ${TEST_REDIS_IMAGE:-} ]]; then
    if ! usable postgres:16-alpine || ! usable redis:7-alpine; then
        echo "==> upstream images unavailable; using stand-ins built from Debian packages" >&2
        scripts/build-offline-images.sh
        export TEST_POSTGRES_IMAGE=${TEST_POSTGRES_IMAGE:-resilient-analytics/postgres:15-offline}
        export TEST_REDIS_IMAGE=${TEST_REDIS_IMAGE:-resilient-analytics/redis:7-offline}
    fi
fi

# The tests against real senders (tests/api/real_senders.rs) need Prometheus and a venv with
# the OpenTelemetry Python SDK; the script installs what is missing and prints the venv's python.
OTEL_PYTHON=$(scripts/install-test-tools.sh)
export OTEL_PYTHON

# The crate builds from the committed query metadata in .sqlx/, no database needed.
export SQLX_OFFLINE=true
exec cargo test --locked "$@"
