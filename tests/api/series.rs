use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

async fn seed(app: &TestApp) {
    let points: Vec<Value> = [
        ("2026-05-01T10:00:30Z", 1.0),
        ("2026-05-01T10:01:10Z", 3.0),
        ("2026-05-01T10:01:50Z", 5.0),
        ("2026-05-01T10:07:00Z", 10.0),
    ]
    .iter()
    .map(|(at, value)| json!({"timestamp": at, "value": value, "type": "series"}))
    .collect();
    let response = app
        .post_json("/api/metrics/batch", &json!({ "metrics": points }))
        .await;
    assert_eq!(response.status(), 201);
}

async fn series(app: &TestApp, query: &str) -> (u16, Value) {
    let response = app.get(&format!("/api/metrics/series?{query}")).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn minute_buckets_include_the_empty_ones() {
    let app = spawn_app().await;
    seed(&app).await;

    let (status, body) = series(
        &app,
        "type=series&from=2026-05-01T10:00:30Z&to=2026-05-01T10:05:00Z&bucket=1m",
    )
    .await;

    assert_eq!(status, 200);
    assert_eq!(body["type"], "series");
    assert_eq!(body["bucket"], "1m");
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 5, "10:00 (holding `from`) to 10:04");
    assert_eq!(
        buckets[0],
        json!({"start": "2026-05-01T10:00:00Z", "count": 1, "avg": 1.0, "min": 1.0, "max": 1.0})
    );
    assert_eq!(
        buckets[1],
        json!({"start": "2026-05-01T10:01:00Z", "count": 2, "avg": 4.0, "min": 3.0, "max": 5.0})
    );
    for empty in &buckets[2..] {
        assert_eq!(empty["count"], 0);
        assert!(empty["avg"].is_null() && empty["min"].is_null() && empty["max"].is_null());
    }
    assert_eq!(buckets[4]["start"], "2026-05-01T10:04:00Z");
}

#[tokio::test]
async fn wider_buckets_roll_the_minutes_up() {
    let app = spawn_app().await;
    seed(&app).await;

    let (_, five) = series(
        &app,
        "type=series&from=2026-05-01T10:00:00Z&to=2026-05-01T10:10:00Z&bucket=5m",
    )
    .await;
    let five = five["buckets"].as_array().unwrap();
    assert_eq!(five.len(), 2);
    assert_eq!(
        (five[0]["count"].as_i64(), five[0]["avg"].as_f64()),
        (Some(3), Some(3.0))
    );
    assert_eq!(
        (five[1]["count"].as_i64(), five[1]["max"].as_f64()),
        (Some(1), Some(10.0))
    );

    for bucket in ["1h", "1d"] {
        let (_, body) = series(
            &app,
            &format!(
                "type=series&from=2026-05-01T10:00:00Z&to=2026-05-01T10:30:00Z&bucket={bucket}"
            ),
        )
        .await;
        let buckets = body["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 1, "{bucket}");
        assert_eq!(buckets[0]["count"], 4);
        assert_eq!(buckets[0]["avg"], 4.75);
    }
}

#[tokio::test]
async fn bad_or_too_large_ranges_are_400() {
    let app = spawn_app().await;
    for (query, field) in [
        ("from=2026-05-01T10:00:00Z&to=2026-05-01T11:00:00Z", "type"),
        ("type=s&to=2026-05-01T11:00:00Z", "from"),
        ("type=s&from=2026-05-01T10:00:00Z", "to"),
        ("type=s&from=yesterday&to=2026-05-01T11:00:00Z", "from"),
        (
            "type=s&from=2026-05-01T10:00:00Z&to=2026-05-01T11:00:00Z&bucket=2m",
            "bucket",
        ),
        (
            "type=s&from=2026-05-01T11:00:00Z&to=2026-05-01T10:00:00Z",
            "to",
        ),
        // 8 days of minutes: 11,520 buckets.
        (
            "type=s&from=2026-05-01T00:00:00Z&to=2026-05-09T00:00:00Z&bucket=1m",
            "to",
        ),
    ] {
        let (status, body) = series(&app, query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["code"], "INVALID_QUERY");
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
    // Exactly 10,000 buckets is allowed.
    let (status, body) = series(
        &app,
        "type=s&from=2026-01-01T00:00:00Z&to=2026-01-07T22:40:00Z&bucket=1m",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["buckets"].as_array().unwrap().len(), 10_000);
}
