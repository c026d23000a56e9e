//! Chaos: concurrent single and batch writers while Redis is killed and restarted, PostgreSQL
//! is stopped and started, and the external service fails; then every acknowledged point must
//! be stored exactly once and nothing else. CHAOS_SECONDS sets the length (default 60).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with};

const TYPE: &str = "chaos";
/// A keyed point is retried (with its key) for at most this long before the test gives up.
const RETRY_FOR: Duration = Duration::from_secs(60);
const BATCH_POINTS: usize = 20;

/// What the writers saw.
#[derive(Default)]
struct Observed {
    /// Point ids (the `chaos_id` tag) whose request got 201 (or 200 for the batch).
    acknowledged: Vec<String>,
    /// Keyed points never acknowledged within RETRY_FOR.
    unresolved: Vec<String>,
    /// Unkeyed single points whose only attempt was refused with a 503.
    refused: Vec<String>,
    /// Statuses of write responses and of summary reads.
    statuses: BTreeMap<u16, u64>,
    read_statuses: BTreeMap<u16, u64>,
    transport_errors: Vec<String>,
    /// When each 2xx write response arrived.
    successes: Vec<Instant>,
}

impl Observed {
    fn record(&mut self, outcome: &Result<u16, String>) {
        match outcome {
            Ok(status) => {
                *self.statuses.entry(*status).or_default() += 1;
                if (200..300).contains(status) {
                    self.successes.push(Instant::now());
                }
            }
            Err(error) => self.transport_errors.push(error.clone()),
        }
    }
}

