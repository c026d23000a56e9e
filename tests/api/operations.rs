//! Running it as its operators do: request ids, logs, Prometheus metrics, graceful shutdown
//! of the real binary, and the container health check.

use std::{
    collections::BTreeSet,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

use crate::helpers::{BINARY, ServerProcess, free_port, metric, spawn_app};

#[tokio::test]
async fn a_request_id_is_taken_from_the_client_or_generated_and_returned() {
    let app = spawn_app().await;
    let given = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "client-chosen-42");

    let first = app.get("/api/metrics/summary?type=x").await;
    let second = app.get("/nope").await;
    let id = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id(&first).len(), 36, "a UUID: {}", id(&first));
    assert_ne!(id(&first), id(&second));
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_id_and_one_event_sums_it_up() {
    let app = spawn_app().await;
    let mut server = ServerProcess::spawn(&app, &[("LOG_FORMAT", "json")]);
    server.wait_until_healthy(&app.client).await;

    let response = app
        .client
        .post(format!("{}/api/metrics", server.address))
        .header("x-request-id", "trace-me-1")
        .json(&metric("cpu", 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    server.signal("TERM");
    assert!(
        server
            .wait_for_exit(Duration::from_secs(30))
            .await
            .success()
    );

    let events: Vec<Value> = server
        .log_lines()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let of_request: Vec<&Value> = events
        .iter()
        .filter(|e| e["span"]["request_id"] == "trace-me-1")
        .collect();
    let messages: Vec<&str> = of_request
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    // What the write did is in the span's fields of that one event, not in events of its own.
    assert_eq!(messages, ["request completed"], "one event per request");
    let completed: Vec<&&Value> = of_request
        .iter()
        .filter(|e| e["message"] == "request completed")
        .collect();
    assert_eq!(completed.len(), 1, "exactly one summary event per request");
    let completed = completed[0];
    assert_eq!(completed["status"], 201);
    assert_eq!(completed["span"]["method"], "POST");
    assert_eq!(completed["span"]["route"], "/api/metrics");
    assert!(completed["latency_ms"].as_f64().is_some());
    // No request bodies in the log.
    assert!(
        !events
            .iter()
            .any(|e| e.to_string().contains("\"value\":1.0"))
    );
}

#[tokio::test]
async fn the_metrics_endpoint_reports_real_traffic() {
    let app = spawn_app().await;
    assert_eq!(app.post_metric("cpu", 5.0).await.status(), 201);
    assert_eq!(app.summary("type=cpu").await.1.as_deref(), Some("MISS"));
    assert_eq!(app.summary("type=cpu").await.1.as_deref(), Some("HIT"));

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for expected in [
        r#"http_requests_total{method="POST",route="/api/metrics",status="201"}"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/api/metrics/summary",le="0.005"}"#,
        r#"summary_cache_requests_total{result="hit"}"#,
        r#"summary_cache_requests_total{result="miss"}"#,
        r#"rate_limit_decisions_total{limiter="rate_limit",decision="allowed",source="redis"}"#,
        r#"enrichment_calls_total{outcome="ok"}"#,
        "circuit_breaker_state ",
        "db_pool_connections ",
        "db_pool_idle_connections ",
        "metric_points_ingested_total ",
        "# HELP http_requests_total",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[tokio::test]
async fn the_circuit_breaker_state_is_in_the_first_scrape_after_start_up() {
    let app = spawn_app().await;
    // A process of its own: in this one, an earlier server installed the recorder long ago.
    let server = ServerProcess::spawn(&app, &[]);
    server.wait_until_healthy(&app.client).await;
    let response = app
        .client
        .get(format!("{}/metrics", server.address))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(
        text.lines().any(|line| line == "circuit_breaker_state 0"),
        "no closed circuit_breaker_state in\n{text}"
    );
}

/// The methods the `method` label names; every other one is `other`.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The value of `name` in a Prometheus sample line, if it has that label.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    line[start..].split('"').next()
}

#[tokio::test]
async fn invented_methods_share_one_label_instead_of_adding_series_each() {
    let app = spawn_app().await;
    let scrape = || async { app.get("/metrics").await.text().await.unwrap() };
    // The recorder is shared by every test in the process, so only lines this test can have
    // caused are compared: those whose method is not a standard one (no other test sends one).
    let invented_method_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| label(line, "method").is_some_and(|m| !STANDARD_METHODS.contains(&m)))
            .map(str::to_owned)
            .collect()
    };
    let before = invented_method_lines(&scrape().await);

    for i in 1..=50 {
        let method = reqwest::Method::from_bytes(format!("XM{i}").as_bytes()).unwrap();
        let response = app
            .client
            .request(method, app.url("/no/such/path"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }

    let text = scrape().await;
    let after = invented_method_lines(&text);
    // At most one new counter and one new histogram (13 buckets, +Inf, sum and count).
    let added = after.len() - before.len();
    assert!(added <= 17, "{added} lines added:\n{}", after.join("\n"));
    assert!(
        after
            .iter()
            .all(|line| label(line, "method") == Some("other")),
        "{after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|line| line.starts_with("http_requests_total{")
                && label(line, "route") == Some("unmatched")),
        "{after:#?}"
    );
    assert!(
        !text.contains("XM"),
        "an invented method in a label:\n{text}"
    );
}

#[tokio::test]
async fn sigterm_under_write_load_finishes_in_flight_requests_and_loses_no_acknowledged_write() {
    let app = spawn_app().await;
    let mut server = ServerProcess::spawn(&app, &[("RATE_LIMIT_REQUESTS", "1000000")]);
    server.wait_until_healthy(&app.client).await;
    let address = server.address.clone();
    // One connection per request, so a refused connection is distinguishable from a
    // response cut off on a kept-alive one.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (client, address, stop) = (client.clone(), address.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acknowledged, mut refused) = (Vec::new(), 0u32);
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = client
                        .post(format!("{address}/api/metrics"))
                        .json(&metric("shutdown", 1.0))
                        .send()
                        .await;
                    match sent {
                        Ok(response) => {
                            assert_eq!(response.status(), 201, "a response other than 201");
                            let body: Value = response.json().await.expect("a cut-off body");
                            acknowledged.push(body["id"].as_i64().unwrap());
                        }
                        // Once the server stops accepting, new connections are refused, or
                        // reset if the kernel had queued them before the listener closed.
                        // Either ends this writer's run; whether such a request was really
                        // unanswered is checked against the table below.
                        Err(error) if error.is_connect() || is_reset(&error) => {
                            refused += 1;
                            break;
                        }
                        Err(error) => panic!("request cut off: {error:?}"),
                    }
                }
                (acknowledged, refused)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Slow requests (the enrichment call takes 50-150 ms), surely in flight at the signal.
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (client, address) = (client.clone(), address.clone());
            tokio::spawn(async move {
                let response = client
                    .get(format!("{address}/api/metrics/summary?type=slow{i}"))
                    .send()
                    .await
                    .expect("an in-flight request was cut off");
                (
                    response.status().as_u16(),
                    response.json::<Value>().await.is_ok(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(25)).await;
    server.signal("TERM");
    let status = server.wait_for_exit(Duration::from_secs(40)).await;
    stop.store(true, Ordering::Relaxed);

    assert!(status.success(), "exit status {status:?}");
    let mut acknowledged = BTreeSet::new();
    for writer in writers {
        let (ids, _refused) = writer.await.unwrap();
        acknowledged.extend(ids);
    }
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            (200, true),
            "an in-flight summary was not completed"
        );
    }
    assert!(
        acknowledged.len() >= 10,
        "too little load: {}",
        acknowledged.len()
    );
    // Exactly the acknowledged points are stored: none lost, and no request was cut off
    // between its commit and its response.
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let stored: Vec<i64> =
        sqlx::query_scalar("select id from metrics where metric_type = 'shutdown'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), acknowledged);
}

fn is_reset(error: &reqwest::Error) -> bool {
    std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
    })
}

#[tokio::test]
async fn the_healthcheck_subcommand_probes_liveness() {
    let app = spawn_app().await;
    let server = ServerProcess::spawn(&app, &[]);
    server.wait_until_healthy(&app.client).await;
    let port = server.address.rsplit(':').next().unwrap();
    let probe = |port: &str| {
        Command::new(BINARY)
            .arg("healthcheck")
            .env_clear()
            .env("APP_PORT", port)
            .status()
            .unwrap()
    };
    assert!(probe(port).success());
    assert!(!probe(&free_port().to_string()).success());
}
