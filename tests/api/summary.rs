use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};

use std::time::Duration;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with};

async fn post_at(app: &TestApp, metric_type: &str, value: f64, ago: TimeDelta) {
    let body = json!({
        "timestamp": (Utc::now() - ago).to_rfc3339(),
        "value": value,
        "type": metric_type,
    });
    assert_eq!(app.post_json("/api/metrics", &body).await.status(), 201);
}

#[tokio::test]
async fn a_type_without_points_summarises_to_zeros() {
    let app = spawn_app().await;
    let (status, _, body) = app.summary("type=nothing").await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "nothing");
    assert_eq!(body["period"], "all");
    assert_eq!(body["count"], 0);
    for field in [
        "average_value",
        "min_value",
        "max_value",
        "latest_value",
        "p50",
        "p95",
        "p99",
    ] {
        assert_eq!(body[field], 0.0, "{field}");
    }
    assert_eq!(body["enrichment_status"], "ok");
    assert_eq!(body["enrichment"]["metric_type"], "nothing");
}

#[tokio::test]
async fn percentiles_never_lie_outside_the_values_written() {
    let app = spawn_app().await;
    assert_eq!(app.post_metric("single", 75.5).await.status(), 201);
    let (_, _, body) = app.summary("type=single").await;
    for field in [
        "p50",
        "p95",
        "p99",
        "min_value",
        "max_value",
        "latest_value",
    ] {
        assert_eq!(body[field], 75.5, "{field}: {body}");
    }
    for value in [-3.25, 1e-3] {
        assert_eq!(app.post_metric("pair", value).await.status(), 201);
    }
    let (_, _, body) = app.summary("type=pair").await;
    for field in ["p50", "p95", "p99"] {
        let estimate = body[field].as_f64().unwrap();
        assert!((-3.25..=1e-3).contains(&estimate), "{field}: {estimate}");
    }
}

#[tokio::test]
async fn the_summary_aggregates_in_sql_with_continuous_percentiles() {
    let app = spawn_app().await;
    // Inserted out of time order: latest is the point with the greatest timestamp.
    for (value, minutes_ago) in [(50.0, 10), (10.0, 50), (40.0, 1), (20.0, 40), (30.0, 30)] {
        post_at(&app, "latency", value, TimeDelta::minutes(minutes_ago)).await;
    }
    let (status, _, body) = app.summary("type=latency&period=all").await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 5);
    assert_eq!(body["average_value"], 30.0);
    assert_eq!(body["min_value"], 10.0);
    assert_eq!(body["max_value"], 50.0);
    assert_eq!(body["latest_value"], 40.0);
    // Percentiles come from sketches: within 1% of percentile_cont (p95 of 10..50 is 48).
    for (field, exact) in [("p50", 30.0), ("p95", 48.0), ("p99", 49.6)] {
        let estimate = body[field].as_f64().unwrap();
        assert!(
            (estimate - exact).abs() <= 0.01 * exact,
            "{field}: {estimate} vs {exact}"
        );
    }
}

#[tokio::test]
async fn summaries_match_sql_over_the_raw_rows_for_every_period() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 100).await;
    // Three days of points, some negative, some at the very start of minutes, hours and days,
    // so that every kind of rollup and the raw edge of the window are used.
    let now = Utc::now();
    let mut points = Vec::new();
    for i in 0..3_000i64 {
        let at = now - TimeDelta::seconds(i * 97 + 13);
        let value = ((i * 7919) % 1000) as f64 / 7.0 - 20.0;
        points.push(json!({"timestamp": at.to_rfc3339(), "value": value, "type": "acc"}));
    }
    for chunk in points.chunks(1000) {
        let response = app
            .post_json("/api/metrics/batch", &json!({ "metrics": chunk }))
            .await;
        assert_eq!(response.status(), 201);
    }

    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    // Right after the writes, while their aggregates are still deltas, and once the service has
    // folded them into the rollups.
    check_against_raw_rows(&app, &pool, "deltas pending").await;
    let folded = eventually(Duration::from_secs(15), || async {
        let pending: i64 = sqlx::query_scalar("select count(*) from metric_rollup_deltas")
            .fetch_one(&pool)
            .await
            .ok()?;
        (pending == 0).then_some(())
    })
    .await;
    assert!(folded.is_some(), "deltas were not folded into the rollups");
    check_against_raw_rows(&app, &pool, "deltas folded").await;
}

