//! Dependencies failing and coming back while the server runs: Redis, PostgreSQL, and a
//! server that starts before its database.

use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use resilient_analytics::startup::Application;
use serde_json::{Value, json};

use crate::helpers::{
    ServerProcess, TestApp, eventually, free_port, http_client, metric, spawn_app, spawn_app_with,
    start_postgres, start_redis, test_settings,
};

/// "A few seconds": an outage must be answered well before this.
const PROMPT: Duration = Duration::from_secs(6);
/// Long enough, after a lock is released, for a write still queued behind it to commit.
const LATE_COMMIT_WINDOW: Duration = Duration::from_secs(2);
/// Sequential writes that pass through every connection the pool has opened by then (one or
/// two: the health checks and the rollup compaction share it).
const WARM_UP_WRITES: usize = 4;
/// Types in one batch written while Redis is down: far more than the cache remembers.
const OUTAGE_BATCH_TYPES: usize = 2_000;
/// Commands one flush of owed cache bumps may send: an INCR and an EXPIRE for each of at most
/// 256 types.
const MAX_FLUSH_COMMANDS: u64 = 2 * 256;

async fn health(app_url: &str, client: &reqwest::Client) -> (StatusCode, Value) {
    let response = client
        .get(format!("{app_url}/health"))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

fn header_u64(response: &Response, name: &str) -> u64 {
    response.headers()[name].to_str().unwrap().parse().unwrap()
}

/// Checks a 503 that says the database is unavailable and tells the client when to retry.
async fn assert_service_unavailable(response: Response) {
    assert_eq!(response.status(), 503);
    assert!(header_u64(&response, "retry-after") >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "{body}");
}

async fn listed_values(app: &TestApp, metric_type: &str) -> Vec<f64> {
    let response = app
        .get(&format!("/api/metrics/list?type={metric_type}"))
        .await;
    assert_eq!(response.status(), 200);
    let list: Vec<Value> = response.json().await.unwrap();
    list.iter()
        .map(|point| point["value"].as_f64().unwrap())
        .collect()
}

/// Makes Redis write its data to disk, so a restarted container still holds the cache (the
/// stand-in image runs without persistence).
async fn persist_redis(app: &TestApp) {
    let client = redis::Client::open(app.settings.redis_url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SAVE")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}

/// How often Redis has run these commands since it started, from its INFO commandstats.
async fn redis_calls(app: &TestApp, commands: &[&str]) -> u64 {
    let client = redis::Client::open(app.settings.redis_url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .unwrap();
    let calls = |command: &&str| {
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    commands.iter().map(calls).sum()
}

#[tokio::test]
async fn while_redis_is_down_writes_succeed_under_a_local_limit_and_health_is_degraded() {
    let app = spawn_app_with(|settings| settings.rate_limit.requests = 3).await;

    app.redis.stop_with_timeout(Some(0)).await.unwrap();

    for value in [1.0, 2.0, 3.0] {
        let response = app.post_metric("cpu", value).await;
        assert_eq!(
            response.status(),
            201,
            "a Redis outage must not fail writes"
        );
    }
    // The in-process fallback keeps the same limit: no unlimited writes during the outage.
    let limited = app.post_metric("cpu", 4.0).await;
    assert_eq!(limited.status(), 429);
    assert!(header_u64(&limited, "retry-after") >= 1);
    assert_eq!(app.count_rows("cpu").await, 3);

    let (status, body) = health(&app.address, &app.client).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["redis_connected"], false);
    assert_eq!(body["database_connected"], true);

    for _ in 0..2 {
        let (status, cache, summary) = app.summary("type=cpu").await;
        assert_eq!(status, 200, "{summary}");
        assert_eq!(
            cache.as_deref(),
            Some("MISS"),
            "nothing is cached without Redis"
        );
        assert_eq!(summary["count"], 3);
        assert_eq!(summary["latest_value"], 3.0);
    }

    app.redis.start().await.unwrap();
    app.wait_for_health("healthy", Duration::from_secs(10))
        .await;

    // The cache works again: a read stores the summary, the next one is served from Redis.
    let cached = eventually(Duration::from_secs(5), || async {
        let (_, cache, summary) = app.summary("type=cpu").await;
        (cache.as_deref() == Some("HIT")).then_some(summary)
    })
    .await
    .expect("the cache did not come back with Redis");
    assert_eq!(cached["count"], 3);
    // The limiter is back on Redis, which has never seen this client, where the local limiter
    // would still refuse it.
    let admitted = eventually(Duration::from_secs(5), || async {
        (app.post_metric("cpu", 5.0).await.status() == 201).then_some(())
    })
    .await;
    assert!(admitted.is_some(), "the limiter did not go back to Redis");
}

#[tokio::test]
async fn a_write_made_while_redis_was_down_shows_in_the_summary_once_redis_is_back() {
    let app = spawn_app().await;
    assert_eq!(app.post_metric("cpu", 1.0).await.status(), 201);
    // A type untouched during the outage, to show the cache survives the restart.
    assert_eq!(app.post_metric("control", 5.0).await.status(), 201);
    for metric_type in ["cpu", "control"] {
        let query = format!("type={metric_type}");
        assert_eq!(app.summary(&query).await.1.as_deref(), Some("MISS"));
        assert_eq!(app.summary(&query).await.1.as_deref(), Some("HIT"));
    }
    persist_redis(&app).await;

    app.redis.stop_with_timeout(Some(0)).await.unwrap();
    assert_eq!(app.post_metric("cpu", 2.0).await.status(), 201);
    app.redis.start().await.unwrap();
    app.wait_for_health("healthy", Duration::from_secs(10))
        .await;

    // Without this the test would prove nothing: the old cached summaries are still there.
    let control = eventually(Duration::from_secs(5), || async {
        let (_, cache, summary) = app.summary("type=control").await;
        (cache.as_deref() == Some("HIT")).then_some(summary)
    })
    .await
    .expect("the cache did not survive the Redis restart");
    assert_eq!(control["count"], 1);

    let (status, _, summary) = app.summary("type=cpu").await;
    assert_eq!(status, 200);
    assert_eq!(
        summary["count"], 2,
        "a stale summary from before the outage: {summary}"
    );
    assert_eq!(summary["latest_value"], 2.0);
    let (_, cache, cached) = app.summary("type=cpu").await;
    assert_eq!(cache.as_deref(), Some("HIT"));
    assert_eq!(cached["count"], 2);
}

#[tokio::test]
async fn a_batch_of_thousands_of_types_written_while_redis_was_down_shows_once_it_is_back() {
    let app = spawn_app_with(|settings| settings.rate_limit.requests = 1000).await;
    let types: Vec<String> = (0..OUTAGE_BATCH_TYPES)
        .map(|i| format!("type-{i:04}"))
        .collect();
    let watched = [0, OUTAGE_BATCH_TYPES / 2, OUTAGE_BATCH_TYPES - 1].map(|i| &types[i]);
    // Summaries cached before the outage, which would be served if the write went unnoticed.
    for metric_type in watched {
        assert_eq!(app.post_metric(metric_type, 1.0).await.status(), 201);
        let query = format!("type={metric_type}");
        assert_eq!(app.summary(&query).await.1.as_deref(), Some("MISS"));
        assert_eq!(app.summary(&query).await.1.as_deref(), Some("HIT"));
    }
    persist_redis(&app).await;

    app.redis.stop_with_timeout(Some(0)).await.unwrap();
    let batch: Vec<Value> = types.iter().map(|t| metric(t, 2.0)).collect();
    let written = app
        .post_json("/api/metrics/batch", &json!({ "metrics": batch }))
        .await;
    assert_eq!(written.status(), 201);
    app.redis.start().await.unwrap();
    app.wait_for_health("healthy", Duration::from_secs(10))
        .await;

    for metric_type in watched {
        let (status, _, summary) = app.summary(&format!("type={metric_type}")).await;
        assert_eq!(status, 200);
        assert_eq!(
            summary["count"], 2,
            "a stale summary from before the outage: {summary}"
        );
        assert_eq!(summary["latest_value"], 2.0);
    }
    let query = format!("type={}", watched[0]);
    let cached = eventually(Duration::from_secs(5), || async {
        let (_, cache, summary) = app.summary(&query).await;
        (cache.as_deref() == Some("HIT")).then_some(summary)
    })
    .await
    .expect("the cache did not come back with Redis");
    assert_eq!(cached["count"], 2);
    // What was owed went out in one small round trip, not one bump per type written, so it
    // could not time out and mark Redis down again. (redis-rs sends INCR as INCRBY.)
    let bumps = redis_calls(&app, &["incr", "incrby", "expire"]).await;
    assert!(
        bumps <= MAX_FLUSH_COMMANDS,
        "{bumps} bump commands sent after the outage"
    );
    let (status, body) = health(&app.address, &app.client).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy");
}

#[tokio::test]
async fn while_postgresql_is_down_requests_get_a_prompt_503_and_writes_recover_without_a_restart() {
    // The recovery loop posts repeatedly.
    let app = spawn_app_with(|settings| settings.rate_limit.requests = 1000).await;
    assert_eq!(app.post_metric("cpu", 1.0).await.status(), 201);

    app.postgres.stop_with_timeout(Some(0)).await.unwrap();

    let started = Instant::now();
    let refused = app.post_metric("cpu", 2.0).await;
    let elapsed = started.elapsed();
    assert_service_unavailable(refused).await;
    assert!(elapsed < PROMPT, "the write hung for {elapsed:?}");
    let started = Instant::now();
    assert_service_unavailable(app.get("/api/metrics/summary?type=cpu").await).await;
    assert_service_unavailable(app.get("/api/metrics/list?type=cpu").await).await;
    assert!(
        started.elapsed() < 2 * PROMPT,
        "reads hung for {:?}",
        started.elapsed()
    );

    let (status, body) = health(&app.address, &app.client).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["database_connected"], false);
    assert_eq!(body["redis_connected"], true);
    assert_eq!(app.get("/health/live").await.status(), 200);

    app.postgres.start().await.unwrap();

    let recovered = eventually(Duration::from_secs(30), || async {
        (app.post_metric("cpu", 3.0).await.status() == 201).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "writes did not recover within 30 s");
    // The point written before the outage is still there; the refused one never was.
    assert_eq!(listed_values(&app, "cpu").await, [3.0, 1.0]);
    assert_eq!(app.count_rows("cpu").await, 2);
    app.wait_for_health("healthy", Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_write_refused_after_its_statement_timed_out_never_commits_and_its_retry_is_stored_once()
{
    let statement_timeout = Duration::from_secs(1);
    let app =
        spawn_app_with(|settings| settings.database_statement_timeout = statement_timeout).await;
    // Writes first, so that the pool's connections have the insert prepared: then it is the
    // insert itself, not its preparation, that waits for the lock (as on any connection that
    // has served a while), and a client-side timeout alone would let it commit afterwards.
    for _ in 0..WARM_UP_WRITES {
        assert_eq!(app.post_metric("warm-up", 1.0).await.status(), 201);
    }
    // Another client holds the table for longer than the statement timeout.
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("lock table metrics in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let lock_held = 3 * statement_timeout;
    let release = tokio::spawn(async move {
        tokio::time::sleep(lock_held).await;
        lock.commit().await.unwrap();
    });

    let started = Instant::now();
    let refused = app.post_metric("cpu", 1.0).await;
    let elapsed = started.elapsed();
    assert_service_unavailable(refused).await;
    assert!(elapsed < PROMPT, "the write hung for {elapsed:?}");

    release.await.unwrap();
    tokio::time::sleep(LATE_COMMIT_WINDOW).await;
    assert_eq!(
        app.count_rows("cpu").await,
        0,
        "the write answered with a 503 committed after the lock was released"
    );
    assert_eq!(app.post_metric("cpu", 1.0).await.status(), 201);
    assert_eq!(app.count_rows("cpu").await, 1);
    pool.close().await;
}

#[tokio::test]
async fn the_server_starts_before_postgresql_and_migrates_once_it_answers() {
    let (pg_port, redis_port) = (free_port(), free_port());
    let _redis = start_redis(redis_port).await;
    let mut settings = test_settings(pg_port, redis_port);
    settings.rate_limit.requests = 1000;

    let application = Application::build(settings.clone())
        .await
        .expect("the server must start without its database");
    let address = format!("http://127.0.0.1:{}", application.port());
    let server = tokio::spawn(application.run_until(std::future::pending()));
    let client = http_client();
    let post = || {
        client
            .post(format!("{address}/api/metrics"))
            .json(&metric("cpu", 1.0))
            .send()
    };

    let live = client
        .get(format!("{address}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let (status, body) = health(&address, &client).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["database_connected"], false);
    let started = Instant::now();
    assert_service_unavailable(post().await.unwrap()).await;
    assert!(
        started.elapsed() < PROMPT,
        "the write hung for {:?}",
        started.elapsed()
    );

    // The database appears at the address the server was given.
    let _postgres = start_postgres(pg_port).await;

    let stored = eventually(Duration::from_secs(30), || async {
        let response = post().await.ok()?;
        (response.status() == 201).then_some(())
    })
    .await;
    assert!(
        stored.is_some(),
        "writes did not succeed within 30 s of the database starting"
    );
    let (status, body) = health(&address, &client).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy");
    // The schema was created by the server's migrations, and the row committed.
    let pool = sqlx::PgPool::connect(&settings.database_url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from metrics where metric_type = 'cpu'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    pool.close().await;
    server.abort();
}

#[tokio::test]
async fn stored_points_survive_a_server_restart() {
    let mut app = spawn_app().await;
    let mut ids = Vec::new();
    for value in [1.0, 2.0, 3.0] {
        let response = app.post_metric("cpu", value).await;
        assert_eq!(response.status(), 201);
        ids.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap(),
        );
    }

    app.restart_server().await;

    let response = app.get("/api/metrics/list?type=cpu").await;
    assert_eq!(response.status(), 200);
    let listed: Vec<Value> = response.json().await.unwrap();
    let listed_ids: Vec<i64> = listed
        .iter()
        .map(|point| point["id"].as_i64().unwrap())
        .collect();
    ids.reverse(); // newest first
    assert_eq!(listed_ids, ids);
    let (status, _, summary) = app.summary("type=cpu").await;
    assert_eq!(status, 200);
    assert_eq!(summary["count"], 3);
    assert_eq!(summary["average_value"], 2.0);
    assert_eq!(summary["latest_value"], 3.0);
}

/// Two instances on one PostgreSQL and Redis, the writer without Redis (its connection cut):
/// a summary the other instance had cached must not be served once the write is answered.
#[tokio::test]
async fn a_write_on_an_instance_that_lost_redis_is_seen_at_once_by_another_instance() {
    let app = spawn_app().await;
    assert_eq!(app.post_metric("cpu", 1.0).await.status(), 201);
    assert_eq!(app.summary("type=cpu").await.1.as_deref(), Some("MISS"));
    assert_eq!(app.summary("type=cpu").await.1.as_deref(), Some("HIT"));

    let unreachable_redis = format!("redis://127.0.0.1:{}/0", free_port());
    let writer = ServerProcess::spawn(&app, &[("REDIS_URL", &unreachable_redis)]);
    let writer_url = |path: &str| format!("{}{path}", writer.address);
    eventually(Duration::from_secs(20), || async {
        let response = app.client.get(writer_url("/health")).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "degraded").then_some(())
    })
    .await
    .expect("the writer did not come up without Redis");
    let written = app
        .client
        .post(writer_url("/api/metrics"))
        .json(&metric("cpu", 2.0))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 201);

    let (status, cache, summary) = app.summary("type=cpu").await;
    assert_eq!(status, 200);
    assert_eq!(cache.as_deref(), Some("MISS"));
    assert_eq!(
        summary["count"], 2,
        "the summary from before the write: {summary}"
    );
    let (_, cache, cached) = app.summary("type=cpu").await;
    assert_eq!(
        cache.as_deref(),
        Some("HIT"),
        "the cache works again at once"
    );
    assert_eq!(cached["count"], 2);
}
