//! Idempotent retries: `Idempotency-Key` on single and batch writes.

use std::time::Duration;

use resilient_analytics::{idempotency::KEY_TTL, storage::Storage};
use serde_json::{Value, json};

use crate::helpers::{TestApp, metric, spawn_app_with};

async fn post_keyed(app: &TestApp, path: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("request failed")
}

fn replayed(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

async fn keys_stored(app: &TestApp, key: &str) -> i64 {
    app.count("select count(*) from idempotency_keys where key = $1", key)
        .await
}

#[tokio::test]
async fn a_repeated_single_write_gets_the_first_response_and_writes_nothing() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1_000).await;
    let body = metric("keyed", 1.5);
    let first = post_keyed(&app, "/api/metrics", "retry-1", &body).await;
    assert_eq!(first.status(), 201);
    assert!(!replayed(&first));
    let first: Value = first.json().await.unwrap();

    for _ in 0..3 {
        let again = post_keyed(&app, "/api/metrics", "retry-1", &body).await;
        assert_eq!(again.status(), 201);
        assert!(replayed(&again), "a replay says so");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    assert_eq!(app.count_rows("keyed").await, 1);
    assert_eq!(keys_stored(&app, "retry-1").await, 1);

    // Another key is another write.
    let other = post_keyed(&app, "/api/metrics", "retry-2", &body).await;
    assert_eq!(other.status(), 201);
    assert_ne!(other.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(app.count_rows("keyed").await, 2);
}

#[tokio::test]
async fn a_repeated_batch_gets_the_first_response_including_its_rejections() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1_000).await;
    let body = json!({"metrics": [
        metric("keyed_batch", 1.0),
        {"type": "keyed_batch", "value": "not a number", "timestamp": "2026-01-01T00:00:00Z"},
        metric("keyed_batch", 2.0),
    ]});
    let first = post_keyed(&app, "/api/metrics/batch", "batch-1", &body).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["accepted"], 2);
    assert_eq!(first["rejected"][0]["index"], 1);

    let again = post_keyed(&app, "/api/metrics/batch", "batch-1", &body).await;
    assert_eq!(again.status(), 200);
    assert!(replayed(&again));
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(app.count_rows("keyed_batch").await, 2);
}

#[tokio::test]
async fn the_same_key_with_another_body_or_path_is_refused_and_writes_nothing() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1_000).await;
    let first = post_keyed(&app, "/api/metrics", "reused", &metric("reuse", 1.0)).await;
    assert_eq!(first.status(), 201);

    let other_body = post_keyed(&app, "/api/metrics", "reused", &metric("reuse", 2.0)).await;
    assert_eq!(other_body.status(), 422);
    let error: Value = other_body.json().await.unwrap();
    assert_eq!(error["code"], "IDEMPOTENCY_KEY_REUSED");

    let batch = json!({"metrics": [metric("reuse", 1.0)]});
    let other_path = post_keyed(&app, "/api/metrics/batch", "reused", &batch).await;
    assert_eq!(other_path.status(), 422);
    assert_eq!(app.count_rows("reuse").await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_write_once_and_all_get_the_same_answer() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1_000).await;
    let body = metric("concurrent_key", 7.0);
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, body) = (app.client.clone(), app.url("/api/metrics"), body.clone());
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("idempotency-key", "together")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut created = Vec::new();
    for request in requests {
        let (status, body) = request.await.unwrap();
        match status {
            201 => created.push(body),
            409 => assert_eq!(body["code"], "IDEMPOTENCY_KEY_IN_FLIGHT"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|body| body == &created[0]),
        "every 201 is the first response: {created:?}"
    );
    assert_eq!(app.count_rows("concurrent_key").await, 1);
}