fn point(id: &str) -> Value {
    json!({
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "value": 1.0,
        "type": TYPE,
        "tags": {"chaos_id": id},
    })
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<u16, String> {
    let mut request = client.post(url).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    // Read the body to the end: a connection cut mid-response is a failure too.
    response.bytes().await.map_err(|e| format!("{e:?}"))?;
    Ok(status)
}

/// Writes `ids` (one point, or a batch) under `key`, retrying with the same key until a 2xx.
async fn write_keyed(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    ids: Vec<String>,
    observed: &Mutex<Observed>,
) {
    let body = if ids.len() == 1 {
        point(&ids[0])
    } else {
        json!({"metrics": ids.iter().map(|id| point(id)).collect::<Vec<_>>()})
    };
    let started = Instant::now();
    loop {
        let outcome = post(client, url, Some(key), &body).await;
        let success = matches!(outcome, Ok(status) if (200..300).contains(&status));
        {
            let mut seen = observed.lock().unwrap();
            seen.record(&outcome);
            if success {
                seen.acknowledged.extend(ids);
                return;
            }
            if started.elapsed() > RETRY_FOR {
                seen.unresolved.extend(ids);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One writer: keyed singles, keyed batches or unkeyed singles, until `stop`.
async fn writer(
    app_url: String,
    name: String,
    kind: &'static str,
    stop: Arc<AtomicBool>,
    observed: Arc<Mutex<Observed>>,
) {
    let client = crate::helpers::http_client();
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let id = format!("{name}-{sequence}");
        match kind {
            "keyed" => {
                let url = format!("{app_url}/api/metrics");
                write_keyed(&client, &url, &id, vec![id.clone()], &observed).await;
            }
            "batch" => {
                let url = format!("{app_url}/api/metrics/batch");
                let ids = (0..BATCH_POINTS).map(|i| format!("{id}.{i}")).collect();
                write_keyed(&client, &url, &id, ids, &observed).await;
            }
            _ => {
                let url = format!("{app_url}/api/metrics");
                let outcome = post(&client, &url, None, &point(&id)).await;
                {
                    let mut seen = observed.lock().unwrap();
                    seen.record(&outcome);
                    match outcome {
                        Ok(201) => seen.acknowledged.push(id),
                        Ok(503) => seen.refused.push(id),
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Summaries must stay answerable (or a 503 while PostgreSQL is down) throughout.
async fn reader(app_url: String, stop: Arc<AtomicBool>, observed: Arc<Mutex<Observed>>) {
    let client = crate::helpers::http_client();
    let url = format!("{app_url}/api/metrics/summary?type={TYPE}");
    while !stop.load(Ordering::Relaxed) {
        let outcome = match client.get(&url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response
                    .bytes()
                    .await
                    .map(|_| status)
                    .map_err(|e| format!("{e:?}"))
            }
            Err(error) => Err(format!("{error:?}")),
        };
        // Reads do not count as write successes.
        match outcome {
            Ok(status) => {
                *observed
                    .lock()
                    .unwrap()
                    .read_statuses
                    .entry(status)
                    .or_default() += 1
            }
            Err(error) => observed.lock().unwrap().transport_errors.push(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Faults on a schedule that repeats every 20 seconds; returns when each dependency came back.
async fn inject_faults(app: &TestApp, until: Instant) -> Vec<(&'static str, Instant)> {
    let mut returns = Vec::new();
    let pause = |seconds| tokio::time::sleep(Duration::from_secs(seconds));
    while Instant::now() + Duration::from_secs(20) <= until {
        pause(2).await;
        app.redis.stop_with_timeout(Some(0)).await.unwrap(); // SIGKILL
        pause(4).await;
        app.redis.start().await.unwrap();
        returns.push(("redis", Instant::now()));
        pause(2).await;
        app.postgres.stop().await.unwrap();
        pause(4).await;
        app.postgres.start().await.unwrap();
        returns.push(("postgresql", Instant::now()));
        app.set_failure_rate(1.0).await;
        pause(4).await;
        app.set_failure_rate(0.0).await;
        returns.push(("external service", Instant::now()));
        pause(4).await;
    }
    returns
}

async fn stored_ids(app: &TestApp) -> HashMap<String, i64> {
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select tags->>'chaos_id', count(*) from metrics where metric_type = $1 group by 1",
    )
    .bind(TYPE)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().collect()
}

#[tokio::test]
async fn acknowledged_writes_survive_dependency_faults_exactly_once() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let app = spawn_app_with(|s| s.rate_limit.requests = 10_000_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let mut tasks = Vec::new();
    for (i, kind) in [
        "keyed", "keyed", "keyed", "batch", "batch", "plain", "plain",
    ]
    .into_iter()
    .enumerate()
    {
        tasks.push(tokio::spawn(writer(
            app.address.clone(),
            format!("{kind}{i}"),
            kind,
            stop.clone(),
            observed.clone(),
        )));
    }
    tasks.push(tokio::spawn(reader(
        app.address.clone(),
        stop.clone(),
        observed.clone(),
    )));

    let started = Instant::now();
    let returns = inject_faults(&app, started + Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(RETRY_FOR + Duration::from_secs(30), task)
            .await
            .expect("a writer did not finish")
            .unwrap();
    }

    let stored = stored_ids(&app).await;
    let observed = observed.lock().unwrap();
    let duplicated: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = observed
        .acknowledged
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    let unacknowledged: Vec<_> = stored
        .keys()
        .filter(|id| !observed.acknowledged.contains(id))
        .collect();
    let recovery: Vec<(&str, Option<Duration>)> = returns
        .iter()
        .map(|(dependency, back)| {
            let first = observed.successes.iter().filter(|t| *t >= back).min();
            (*dependency, first.map(|t| t.duration_since(*back)))
        })
        .collect();
    println!(
        "chaos run of {:?}: {} fault cycles; acknowledged points {}, stored rows {} ({} distinct), \
         unkeyed writes refused with 503 {}, keyed points unresolved {}; write statuses {:?}, \
         summary statuses {:?}; transport errors {}; first write after each return {recovery:?}",
        started.elapsed(),
        returns.len() / 3,
        observed.acknowledged.len(),
        stored.values().sum::<i64>(),
        stored.len(),
        observed.refused.len(),
        observed.unresolved.len(),
        observed.statuses,
        observed.read_statuses,
        observed.transport_errors.len(),
    );

    assert!(returns.len() >= 3, "at least one full fault cycle ran");
    assert!(
        observed.acknowledged.len() > 1000,
        "the writers made progress"
    );
    assert!(
        observed.unresolved.is_empty(),
        "keyed points never acknowledged: {:?}",
        observed.unresolved
    );
    assert!(
        duplicated.is_empty(),
        "stored more than once: {duplicated:?}"
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    assert!(
        unacknowledged.is_empty(),
        "stored without acknowledgement: {unacknowledged:?}"
    );
    let server_errors: Vec<_> = observed
        .statuses
        .iter()
        .chain(&observed.read_statuses)
        .filter(|(status, _)| **status >= 500 && **status != 503)
        .collect();
    assert!(
        server_errors.is_empty(),
        "5xx other than 503: {server_errors:?}"
    );
    assert!(
        observed.transport_errors.is_empty(),
        "dropped connections: {:?}",
        &observed.transport_errors[..observed.transport_errors.len().min(5)]
    );
    for (dependency, first) in recovery {
        let first =
            first.unwrap_or_else(|| panic!("no write succeeded after {dependency} returned"));
        assert!(
            first <= Duration::from_secs(5),
            "writes took {first:?} to succeed after {dependency} returned"
        );
    }
}
