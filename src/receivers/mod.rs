//! The receivers: what other programs send (Prometheus remote write, OTLP metrics), decoded
//! and mapped onto metric points by the rules of the JSON API. Nothing here knows of HTTP or
//! SQL: the handlers give bytes and get points, and how many samples were left out and why.

pub mod otlp;
pub mod remote_write;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::metric::{MAX_TAGS, MetricPoint, MetricType, Tags, check_tag, check_value};

/// Reasons kept for the answer, at most: the count says how many there were.
const MAX_REASONS: usize = 5;

/// Samples a receiver took from a request, ready to store.
#[derive(Debug, Default)]
pub struct Samples {
    pub points: Vec<MetricPoint>,
    /// Samples that are no value, so neither stored nor refused: Prometheus' stale markers
    /// and other non-finite values, OTLP points flagged as having no recorded value.
    pub skipped: usize,
    /// Of the skipped, Prometheus' stale markers.
    pub stale: usize,
    /// Samples refused: retrying them cannot help.
    pub rejected: usize,
    /// Why, for the first few of them.
    pub reasons: Vec<String>,
}

impl Samples {
    fn reject(&mut self, samples: usize, reason: impl FnOnce() -> String) {
        self.rejected += samples;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(reason());
        }
    }

    /// The reasons in one message.
    pub fn rejection_message(&self) -> String {
        let more = self.rejected.saturating_sub(self.reasons.len());
        let mut message = format!(
            "{} samples refused: {}",
            self.rejected,
            self.reasons.join("; ")
        );
        if more > 0 && self.reasons.len() == MAX_REASONS {
            message.push_str("; …");
        }
        message
    }
}

/// Why a request is refused whole.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Not the protocol's message (or not decompressible): retrying cannot help.
    #[error("{0}")]
    Undecodable(String),
    /// Larger than `limit` bytes once inflated.
    #[error("the body inflates past {limit} bytes")]
    TooLarge { limit: usize },
    /// More samples than a request may carry.
    #[error("more than {limit} samples in one request")]
    TooManySamples { limit: usize },
}

/// Samples in one request, at most: what its points may hold is bounded by this (a few
/// hundred bytes each), whatever the body's size. Prometheus sends 2,000 at most by default,
/// the OpenTelemetry Collector's batch processor 8,192.
pub const MAX_SAMPLES_PER_REQUEST: usize = 50_000;

/// A series' type and tags by the JSON API's rules, from a name and its labels (attributes);
/// the reason when they break one.
fn series_identity<'a>(
    name: &str,
    labels: impl IntoIterator<Item = (&'a str, String)>,
) -> Result<(MetricType, Tags), String> {
    let metric_type: MetricType = name
        .parse()
        .map_err(|message| format!("metric name {name:?}: {message}"))?;
    let mut tags = BTreeMap::new();
    for (key, value) in labels {
        check_tag(key, &value)?;
        tags.insert(key.to_owned(), value);
    }
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "{name:?}: {} labels, more than the {MAX_TAGS} tags a point may have",
            tags.len()
        ));
    }
    Ok((metric_type, Tags::from_checked(&tags)))
}

/// What one sample is: a point, nothing (no value), or refused.
enum Sample {
    Point(MetricPoint),
    NoValue,
    Invalid(String),
}

fn sample(
    metric_type: &MetricType,
    tags: &Tags,
    timestamp: Option<DateTime<Utc>>,
    value: f64,
) -> Sample {
    if !value.is_finite() {
        return Sample::NoValue;
    }
    let Some(timestamp) = timestamp.filter(|t| {
        (crate::metric::earliest_timestamp()..=crate::metric::latest_timestamp()).contains(t)
    }) else {
        return Sample::Invalid(format!(
            "{metric_type}: timestamp outside 1970-01-01 to 9999-12-31"
        ));
    };
    match check_value(value) {
        Ok(value) => Sample::Point(MetricPoint {
            timestamp,
            value,
            metric_type: metric_type.clone(),
            tags: tags.clone(),
        }),
        Err(message) => Sample::Invalid(format!("{metric_type}: value {value:e} {message}")),
    }
}

impl Samples {
    /// Takes one sample, within the request's limit.
    fn take(&mut self, sample: Sample) -> Result<(), ReceiveError> {
        match sample {
            Sample::Point(point) => {
                if self.points.len() == MAX_SAMPLES_PER_REQUEST {
                    return Err(ReceiveError::TooManySamples {
                        limit: MAX_SAMPLES_PER_REQUEST,
                    });
                }
                self.points.push(point);
            }
            Sample::NoValue => self.skipped += 1,
            Sample::Invalid(reason) => self.reject(1, || reason),
        }
        Ok(())
    }
}
