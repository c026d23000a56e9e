//! The circuit breaker around the simulated external service, seen through HTTP.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with};

/// The simulated service never answers faster than this, so anything quicker did not call it.
const SERVICE_MIN_LATENCY: Duration = Duration::from_millis(50);
const THRESHOLD: u32 = 3;

/// A breaker that opens after `THRESHOLD` failures and probes again after `reset_timeout`.
async fn spawn_with_breaker(reset_timeout: Duration) -> TestApp {
    spawn_app_with(|settings| {
        settings.circuit_breaker.failure_threshold = THRESHOLD;
        settings.circuit_breaker.reset_timeout = reset_timeout;
    })
    .await
}

/// GET /api/external: status, body and how long it took.
async fn call_external(app: &TestApp) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let response = app.get("/api/external").await;
    let elapsed = started.elapsed();
    (response.status(), response.json().await.unwrap(), elapsed)
}

async fn breaker_status(app: &TestApp) -> Value {
    let response = app.get("/api/circuit-breaker/status").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn assert_external_failure(status: StatusCode, body: &Value) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "EXTERNAL_SERVICE_UNAVAILABLE");
    assert!(
        body["message"].is_string() && body["timestamp"].is_string(),
        "{body}"
    );
}

/// Fails `THRESHOLD` calls against a service that always fails, leaving the circuit OPEN.
async fn trip(app: &TestApp) {
    app.set_failure_rate(1.0).await;
    for _ in 0..THRESHOLD {
        let (status, body, _) = call_external(app).await;
        assert_external_failure(status, &body);
    }
    assert_eq!(breaker_status(app).await["state"], "OPEN");
}

/// Sleeps until the open circuit lets a probe through, as the breaker itself reports.
async fn wait_for_probe(app: &TestApp) {
    let status = breaker_status(app).await;
    assert_eq!(status["state"], "OPEN");
    let wait = status["seconds_until_probe"]
        .as_f64()
        .expect("OPEN reports seconds_until_probe");
    assert!(wait <= 1.0, "reset timeout is 1 s, yet {wait} s to wait");
    tokio::time::sleep(Duration::from_secs_f64(wait) + Duration::from_millis(20)).await;
}

#[tokio::test]
async fn consecutive_failures_open_the_circuit_and_calls_then_fall_back_without_the_service() {
    // A long reset timeout, so no probe gets through during the test.
    let app = spawn_with_breaker(Duration::from_secs(30)).await;
    app.set_failure_rate(1.0).await;

    for attempt in 1..=THRESHOLD {
        let (status, body, elapsed) = call_external(&app).await;
        assert_external_failure(status, &body);
        // The failure came from the service itself, not from the breaker.
        assert!(
            elapsed >= SERVICE_MIN_LATENCY,
            "call {attempt} took {elapsed:?}"
        );
        let breaker = breaker_status(&app).await;
        let expected_state = if attempt < THRESHOLD {
            "CLOSED"
        } else {
            "OPEN"
        };
        assert_eq!(
            breaker["state"], expected_state,
            "after {attempt} failures: {breaker}"
        );
        assert_eq!(breaker["failure_count"], attempt);
    }

    for _ in 0..5 {
        let (status, body, elapsed) = call_external(&app).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "fallback");
        assert!(elapsed < SERVICE_MIN_LATENCY, "a fallback took {elapsed:?}");
    }
    let breaker = breaker_status(&app).await;
    assert_eq!(breaker["state"], "OPEN");
    assert_eq!(breaker["failure_count"], THRESHOLD);
    assert_eq!(breaker["success_count"], 0);
}

