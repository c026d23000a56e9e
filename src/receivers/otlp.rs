//! OTLP/HTTP metrics: an `ExportMetricsServiceRequest` as protobuf or as OTLP's JSON mapping
//! (lowerCamelCase names, 64-bit integers as decimal strings or numbers, enums as integers
//! or names, bytes as base64). The messages below are the protocol's, trimmed to the fields
//! read; they decode both ways.
//!
//! Mapping: a metric's name is the type; resource attributes, then the point's attributes
//! (which win on a clash), are the tags, each value as text (arrays and maps as JSON, bytes as
//! base64). Gauges and sums give one point per data point; a sum's temporality is the tag
//! `otel.temporality` (`cumulative` or `delta`), so the two never mix in one series.
//! Histograms (explicit and exponential) and summaries give two points per data point,
//! `<name>_count` and `<name>_sum` (when a sum is present), as Prometheus names them; their
//! buckets and quantiles are not stored. A point flagged "no recorded value" is skipped.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, de};

use super::{ReceiveError, Samples, sample, series_identity};

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExportMetricsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScopeMetrics {
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(oneof = "Data", tags = "5, 7, 9, 10, 11")]
    #[serde(flatten)]
    pub data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
    #[prost(message, tag = "9")]
    Histogram(Histogram),
    #[prost(message, tag = "10")]
    ExponentialHistogram(ExponentialHistogram),
    #[prost(message, tag = "11")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Sum {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    #[prost(int32, tag = "2")]
    #[serde(deserialize_with = "temporality")]
    pub aggregation_temporality: i32,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Histogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    #[prost(int32, tag = "2")]
    #[serde(deserialize_with = "temporality")]
    pub aggregation_temporality: i32,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExponentialHistogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<ExponentialHistogramDataPoint>,
    #[prost(int32, tag = "2")]
    #[serde(deserialize_with = "temporality")]
    pub aggregation_temporality: i32,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<SummaryDataPoint>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "3")]
    #[serde(deserialize_with = "unsigned")]
    pub time_unix_nano: u64,
    #[prost(oneof = "NumberValue", tags = "4, 6")]
    #[serde(flatten)]
    pub value: Option<NumberValue>,
    #[prost(uint32, tag = "8")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, prost::Oneof, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NumberValue {
    #[prost(double, tag = "4")]
    AsDouble(#[serde(deserialize_with = "double")] f64),
    #[prost(sfixed64, tag = "6")]
    AsInt(#[serde(deserialize_with = "signed")] i64),
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HistogramDataPoint {
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "3")]
    #[serde(deserialize_with = "unsigned")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    #[serde(deserialize_with = "unsigned")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    #[serde(deserialize_with = "optional_double")]
    pub sum: Option<f64>,
    #[prost(uint32, tag = "10")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExponentialHistogramDataPoint {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "3")]
    #[serde(deserialize_with = "unsigned")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    #[serde(deserialize_with = "unsigned")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    #[serde(deserialize_with = "optional_double")]
    pub sum: Option<f64>,
    #[prost(uint32, tag = "10")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SummaryDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "3")]
    #[serde(deserialize_with = "unsigned")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    #[serde(deserialize_with = "unsigned")]
    pub count: u64,
    #[prost(double, tag = "5")]
    #[serde(deserialize_with = "double")]
    pub sum: f64,
    #[prost(uint32, tag = "8")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    #[serde(flatten)]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Value {
    #[prost(string, tag = "1")]
    StringValue(String),
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    #[prost(int64, tag = "3")]
    IntValue(#[serde(deserialize_with = "signed")] i64),
    #[prost(double, tag = "4")]
    DoubleValue(#[serde(deserialize_with = "double")] f64),
    #[prost(message, tag = "5")]
    ArrayValue(ArrayValue),
    #[prost(message, tag = "6")]
    KvlistValue(KeyValueList),
    #[prost(bytes, tag = "7")]
    BytesValue(#[serde(deserialize_with = "base64_bytes")] Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

/// `ExportMetricsServiceResponse`, with its `partial_success` when points were refused.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportMetricsPartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsPartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_data_points: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

impl ExportMetricsServiceResponse {
    /// The answer to a request of which `samples` were taken.
    pub fn of(samples: &Samples) -> Self {
        Self {
            partial_success: (samples.rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: samples.rejected as i64,
                error_message: samples.rejection_message(),
            }),
        }
    }

    /// The OTLP JSON form (an int64 as a decimal string).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.partial_success {
            None => serde_json::json!({}),
            Some(partial) => serde_json::json!({
                "partialSuccess": {
                    "rejectedDataPoints": partial.rejected_data_points.to_string(),
                    "errorMessage": partial.error_message,
                }
            }),
        }
    }
}

/// OTLP's "no recorded value" flag of a data point.
const NO_RECORDED_VALUE: u32 = 1;
const DELTA: i32 = 1;
const CUMULATIVE: i32 = 2;

/// A protobuf request.
pub fn decode_protobuf(body: &[u8]) -> Result<ExportMetricsServiceRequest, ReceiveError> {
    <ExportMetricsServiceRequest as prost::Message>::decode(body).map_err(|error| {
        ReceiveError::Undecodable(format!("not an ExportMetricsServiceRequest: {error}"))
    })
}

/// A JSON request.
pub fn decode_json(body: &[u8]) -> Result<ExportMetricsServiceRequest, ReceiveError> {
    serde_json::from_slice(body).map_err(|error| {
        ReceiveError::Undecodable(format!(
            "not an OTLP JSON ExportMetricsServiceRequest: {error}"
        ))
    })
}

/// A data point's time: nanoseconds since the epoch, kept to the microsecond (as stored);
/// none when unset (0).
fn time_of(nanos: u64) -> Option<DateTime<Utc>> {
    (nanos > 0)
        .then(|| i64::try_from(nanos / 1_000).ok())
        .flatten()
        .and_then(DateTime::from_timestamp_micros)
}

/// An attribute's value as tag text.
fn text_of(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(Value::BytesValue(bytes)) => base64::engine::general_purpose::STANDARD.encode(bytes),
        Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => json_of(value).to_string(),
    }
}

