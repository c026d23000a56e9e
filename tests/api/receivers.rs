//! The receivers over HTTP, sent by our own encoder: every status code of the senders' retry
//! models, the mapping onto points and tags, and that a retried sample is never stored twice.
//! The real senders (Prometheus, the OpenTelemetry SDK) are in `real_senders`.

use std::{io::Write, time::Duration};

use prost::Message;
use reqwest::{Response, header};
use resilient_analytics::receivers::{
    otlp::{
        AnyValue, Data, ExportMetricsServiceRequest, ExportMetricsServiceResponse, Gauge, KeyValue,
        Metric, NumberDataPoint, NumberValue, Resource, ResourceMetrics, ScopeMetrics,
        Value as OtlpValue,
    },
    remote_write::{Label, PromSample, STALE_NAN, TimeSeries, WriteRequest},
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::{TestApp, spawn_app_with_key, spawn_app_with_key_and};

/// 2026-12-01T00:00:00Z in milliseconds.
const BASE_MS: i64 = 1_796_083_200_000;

fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
    TimeSeries {
        labels: labels
            .iter()
            .map(|(name, value)| Label {
                name: (*name).into(),
                value: (*value).into(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(value, offset_ms)| PromSample {
                value,
                timestamp: BASE_MS + offset_ms,
            })
            .collect(),
    }
}

fn snappy(request: &WriteRequest) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap()
}

/// A remote-write request as Prometheus sends it, with `body` as given.
fn remote_write(app: &TestApp, key: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    remote_write_as(app, key, body, "application/x-protobuf", "snappy")
}

/// A remote-write request with the content type and encoding given.
fn remote_write_as(
    app: &TestApp,
    key: &str,
    body: Vec<u8>,
    content_type: &str,
    encoding: &str,
) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/api/v1/write"))
        .bearer_auth(key)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_ENCODING, encoding)
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
}

async fn write(app: &TestApp, key: &str, request: &WriteRequest) -> Response {
    remote_write(app, key, snappy(request))
        .send()
        .await
        .unwrap()
}

async fn read(app: &TestApp, key: &str, path: &str) -> Value {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["code"].as_str().unwrap_or_default().to_owned()
}

/// The request of the status-code tests: two series of `up`, three samples each.
fn two_series() -> WriteRequest {
    WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "up"), ("instance", "a:9100"), ("job", "node")],
                &[(1.0, 0), (1.0, 1_000), (0.0, 2_000)],
            ),
            series(
                &[("__name__", "up"), ("instance", "b:9100"), ("job", "node")],
                &[(1.0, 0), (1.0, 1_000), (1.0, 2_000)],
            ),
        ],
    }
}

#[tokio::test]
async fn remote_write_stores_each_label_set_as_one_series_of_tags() {
    let (app, key) = spawn_app_with_key("acme").await;
    let response = write(&app, &key, &two_series()).await;
    assert_eq!(response.status(), 204);

    let listed = read(&app, &key, "/api/metrics/list?type=up&limit=10").await;
    let points = listed.as_array().unwrap();
    assert_eq!(points.len(), 6);
    assert_eq!(
        points[0]["tags"],
        json!({"instance": "b:9100", "job": "node"})
    );
    assert_eq!(points[0]["timestamp"], "2026-12-01T00:00:02Z");
    // Stored in the key's tenant, as two series, from Prometheus.
    let db = app.database().await;
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "select tenant, source, count(distinct series_id) from metrics group by 1, 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(rows, [("acme".to_owned(), "prometheus".to_owned(), 2)]);

    // Tag filters: on summaries, lists and series.
    let summary = read(
        &app,
        &key,
        "/api/metrics/summary?type=up&tag=instance:a:9100",
    )
    .await;
    assert_eq!(summary["count"], 3, "{summary}");
    assert_eq!(summary["latest_value"], 0.0);
    let both = read(&app, &key, "/api/metrics/summary?type=up&tag=job:node").await;
    assert_eq!(both["count"], 6);
    let none = read(
        &app,
        &key,
        "/api/metrics/summary?type=up&tag=job:node&tag=instance:c",
    )
    .await;
    assert_eq!(none["count"], 0);
    let unfiltered = read(&app, &key, "/api/metrics/summary?type=up").await;
    assert_eq!(unfiltered["count"], 6);
    let listed = read(&app, &key, "/api/metrics/list?tag=instance:b:9100").await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let buckets = read(
        &app,
        &key,
        "/api/metrics/series?type=up&from=2026-12-01T00:00:00Z&to=2026-12-01T00:01:00Z&bucket=1m&tag=instance:a:9100",
    )
    .await;
    assert_eq!(buckets["buckets"][0]["count"], 3, "{buckets}");
    assert_eq!(buckets["buckets"][0]["min"], 0.0);
}

