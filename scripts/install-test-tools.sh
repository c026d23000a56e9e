#!/usr/bin/env bash
# Installs what the tests against real senders need (tests/api/real_senders.rs), and does
# nothing more when it is all there already:
#   - Prometheus (Debian's `prometheus` package) when `prometheus` is not on PATH;
#   - a Python venv with the OpenTelemetry SDK and its OTLP/HTTP exporter at the versions
#     pinned in tests/otel/requirements.txt, in ${CARGO_TARGET_DIR:-target}/test-tools/otel-venv.
#
#   scripts/install-test-tools.sh
#
# Prints the venv's python, and only that, on stdout, for OTEL_PYTHON (scripts/test.sh
# exports it); everything else goes to stderr.
set -euo pipefail
exec 3>&1 1>&2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

apt_updated=
apt_install() {
    if [[ -z $apt_updated ]]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if ! command -v prometheus >/dev/null; then
    log "installing Prometheus (Debian's prometheus package)"
    apt_install prometheus
fi

target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target
venv=$target/test-tools/otel-venv
requirements=$repo/tests/otel/requirements.txt
# The venv is up to date when it was made from these very requirements.
stamp=$venv/.requirements.sha256
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)

if [[ ! -x $venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
    log "making the OpenTelemetry venv in $venv"
    command -v python3 >/dev/null || apt_install python3 python3-venv
    rm -rf "$venv"
    # Debian's python3 makes venvs only with python3-venv installed.
    if ! python3 -m venv "$venv"; then
        apt_install python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$requirements"
    echo "$wanted" >"$stamp"
fi

echo "$venv/bin/python" >&3
