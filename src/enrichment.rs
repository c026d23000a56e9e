//! The simulated external enrichment service (kept in process, as in the seed) and the client
//! that calls it through the circuit breaker with a timeout.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use rand::Rng;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    circuit_breaker::{BreakerStatus, CircuitBreaker},
    clock::{Clock, MonotonicClock},
    config::ExternalServiceSettings,
};

/// What the service returns for a metric type: a reference baseline to compare against.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct EnrichmentData {
    pub source: String,
    pub metric_type: String,
    /// A typical value for this type of metric.
    pub baseline_value: f64,
    /// Values above this are unusual for this type.
    pub alert_threshold: f64,
    pub fetched_at: chrono::DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    #[error("the external service failed")]
    Failed,
    #[error("the external service did not answer in time")]
    TimedOut,
}

/// The outcome of a guarded call.
#[derive(Debug, Clone, PartialEq)]
pub enum Enrichment {
    Ok(EnrichmentData),
    Failed(CallFailure),
    CircuitOpen,
}

/// Stands in for a remote service: 50–150 ms per call, failing with a probability that can be
/// changed at run time (the seed's `set_failure_rate`).
pub struct SimulatedService {
    /// An f64 stored as bits, so the rate can change without a lock.
    failure_rate: AtomicU64,
}

impl SimulatedService {
    pub fn new(failure_rate: f64) -> Self {
        Self {
            failure_rate: AtomicU64::new(failure_rate.to_bits()),
        }
    }

    pub fn failure_rate(&self) -> f64 {
        f64::from_bits(self.failure_rate.load(Ordering::Relaxed))
    }

    /// `rate` must be within 0..=1; the HTTP layer validates it.
    pub fn set_failure_rate(&self, rate: f64) {
        self.failure_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    async fn fetch(&self, metric_type: &str) -> Result<EnrichmentData, CallFailure> {
        let (latency, fails) = {
            let mut rng = rand::rng();
            let latency = Duration::from_millis(rng.random_range(50..=150));
            (latency, rng.random::<f64>() < self.failure_rate())
        };
        tokio::time::sleep(latency).await;
        if fails {
            return Err(CallFailure::Failed);
        }
        // A stable pseudo-baseline per type, so repeated calls agree.
        let mut hasher = DefaultHasher::new();
        metric_type.hash(&mut hasher);
        let baseline = (hasher.finish() % 10_000) as f64 / 100.0;
        Ok(EnrichmentData {
            source: "simulated-external-service".into(),
            metric_type: metric_type.into(),
            baseline_value: baseline,
            alert_threshold: baseline * 1.5,
            fetched_at: Utc::now(),
        })
    }
}

/// Baselines remembered at most for this many types; beyond that the expired ones are dropped,
/// and if none has expired, all of them.
const MAX_REMEMBERED_TYPES: usize = 10_000;

pub struct EnrichmentClient<C: Clock = MonotonicClock> {
    service: SimulatedService,
    breaker: CircuitBreaker,
    timeout: Duration,
    /// A type's baseline changes slowly, so a successful answer is reused for `remember_for`:
    /// summaries computed meanwhile do not wait 50–150 ms for the service again.
    remembered: Mutex<HashMap<String, (Duration, EnrichmentData)>>,
    remember_for: Duration,
    /// Decides when a remembered answer has expired.
    clock: C,
}

impl EnrichmentClient {
    /// Successful answers are reused for `remember_for` (the summary cache's TTL).
    pub fn new(
        service: SimulatedService,
        breaker: CircuitBreaker,
        settings: ExternalServiceSettings,
        remember_for: Duration,
    ) -> Self {
        Self::with_clock(
            service,
            breaker,
            settings,
            remember_for,
            MonotonicClock::new(),
        )
    }
}

impl<C: Clock> EnrichmentClient<C> {
    pub fn with_clock(
        service: SimulatedService,
        breaker: CircuitBreaker,
        settings: ExternalServiceSettings,
        remember_for: Duration,
        clock: C,
    ) -> Self {
        Self {
            service,
            breaker,
            timeout: settings.timeout,
            remembered: Mutex::new(HashMap::new()),
            remember_for,
            clock,
        }
    }

    /// The type's baseline: a recent answer when there is one, else a call to the service.
    pub async fn enrich(&self, metric_type: &str) -> Enrichment {
        let now = self.clock.now();
        let recent = self
            .remembered
            .lock()
            .expect("enrichment lock poisoned")
            .get(metric_type)
            .and_then(|(expires, data)| (*expires > now).then(|| data.clone()));
        if let Some(data) = recent {
            metrics::counter!("enrichment_calls_total", "outcome" => "remembered").increment(1);
            return Enrichment::Ok(data);
        }
        let enrichment = self.call(metric_type).await;
        if let Enrichment::Ok(data) = &enrichment {
            let mut remembered = self.remembered.lock().expect("enrichment lock poisoned");
            if remembered.len() >= MAX_REMEMBERED_TYPES {
                remembered.retain(|_, (expires, _)| *expires > now);
                if remembered.len() >= MAX_REMEMBERED_TYPES {
                    remembered.clear();
                }
            }
            remembered.insert(
                metric_type.to_owned(),
                (now + self.remember_for, data.clone()),
            );
        }
        enrichment
    }

    pub fn service(&self) -> &SimulatedService {
        &self.service
    }

