//! Logs (tracing) and metrics (Prometheus).

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls (from tests) are ignored. Span fields
/// (such as a request's id) are attached to every line written inside the span.
pub fn init<W>(filter: &str, format: LogFormat, sink: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("invalid log filter {filter:?} ({error}); using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Request latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder's upkeep runs.
const METRICS_UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder, installed on first use (the `metrics` facade has one
/// global recorder; every server in the process shares it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .expect("latency buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            // Histogram samples pile up in the recorder until upkeep folds them into buckets;
            // without it, memory grew by ~10 MB a minute under load until someone scraped
            // /metrics (found by the soak). A thread, not a task: the recorder outlives any
            // one runtime.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP_PERIOD);
                        upkeep.run_upkeep();
                    }
                })
                .expect("the metrics upkeep thread starts");
            describe_metrics();
            handle
        })
        .clone()
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route and method"
    );
    describe_counter!(
        "summary_cache_requests_total",
        "Summary cache lookups by result (hit, miss)"
    );
    describe_counter!(
        "rate_limit_decisions_total",
        "Rate-limit decisions by limiter (rate_limit: writes, auth_failures: failed authentications), decision (allowed, limited) and source (redis, local: Redis was away)"
    );
    describe_gauge!(
        "circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(
        "circuit_breaker_transitions_total",
        "Circuit breaker state changes by from and to"
    );
    describe_counter!(
        "enrichment_calls_total",
        "Enrichment outcomes: ok, failed, timed_out, circuit_open"
    );
    describe_gauge!("db_pool_connections", "PostgreSQL pool connections open");
    describe_gauge!(
        "db_pool_idle_connections",
        "PostgreSQL pool connections idle"
    );
    describe_counter!(
        "metric_points_ingested_total",
        "Metric points committed to PostgreSQL"
    );
}
