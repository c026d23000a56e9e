#!/usr/bin/env bash
# Builds stand-ins for the upstream `postgres`, `redis` and `debian:bookworm-slim` images from
# Debian packages, for machines whose Docker engine reaches no image registry but do reach the
# Debian archive. On a machine that can pull images none of this is needed.
#
#   resilient-analytics/postgres:15-offline      PostgreSQL 15, entrypoint compatible with the
#                                                official image's POSTGRES_* variables
#   resilient-analytics/redis:7-offline          redis-server / redis-cli 7.0
#   resilient-analytics/debian:bookworm-offline  the bare minbase system (bash, apt, passwd):
#                                                the app's runtime base (docker-compose.offline.yml)
#   resilient-analytics/nginx:offline            nginx 1.22 (nginx-light), `nginx -g 'daemon off;'`:
#                                                the balancer of the scale stack
#                                                (docker-compose.scale.yml)
#
# Usage: scripts/build-offline-images.sh [--force]
#   --force   rebuild images that already exist
# Environment:
#   MIRROR, SECURITY_MIRROR   Debian mirrors; default: taken from this machine's apt sources
#   OFFLINE_IMAGES_WORKDIR    where the temporary root file systems go (default /var/tmp)
#
# Building needs root (debootstrap, chroot). Takes a few minutes on a fresh machine; an image
# that already exists is skipped, so running it again is cheap.
set -euo pipefail

readonly SUITE=bookworm
readonly PG_MAJOR=15
readonly POSTGRES_IMAGE=resilient-analytics/postgres:15-offline
readonly REDIS_IMAGE=resilient-analytics/redis:7-offline
readonly DEBIAN_IMAGE=resilient-analytics/debian:bookworm-offline
readonly NGINX_IMAGE=resilient-analytics/nginx:offline
readonly CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Sets `todo` to the images to build.
select_images() {
    local image quiet=${1:-}
    todo=()
    for image in "$POSTGRES_IMAGE" "$REDIS_IMAGE" "$DEBIAN_IMAGE" "$NGINX_IMAGE"; do
        if [[ $FORCE -eq 0 ]] && image_exists "$image"; then
            [[ -n $quiet ]] || log "$image already exists, skipping (use --force to rebuild)"
        else
            todo+=("$image")
        fi
    done
}
select_images

print_usage_hint() {
    echo
    echo "Images ready. Use them with:"
    echo "  TEST_POSTGRES_IMAGE=$POSTGRES_IMAGE TEST_REDIS_IMAGE=$REDIS_IMAGE"
    echo "  POSTGRES_IMAGE=$POSTGRES_IMAGE REDIS_IMAGE=$REDIS_IMAGE docker-compose up -d postgres redis"
    echo "  the whole stack: scripts/up.sh (uses docker-compose.offline.yml and $DEBIAN_IMAGE)"
}

