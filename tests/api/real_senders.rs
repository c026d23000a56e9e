//! The receivers fed by real senders rather than by requests made here: the Prometheus server
//! (Debian's `prometheus` package) remote-writing what it scrapes, and the OpenTelemetry
//! Python SDK exporting over OTLP/HTTP (tests/otel/export.py). `scripts/install-test-tools.sh`
//! installs both (scripts/test.sh runs it); where one is missing its test fails and says so.

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use chrono::{TimeDelta, Utc};
use serde_json::Value;

use crate::helpers::{TestApp, free_port, spawn_app_with_key, spawn_app_with_key_and};

const INSTALL: &str = "run scripts/install-test-tools.sh to install it";

/// The target directory: CARGO_TARGET_TMPDIR is its `tmp`.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is in the target directory")
        .to_owned()
}

/// A new directory of this test's own under CARGO_TARGET_TMPDIR.
fn scratch_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// "127.0.0.1:PORT" of an `http://127.0.0.1:PORT` address.
fn host_port(address: &str) -> &str {
    address.strip_prefix("http://").expect("an http:// address")
}

/// A read with `key`; its JSON body, which must come with a 200.
async fn read(app: &TestApp, key: &str, path_and_query: &str) -> Value {
    let response = app
        .client
        .get(app.url(path_and_query))
        .bearer_auth(key)
        .send()
        .await
        .expect("request failed");
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, 200, "GET {path_and_query}: {body}");
    body
}

async fn list(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let body = read(app, key, &format!("/api/metrics/list?{query}")).await;
    body.as_array().expect("a list").clone()
}

/// A Prometheus server of this test's own, killed (and its directory removed) on drop, also
/// when the test panics.
struct Prometheus {
    child: Child,
    /// Its configuration, log and TSDB.
    dir: PathBuf,
    address: String,
    started: Instant,
}

impl Prometheus {
    /// Scrapes itself and `app`'s `/metrics` every second and remote-writes everything to
    /// `app` with `key`.
    fn start(binary: &Path, app: &TestApp, key: &str) -> Self {
        let dir = scratch_dir("prometheus");
        let port = free_port();
        let service = host_port(&app.address);
        let config = format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{port}"]
  - job_name: resilient-analytics
    metrics_path: /metrics
    static_configs:
      - targets: ["{service}"]
remote_write:
  - url: "{address}/api/v1/write"
    authorization:
      type: Bearer
      credentials: "{key}"
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
"#,
            address = app.address,
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--log.level=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus did not start");
        Self {
            child,
            dir,
            address: format!("http://127.0.0.1:{port}"),
            started: Instant::now(),
        }
    }

