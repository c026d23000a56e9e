use reqwest::Response;
use serde_json::Value;

use crate::helpers::{TestApp, metric, spawn_app, spawn_app_with};

async fn post_as(app: &TestApp, forwarded_for: Option<&str>) -> Response {
    let mut request = app
        .client
        .post(app.url("/api/metrics"))
        .json(&metric("rl", 1.0));
    if let Some(ip) = forwarded_for {
        request = request.header("x-forwarded-for", ip);
    }
    request.send().await.unwrap()
}

fn header(response: &Response, name: &str) -> u64 {
    response.headers()[name].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_eleventh_request_in_a_minute_gets_429_with_retry_after() {
    let app = spawn_app().await;
    for expected_remaining in (0..10).rev() {
        let response = post_as(&app, None).await;
        assert_eq!(response.status(), 201);
        assert_eq!(header(&response, "ratelimit-limit"), 10);
        assert_eq!(header(&response, "ratelimit-remaining"), expected_remaining);
        assert!(header(&response, "ratelimit-reset") >= 1);
    }
    let response = post_as(&app, None).await;
    assert_eq!(response.status(), 429);
    let retry_after = header(&response, "retry-after");
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(header(&response, "ratelimit-remaining"), 0);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(app.count_rows("rl").await, 10);
}

#[tokio::test]
async fn a_forged_forwarded_for_header_does_not_escape_the_limit() {
    let app = spawn_app().await;
    for i in 0..10 {
        let forged = format!("198.51.100.{i}");
        assert_eq!(post_as(&app, Some(&forged)).await.status(), 201);
    }
    assert_eq!(post_as(&app, Some("198.51.100.200")).await.status(), 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_quota() {
    let app = spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    for _ in 0..10 {
        assert_eq!(post_as(&app, Some("203.0.113.1")).await.status(), 201);
    }
    assert_eq!(post_as(&app, Some("203.0.113.1")).await.status(), 429);
    // A forged left-most entry is ignored: the proxy appended the real client.
    assert_eq!(
        post_as(&app, Some("203.0.113.2, 203.0.113.1"))
            .await
            .status(),
        429
    );
    let other = post_as(&app, Some("203.0.113.2")).await;
    assert_eq!(other.status(), 201);
    assert_eq!(header(&other, "ratelimit-remaining"), 9);
}

#[tokio::test]
async fn invalid_requests_carry_the_headers_and_count_against_the_quota() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 2).await;
    let invalid = app
        .post_json("/api/metrics", &serde_json::json!({"value": 1}))
        .await;
    assert_eq!(invalid.status(), 422);
    assert_eq!(header(&invalid, "ratelimit-remaining"), 1);
    assert_eq!(post_as(&app, None).await.status(), 201);
    assert_eq!(post_as(&app, None).await.status(), 429);
}

#[tokio::test]
async fn the_limit_lives_in_redis_so_a_restarted_instance_still_enforces_it() {
    let mut app = spawn_app_with(|s| s.rate_limit.requests = 3).await;
    for _ in 0..3 {
        assert_eq!(post_as(&app, None).await.status(), 201);
    }
    app.restart_server().await;
    assert_eq!(post_as(&app, None).await.status(), 429);
}

#[tokio::test]
async fn reads_are_not_rate_limited() {
    let app = spawn_app_with(|s| s.rate_limit.requests = 1).await;
    for _ in 0..5 {
        assert_eq!(app.get("/api/metrics/list").await.status(), 200);
    }
    assert_eq!(post_as(&app, None).await.status(), 201);
}

/// Spends the quota of 2001:db8:1:2::1 and checks who else it covers: the rest of its /64,
/// not the next /64.
async fn assert_one_quota_per_ipv6_64(app: &TestApp) {
    for _ in 0..app.settings.rate_limit.requests {
        assert_eq!(post_as(app, Some("2001:db8:1:2::1")).await.status(), 201);
    }
    assert_eq!(
        post_as(app, Some("2001:db8:1:2::ffff")).await.status(),
        429,
        "another address of the same /64 has a quota of its own"
    );
    let neighbour = post_as(app, Some("2001:db8:1:3::1")).await;
    assert_eq!(neighbour.status(), 201);
    assert_eq!(
        header(&neighbour, "ratelimit-remaining"),
        u64::from(app.settings.rate_limit.requests - 1)
    );
}

async fn spawn_behind_proxy() -> TestApp {
    spawn_app_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.rate_limit.requests = 3;
    })
    .await
}

#[tokio::test]
async fn the_addresses_of_one_ipv6_64_share_a_quota() {
    let app = spawn_behind_proxy().await;
    assert_one_quota_per_ipv6_64(&app).await;
}

#[tokio::test]
async fn the_addresses_of_one_ipv6_64_share_a_quota_while_redis_is_down() {
    let app = spawn_behind_proxy().await;
    app.redis.stop_with_timeout(Some(0)).await.unwrap();
    assert_one_quota_per_ipv6_64(&app).await;
}
