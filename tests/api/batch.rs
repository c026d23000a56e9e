//! Group-committed single writes and the batch endpoint.

use std::{collections::BTreeSet, io::Write};

use flate2::{Compression, write::GzEncoder};
use serde_json::{Value, json};

use crate::helpers::{TestApp, metric, spawn_app, spawn_app_with};

async fn post_batch(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app.post_json("/api/metrics/batch", body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn post_gzip(app: &TestApp, body: Vec<u8>, encoding: &str) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/api/metrics/batch"))
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn concurrent_single_writes_are_all_acknowledged_and_stored_exactly_once() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 10_000).await;
    let writes: Vec<_> = (0..300)
        .map(|i| {
            let (client, url) = (app.client.clone(), app.url("/api/metrics"));
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&metric("group", f64::from(i)))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                let body: Value = response.json().await.unwrap();
                (body["id"].as_i64().unwrap(), i)
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for write in writes {
        acknowledged.push(write.await.unwrap());
    }
    let ids: BTreeSet<i64> = acknowledged.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 300, "every write got its own id");

    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let stored: Vec<(i64, f64)> =
        sqlx::query_as("select id, value from metrics where metric_type = 'group'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 300, "stored exactly once");
    // Each acknowledged id is the row holding that writer's value.
    let by_id: std::collections::HashMap<i64, f64> = stored.into_iter().collect();
    for (id, value) in acknowledged {
        assert_eq!(by_id[&id], f64::from(value));
    }
    let (_, _, summary) = app.summary("type=group").await;
    assert_eq!(summary["count"], 300);
}

#[tokio::test]
async fn a_valid_batch_is_stored_in_full_and_reflected_by_the_next_summary() {
    let app = spawn_app().await;
    let (_, cache, _) = app.summary("type=batch").await;
    assert_eq!(cache.as_deref(), Some("MISS"));
    let points: Vec<Value> = (1..=500).map(|i| metric("batch", f64::from(i))).collect();

    let (status, body) = post_batch(&app, &json!({ "metrics": points })).await;

    assert_eq!(status, 201);
    assert_eq!(body, json!({"accepted": 500}));
    assert_eq!(app.count_rows("batch").await, 500);
    let (_, _, summary) = app.summary("type=batch").await;
    assert_eq!(summary["count"], 500);
    assert_eq!(summary["max_value"], 500.0);
}

#[tokio::test]
async fn a_batch_with_some_invalid_points_stores_the_valid_ones_and_lists_the_others() {
    let app = spawn_app().await;
    let body = json!({ "metrics": [
        metric("mixed", 1.0),
        {"timestamp": "nope", "value": 2, "type": "mixed"},
        metric("mixed", 3.0),
        {"timestamp": "2026-01-01T00:00:00Z", "value": "4", "type": ""},
    ]});

    let (status, body) = post_batch(&app, &body).await;

    assert_eq!(status, 200);
    assert_eq!(body["accepted"], 2);
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[0]["errors"][0]["field"], "timestamp");
    assert_eq!(rejected[1]["index"], 3);
    let fields: Vec<&str> = rejected[1]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["value", "type"]);
    assert_eq!(app.count_rows("mixed").await, 2);
}

#[tokio::test]
async fn a_batch_without_a_valid_point_is_422_and_stores_nothing() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 100).await;
    for body in [
        json!({"metrics": [{"value": 1}, {"timestamp": "x", "value": 1, "type": "none"}]}),
        json!({"metrics": []}),
        json!({"metrics": "all of them"}),
        json!([metric("none", 1.0)]),
    ] {
        let (status, error) = post_batch(&app, &body).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(error["code"], "VALIDATION_ERROR");
        assert!(!error["errors"].as_array().unwrap().is_empty());
    }
    let (_, error) = post_batch(&app, &json!({"metrics": [{"value": 1}]})).await;
    assert_eq!(error["errors"][0]["field"], "metrics[0].timestamp");
    assert_eq!(app.count_rows("none").await, 0);
}

#[tokio::test]
async fn batches_over_the_count_or_size_limit_are_413() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 100).await;
    let points: Vec<Value> = (0..10_001).map(|i| metric("big", f64::from(i))).collect();
    let (status, error) = post_batch(&app, &json!({ "metrics": points })).await;
    assert_eq!(status, 413);
    assert_eq!(error["code"], "PAYLOAD_TOO_LARGE");

    let exactly: Vec<Value> = (0..10_000).map(|i| metric("big", f64::from(i))).collect();
    assert_eq!(
        post_batch(&app, &json!({ "metrics": exactly })).await.0,
        201
    );

    let padding = "x".repeat(17 * 1024 * 1024);
    let (status, _) = post_batch(&app, &json!({ "metrics": [], "padding": padding })).await;
    assert_eq!(status, 413);
    // A small gzip body that inflates past the limit is refused too.
    let bomb = gzip(&vec![b' '; 17 * 1024 * 1024]);
    assert!(bomb.len() < 100 * 1024);
    assert_eq!(post_gzip(&app, bomb, "gzip").await.0, 413);
    assert_eq!(app.count_rows("big").await, 10_000);
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_other_encodings_refused() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 100).await;
    let points: Vec<Value> = (0..1_000).map(|i| metric("zipped", f64::from(i))).collect();
    let body = serde_json::to_vec(&json!({ "metrics": points })).unwrap();

    let (status, accepted) = post_gzip(&app, gzip(&body), "gzip").await;
    assert_eq!((status, accepted), (201, json!({"accepted": 1000})));

    let (status, error) = post_gzip(&app, b"not gzip at all".to_vec(), "gzip").await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = post_gzip(&app, body.clone(), "br").await;
    assert_eq!(status, 415);
    assert_eq!(error["code"], "UNSUPPORTED_MEDIA_TYPE");

    // The single-point endpoint takes gzip as well.
    let single = serde_json::to_vec(&metric("zipped", 1.0)).unwrap();
    let response = app
        .client
        .post(app.url("/api/metrics"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(&single))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(app.count_rows("zipped").await, 1001);
}

#[tokio::test]
async fn a_batch_counts_as_one_request_for_the_rate_limiter() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 2).await;
    let points: Vec<Value> = (0..100).map(|i| metric("limited", f64::from(i))).collect();
    let response = app
        .post_json("/api/metrics/batch", &json!({ "metrics": points }))
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["ratelimit-remaining"], "1");
    assert_eq!(app.post_metric("limited", 1.0).await.status(), 201);
    let response = app
        .post_json(
            "/api/metrics/batch",
            &json!({ "metrics": [metric("limited", 1.0)] }),
        )
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(app.count_rows("limited").await, 101);
}

#[tokio::test]
async fn a_number_out_of_range_rejects_its_point_not_the_batch() {
    let app = spawn_app().await;
    let valid = metric("range", 1.0).to_string();
    let body = format!(
        r#"{{"metrics": [{{"timestamp": "2026-01-01T00:00:00Z", "value": 1e400, "type": "range"}}, {valid}]}}"#
    );
    let response = app
        .client
        .post(app.url("/api/metrics/batch"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["index"], 0);
    assert_eq!(app.count_rows("range").await, 1);
}
