//! The seed's circuit breaker: CLOSED → OPEN after `failure_threshold` consecutive failures;
//! while OPEN calls fail fast; after `reset_timeout` exactly one probe is let through
//! (HALF_OPEN) while every other call keeps failing fast; the probe's success closes the
//! circuit, its failure opens it for another timeout. Only calls that finished count: one
//! whose caller went away is neither a success nor a failure.

use std::{sync::Mutex, time::Duration};

use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    clock::{Clock, MonotonicClock},
    config::CircuitBreakerSettings,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The `circuit_breaker_state` gauge's encoding.
    fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

/// What `GET /api/circuit-breaker/status` reports.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerStatus {
    pub state: CircuitState,
    /// Consecutive failures (compared against the threshold).
    pub failure_count: u32,
    /// Successful calls since the process started.
    pub success_count: u64,
    /// Calls rejected without touching the service since the process started.
    pub rejected_count: u64,
    pub failure_threshold: u32,
    pub reset_timeout_seconds: f64,
    /// While OPEN: seconds until a probe will be let through.
    pub seconds_until_probe: Option<f64>,
}

/// Why a call was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit is open")]
pub struct CircuitOpen;

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    consecutive_failures: u32,
    successes: u64,
    rejected: u64,
    opened_at: Duration,
}

pub struct CircuitBreaker<C: Clock = MonotonicClock> {
    settings: CircuitBreakerSettings,
    clock: C,
    inner: Mutex<Inner>,
}

/// Permission for one call. Report its outcome with `succeeded` or `failed`. A permit dropped
/// without an outcome (the caller was cancelled, e.g. its client hung up) says nothing about
/// the service, so it counts neither way: clients that give up early cannot open the circuit
/// for everyone else.
#[must_use = "report the call's outcome"]
pub struct Permit<'a, C: Clock> {
    breaker: &'a CircuitBreaker<C>,
    /// The one call let through while HALF_OPEN: only its outcome decides the state then.
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    pub fn new(settings: CircuitBreakerSettings) -> Self {
        Self::with_clock(settings, MonotonicClock::new())
    }
}

impl<C: Clock> CircuitBreaker<C> {
    pub fn with_clock(settings: CircuitBreakerSettings, clock: C) -> Self {
        metrics::gauge!("circuit_breaker_state").set(CircuitState::Closed.gauge_value());
        Self {
            settings,
            clock,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                successes: 0,
                rejected: 0,
                opened_at: Duration::ZERO,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("circuit breaker lock poisoned")
    }

    /// Asks to make a call. Fails fast while OPEN, and while HALF_OPEN with a probe in flight.
    pub fn try_acquire(&self) -> Result<Permit<'_, C>, CircuitOpen> {
        let mut inner = self.lock();
        let probe = match inner.state {
            CircuitState::Closed => false,
            CircuitState::HalfOpen => {
                inner.rejected += 1;
                return Err(CircuitOpen);
            }
            CircuitState::Open => {
                if self.clock.now() < inner.opened_at + self.settings.reset_timeout {
                    inner.rejected += 1;
                    return Err(CircuitOpen);
                }
                self.transition(&mut inner, CircuitState::HalfOpen);
                true
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            reported: false,
        })
    }

