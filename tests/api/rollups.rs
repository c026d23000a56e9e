//! Summaries are exact in every state of the rollups: right after a large batch (its
//! aggregates still deltas), while a fold is under way (some deltas taken, not yet committed),
//! across a restart in the middle of that fold, and once everything is folded.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::{
    helpers::{eventually, spawn_app_with},
    summary::check_against_raw_rows,
};

/// Up to `count` points of type `acc`, one every `spacing` seconds back from `until`, so a
/// batch covers many minutes (and so many deltas). None lies where the edge of the last hour
/// or day will be while the test runs (its first few minutes after `until`), so the service's
/// windows and the check's, a moment apart, hold the same points.
fn batch(count: i64, until: DateTime<Utc>, spacing: i64, seed: i64) -> serde_json::Value {
    let near_an_edge = |age: i64| {
        [3_600, 86_400]
            .iter()
            .any(|edge| (edge - 600..=edge + 60).contains(&age))
    };
    let points: Vec<_> = (0..count)
        .map(|i| (i, i * spacing + 7))
        .filter(|&(_, age)| !near_an_edge(age))
        .map(|(i, age)| {
            let at = until - TimeDelta::seconds(age);
            let value = (((i + seed) * 7919) % 10_000) as f64 / 13.0 - 100.0;
            json!({"timestamp": at.to_rfc3339(), "value": value, "type": "acc"})
        })
        .collect();
    json!({ "metrics": points })
}

async fn pending_deltas(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from metric_rollup_deltas")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_until_folded(pool: &PgPool) {
    let folded = eventually(Duration::from_secs(30), || async {
        (pending_deltas(pool).await == 0).then_some(())
    })
    .await;
    assert!(folded.is_some(), "the deltas were not folded within 30 s");
}

/// Whether a session is waiting for a lock in the middle of the rollups' fold.
async fn fold_is_blocked(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "select count(*) > 0 from pg_stat_activity
         where wait_event_type = 'Lock' and query like '%delete from metric_rollup_deltas%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn summaries_are_exact_after_a_large_batch_during_a_fold_and_across_a_restart_in_it() {
    let mut app = spawn_app_with(|s| s.rate_limit.requests = 1000).await;
    let pool = PgPool::connect(&app.settings.database_url).await.unwrap();
    let now = Utc::now();

    // A large batch over three days: its aggregates are thousands of deltas at first.
    let response = app
        .post_json("/api/metrics/batch", &batch(10_000, now, 25, 0))
        .await;
    assert_eq!(response.status(), 201);
    check_against_raw_rows(&app, &pool, "right after a large batch").await;
    wait_until_folded(&pool).await;
    check_against_raw_rows(&app, &pool, "the large batch folded").await;

    // Hold today's day rollup, so that the next fold takes its deltas (deletes them, in its
    // transaction) and then waits on the row: a fold caught in the middle.
    let mut holder = PgConnection::connect(&app.settings.database_url)
        .await
        .unwrap();
    sqlx::query("begin").execute(&mut holder).await.unwrap();
    let held: i64 = sqlx::query_scalar(
        "select count(*) from (select 1 from metric_rollups
         where metric_type = 'acc' and resolution = 'day' and bucket_start = date_trunc('day', now(), 'UTC')
         for update) as locked",
    )
    .fetch_one(&mut holder)
    .await
    .unwrap();
    assert_eq!(held, 1, "today's day rollup of acc exists");
    let response = app
        .post_json("/api/metrics/batch", &batch(5_000, now, 3, 1))
        .await;
    assert_eq!(response.status(), 201);
    let blocked = eventually(Duration::from_secs(10), || async {
        fold_is_blocked(&pool).await.then_some(())
    })
    .await;
    assert!(blocked.is_some(), "the fold never reached the held row");
    assert!(pending_deltas(&pool).await > 0);
    check_against_raw_rows(&app, &pool, "in the middle of a fold").await;

    // The server goes away with its fold still waiting; the restarted one must neither count
    // the taken deltas twice nor lose them.
    app.restart_server().await;
    check_against_raw_rows(&app, &pool, "restarted in the middle of a fold").await;

    sqlx::query("rollback").execute(&mut holder).await.unwrap();
    wait_until_folded(&pool).await;
    check_against_raw_rows(&app, &pool, "the interrupted fold finished").await;
    let stored: i64 = sqlx::query_scalar("select count(*) from metrics")
        .fetch_one(&pool)
        .await
        .unwrap();
    let expected: usize = [batch(10_000, now, 25, 0), batch(5_000, now, 3, 1)]
        .iter()
        .map(|b| b["metrics"].as_array().unwrap().len())
        .sum();
    assert_eq!(stored as usize, expected);
}