fn json_of(value: &AnyValue) -> serde_json::Value {
    match &value.value {
        Some(Value::ArrayValue(array)) => array.values.iter().map(json_of).collect(),
        Some(Value::KvlistValue(list)) => list
            .values
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    kv.value.as_ref().map_or(serde_json::Value::Null, json_of),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        _ => text_of(value).into(),
    }
}

/// The tags of a data point: the resource's attributes, then the point's (which win), then
/// the temporality; an attribute without a value is no tag.
fn labels_of(
    resource: &[KeyValue],
    point: &[KeyValue],
    temporality: Option<&'static str>,
) -> Vec<(String, String)> {
    let mut labels: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for kv in resource.iter().chain(point) {
        let text = kv.value.as_ref().map(text_of).unwrap_or_default();
        if text.is_empty() {
            labels.remove(&kv.key);
        } else {
            labels.insert(kv.key.clone(), text);
        }
    }
    if let Some(temporality) = temporality {
        labels.insert("otel.temporality".into(), temporality.into());
    }
    labels.into_iter().collect()
}

fn temporality_tag(temporality: i32) -> Option<&'static str> {
    match temporality {
        DELTA => Some("delta"),
        CUMULATIVE => Some("cumulative"),
        _ => None,
    }
}

/// One data point's values, each of its own type (a histogram's count and sum).
struct DataPoint<'a> {
    attributes: &'a [KeyValue],
    time_unix_nano: u64,
    flags: u32,
    values: Vec<(String, f64)>,
}

impl<'a> DataPoint<'a> {
    fn distribution(
        name: &str,
        attributes: &'a [KeyValue],
        time_unix_nano: u64,
        flags: u32,
        count: u64,
        sum: Option<f64>,
    ) -> Self {
        let mut values = vec![(format!("{name}_count"), count as f64)];
        values.extend(sum.map(|sum| (format!("{name}_sum"), sum)));
        Self {
            attributes,
            time_unix_nano,
            flags,
            values,
        }
    }
}

/// The samples of a decoded request. `rejected` counts data points, as OTLP does.
pub fn samples(request: &ExportMetricsServiceRequest) -> Result<Samples, ReceiveError> {
    let mut samples = Samples::default();
    for resource_metrics in &request.resource_metrics {
        let resource: &[KeyValue] = resource_metrics
            .resource
            .as_ref()
            .map_or(&[], |resource| &resource.attributes);
        for metric in resource_metrics
            .scope_metrics
            .iter()
            .flat_map(|scope| &scope.metrics)
        {
            let name = metric.name.as_str();
            let (temporality, points): (i32, Vec<DataPoint>) = match &metric.data {
                None => continue,
                Some(Data::Gauge(gauge)) => (0, number_points(name, &gauge.data_points)),
                Some(Data::Sum(sum)) => (
                    sum.aggregation_temporality,
                    number_points(name, &sum.data_points),
                ),
                Some(Data::Histogram(histogram)) => (
                    histogram.aggregation_temporality,
                    histogram
                        .data_points
                        .iter()
                        .map(|p| {
                            DataPoint::distribution(
                                name,
                                &p.attributes,
                                p.time_unix_nano,
                                p.flags,
                                p.count,
                                p.sum,
                            )
                        })
                        .collect(),
                ),
                Some(Data::ExponentialHistogram(histogram)) => (
                    histogram.aggregation_temporality,
                    histogram
                        .data_points
                        .iter()
                        .map(|p| {
                            DataPoint::distribution(
                                name,
                                &p.attributes,
                                p.time_unix_nano,
                                p.flags,
                                p.count,
                                p.sum,
                            )
                        })
                        .collect(),
                ),
                Some(Data::Summary(summary)) => (
                    0,
                    summary
                        .data_points
                        .iter()
                        .map(|p| {
                            DataPoint::distribution(
                                name,
                                &p.attributes,
                                p.time_unix_nano,
                                p.flags,
                                p.count,
                                Some(p.sum),
                            )
                        })
                        .collect(),
                ),
            };
            for point in points {
                take_point(&mut samples, resource, temporality_tag(temporality), point)?;
            }
        }
    }
    Ok(samples)
}

