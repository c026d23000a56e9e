use serde_json::{Value, json};

use crate::helpers::{metric, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_valid_point_is_committed_and_acknowledged_with_201() {
    let app = spawn_app().await;
    let before = chrono::Utc::now();

    let response = app
        .post_json(
            "/api/metrics",
            &json!({
                "timestamp": "2026-01-01T12:00:00+02:00",
                "value": 75.5,
                "type": "cpu_usage",
                "tags": {"host": "web-1", "region": "eu"}
            }),
        )
        .await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_i64().unwrap() > 0);
    assert_eq!(body["message"], "Metric received");
    assert_eq!(body["type"], "cpu_usage");
    let received: chrono::DateTime<chrono::Utc> =
        body["timestamp"].as_str().unwrap().parse().unwrap();
    assert!(received >= before - chrono::TimeDelta::seconds(5));

    // The row is there, normalised to UTC, as an analyst sees it.
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let (recorded_at, value, tags): (String, f64, Value) = sqlx::query_as(
        "select to_char(recorded_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS'), value, tags \
         from metrics where id = $1",
    )
    .bind(body["id"].as_i64().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded_at, "2026-01-01 10:00:00");
    assert_eq!(value, 75.5);
    assert_eq!(tags, json!({"host": "web-1", "region": "eu"}));
}

#[tokio::test]
async fn invalid_points_get_422_with_one_error_per_field_and_store_nothing() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 100).await;
    let long_type = "x".repeat(101);
    let many_tags: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (json!({"value": 1, "type": "t"}), vec!["timestamp"]),
        (
            json!({"timestamp": "not a time", "value": 1, "type": "t"}),
            vec!["timestamp"],
        ),
        (
            json!({"timestamp": "2026-01-01T00:00:00Z", "value": "1.5", "type": "t"}),
            vec!["value"],
        ),
        (
            json!({"timestamp": "2026-01-01T00:00:00Z", "value": 1e101, "type": "t"}),
            vec!["value"],
        ),
        (
            json!({"timestamp": "2026-01-01T00:00:00Z", "value": 1, "type": ""}),
            vec!["type"],
        ),
        (
            json!({"timestamp": "2026-01-01T00:00:00Z", "value": 1, "type": long_type}),
            vec!["type"],
        ),
        (
            json!({"timestamp": "2026-01-01T00:00:00Z", "value": 1, "type": "a\u{0}b"}),
            vec!["type"],
        ),
        (
            json!({"timestamp": "2026-01-01T00:00:00Z", "value": 1, "type": "t", "tags": many_tags}),
            vec!["tags"],
        ),
        (
            json!({"timestamp": "2026-01-01T00:00:00Z", "value": 1, "type": "t", "tags": {"k": 1}}),
            vec!["tags"],
        ),
        (
            json!({"timestamp": 5, "value": null, "type": 7}),
            vec!["timestamp", "value", "type"],
        ),
        (json!([1, 2, 3]), vec!["body"]),
    ];
    for (body, fields) in cases {
        let response = app.post_json("/api/metrics", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "VALIDATION_ERROR");
        assert!(error["message"].is_string() && error["timestamp"].is_string());
        let reported: Vec<&str> = error["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(reported, fields, "{body}");
    }
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from metrics")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn type_length_is_counted_in_characters_not_bytes() {
    let app = spawn_app().await;
    let response = app.post_metric(&"é".repeat(100), 1.0).await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn malformed_json_wrong_content_type_and_oversized_bodies_are_refused() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 100).await;
    let post = |content_type: &'static str, body: Vec<u8>| {
        app.client
            .post(app.url("/api/metrics"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let response = post("application/json", b"{\"value\": ".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "MALFORMED_JSON"
    );

    let body = serde_json::to_vec(&metric("cpu", 1.0)).unwrap();
    let response = post("text/plain", body).await.unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "UNSUPPORTED_MEDIA_TYPE"
    );

    let mut huge = serde_json::to_vec(&metric("cpu", 1.0)).unwrap();
    huge.pop();
    huge.extend_from_slice(b", \"padding\": \"");
    huge.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    huge.extend_from_slice(b"\"}");
    let response = post("application/json", huge).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "PAYLOAD_TOO_LARGE"
    );

    assert_eq!(app.count_rows("cpu").await, 0);
}

#[tokio::test]
async fn a_timestamp_without_offset_is_taken_as_utc_and_unknown_fields_are_ignored() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/api/metrics",
            &json!({"timestamp": "2026-03-01T08:30:00", "value": -2, "type": "temp", "unit": "C"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let list: Value = app
        .get("/api/metrics/list?type=temp")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["timestamp"], "2026-03-01T08:30:00Z");
    assert_eq!(list[0]["value"], -2.0);
}