#[tokio::test]
async fn a_retried_request_stores_nothing_twice_even_after_a_lost_answer() {
    let (app, key) = spawn_app_with_key("acme").await;
    let request = two_series();
    let body = snappy(&request);

    // The first attempt's answer is lost: the sender hangs up as soon as it has sent it.
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut connection = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n\
         X-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    connection.write_all(head.as_bytes()).await.unwrap();
    connection.write_all(&body).await.unwrap();
    drop(connection);
    // Whatever became of it, the retries are harmless.
    for _ in 0..3 {
        assert_eq!(write(&app, &key, &request).await.status(), 204);
    }
    assert_eq!(app.count_rows("up").await, 6);

    // A retry that carries new samples beside old ones stores the new ones only, and a
    // series' timestamp twice in one request is one sample.
    let mut more = two_series();
    more.timeseries[0].samples.push(PromSample {
        value: 5.0,
        timestamp: BASE_MS + 3_000,
    });
    more.timeseries[0].samples.push(PromSample {
        value: 6.0,
        timestamp: BASE_MS + 3_000,
    });
    assert_eq!(write(&app, &key, &more).await.status(), 204);
    assert_eq!(app.count_rows("up").await, 7);
    let summary = read(
        &app,
        &key,
        "/api/metrics/summary?type=up&tag=instance:a:9100",
    )
    .await;
    assert_eq!(
        (summary["count"].clone(), summary["latest_value"].clone()),
        (json!(4), json!(5.0))
    );
    // The rollups agree: the unfiltered summary counts each stored sample once.
    let unfiltered = read(&app, &key, "/api/metrics/summary?type=up").await;
    assert_eq!(unfiltered["count"], 7);
    assert_eq!(unfiltered["max_value"], 5.0);

    // The JSON API stores what it is sent, however many points share a timestamp.
    let point = json!({"type": "up", "value": 1.0, "timestamp": "2026-12-01T00:00:00Z",
                       "tags": {"instance": "a:9100", "job": "node"}});
    for _ in 0..2 {
        let response = app
            .client
            .post(app.url("/api/metrics"))
            .bearer_auth(&key)
            .json(&point)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    assert_eq!(app.count_rows("up").await, 9);
}

#[tokio::test]
async fn remote_write_answers_each_case_with_the_status_its_retry_model_needs() {
    let (app, key) = spawn_app_with_key_and("acme", |settings| {
        settings.rate_limit.requests = 100_000;
    })
    .await;

    // Stale markers and other non-finite values are skipped, not refused.
    let stale = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "gone")],
            &[
                (f64::from_bits(STALE_NAN), 0),
                (f64::NAN, 1),
                (f64::INFINITY, 2),
                (3.0, 3),
            ],
        )],
    };
    assert_eq!(write(&app, &key, &stale).await.status(), 204);
    assert_eq!(app.count_rows("gone").await, 1);

    // Invalid series: 400 (Prometheus drops the request), and the valid rest is stored.
    let long = "v".repeat(501);
    let mixed = WriteRequest {
        timeseries: vec![
            series(&[("job", "nameless")], &[(1.0, 0)]),
            series(&[("__name__", "long_label"), ("k", &long)], &[(1.0, 0)]),
            series(
                &[("__name__", "fine")],
                &[(1.0, 0), (2.0, 1), (1e200, 2), (3.0, -BASE_MS - 1)],
            ),
        ],
    };
    let response = write(&app, &key, &mixed).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_SAMPLES");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("4 samples refused"),
        "{body}"
    );
    assert_eq!(app.count_rows("fine").await, 2);
    assert_eq!(app.count_rows("long_label").await, 0);

    // Undecodable: 400.
    let garbage = remote_write(&app, &key, b"\xff\xff\xff\xff\xff\xff".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(error_code(garbage).await, "MALFORMED_BODY");
    let not_protobuf = snap::raw::Encoder::new()
        .compress_vec(b"\x0a\xff\xff\xff\x0f")
        .unwrap();
    let response = remote_write(&app, &key, not_protobuf).send().await.unwrap();
    assert_eq!(response.status(), 400);

    // Another content type or encoding, or remote write 2.0: 415.
    let body = snappy(&two_series());
    for (content_type, encoding) in [
        ("application/json", "snappy"),
        (
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            "snappy",
        ),
        ("application/x-protobuf", "gzip"),
        ("application/x-protobuf", "identity"),
    ] {
        let response = remote_write_as(&app, &key, body.clone(), content_type, encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{content_type} {encoding}");
    }
    let v1 = remote_write_as(
        &app,
        &key,
        body.clone(),
        "application/x-protobuf;proto=prometheus.WriteRequest",
        "snappy",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(v1.status(), 204);

    // Past the size limit, as sent or once inflated (a snappy bomb): 413, before inflating.
    let too_long = remote_write(&app, &key, vec![0; 4 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 413);
    let bomb = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 5 * 1024 * 1024])
        .unwrap();
    assert!(bomb.len() < 300 * 1024);
    let response = remote_write(&app, &key, bomb).send().await.unwrap();
    assert_eq!(response.status(), 413);

    // Without a key: 401; nothing above was stored outside the tenant.
    let anonymous = app
        .client
        .post(app.url("/api/v1/write"))
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .header(header::CONTENT_ENCODING, "snappy")
        .body(snappy(&two_series()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn remote_write_over_quota_gets_429_with_retry_after() {
    let (app, _) = spawn_app_with_key("acme").await;
    let admin = app
        .settings
        .auth
        .bootstrap_admin_key
        .clone()
        .unwrap()
        .reveal();
    let created: Value = app
        .client
        .post(app.url("/api/admin/keys"))
        .bearer_auth(admin)
        .json(&json!({"tenant": "acme", "scopes": ["write"], "quota": "2/60"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limited = created["key"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(write(&app, limited, &two_series()).await.status(), 204);
    }
    let refused = write(&app, limited, &two_series()).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
}

#[tokio::test]
async fn while_postgresql_is_down_remote_write_gets_503_and_its_retry_is_stored_once() {
    let (app, key) = spawn_app_with_key("acme").await;
    // Known series and key, so the outage is met by the insert itself.
    assert_eq!(write(&app, &key, &two_series()).await.status(), 204);
    app.postgres.stop_with_timeout(Some(0)).await.unwrap();
    let mut request = two_series();
    for series in &mut request.timeseries {
        series
            .samples
            .iter_mut()
            .for_each(|s| s.timestamp += 60_000);
    }
    let refused = write(&app, &key, &request).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    app.postgres.start().await.unwrap();
    let stored = crate::helpers::eventually(Duration::from_secs(30), || async {
        (write(&app, &key, &request).await.status() == 204).then_some(())
    })
    .await;
    assert!(stored.is_some(), "the retry was not stored within 30 s");
    assert_eq!(write(&app, &key, &request).await.status(), 204);
    assert_eq!(app.count_rows("up").await, 12);
}

fn gauge_request(points: Vec<NumberDataPoint>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(OtlpValue::StringValue("checkout".into())),
                    }),
                }],
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue_depth".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: points,
                    })),
                }],
            }],
        }],
    }
}