    fn record(&self, success: bool, probe: bool) {
        let mut inner = self.lock();
        if success {
            inner.successes += 1;
        }
        match (inner.state, probe) {
            (CircuitState::Closed, _) if success => inner.consecutive_failures = 0,
            (CircuitState::Closed, _) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.settings.failure_threshold {
                    self.open(&mut inner);
                }
            }
            (CircuitState::HalfOpen, true) if success => {
                inner.consecutive_failures = 0;
                self.transition(&mut inner, CircuitState::Closed);
            }
            (CircuitState::HalfOpen, true) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                self.open(&mut inner);
            }
            // A late outcome of a call admitted while the circuit was still closed: it says
            // nothing about the service now, so it neither closes, re-opens nor prolongs it.
            (CircuitState::Open | CircuitState::HalfOpen, _) => {}
        }
    }

    /// The probe's caller went away before it finished. The circuit is still HALF_OPEN (only
    /// the probe leaves that state); it goes back to OPEN with its `opened_at` kept, whose
    /// timeout has passed, so the next call probes at once and the open period is not extended.
    fn abandon_probe(&self) {
        let mut inner = self.lock();
        self.transition(&mut inner, CircuitState::Open);
    }

    fn open(&self, inner: &mut Inner) {
        inner.opened_at = self.clock.now();
        self.transition(inner, CircuitState::Open);
    }

    fn transition(&self, inner: &mut Inner, to: CircuitState) {
        tracing::info!(from = ?inner.state, to = ?to, "circuit breaker state change");
        metrics::counter!(
            "circuit_breaker_transitions_total",
            "from" => inner.state.as_str(),
            "to" => to.as_str(),
        )
        .increment(1);
        metrics::gauge!("circuit_breaker_state").set(to.gauge_value());
        inner.state = to;
    }

    pub fn status(&self) -> BreakerStatus {
        let inner = self.lock();
        let seconds_until_probe = (inner.state == CircuitState::Open).then(|| {
            (inner.opened_at + self.settings.reset_timeout)
                .saturating_sub(self.clock.now())
                .as_secs_f64()
        });
        BreakerStatus {
            state: inner.state,
            failure_count: inner.consecutive_failures,
            success_count: inner.successes,
            rejected_count: inner.rejected,
            failure_threshold: self.settings.failure_threshold,
            reset_timeout_seconds: self.settings.reset_timeout.as_secs_f64(),
            seconds_until_probe,
        }
    }
}

impl<C: Clock> Permit<'_, C> {
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record(true, self.probe);
    }

    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.record(false, self.probe);
    }
}