pub(crate) async fn check_against_raw_rows(app: &TestApp, pool: &sqlx::PgPool, phase: &str) {
    for (period, interval) in [
        ("all", "1000 years"),
        ("daily", "24 hours"),
        ("hourly", "1 hour"),
    ] {
        let (_, _, body) = app.summary(&format!("type=acc&period={period}")).await;
        let (count, avg, min, max, p50, p95, p99): (i64, f64, f64, f64, f64, f64, f64) =
            sqlx::query_as(
                "select count(*), avg(value), min(value), max(value),
                    percentile_cont(0.5) within group (order by value),
                    percentile_cont(0.95) within group (order by value),
                    percentile_cont(0.99) within group (order by value)
             from metrics where metric_type = 'acc' and recorded_at >= now() - $1::interval",
            )
            .bind(interval)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(body["count"], count, "{phase}: {period}");
        let close = |field: &str, exact: f64, tolerance: f64| {
            let got = body[field].as_f64().unwrap();
            assert!(
                (got - exact).abs() <= tolerance * exact.abs().max(1e-9),
                "{phase}: {period} {field}: {got} vs {exact}"
            );
        };
        close("average_value", avg, 1e-9);
        close("min_value", min, 0.0);
        close("max_value", max, 0.0);
        close("p50", p50, 0.01);
        close("p95", p95, 0.01);
        close("p99", p99, 0.01);
        let latest: f64 = sqlx::query_scalar(
            "select value from metrics where metric_type = 'acc' order by recorded_at desc, id desc limit 1",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        close("latest_value", latest, 0.0);
    }
}

#[tokio::test]
async fn periods_cover_the_last_day_and_the_last_hour() {
    let app = spawn_app().await;
    post_at(&app, "mem", 1.0, TimeDelta::days(3)).await;
    post_at(&app, "mem", 2.0, TimeDelta::hours(5)).await;
    post_at(&app, "mem", 3.0, TimeDelta::minutes(5)).await;

    let count = |body: &Value| body["count"].as_i64().unwrap();
    let (_, _, all) = app.summary("type=mem").await;
    let (_, _, daily) = app.summary("type=mem&period=daily").await;
    let (_, _, hourly) = app.summary("type=mem&period=hourly").await;
    assert_eq!((count(&all), count(&daily), count(&hourly)), (3, 2, 1));
    assert_eq!(daily["period"], "daily");
    assert_eq!(daily["min_value"], 2.0);
    assert_eq!(hourly["average_value"], 3.0);
}

#[tokio::test]
async fn summaries_are_read_through_the_cache_and_fresh_after_a_write() {
    let app = spawn_app().await;
    post_at(&app, "cpu", 10.0, TimeDelta::minutes(1)).await;

    let (_, first, body) = app.summary("type=cpu").await;
    assert_eq!(first.as_deref(), Some("MISS"));
    assert_eq!(body["count"], 1);
    let (_, second, cached) = app.summary("type=cpu").await;
    assert_eq!(second.as_deref(), Some("HIT"));
    assert_eq!(cached, body);

    // Another type's write leaves this cache entry alone.
    post_at(&app, "disk", 1.0, TimeDelta::minutes(1)).await;
    assert_eq!(app.summary("type=cpu").await.1.as_deref(), Some("HIT"));

    // A write of this type is reflected by the very next read.
    post_at(&app, "cpu", 30.0, TimeDelta::zero()).await;
    let (_, after_write, fresh) = app.summary("type=cpu").await;
    assert_eq!(after_write.as_deref(), Some("MISS"));
    assert_eq!(fresh["count"], 2);
    assert_eq!(fresh["latest_value"], 30.0);
    assert_eq!(app.summary("type=cpu").await.1.as_deref(), Some("HIT"));
}

#[tokio::test]
async fn every_write_is_visible_to_the_next_summary_under_concurrent_reads() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1000).await;
    for expected in 1..=15 {
        // Readers racing the write may cache a summary computed before it; the read after
        // the acknowledgement must still see it.
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (client, url) = (
                    app.client.clone(),
                    app.url("/api/metrics/summary?type=race"),
                );
                tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
            })
            .collect();
        post_at(&app, "race", expected as f64, TimeDelta::zero()).await;
        let (_, _, body) = app.summary("type=race").await;
        assert_eq!(body["count"], expected);
        for reader in readers {
            assert_eq!(reader.await.unwrap(), 200);
        }
    }
}

#[tokio::test]
async fn missing_or_invalid_parameters_get_400() {
    let app = spawn_app().await;
    for (query, field) in [
        ("", "type"),
        ("type=", "type"),
        ("type=cpu&period=weekly", "period"),
        ("period=daily", "type"),
    ] {
        let (status, _, body) = app.summary(query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["code"], "INVALID_QUERY");
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
}