fn number_points<'a>(name: &str, points: &'a [NumberDataPoint]) -> Vec<DataPoint<'a>> {
    points
        .iter()
        .map(|p| DataPoint {
            attributes: &p.attributes,
            time_unix_nano: p.time_unix_nano,
            flags: p.flags,
            values: match p.value {
                Some(NumberValue::AsDouble(value)) => vec![(name.to_owned(), value)],
                Some(NumberValue::AsInt(value)) => vec![(name.to_owned(), value as f64)],
                None => Vec::new(),
            },
        })
        .collect()
}

/// Takes one data point's values, or refuses the data point whole.
fn take_point(
    samples: &mut Samples,
    resource: &[KeyValue],
    temporality: Option<&'static str>,
    point: DataPoint,
) -> Result<(), ReceiveError> {
    if point.flags & NO_RECORDED_VALUE != 0 {
        samples.skipped += 1;
        return Ok(());
    }
    if point.values.is_empty() {
        samples.reject(1, || "a number data point without a value".to_owned());
        return Ok(());
    }
    let labels = labels_of(resource, point.attributes, temporality);
    let timestamp = time_of(point.time_unix_nano);
    let mut taken = Vec::with_capacity(point.values.len());
    for (name, value) in &point.values {
        let identity = series_identity(name, labels.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let (metric_type, tags) = match identity {
            Ok(identity) => identity,
            Err(reason) => {
                samples.reject(1, || reason);
                return Ok(());
            }
        };
        match sample(&metric_type, &tags, timestamp, *value) {
            super::Sample::Point(p) => taken.push(super::Sample::Point(p)),
            super::Sample::NoValue => taken.push(super::Sample::NoValue),
            super::Sample::Invalid(reason) => {
                samples.reject(1, || reason);
                return Ok(());
            }
        }
    }
    for sample in taken {
        samples.take(sample)?;
    }
    Ok(())
}

/// A 64-bit unsigned integer as a JSON number or decimal string.
fn unsigned<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    number_or_text(deserializer)
}

/// A 64-bit signed integer as a JSON number or decimal string.
fn signed<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    number_or_text(deserializer)
}

/// A double as a JSON number, or "NaN", "Infinity", "-Infinity" (or a number in a string).
fn double<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    number_or_text(deserializer)
}

fn optional_double<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    double(deserializer).map(Some)
}

fn number_or_text<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<'a> {
        Number(serde_json::Number),
        Text(std::borrow::Cow<'a, str>),
    }
    let text = match Either::deserialize(deserializer)? {
        Either::Number(number) => number.to_string().into(),
        Either::Text(text) => text,
    };
    text.parse()
        .map_err(|_| de::Error::custom(format!("{text:?} is not a number of this field's type")))
}

/// A temporality as its number or its name.
fn temporality<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(i32),
        Name(String),
    }
    Ok(match Either::deserialize(deserializer)? {
        Either::Number(number) => number,
        Either::Name(name) => match name.as_str() {
            "AGGREGATION_TEMPORALITY_DELTA" => DELTA,
            "AGGREGATION_TEMPORALITY_CUMULATIVE" => CUMULATIVE,
            "AGGREGATION_TEMPORALITY_UNSPECIFIED" => 0,
            _ => return Err(de::Error::custom(format!("unknown temporality {name:?}"))),
        },
    })
}