impl<C: Clock> Drop for Permit<'_, C> {
    fn drop(&mut self) {
        // An abandoned probe must not leave the circuit half-open for good.
        if !self.reported && self.probe {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    fn breaker() -> (CircuitBreaker<Arc<ManualClock>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let settings = CircuitBreakerSettings {
            failure_threshold: 3,
            reset_timeout: Duration::from_secs(30),
        };
        (CircuitBreaker::with_clock(settings, clock.clone()), clock)
    }

    fn fail_times(breaker: &CircuitBreaker<Arc<ManualClock>>, times: usize) {
        for _ in 0..times {
            breaker.try_acquire().expect("call allowed").failed();
        }
    }

    #[test]
    fn it_opens_after_the_threshold_of_consecutive_failures() {
        let (breaker, _clock) = breaker();
        fail_times(&breaker, 2);
        assert_eq!(breaker.status().state, CircuitState::Closed);
        assert_eq!(breaker.status().failure_count, 2);
        fail_times(&breaker, 1);
        assert_eq!(breaker.status().state, CircuitState::Open);
        assert_eq!(breaker.try_acquire().err(), Some(CircuitOpen));
        assert_eq!(breaker.status().rejected_count, 1);
    }

    #[test]
    fn a_success_resets_the_consecutive_failure_count() {
        let (breaker, _clock) = breaker();
        fail_times(&breaker, 2);
        breaker.try_acquire().unwrap().succeeded();
        fail_times(&breaker, 2);
        assert_eq!(breaker.status().state, CircuitState::Closed);
        assert_eq!(breaker.status().success_count, 1);
    }

    #[test]
    fn it_fails_fast_until_the_reset_timeout_then_lets_exactly_one_probe_through() {
        let (breaker, clock) = breaker();
        fail_times(&breaker, 3);
        clock.advance(Duration::from_secs(29));
        assert!(breaker.try_acquire().is_err());
        assert_eq!(breaker.status().seconds_until_probe, Some(1.0));
        clock.advance(Duration::from_secs(1));
        let probe = breaker.try_acquire().expect("probe allowed");
        assert_eq!(breaker.status().state, CircuitState::HalfOpen);
        for _ in 0..5 {
            assert!(breaker.try_acquire().is_err(), "only one probe at a time");
        }
        probe.succeeded();
        assert_eq!(breaker.status().state, CircuitState::Closed);
        assert_eq!(breaker.status().failure_count, 0);
        assert!(breaker.try_acquire().is_ok());
    }

    #[test]
    fn a_failed_probe_opens_the_circuit_for_another_timeout() {
        let (breaker, clock) = breaker();
        fail_times(&breaker, 3);
        clock.advance(Duration::from_secs(30));
        breaker.try_acquire().unwrap().failed();
        assert_eq!(breaker.status().state, CircuitState::Open);
        clock.advance(Duration::from_secs(29));
        assert!(breaker.try_acquire().is_err());
        clock.advance(Duration::from_secs(1));
        assert!(breaker.try_acquire().is_ok());
    }

    #[test]
    fn a_call_whose_caller_went_away_is_neither_a_success_nor_a_failure() {
        let (breaker, _clock) = breaker();
        fail_times(&breaker, 2);
        for _ in 0..5 {
            drop(breaker.try_acquire().expect("call allowed"));
        }
        let status = breaker.status();
        assert_eq!(status.state, CircuitState::Closed);
        assert_eq!((status.failure_count, status.success_count), (2, 0));
        // Nor did they reset the count: the next failure is the third in a row.
        fail_times(&breaker, 1);
        assert_eq!(breaker.status().state, CircuitState::Open);
    }

    #[test]
    fn an_abandoned_probe_reopens_the_circuit_with_a_probe_due_at_once() {
        let (breaker, clock) = breaker();
        fail_times(&breaker, 3);
        clock.advance(Duration::from_secs(30));
        drop(breaker.try_acquire().expect("probe allowed"));
        let status = breaker.status();
        assert_eq!(status.state, CircuitState::Open);
        assert_eq!(status.seconds_until_probe, Some(0.0));
        assert_eq!(status.failure_count, 3, "not counted as a failure");
        // Without the clock moving, the next call is the new probe.
        let probe = breaker.try_acquire().expect("a new probe allowed at once");
        assert_eq!(breaker.status().state, CircuitState::HalfOpen);
        assert!(breaker.try_acquire().is_err(), "still one probe at a time");
        probe.succeeded();
        assert_eq!(breaker.status().state, CircuitState::Closed);
    }

    #[test]
    fn while_half_open_a_late_success_of_an_earlier_call_does_not_close_the_circuit() {
        let (breaker, clock) = breaker();
        let late = breaker.try_acquire().unwrap();
        fail_times(&breaker, 3);
        clock.advance(Duration::from_secs(30));
        let probe = breaker.try_acquire().expect("probe allowed");
        late.succeeded();
        assert_eq!(breaker.status().state, CircuitState::HalfOpen);
        assert_eq!(breaker.status().success_count, 1, "still a success");
        assert!(
            breaker.try_acquire().is_err(),
            "the probe is still in flight"
        );
        probe.failed();
        assert_eq!(breaker.status().state, CircuitState::Open);
        assert_eq!(breaker.status().seconds_until_probe, Some(30.0));
    }

    #[test]
    fn while_half_open_a_late_failure_of_an_earlier_call_does_not_reopen_the_circuit() {
        let (breaker, clock) = breaker();
        let late = breaker.try_acquire().unwrap();
        fail_times(&breaker, 3);
        clock.advance(Duration::from_secs(30));
        let probe = breaker.try_acquire().expect("probe allowed");
        late.failed();
        assert_eq!(breaker.status().state, CircuitState::HalfOpen);
        probe.succeeded();
        assert_eq!(breaker.status().state, CircuitState::Closed);
        assert_eq!(breaker.status().failure_count, 0);
    }

    #[test]
    fn failures_of_calls_admitted_before_the_trip_do_not_extend_the_open_period() {
        let (breaker, clock) = breaker();
        let late = breaker.try_acquire().unwrap();
        fail_times(&breaker, 3);
        clock.advance(Duration::from_secs(10));
        late.failed();
        clock.advance(Duration::from_secs(20));
        assert!(breaker.try_acquire().is_ok());
    }
}
