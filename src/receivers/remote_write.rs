//! Prometheus remote write 1.0: a snappy-compressed (block format) protobuf `WriteRequest`.
//! `__name__` is the type, the other labels the tags; a label with an empty value is no label
//! (as in Prometheus). A series that breaks the JSON API's rules (a name or label too long,
//! more than 32 labels, no `__name__`) is refused whole; so is a sample with a timestamp or
//! value out of range. Stale markers and other non-finite values are skipped and counted.

use chrono::DateTime;

use super::{ReceiveError, Samples, sample, series_identity};

/// `prometheus.WriteRequest`; metadata (field 3) is not read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<PromSample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PromSample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The bit pattern of Prometheus' stale marker, a NaN that says a series ended.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Inflates a snappy block no larger than `limit` once inflated (its header says how large it
/// will be, so a bomb is refused before anything is allocated).
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, ReceiveError> {
    let length = snap::raw::decompress_len(body)
        .map_err(|error| ReceiveError::Undecodable(format!("invalid snappy block: {error}")))?;
    if length > limit {
        return Err(ReceiveError::TooLarge { limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|error| ReceiveError::Undecodable(format!("invalid snappy block: {error}")))
}

/// The samples of an inflated `WriteRequest`.
pub fn samples(message: &[u8]) -> Result<Samples, ReceiveError> {
    let request = <WriteRequest as prost::Message>::decode(message).map_err(|error| {
        ReceiveError::Undecodable(format!("not a remote-write WriteRequest: {error}"))
    })?;
    let mut samples = Samples::default();
    for series in request.timeseries {
        let mut name = None;
        let mut labels = Vec::with_capacity(series.labels.len());
        for label in series.labels {
            if label.name == "__name__" {
                name = Some(label.value);
            } else if !label.value.is_empty() {
                labels.push(label);
            }
        }
        let count = series.samples.len();
        let Some(name) = name else {
            samples.reject(count, || "a series without __name__".to_owned());
            continue;
        };
        let (metric_type, tags) = match series_identity(
            &name,
            labels
                .iter()
                .map(|label| (label.name.as_str(), label.value.clone())),
        ) {
            Ok(identity) => identity,
            Err(reason) => {
                samples.reject(count, || reason);
                continue;
            }
        };
        for prom in series.samples {
            if prom.value.to_bits() == STALE_NAN {
                samples.stale += 1;
                samples.skipped += 1;
                continue;
            }
            let timestamp = DateTime::from_timestamp_millis(prom.timestamp);
            let sample = sample(&metric_type, &tags, timestamp, prom.value);
            samples.take(sample)?;
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(name, value)| Label {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(value, timestamp)| PromSample { value, timestamp })
                .collect(),
        }
    }

    fn decoded(timeseries: Vec<TimeSeries>) -> Samples {
        samples(&WriteRequest { timeseries }.encode_to_vec()).unwrap()
    }

    #[test]
    fn name_is_the_type_and_the_other_labels_are_tags() {
        let got = decoded(vec![series(
            &[
                ("__name__", "up"),
                ("instance", "a:9090"),
                ("job", "node"),
                ("empty", ""),
            ],
            &[(1.0, 1_700_000_000_123), (0.0, 1_700_000_001_123)],
        )]);
        assert_eq!(got.points.len(), 2);
        let point = &got.points[0];
        assert_eq!(point.metric_type.as_str(), "up");
        assert_eq!(
            point.tags.as_json(),
            r#"{"instance":"a:9090","job":"node"}"#
        );
        assert_eq!(point.timestamp.timestamp_millis(), 1_700_000_000_123);
        assert_eq!((got.skipped, got.rejected), (0, 0));
    }

    #[test]
    fn stale_markers_and_non_finite_values_are_skipped_not_refused() {
        let got = decoded(vec![series(
            &[("__name__", "x")],
            &[
                (f64::from_bits(STALE_NAN), 1),
                (f64::NAN, 2),
                (f64::INFINITY, 3),
                (5.0, 4),
            ],
        )]);
        assert_eq!(got.points.len(), 1);
        assert_eq!((got.skipped, got.stale, got.rejected), (3, 1, 0));
    }

    #[test]
    fn a_series_past_the_rules_is_refused_and_the_rest_kept() {
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("l{i}"), "v".into())).collect();
        let mut labels: Vec<(&str, &str)> =
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        labels.push(("__name__", "wide"));
        let long = "v".repeat(501);
        let got = decoded(vec![
            series(&labels, &[(1.0, 1), (2.0, 2)]),
            series(&[("job", "nameless")], &[(1.0, 1)]),
            series(&[("__name__", "long"), ("k", &long)], &[(1.0, 1)]),
            series(&[("__name__", "ok")], &[(1.0, 1), (1e101, 2), (1.0, -1)]),
        ]);
        assert_eq!(got.points.len(), 1);
        assert_eq!(got.rejected, 6);
        assert_eq!(got.reasons.len(), 5);
        assert!(
            got.rejection_message().starts_with("6 samples refused: "),
            "{}",
            got.rejection_message()
        );
    }

    #[test]
    fn the_sample_limit_holds() {
        let many: Vec<(f64, i64)> = (0..=super::super::MAX_SAMPLES_PER_REQUEST as i64)
            .map(|t| (1.0, t))
            .collect();
        let request = WriteRequest {
            timeseries: vec![series(&[("__name__", "x")], &many)],
        };
        assert!(matches!(
            samples(&request.encode_to_vec()),
            Err(ReceiveError::TooManySamples { .. })
        ));
    }

    #[test]
    fn snappy_bombs_and_garbage_are_refused_before_inflating() {
        let big = snap::raw::Encoder::new()
            .compress_vec(&vec![0u8; 1 << 20])
            .unwrap();
        assert!(big.len() < 64 * 1024);
        assert!(matches!(
            decompress(&big, 1 << 19),
            Err(ReceiveError::TooLarge { .. })
        ));
        assert_eq!(decompress(&big, 1 << 20).unwrap().len(), 1 << 20);
        assert!(matches!(
            decompress(b"\xff\xff\xff\xff\xff\xff", 100),
            Err(ReceiveError::Undecodable(_))
        ));
        assert!(matches!(
            samples(b"\xff\xff garbage"),
            Err(ReceiveError::Undecodable(_))
        ));
    }
}