if [[ ${#todo[@]} -eq 0 ]]; then
    print_usage_hint
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and chroot need it)"

# One build at a time: two concurrent runs would fight over the engine's tags. A run that
# waited for the lock builds only what the other one did not.
lock_dir=/run/lock
[[ -d $lock_dir ]] || lock_dir=/tmp
exec 9>"$lock_dir/resilient-analytics-offline-images.lock"
if ! flock -n 9; then
    log "another build is running; waiting for it"
    flock 9
    select_images quiet
    if [[ ${#todo[@]} -eq 0 ]]; then
        print_usage_hint
        exit 0
    fi
fi

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends debootstrap >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y --no-install-recommends debootstrap >/dev/null; }
fi

# --- Debian mirror: from this machine's apt configuration ----------------------------------

# Prints the first URI of an apt source that serves the given suite (deb822 .sources files
# first, then one-line sources.list entries).
source_uri_for_suite() {
    local suite=$1 file uri
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        uri=$(awk -v suite="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""; enabled = 1
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    if (tolower(line) ~ /^uris:/)    { sub(/^[^:]*:[ \t]*/, "", line); uris = line }
                    if (tolower(line) ~ /^suites:/)  { sub(/^[^:]*:[ \t]*/, "", line); suites = line }
                    if (tolower(line) ~ /^enabled:[ \t]*no/) enabled = 0
                }
                if (!enabled || uris == "") next
                n = split(suites, s, /[ \t]+/)
                for (j = 1; j <= n; j++) if (s[j] == suite) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$file")
        if [[ -n $uri ]]; then echo "$uri"; return 0; fi
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        uri=$(awk -v suite="$suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$file")
        if [[ -n $uri ]]; then echo "$uri"; return 0; fi
    done
    return 1
}

MIRROR=${MIRROR:-$(source_uri_for_suite "$SUITE" || true)}
[[ -n $MIRROR ]] || die "no apt source for '$SUITE' in /etc/apt; set MIRROR=<Debian mirror URL>"
SECURITY_MIRROR=${SECURITY_MIRROR:-$(source_uri_for_suite "$SUITE-security" || true)}
log "Debian mirror: $MIRROR${SECURITY_MIRROR:+ (security: $SECURITY_MIRROR)}"

# --- work area -------------------------------------------------------------------------------

WORK=$(mktemp -d "${OFFLINE_IMAGES_WORKDIR:-/var/tmp}/resilient-analytics-offline.XXXXXX")
cleanup() {
    local mnt
    # Unmount whatever we mounted below $WORK (deepest first) before deleting anything.
    while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done \
        < <(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# Runs a command inside a root file system with a clean environment.
in_root() {
    local root=$1; shift
    env -i PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
        chroot "$root" "$@"
}

# Runs a command with its output in $WORK/build.log; shows the end of it if the command fails.
logged() {
    if ! "$@" >>"$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log" >&2
        die "failed: $*"
    fi
}

# --- shared base: debootstrap once -----------------------------------------------------------

BASE=$WORK/base
total_started=$SECONDS
started=$SECONDS
log "debootstrap --variant=minbase $SUITE (shared base)"
logged debootstrap --variant=minbase --components=main "$SUITE" "$BASE" "$MIRROR"
log "base ready in $((SECONDS - started))s"

# The same sources as this machine (main suite, updates and security), so packages get fixes.
rm -f "$BASE/etc/apt/sources.list"
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$MIRROR" "$SUITE" "$SUITE"
    if [[ -n $SECURITY_MIRROR ]]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$SECURITY_MIRROR" "$SUITE"
    fi
} >"$BASE/etc/apt/sources.list.d/debian.sources"

# Apply this machine's Acquire::Check-* settings during the build (a snapshot mirror may serve
# Release files past their Valid-Until); removed again before the image is made.
apt-config dump | grep -E '^Acquire::Check-(Valid-Until|Date) ' >"$BASE/etc/apt/apt.conf.d/99build-host" || true

# Keep documentation, man pages and translations out of the images (as debian:*-slim does).
cat >"$BASE/etc/dpkg/dpkg.cfg.d/90-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$BASE/etc/apt/apt.conf.d/90-no-recommends"

# Never start services while installing.
printf '#!/bin/sh\nexit 101\n' >"$BASE/usr/sbin/policy-rc.d"
chmod 0755 "$BASE/usr/sbin/policy-rc.d"

# Copies the base, mounts /proc, refreshes the package lists and applies the updates and
# security fixes debootstrap's point-release packages lack (the upstream images carry them).
new_root() {
    local root=$1
    cp -a "$BASE" "$root"
    mount -t proc proc "$root/proc"
    logged in_root "$root" apt-get update -q
    logged in_root "$root" apt-get upgrade -y -q
}

# Trims caches/docs, removes build-only configuration and unmounts /proc.
finish_root() {
    local root=$1
    logged in_root "$root" apt-get clean
    umount "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/apt/apt.conf.d/99build-host"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
        "$root"/var/lib/dpkg/*-old "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/tmp/* "$root"/var/tmp/* \
        "$root"/root/.bash_history
    # Files installed by debootstrap before the dpkg excludes existed.
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$root/var/log" -type f -exec truncate -s 0 {} +
    # Docker provides these at run time; do not ship the build host's. (rm first: never write
    # through a symlink that points out of the chroot.)
    rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
    : >"$root/etc/resolv.conf"
    : >"$root/etc/hostname"
}

# Turns a root file system into an image; extra arguments are `--change` instructions.
import_root() {
    local root=$1 image=$2; shift 2
    local changes=() change
    for change in "$@"; do changes+=(--change "$change"); done
    log "docker import $image"
    # /dev, /proc and /sys are provided by the runtime; keep only the (empty) directories.
    tar --numeric-owner -C "$root" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
        | docker import "${changes[@]}" \
            --message "stand-in built by scripts/build-offline-images.sh from Debian $SUITE" \
            - "$image" >/dev/null
}

# `docker import --change` cannot set STOPSIGNAL; a one-line build on top of the local image can
# (FROM a local image needs no registry). Without it the image still works, but `docker stop`
# sends SIGTERM, which PostgreSQL treats as a "smart" shutdown that waits for clients.
set_stop_signal() {
    local image=$1 signal=$2
    if ! printf 'FROM %s\nSTOPSIGNAL %s\n' "$image" "$signal" \
        | docker build -q -t "$image" - >>"$WORK/build.log" 2>&1; then
        log "warning: could not set STOPSIGNAL $signal on $image (docker build failed); continuing"
    fi
}

# --- PostgreSQL ------------------------------------------------------------------------------

build_postgres() {
    local root=$WORK/postgres
    started=$SECONDS
    log "building $POSTGRES_IMAGE"
    new_root "$root"

    # Same ids as the official image, so a volume can move between it and this stand-in.
    in_root "$root" groupadd -r -g 999 postgres
    in_root "$root" useradd -r -g postgres -u 999 -d /var/lib/postgresql -s /bin/bash postgres
    in_root "$root" install -d -o postgres -g postgres /var/lib/postgresql

    # postgresql-common first, so the server package does not create a default cluster.
    logged in_root "$root" apt-get install -y -q postgresql-common
    sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
        "$root/etc/postgresql-common/createcluster.conf"
    grep -q '^create_main_cluster = false' "$root/etc/postgresql-common/createcluster.conf" \
        || echo 'create_main_cluster = false' >>"$root/etc/postgresql-common/createcluster.conf"
    logged in_root "$root" apt-get install -y -q "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR"
    [[ -x $root/usr/lib/postgresql/$PG_MAJOR/bin/postgres ]] || die "postgres binary missing after install"
    if ls "$root/etc/postgresql/$PG_MAJOR"/* >/dev/null 2>&1; then die "a default cluster was created"; fi

    # Data and socket directories as in the official image (world-writable so that any
    # `--user` works; the entrypoint tightens PGDATA to 0700). Done inside the chroot: paths
    # such as /var/run are absolute symlinks that would lead out of it from the host.
    in_root "$root" install -d -o postgres -g postgres -m 1777 /var/lib/postgresql/data
    in_root "$root" install -d -o postgres -g postgres -m 3777 /var/run/postgresql
    in_root "$root" install -d /docker-entrypoint-initdb.d

    install -D -m 0755 /dev/stdin "$root/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/bash
# Entrypoint of the offline PostgreSQL stand-in. Behaves like the official postgres image's
# entrypoint for what this project needs: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB /
# POSTGRES_HOST_AUTH_METHOD / POSTGRES_INITDB_ARGS, /docker-entrypoint-initdb.d, extra server
# flags (`-c fsync=off`), a temporary server whose log goes to stdout, and the final server
# exec'd in the foreground (its log goes to stderr).
set -Eeuo pipefail

export PGDATA=${PGDATA:-/var/lib/postgresql/data}

# `docker run image postgres -c x=y` and `docker run image -c x=y` both start the server;
# any other command (bash, psql, ...) is run as given.
if [[ $# -gt 0 && $1 == postgres ]]; then
    shift
elif [[ $# -gt 0 && $1 != -* ]]; then
    exec "$@"
fi

if [[ $(id -u) -eq 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA" 2>/dev/null || true
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chown postgres:postgres /var/run/postgresql
    chmod 3775 /var/run/postgresql 2>/dev/null || true
    # Re-run this script as postgres; exec all the way down, so the server ends up as PID 1.
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    POSTGRES_USER=${POSTGRES_USER:-postgres}
    POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
    POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-}
    if [[ -n ${POSTGRES_HOST_AUTH_METHOD:-} ]]; then
        auth=$POSTGRES_HOST_AUTH_METHOD
    elif [[ -n $POSTGRES_PASSWORD ]]; then
        auth=scram-sha-256
    else
        auth=trust
        echo "WARNING: no POSTGRES_PASSWORD set; host connections are trusted without a password" >&2
    fi

    # The password goes through a file: no process substitution (a bare chroot has no /dev/fd).
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    pwargs=()
    [[ -n $POSTGRES_PASSWORD ]] && pwargs=(--pwfile="$pwfile")
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of flags, as upstream
    initdb --username="$POSTGRES_USER" "${pwargs[@]}" ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
    rm -f "$pwfile"
    trap - EXIT

    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    printf 'host all all 0.0.0.0/0 %s\nhost all all ::/0 %s\n' "$auth" "$auth" >>"$PGDATA/pg_hba.conf"

    # Temporary server on the Unix socket only. pg_ctl without -l: its log (including
    # "database system is ready to accept connections") goes to stdout, as upstream.
    PGUSER=$POSTGRES_USER pg_ctl -D "$PGDATA" \
        -o "$(printf '%q ' "$@" -c listen_addresses='' -p "${PGPORT:-5432}")" -w start

    psql_cmd=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER")
    if [[ $POSTGRES_DB != postgres ]]; then
        "${psql_cmd[@]}" --dbname postgres --set db="$POSTGRES_DB" <<'EOSQL'
create database :"db";
EOSQL
        echo
    fi

    for f in /docker-entrypoint-initdb.d/*; do
        [[ -e $f ]] || continue
        case "$f" in
            *.sh)
                if [[ -x $f ]]; then echo "$0: running $f"; "$f"
                else
                    echo "$0: sourcing $f"
                    # shellcheck source=/dev/null
                    . "$f"
                fi ;;
            *.sql) echo "$0: running $f"; "${psql_cmd[@]}" --dbname "$POSTGRES_DB" -f "$f"; echo ;;
            *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql_cmd[@]}" --dbname "$POSTGRES_DB"; echo ;;
            *) echo "$0: ignoring $f" ;;
        esac
    done

    pg_ctl -D "$PGDATA" -m fast -w stop
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
else
    echo
    echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
    echo
fi

exec postgres -D "$PGDATA" "$@"
ENTRYPOINT

    finish_root "$root"
    import_root "$root" "$POSTGRES_IMAGE" \
        "ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:$CHROOT_PATH" \
        "ENV LANG=C.UTF-8" \
        "ENV PG_MAJOR=$PG_MAJOR" \
        "ENV PGDATA=/var/lib/postgresql/data" \
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
        'CMD ["postgres"]' \
        'EXPOSE 5432'
    # Like the official image: SIGINT is PostgreSQL's "fast" shutdown.
    set_stop_signal "$POSTGRES_IMAGE" SIGINT
    rm -rf --one-file-system "$root"
    log "$POSTGRES_IMAGE built in $((SECONDS - started))s"
}

# --- Redis -----------------------------------------------------------------------------------

build_redis() {
    local root=$WORK/redis
    started=$SECONDS
    log "building $REDIS_IMAGE"
    new_root "$root"

    # Same ids as the official image.
    in_root "$root" groupadd -r -g 999 redis
    in_root "$root" useradd -r -g redis -u 999 -d /var/lib/redis -s /usr/sbin/nologin redis
    logged in_root "$root" apt-get install -y -q redis-server redis-tools
    [[ -x $root/usr/bin/redis-server ]] || die "redis-server missing after install"

    in_root "$root" install -d -o redis -g redis /data

    install -D -m 0755 /dev/stdin "$root/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# Entrypoint of the offline Redis stand-in, after the official redis image's: options alone
# start redis-server, the server runs as the redis user, and protected mode is off unless
# configured (the official image builds Redis with that default, since Docker publishes ports
# explicitly).
set -eu

case "${1:-}" in
    -* | *.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ]; then
    case " $* " in
        *" --protected-mode "* | *".conf "*) ;;
        *) set -- "$@" --protected-mode no ;;
    esac
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
        exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
    fi
fi

exec "$@"
ENTRYPOINT

    finish_root "$root"
    import_root "$root" "$REDIS_IMAGE" \
        "ENV PATH=$CHROOT_PATH" \
        "ENV LANG=C.UTF-8" \
        'WORKDIR /data' \
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
        "CMD [\"redis-server\", \"--bind\", \"0.0.0.0\", \"--protected-mode\", \"no\", \"--save\", \"\", \"--appendonly\", \"no\"]" \
        'EXPOSE 6379'
    rm -rf --one-file-system "$root"
    log "$REDIS_IMAGE built in $((SECONDS - started))s"
}

# --- Debian (runtime base for the app) -------------------------------------------------------

# A stand-in for debian:bookworm-slim: the minbase system as debootstrap made it (it has bash,
# apt and passwd, whose groupadd/useradd the Dockerfiles' runtime stage runs), with the updates
# the slim image would carry, and upstream's defaults: CMD bash, recommends installed.
build_debian() {
    local root=$WORK/debian
    started=$SECONDS
    log "building $DEBIAN_IMAGE"
    new_root "$root"
    # Priority "required" packages, so minbase has them; install them should that ever change.
    local tool missing=0
    for tool in groupadd useradd; do
        [[ -x $root/usr/sbin/$tool ]] || missing=1
    done
    [[ $missing -eq 0 ]] || logged in_root "$root" apt-get install -y -q passwd
    [[ -x $root/usr/sbin/useradd ]] || die "useradd missing after installing passwd"
    rm -f "$root/etc/apt/apt.conf.d/90-no-recommends"
    finish_root "$root"
    import_root "$root" "$DEBIAN_IMAGE" \
        "ENV PATH=$CHROOT_PATH" \
        'CMD ["bash"]'
    rm -rf --one-file-system "$root"
    log "$DEBIAN_IMAGE built in $((SECONDS - started))s"
}

# --- nginx (the scale stack's balancer) -------------------------------------------------------

# A stand-in for the official nginx image as the scale stack uses it: a configuration mounted
# at /etc/nginx/nginx.conf, logs on the container's stdout/stderr, `nginx -g 'daemon off;'`,
# SIGQUIT (graceful) to stop.
build_nginx() {
    local root=$WORK/nginx
    started=$SECONDS
    log "building $NGINX_IMAGE"
    new_root "$root"
    logged in_root "$root" apt-get install -y -q nginx-light
    [[ -x $root/usr/sbin/nginx ]] || die "nginx missing after install"
    # As the official image: the logs go to the container's output. (Inside the chroot: the
    # paths must resolve there, not on the host.)
    in_root "$root" ln -sf /dev/stdout /var/log/nginx/access.log
    in_root "$root" ln -sf /dev/stderr /var/log/nginx/error.log
    rm -f "$root/etc/nginx/sites-enabled/default"
    finish_root "$root"
    import_root "$root" "$NGINX_IMAGE" \
        "ENV PATH=$CHROOT_PATH" \
        "ENV LANG=C.UTF-8" \
        'CMD ["nginx", "-g", "daemon off;"]' \
        'EXPOSE 80'
    set_stop_signal "$NGINX_IMAGE" SIGQUIT
    rm -rf --one-file-system "$root"
    log "$NGINX_IMAGE built in $((SECONDS - started))s"
}

for image in "${todo[@]}"; do
    old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
    case "$image" in
        "$POSTGRES_IMAGE") build_postgres ;;
        "$REDIS_IMAGE") build_redis ;;
        "$DEBIAN_IMAGE") build_debian ;;
        "$NGINX_IMAGE") build_nginx ;;
    esac
    # With --force, drop the image this one replaced (kept if a container still uses it).
    if [[ -n $old_id && $old_id != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
        docker rmi "$old_id" >/dev/null 2>&1 || true
    fi
done
log "done in $((SECONDS - total_started))s"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^resilient-analytics/' >&2 || true
print_usage_hint