#[tokio::test]
async fn invalid_keys_are_a_400_and_write_nothing() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1_000).await;
    for key in ["", &"k".repeat(256), "with space"] {
        let response = post_keyed(&app, "/api/metrics", key, &metric("bad_key", 1.0)).await;
        assert_eq!(response.status(), 400, "key {key:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "INVALID_HEADER");
        assert_eq!(error["errors"][0]["field"], "Idempotency-Key");
    }
    assert_eq!(app.count_rows("bad_key").await, 0);
}

#[tokio::test]
async fn a_write_that_failed_leaves_its_key_free_for_the_retry() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1_000).await;
    let body = metric("retry_after_outage", 3.0);
    app.postgres.stop().await.unwrap();
    let failed = post_keyed(&app, "/api/metrics", "outage", &body).await;
    assert_eq!(failed.status(), 503);
    app.postgres.start().await.unwrap();
    let retried = crate::helpers::eventually(Duration::from_secs(30), || async {
        let response = post_keyed(&app, "/api/metrics", "outage", &body).await;
        (response.status() == 201).then_some(replayed(&response))
    })
    .await
    .expect("the retry succeeds once PostgreSQL is back");
    assert!(!retried, "the failed attempt recorded no response");
    assert_eq!(app.count_rows("retry_after_outage").await, 1);
}

#[tokio::test]
async fn expired_keys_are_free_again_and_are_cleaned_up() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1_000).await;
    let body = metric("expiring", 1.0);
    assert_eq!(
        post_keyed(&app, "/api/metrics", "old", &body)
            .await
            .status(),
        201
    );
    assert_eq!(
        post_keyed(&app, "/api/metrics", "kept", &body)
            .await
            .status(),
        201
    );
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    sqlx::query(
        "update idempotency_keys set created_at = now() - interval '25 hours' where key = 'old'",
    )
    .execute(&pool)
    .await
    .unwrap();

    // An expired key is a new key: the write happens again.
    let again = post_keyed(&app, "/api/metrics", "old", &body).await;
    assert_eq!(again.status(), 201);
    assert!(!replayed(&again));
    assert_eq!(app.count_rows("expiring").await, 3);

    sqlx::query(
        "update idempotency_keys set created_at = now() - interval '25 hours' where key = 'old'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let storage = Storage::connect_lazy(&app.settings.database_url).unwrap();
    storage.spawn_migrations().await.unwrap();
    assert_eq!(
        storage
            .delete_expired_idempotency_keys(KEY_TTL)
            .await
            .unwrap(),
        1
    );
    assert_eq!(keys_stored(&app, "old").await, 0);
    assert_eq!(keys_stored(&app, "kept").await, 1);
    pool.close().await;
}

#[tokio::test]
async fn keys_belong_to_the_client_that_sent_them() {
    // Clients are told apart by X-Forwarded-For from a trusted proxy, as behind a balancer.
    let app = spawn_app_with(|s| {
        s.rate_limit.requests = 1_000;
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let body = metric("scoped", 1.0);
    let post_as = |client: &'static str| {
        app.client
            .post(app.url("/api/metrics"))
            .header("idempotency-key", "same-key")
            .header("x-forwarded-for", client)
            .json(&body)
            .send()
    };
    let first = post_as("203.0.113.1").await.unwrap();
    let second = post_as("203.0.113.2").await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (201, 201)
    );
    assert!(!replayed(&second), "another client's key is another key");
    let (first, second): (Value, Value) =
        (first.json().await.unwrap(), second.json().await.unwrap());
    assert_ne!(first["id"], second["id"]);
    assert_eq!(app.count_rows("scoped").await, 2);
    // Each client's repeat replays its own first response.
    for (client, original) in [("203.0.113.1", &first), ("203.0.113.2", &second)] {
        let again = post_as(client).await.unwrap();
        assert!(replayed(&again));
        assert_eq!(&again.json::<Value>().await.unwrap(), original);
    }
    assert_eq!(app.count_rows("scoped").await, 2);
    assert_eq!(keys_stored(&app, "same-key").await, 2);
}