fn number_point(seconds: u64, value: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: Vec::new(),
        time_unix_nano: (BASE_MS as u64 / 1_000 + seconds) * 1_000_000_000,
        value: Some(NumberValue::AsDouble(value)),
        flags: 0,
    }
}

fn otlp(app: &TestApp, key: &str, content_type: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/v1/metrics"))
        .bearer_auth(key)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn otlp_answers_in_the_requests_content_type_with_partial_success() {
    let (app, key) = spawn_app_with_key("acme").await;

    // Protobuf, gzip: 200 with an empty protobuf response.
    let request = gauge_request(vec![number_point(0, 1.0), number_point(1, 2.0)]);
    let response = otlp(
        &app,
        &key,
        "application/x-protobuf",
        gzip(&request.encode_to_vec()),
    )
    .header(header::CONTENT_ENCODING, "gzip")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/x-protobuf"
    );
    let answer = ExportMetricsServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer.partial_success, None);
    let summary = read(
        &app,
        &key,
        "/api/metrics/summary?type=queue_depth&tag=service.name:checkout",
    )
    .await;
    assert_eq!(summary["count"], 2);

    // JSON, with a refused point: 200 with partialSuccess, the rest stored; a retry of it
    // stores nothing twice.
    let json_request = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
        "name": "queue_depth",
        "gauge": {"dataPoints": [
            {"timeUnixNano": ((BASE_MS / 1000 + 2) * 1_000_000_000).to_string(), "asInt": "7"},
            {"timeUnixNano": "0", "asDouble": 1.0}
        ]}
    }]}]}]});
    for _ in 0..2 {
        let response = otlp(
            &app,
            &key,
            "application/json",
            json_request.to_string().into_bytes(),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["partialSuccess"]["rejectedDataPoints"], "1",
            "{answer}"
        );
    }
    assert_eq!(app.count_rows("queue_depth").await, 3);

    // Undecodable: 400; another type or encoding: 415; a gzip bomb: 413.
    let garbage = otlp(
        &app,
        &key,
        "application/x-protobuf",
        b"\x0a\xff\xff\xff".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(garbage.status(), 400);
    let bad_json = otlp(
        &app,
        &key,
        "application/json",
        b"{\"resourceMetrics\": 1}".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(bad_json.status(), 400);
    let text = otlp(&app, &key, "text/plain", b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);
    let brotli = otlp(
        &app,
        &key,
        "application/x-protobuf",
        request.encode_to_vec(),
    )
    .header(header::CONTENT_ENCODING, "br")
    .send()
    .await
    .unwrap();
    assert_eq!(brotli.status(), 415);
    let bomb = gzip(&vec![0u8; 16 * 1024 * 1024]);
    let response = otlp(&app, &key, "application/x-protobuf", bomb)
        .header(header::CONTENT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(app.count_rows("queue_depth").await, 3);
}
