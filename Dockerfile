# Multi-stage build of the resilient-analytics service.
#
#   docker build -t resilient-analytics:latest .
#
# Base images can be swapped (a mirror, a pinned digest, a local stand-in):
#   docker build --build-arg BUILDER_IMAGE=... --build-arg RUNTIME_IMAGE=... .
# Both stages must be the same Debian release (bookworm): the binary links against glibc.
ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- build -------------------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder

# sqlx's query macros check SQL against the metadata in .sqlx/, not a live database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

WORKDIR /build

# Dependencies first, with placeholder sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src ./src
COPY migrations ./migrations
COPY .sqlx ./.sqlx

# COPY keeps the sources' modification times, which can be older than the placeholder build:
# drop the placeholder's fingerprints so cargo rebuilds this crate (and only this crate).
RUN rm -rf target/release/.fingerprint/resilient-analytics-* \
        target/release/deps/resilient_analytics-* \
        target/release/deps/libresilient_analytics-* \
    && cargo build --release --locked \
    && install -m 0755 target/release/resilient-analytics /usr/local/bin/resilient-analytics

# --- runtime -----------------------------------------------------------------------------------
# Dockerfile.prebuilt repeats this stage around a binary built on the host (the offline path,
# docker-compose.offline.yml): keep the two in step.
FROM ${RUNTIME_IMAGE}

# No TLS anywhere (PostgreSQL and Redis on the private network), so no ca-certificates.
# --no-log-init: a high uid would otherwise make a large sparse /var/log/lastlog.
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --no-log-init --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

COPY --from=builder /usr/local/bin/resilient-analytics /usr/local/bin/resilient-analytics

# Listen on all interfaces inside the container; compose and `docker run -e` can override.
ENV APP_HOST=0.0.0.0 \
    APP_PORT=8000 \
    RUST_LOG=info

# Numeric, so that runtimes can verify the user is not root (Kubernetes runAsNonRoot).
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/resilient-analytics", "healthcheck"]

CMD ["resilient-analytics"]