fn base64_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|error| de::Error::custom(format!("bytesValue is not base64: {error}")))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn json_request(metric: serde_json::Value) -> Samples {
        let body = serde_json::json!({
            "resourceMetrics": [{
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": "checkout"}},
                    {"key": "host", "value": {"stringValue": "from-resource"}}
                ]},
                "scopeMetrics": [{"scope": {"name": "s"}, "metrics": [metric]}]
            }]
        });
        samples(&decode_json(body.to_string().as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn json_gauges_keep_their_oneofs_and_string_integers() {
        let got = json_request(serde_json::json!({
            "name": "queue_depth",
            "gauge": {"dataPoints": [
                {"timeUnixNano": "1700000000123456789", "asInt": "42",
                 "attributes": [{"key": "host", "value": {"stringValue": "from-point"}},
                                {"key": "n", "value": {"intValue": "7"}}]},
                {"timeUnixNano": 1700000001000000000u64, "asDouble": 1.5}
            ]}
        }));
        assert_eq!(got.points.len(), 2, "{:?}", got.reasons);
        let first = &got.points[0];
        assert_eq!(first.metric_type.as_str(), "queue_depth");
        assert_eq!(first.value, 42.0);
        assert_eq!(first.timestamp.timestamp_micros(), 1_700_000_000_123_456);
        assert_eq!(
            first.tags.as_json(),
            r#"{"host":"from-point","n":"7","service.name":"checkout"}"#
        );
        assert_eq!(got.points[1].value, 1.5);
    }

    #[test]
    fn sums_record_their_temporality_and_histograms_give_count_and_sum() {
        let sum = json_request(serde_json::json!({
            "name": "requests",
            "sum": {"aggregationTemporality": 2, "isMonotonic": true,
                    "dataPoints": [{"timeUnixNano": "1700000000000000000", "asInt": "3"}]}
        }));
        assert!(
            sum.points[0]
                .tags
                .as_json()
                .contains(r#""otel.temporality":"cumulative""#)
        );
        let delta = json_request(serde_json::json!({
            "name": "requests",
            "sum": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA",
                    "dataPoints": [{"timeUnixNano": "1700000000000000000", "asDouble": 3}]}
        }));
        assert!(
            delta.points[0]
                .tags
                .as_json()
                .contains(r#""otel.temporality":"delta""#)
        );
        let histogram = json_request(serde_json::json!({
            "name": "latency",
            "histogram": {"aggregationTemporality": 2, "dataPoints": [{
                "timeUnixNano": "1700000000000000000", "count": "4", "sum": 10.5,
                "bucketCounts": ["1", "3"], "explicitBounds": [1.0]
            }]}
        }));
        let types: Vec<(&str, f64)> = histogram
            .points
            .iter()
            .map(|p| (p.metric_type.as_str(), p.value))
            .collect();
        assert_eq!(types, [("latency_count", 4.0), ("latency_sum", 10.5)]);
    }

    #[test]
    fn bad_points_are_counted_and_the_rest_kept() {
        let got = json_request(serde_json::json!({
            "name": "g",
            "gauge": {"dataPoints": [
                {"timeUnixNano": "0", "asDouble": 1},
                {"timeUnixNano": "1700000000000000000"},
                {"timeUnixNano": "1700000000000000000", "asDouble": 1, "flags": 1},
                {"timeUnixNano": "1700000000000000000", "asDouble": "NaN"},
                {"timeUnixNano": "1700000000000000000", "asDouble": 2}
            ]}
        }));
        assert_eq!(got.points.len(), 1);
        assert_eq!((got.rejected, got.skipped), (2, 2));
        let answer = ExportMetricsServiceResponse::of(&got).to_json();
        assert_eq!(answer["partialSuccess"]["rejectedDataPoints"], "2");
    }

    #[test]
    fn protobuf_round_trips_and_garbage_is_undecodable() {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: None,
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "h".into(),
                        data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: vec![ExponentialHistogramDataPoint {
                                attributes: vec![KeyValue {
                                    key: "b".into(),
                                    value: Some(AnyValue {
                                        value: Some(Value::BytesValue(vec![1, 2, 3])),
                                    }),
                                }],
                                time_unix_nano: 1_700_000_000_000_000_000,
                                count: 2,
                                sum: None,
                                flags: 0,
                            }],
                            aggregation_temporality: DELTA,
                        })),
                    }],
                }],
            }],
        };
        let decoded = decode_protobuf(&request.encode_to_vec()).unwrap();
        assert_eq!(decoded, request);
        let got = samples(&decoded).unwrap();
        assert_eq!(got.points.len(), 1, "no sum, so the count only");
        assert_eq!(
            got.points[0].tags.as_json(),
            r#"{"b":"AQID","otel.temporality":"delta"}"#
        );
        assert!(decode_protobuf(b"\x0a\xff\xff\xff").is_err());
        assert!(decode_json(b"{\"resourceMetrics\": 3}").is_err());
    }
}