    pub fn breaker_status(&self) -> BreakerStatus {
        self.breaker.status()
    }

    /// Calls the service now, through the breaker: unless the circuit is open; a call slower
    /// than the timeout fails.
    #[tracing::instrument(skip(self))]
    pub async fn call(&self, metric_type: &str) -> Enrichment {
        let enrichment = match self.breaker.try_acquire() {
            Err(_) => Enrichment::CircuitOpen,
            Ok(permit) => {
                let outcome = tokio::time::timeout(self.timeout, self.service.fetch(metric_type))
                    .await
                    .unwrap_or(Err(CallFailure::TimedOut));
                match outcome {
                    Ok(data) => {
                        permit.succeeded();
                        Enrichment::Ok(data)
                    }
                    Err(failure) => {
                        permit.failed();
                        tracing::debug!(%failure, "enrichment call failed");
                        Enrichment::Failed(failure)
                    }
                }
            }
        };
        let outcome = match &enrichment {
            Enrichment::Ok(_) => "ok",
            Enrichment::Failed(CallFailure::Failed) => "failed",
            Enrichment::Failed(CallFailure::TimedOut) => "timed_out",
            Enrichment::CircuitOpen => "circuit_open",
        };
        metrics::counter!("enrichment_calls_total", "outcome" => outcome).increment(1);
        enrichment
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{clock::ManualClock, config::CircuitBreakerSettings};

    const REMEMBER_FOR: Duration = Duration::from_secs(300);

    /// A client whose remembered answers expire by `clock`; the breaker's counters tell how
    /// often the service was really called. Its tests run on paused time, so the service's
    /// 50–150 ms pass at once.
    fn client(failure_rate: f64) -> (EnrichmentClient<Arc<ManualClock>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let breaker = CircuitBreaker::new(CircuitBreakerSettings {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(30),
        });
        let settings = ExternalServiceSettings {
            failure_rate,
            timeout: Duration::from_secs(5),
        };
        let client = EnrichmentClient::with_clock(
            SimulatedService::new(failure_rate),
            breaker,
            settings,
            REMEMBER_FOR,
            clock.clone(),
        );
        (client, clock)
    }

    fn service_successes(client: &EnrichmentClient<Arc<ManualClock>>) -> u64 {
        client.breaker_status().success_count
    }

    fn remembered_types(client: &EnrichmentClient<Arc<ManualClock>>) -> usize {
        client.remembered.lock().unwrap().len()
    }

    fn expect_ok(enrichment: Enrichment) -> EnrichmentData {
        match enrichment {
            Enrichment::Ok(data) => data,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_reused_within_remember_for_without_calling_the_service() {
        let (client, clock) = client(0.0);
        let first = expect_ok(client.enrich("cpu").await);
        clock.advance(REMEMBER_FOR - Duration::from_millis(1));
        let again = expect_ok(client.enrich("cpu").await);
        assert_eq!(again, first, "the same answer, fetched_at included");
        assert_eq!(service_successes(&client), 1);
        // Another type is not answered from the first one's.
        assert_eq!(expect_ok(client.enrich("disk").await).metric_type, "disk");
        assert_eq!(service_successes(&client), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn once_remember_for_has_passed_the_service_is_called_again() {
        let (client, clock) = client(0.0);
        expect_ok(client.enrich("cpu").await);
        clock.advance(REMEMBER_FOR);
        expect_ok(client.enrich("cpu").await);
        assert_eq!(service_successes(&client), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_not_remembered() {
        let (client, _clock) = client(1.0);
        for _ in 0..2 {
            assert_eq!(
                client.enrich("cpu").await,
                Enrichment::Failed(CallFailure::Failed)
            );
        }
        assert_eq!(client.breaker_status().failure_count, 2);
        client.service().set_failure_rate(0.0);
        expect_ok(client.enrich("cpu").await);
        assert_eq!(service_successes(&client), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_bound_the_expired_answers_are_dropped_first() {
        let (client, clock) = client(0.0);
        let half = MAX_REMEMBERED_TYPES / 2;
        for i in 0..half {
            expect_ok(client.enrich(&format!("old_{i}")).await);
        }
        clock.advance(REMEMBER_FOR / 2);
        for i in 0..MAX_REMEMBERED_TYPES - half {
            expect_ok(client.enrich(&format!("new_{i}")).await);
        }
        assert_eq!(remembered_types(&client), MAX_REMEMBERED_TYPES);
        // The old half has expired, the new half has not.
        clock.advance(REMEMBER_FOR / 2);
        expect_ok(client.enrich("one_more").await);
        assert_eq!(remembered_types(&client), MAX_REMEMBERED_TYPES - half + 1);
        let calls = service_successes(&client);
        expect_ok(client.enrich("new_0").await);
        assert_eq!(service_successes(&client), calls, "a new answer was kept");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_bound_with_none_expired_all_answers_are_dropped() {
        let (client, _clock) = client(0.0);
        for i in 0..MAX_REMEMBERED_TYPES {
            expect_ok(client.enrich(&format!("type_{i}")).await);
        }
        expect_ok(client.enrich("one_more").await);
        assert_eq!(remembered_types(&client), 1);
        let calls = service_successes(&client);
        expect_ok(client.enrich("one_more").await);
        expect_ok(client.enrich("type_0").await);
        assert_eq!(
            service_successes(&client),
            calls + 1,
            "only type_0 was forgotten"
        );
    }
}