    /// The last lines of its log.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `check` every 200 ms until it yields a value; panics, with Prometheus' log, when
    /// `deadline` passes first or Prometheus exits.
    async fn wait_for<T, Fut>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut() -> Fut,
    ) -> T
    where
        Fut: Future<Output = Option<T>>,
    {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited ({status}) before {what}; its log:\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not by the deadline; prometheus' log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One number from Prometheus' own query API: `query`'s single value.
async fn prometheus_value(client: &reqwest::Client, prometheus: &str, query: &str) -> Option<f64> {
    let body: Value = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn prometheus_remote_writes_its_scrapes_with_their_labels_as_tags() {
    let binary = on_path("prometheus")
        .unwrap_or_else(|| panic!("no `prometheus` on PATH (Debian's package): {INSTALL}"));
    let (app, key) = spawn_app_with_key_and("prom-tenant", |settings| {
        settings.auth.metrics_public = true
    })
    .await;
    let mut prometheus = Prometheus::start(&binary, &app, &key);
    let deadline = prometheus.started + Duration::from_secs(30);
    let instance = host_port(&prometheus.address).to_owned();

    // Its own series, with their labels as tags.
    let up = prometheus
        .wait_for(deadline, "an `up` of job prometheus stored", || async {
            list(&app, &key, "type=up&tag=job:prometheus&limit=1")
                .await
                .pop()
        })
        .await;
    assert_eq!(up["type"], "up");
    assert_eq!(up["value"], 1.0, "{up}");
    assert_eq!(up["tags"]["job"], "prometheus", "{up}");
    assert_eq!(up["tags"]["instance"], instance.as_str(), "{up}");
    let build = prometheus
        .wait_for(deadline, "prometheus_build_info stored", || async {
            list(&app, &key, "type=prometheus_build_info&limit=1")
                .await
                .pop()
        })
        .await;
    assert_eq!(build["value"], 1.0, "{build}");
    let tags = &build["tags"];
    assert_eq!(
        (&tags["job"], &tags["instance"]),
        (&"prometheus".into(), &instance.as_str().into()),
        "{build}"
    );
    for label in ["version", "revision", "branch", "goversion"] {
        assert!(tags[label].is_string(), "no {label} tag: {build}");
    }
    assert!(
        tags["version"].as_str().unwrap().starts_with("2."),
        "{build}"
    );

    // The service's own /metrics, scraped and written back to it.
    prometheus
        .wait_for(
            deadline,
            "the service's scrape stored, counting points ingested",
            || async {
                let up = list(&app, &key, "type=up&tag=job:resilient-analytics&limit=1")
                    .await
                    .pop()?;
                assert_eq!(up["value"], 1.0, "the scrape of the service failed: {up}");
                let ingested = list(
                    &app,
                    &key,
                    "type=metric_points_ingested_total&tag=job:resilient-analytics&limit=1",
                )
                .await
                .pop()?;
                (ingested["value"].as_f64()? > 0.0).then_some(())
            },
        )
        .await;

    // Summaries over them, with tag filters.
    let summary = read(
        &app,
        &key,
        "/api/metrics/summary?type=up&period=all&tag=job:prometheus",
    )
    .await;
    assert!(summary["count"].as_i64().unwrap() > 0, "{summary}");
    assert_eq!(
        (&summary["min_value"], &summary["max_value"]),
        (&1.0.into(), &1.0.into()),
        "{summary}"
    );
    let filter = format!("tag=job:prometheus&tag=instance:{instance}");
    let both = read(
        &app,
        &key,
        &format!("/api/metrics/summary?type=up&period=all&{filter}"),
    )
    .await;
    assert!(both["count"].as_i64().unwrap() > 0, "{both}");
    let none = read(
        &app,
        &key,
        "/api/metrics/summary?type=up&period=all&tag=job:no-such-job",
    )
    .await;
    assert_eq!(none["count"], 0, "{none}");

    // Prometheus had nothing refused: a 4xx is a failed sample it never retries.
    let (client, address) = (app.client.clone(), prometheus.address.clone());
    let sent = prometheus
        .wait_for(deadline, "Prometheus counting samples sent", || async {
            prometheus_value(
                &client,
                &address,
                "sum(prometheus_remote_storage_samples_total)",
            )
            .await
            .filter(|sent| *sent > 0.0)
        })
        .await;
    let failed = prometheus_value(
        &client,
        &address,
        "sum(prometheus_remote_storage_samples_failed_total)",
    )
    .await;
    assert_eq!(
        failed,
        Some(0.0),
        "Prometheus failed samples ({sent} sent); its log:\n{}",
        prometheus.log()
    );
    println!(
        "prometheus: {sent} samples sent, all taken, within {:?}",
        prometheus.started.elapsed()
    );
}

/// The Python of the venv with the OpenTelemetry SDK: OTEL_PYTHON, or where
/// scripts/install-test-tools.sh makes it.
fn otel_python() -> PathBuf {
    let python = std::env::var_os("OTEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("test-tools/otel-venv/bin/python"));
    assert!(
        python.is_file(),
        "no Python with the OpenTelemetry SDK at {} (OTEL_PYTHON, or the venv of \
         scripts/install-test-tools.sh): {INSTALL}",
        python.display()
    );
    python
}

/// Runs tests/otel/export.py against `app` (at most 60 s); panics unless every export
/// succeeded.
async fn export_with_the_sdk(
    python: &Path,
    app: &TestApp,
    key: &str,
    run: &str,
    compression: &str,
) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel/export.py");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .args([&app.url("/v1/metrics"), key, run, compression])
        // Nothing from this environment (OTEL_* variables) changes what the SDK does.
        .env_clear()
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("export.py did not finish within 60 s")
        .expect("export.py did not run");
    assert!(
        output.status.success(),
        "export.py ({compression}) failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The points of `metric_type` exported by `run`, each asserted to have `value` and the
/// tags every point of the run has; their tags.
async fn points_of_run(
    app: &TestApp,
    key: &str,
    run: &str,
    metric_type: &str,
    value: f64,
) -> Vec<Value> {
    let service = format!("otel-test-{run}");
    let points = list(
        app,
        key,
        &format!("type={metric_type}&tag=service.name:{service}&limit=100"),
    )
    .await;
    assert!(!points.is_empty(), "no {metric_type} of run {run} stored");
    let recent = Utc::now() - TimeDelta::minutes(5)..Utc::now() + TimeDelta::minutes(1);
    for point in &points {
        assert_eq!(point["type"], metric_type, "{point}");
        assert_eq!(point["value"], value, "{point}");
        let tags = &point["tags"];
        assert_eq!(tags["service.name"], service.as_str(), "{point}");
        assert_eq!(tags["route"], "/checkout", "{point}");
        assert_eq!(tags["telemetry.sdk.language"], "python", "{point}");
        let at: chrono::DateTime<Utc> = point["timestamp"].as_str().unwrap().parse().unwrap();
        assert!(recent.contains(&at), "not timestamped now: {point}");
    }
    points.iter().map(|point| point["tags"].clone()).collect()
}

#[tokio::test]
async fn the_opentelemetry_python_sdk_exports_counters_gauges_and_histograms() {
    let python = otel_python();
    let (app, key) = spawn_app_with_key("otel-tenant").await;

    for compression in ["none", "gzip"] {
        let run = compression;
        export_with_the_sdk(&python, &app, &key, run, compression).await;

        // The counter: its cumulative sum, 3 + 4 + 5.
        for tags in points_of_run(&app, &key, run, "otel_test_requests", 12.0).await {
            assert_eq!(tags["otel.temporality"], "cumulative", "{tags}");
        }
        // The gauge: its last value; a gauge has no temporality.
        for tags in points_of_run(&app, &key, run, "otel_test_queue_depth", 7.5).await {
            assert!(tags.get("otel.temporality").is_none(), "{tags}");
        }
        // The histogram: 1, 2.5, 4 and 10 recorded.
        for (metric_type, value) in [
            ("otel_test_latency_count", 4.0),
            ("otel_test_latency_sum", 17.5),
        ] {
            for tags in points_of_run(&app, &key, run, metric_type, value).await {
                assert_eq!(tags["otel.temporality"], "cumulative", "{tags}");
            }
        }

        // Summaries over them, with tag filters.
        let of_run = format!("tag=service.name:otel-test-{run}");
        let summary = read(
            &app,
            &key,
            &format!("/api/metrics/summary?type=otel_test_requests&period=all&{of_run}&tag=otel.temporality:cumulative"),
        )
        .await;
        assert!(summary["count"].as_i64().unwrap() > 0, "{summary}");
        for field in ["min_value", "max_value", "latest_value"] {
            assert_eq!(summary[field], 12.0, "{field}: {summary}");
        }
        let sum = read(
            &app,
            &key,
            &format!("/api/metrics/summary?type=otel_test_latency_sum&period=all&{of_run}"),
        )
        .await;
        assert_eq!(sum["latest_value"], 17.5, "{sum}");
        let delta = read(
            &app,
            &key,
            &format!("/api/metrics/summary?type=otel_test_requests&period=all&{of_run}&tag=otel.temporality:delta"),
        )
        .await;
        assert_eq!(delta["count"], 0, "{delta}");
    }
}