#[tokio::test]
async fn summaries_stay_200_without_enrichment_and_are_fast_once_the_circuit_is_open() {
    let app = spawn_with_breaker(Duration::from_secs(30)).await;
    // One type per summary: a degraded summary is cached briefly and would hide the breaker.
    let types: Vec<String> = (0..=THRESHOLD).map(|i| format!("load_{i}")).collect();
    for metric_type in &types {
        assert_eq!(app.post_metric(metric_type, 7.0).await.status(), 201);
    }
    app.set_failure_rate(1.0).await;

    for metric_type in &types[..THRESHOLD as usize] {
        let (status, cache, body) = app.summary(&format!("type={metric_type}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(cache.as_deref(), Some("MISS"));
        assert_eq!(body["count"], 1);
        assert_eq!(body["enrichment"], Value::Null);
        assert_eq!(body["enrichment_status"], "failed");
    }
    assert_eq!(breaker_status(&app).await["state"], "OPEN");

    let last = &types[THRESHOLD as usize];
    let started = Instant::now();
    let (status, cache, body) = app.summary(&format!("type={last}")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache.as_deref(), Some("MISS"));
    assert_eq!(body["count"], 1);
    assert_eq!(body["average_value"], 7.0);
    assert_eq!(body["enrichment"], Value::Null);
    assert_eq!(body["enrichment_status"], "circuit_open");
    assert!(
        elapsed < SERVICE_MIN_LATENCY,
        "an open-circuit summary took {elapsed:?}"
    );
}

#[tokio::test]
async fn after_the_reset_timeout_exactly_one_probe_reaches_the_service() {
    let app = spawn_with_breaker(Duration::from_secs(1)).await;
    trip(&app).await;
    wait_for_probe(&app).await;

    // Ten calls at once: one is the probe, the others must not wait for it.
    let mut calls = JoinSet::new();
    for _ in 0..10 {
        let (client, url) = (app.client.clone(), app.url("/api/external"));
        calls.spawn(async move {
            let started = Instant::now();
            let response = client.get(url).send().await.unwrap();
            let elapsed = started.elapsed();
            (
                response.status(),
                response.json::<Value>().await.unwrap(),
                elapsed,
            )
        });
    }
    let outcomes = calls.join_all().await;

    let probes: Vec<_> = outcomes
        .iter()
        .filter(|(status, ..)| *status != 200)
        .collect();
    assert_eq!(
        probes.len(),
        1,
        "exactly one call reaches the service: {outcomes:?}"
    );
    let (status, body, _) = probes[0];
    assert_external_failure(*status, body);
    for (status, body, elapsed) in outcomes.iter().filter(|(status, ..)| *status == 200) {
        assert_eq!(body["status"], "fallback", "{status} {body}");
        assert!(
            *elapsed < SERVICE_MIN_LATENCY,
            "a fallback took {elapsed:?}"
        );
    }
    // The failed probe opens the circuit for another timeout.
    let breaker = breaker_status(&app).await;
    assert_eq!(breaker["state"], "OPEN");
    assert!(
        breaker["seconds_until_probe"].as_f64().unwrap() > 0.0,
        "{breaker}"
    );
    assert_eq!(call_external(&app).await.1["status"], "fallback");
}

#[tokio::test]
async fn a_successful_probe_closes_the_circuit_once_the_service_recovers() {
    let app = spawn_with_breaker(Duration::from_secs(1)).await;
    trip(&app).await;
    app.set_failure_rate(0.0).await;

    // Recovered, but the circuit stays open until the timeout has passed.
    assert_eq!(call_external(&app).await.1["status"], "fallback");
    wait_for_probe(&app).await;

    let (status, body, _) = call_external(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert!(body["data"].is_object(), "{body}");
    let breaker = breaker_status(&app).await;
    assert_eq!(breaker["state"], "CLOSED");
    assert_eq!(breaker["failure_count"], 0);
    assert_eq!(breaker["success_count"], 1);
    assert_eq!(call_external(&app).await.1["status"], "success");
}

#[tokio::test]
async fn the_failure_rate_must_be_a_json_number_from_0_to_1() {
    let app = spawn_app().await;
    let put = |body: reqwest::Body, content_type: &'static str| {
        app.client
            .put(app.url("/api/external/failure-rate"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    for invalid in [
        json!({ "failure_rate": 1.5 }),
        json!({ "failure_rate": -0.1 }),
        json!({ "failure_rate": "0.5" }),
        json!({}),
    ] {
        let response = put(invalid.to_string().into(), "application/json")
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{invalid}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "VALIDATION_ERROR", "{invalid}");
        let errors = body["errors"].as_array().expect("errors array");
        assert!(
            errors.iter().any(|error| error["field"] == "failure_rate"),
            "{invalid} → {body}"
        );
    }

    let not_json = put(r#"{"failure_rate": 1}"#.into(), "text/plain")
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    let malformed = put(r#"{"failure_rate": "#.into(), "application/json")
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    for response in [not_json, malformed] {
        let body: Value = response.json().await.unwrap();
        assert!(
            body["code"].is_string() && body["timestamp"].is_string(),
            "{body}"
        );
    }

    // None of the refused bodies changed the rate: the service (rate 0) still answers.
    for _ in 0..3 {
        assert_eq!(call_external(&app).await.1["status"], "success");
    }
    // Both ends of the range are accepted and echoed.
    for rate in [1.0, 0.0] {
        let response = put(
            json!({ "failure_rate": rate }).to_string().into(),
            "application/json",
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.json::<Value>().await.unwrap()["failure_rate"],
            rate
        );
    }
}

#[tokio::test]
async fn a_summary_whose_enrichment_failed_is_cached_only_briefly() {
    let app = spawn_app().await;
    assert_eq!(app.settings.cache_ttl, Duration::from_secs(300));
    assert_eq!(app.post_metric("temp", 21.5).await.status(), 201);
    app.set_failure_rate(1.0).await;

    let (_, cache, degraded) = app.summary("type=temp").await;
    assert_eq!(cache.as_deref(), Some("MISS"));
    assert_eq!(degraded["enrichment_status"], "failed");
    // It is cached, just not for the whole TTL.
    let (_, cache, cached) = app.summary("type=temp").await;
    assert_eq!(cache.as_deref(), Some("HIT"));
    assert_eq!(cached, degraded);

    app.set_failure_rate(0.0).await;
    let recovered = eventually(Duration::from_secs(7), || async {
        let (_, _, body) = app.summary("type=temp").await;
        (body["enrichment_status"] == "ok").then_some(body)
    })
    .await
    .expect("the recovered service did not show up in the summary within 7 s");
    assert!(recovered["enrichment"].is_object(), "{recovered}");
    assert_eq!(recovered["count"], 1);
}

#[tokio::test]
async fn clients_that_hang_up_during_the_enrichment_call_do_not_open_the_circuit() {
    // The default threshold (5) and a service that never fails.
    let app = spawn_app().await;
    let threshold = app.settings.circuit_breaker.failure_threshold;
    let mut abandoned = Vec::new();
    // A new type each time, so every summary misses the cache and calls the service (50–150
    // ms); the client gives up after 20 ms, so the server drops the call unfinished.
    for i in 0..=threshold {
        let response = app
            .client
            .get(app.url(&format!("/api/metrics/summary?type=impatient_{i}")))
            .timeout(Duration::from_millis(20))
            .send()
            .await;
        abandoned.push(response.map(|response| response.status()));
    }
    // Longer than the service's slowest answer: every abandoned call is over by now.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let breaker = breaker_status(&app).await;
    assert_eq!(breaker["state"], "CLOSED", "{breaker}");
    assert_eq!(breaker["failure_count"], 0, "{breaker}");
    let (status, _, body) = app.summary("type=patient").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enrichment_status"], "ok", "{body}");
    // The clients really did hang up before their answers.
    for outcome in abandoned {
        assert!(
            outcome.as_ref().is_err_and(reqwest::Error::is_timeout),
            "{outcome:?}"
        );
    }
}
