//! JSON bodies of the write endpoints, decoded into validated points.
//!
//! A point's fields are taken as raw JSON text and interpreted one by one, so every offending
//! field is reported, a number beyond f64 is a field error rather than a broken body, and
//! unknown fields are skipped without being built into values. A batch is decoded element by
//! element from a stream: no tree of the whole body is ever held, and decoding stops at the
//! first limit (points, bytes, depth: the last two are enforced by the reader, see `body`).

use std::{collections::BTreeMap, fmt, io::Read};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

use super::body::{Meter, held_by_point};

use crate::metric::{
    FieldError, MAX_TAGS, MetricPoint, RejectedPoint, Tags, check_tag, check_value, collect,
    parse_timestamp,
};

/// Points in one batch, at most.
pub(super) const MAX_BATCH_POINTS: usize = 10_000;

/// Why a body could not be decoded as a whole.
#[derive(Debug)]
pub(super) enum DecodeError {
    /// Not JSON (or cut short): the reason, for the client.
    Malformed(String),
    /// JSON, but not of the expected shape: field errors.
    Invalid(Vec<FieldError>),
    /// More than [`MAX_BATCH_POINTS`] points.
    TooManyPoints,
    /// The memory budget for bodies has no room for what this one decodes to, now.
    Busy,
    /// The reader stopped (a limit, a timeout, a hang-up): its error.
    Read(std::io::Error),
}

/// The fields of a point as sent, each still raw JSON; unknown fields are skipped unread.
#[derive(Deserialize)]
struct RawPoint<'a> {
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    metric_type: Option<&'a RawValue>,
    #[serde(borrow)]
    tags: Option<&'a RawValue>,
}

/// A field that must be present and not null.
fn required(field: Option<&RawValue>) -> Result<&RawValue, String> {
    field
        .filter(|raw| raw.get() != "null")
        .ok_or_else(|| "is required".to_owned())
}

fn string(raw: &RawValue, what: &str) -> Result<String, String> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| format!("must be {what}"))
}

fn timestamp(raw: &RawValue) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let text = string(raw, "an RFC 3339 string")?;
    parse_timestamp(&text)
}

/// A raw JSON value as a number, when it is one. Parsed here, not by the body's decoder, so
/// a number beyond f64 (1e400) is infinite, an error of its field rather than of the body.
pub(super) fn json_number(raw: &RawValue) -> Option<f64> {
    let text = raw.get();
    // A JSON number starts with a digit or a minus sign; anything else is another type.
    text.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        .then(|| text.parse::<f64>().unwrap_or(f64::INFINITY))
}

fn value(raw: &RawValue) -> Result<f64, String> {
    json_number(raw)
        .ok_or_else(|| "must be a JSON number".to_owned())
        .and_then(check_value)
}

/// Tags as sent: an object whose values are kept raw until checked, so a value of another
/// type is an error of this field, not of the body. More than [`MAX_TAGS`] pairs stop the
/// collection (the rest is skipped unread).
struct RawTags<'a> {
    pairs: Vec<(String, &'a RawValue)>,
    too_many: bool,
}

impl<'de> Deserialize<'de> for RawTags<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TagsVisitor;
        impl<'de> Visitor<'de> for TagsVisitor {
            type Value = RawTags<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string to string")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut tags = RawTags {
                    pairs: Vec::new(),
                    too_many: false,
                };
                while let Some(key) = map.next_key::<String>()? {
                    if tags.pairs.len() == MAX_TAGS {
                        tags.too_many = true;
                        map.next_value::<IgnoredAny>()?;
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        break;
                    }
                    tags.pairs.push((key, map.next_value()?));
                }
                Ok(tags)
            }
        }
        deserializer.deserialize_map(TagsVisitor)
    }
}

fn tags(raw: Option<&RawValue>) -> Result<Tags, String> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
        return Ok(Tags::default());
    };
    let tags: RawTags = serde_json::from_str(raw.get())
        .map_err(|_| "must be an object of string to string".to_owned())?;
    if tags.too_many {
        return Err(format!("must have at most {MAX_TAGS} pairs"));
    }
    let pairs = tags
        .pairs
        .into_iter()
        .map(|(key, raw)| {
            let value = serde_json::from_str::<String>(raw.get())
                .map_err(|_| format!("{key:?}: tag values must be strings"))?;
            check_tag(&key, &value)?;
            Ok((key, value))
        })
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    Ok(Tags::from_checked(&pairs))
}

/// Decodes one point from valid JSON text, reporting every offending field.
pub(super) fn point(json: &str) -> Result<MetricPoint, Vec<FieldError>> {
    // A derived struct would also take `[timestamp, value, type, tags]`: only an object is a
    // point. (Valid JSON text as it is handed here never starts with white space.)
    if !json.starts_with('{') {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    }
    let raw: RawPoint = serde_json::from_str(json).map_err(|error| {
        let message = if error.to_string().starts_with("duplicate field") {
            error.to_string()
        } else {
            "must be a JSON object".to_owned()
        };
        vec![FieldError::new("body", message)]
    })?;
    let mut errors = Vec::new();
    let timestamp = collect(
        &mut errors,
        "timestamp",
        required(raw.timestamp).and_then(timestamp),
    );
    let value = collect(&mut errors, "value", required(raw.value).and_then(value));
    let metric_type = collect(
        &mut errors,
        "type",
        required(raw.metric_type)
            .and_then(|raw| string(raw, "a string"))
            .and_then(|text| text.parse()),
    );
    let tags = collect(&mut errors, "tags", tags(raw.tags));
    match (timestamp, value, metric_type, tags) {
        (Some(timestamp), Some(value), Some(metric_type), Some(tags)) => Ok(MetricPoint {
            timestamp,
            value,
            metric_type,
            tags,
        }),
        _ => Err(errors),
    }
}

/// A single point's body: 400 when it is not JSON, 422 with every offending field otherwise.
pub(super) fn single(body: &[u8]) -> Result<MetricPoint, DecodeError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| DecodeError::Malformed("the body is not valid UTF-8".into()))?;
    // Checks the syntax of the whole body (depth is the reader's); fields are taken raw.
    let raw: &RawValue = serde_json::from_str(text).map_err(malformed)?;
    point(raw.get()).map_err(DecodeError::Invalid)
}

fn malformed(error: serde_json::Error) -> DecodeError {
    if error.is_io() {
        DecodeError::Read(error.into())
    } else {
        DecodeError::Malformed(error.to_string())
    }
}

/// A batch as decoded: its valid points, and the invalid ones by position.
#[derive(Debug, Default)]
pub(super) struct DecodedBatch {
    pub(super) points: Vec<MetricPoint>,
    pub(super) rejected: Vec<RejectedPoint>,
}

/// Decodes `{"metrics": [point, ...]}` from a stream, one element at a time, charging
/// `meter` for every point kept (valid or rejected).
pub(super) fn batch(reader: impl Read, meter: &mut Meter) -> Result<DecodedBatch, DecodeError> {
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let mut outcome = BatchOutcome {
        meter,
        batch: DecodedBatch::default(),
        seen_metrics: false,
        too_many: false,
        busy: false,
    };
    let decoded = BatchSeed(&mut outcome)
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    match decoded {
        Ok(()) if !outcome.seen_metrics => Err(DecodeError::Invalid(vec![FieldError::new(
            "metrics",
            "is required",
        )])),
        Ok(()) => Ok(outcome.batch),
        Err(_) if outcome.too_many => Err(DecodeError::TooManyPoints),
        Err(_) if outcome.busy => Err(DecodeError::Busy),
        Err(error) if error.is_data() => Err(DecodeError::Invalid(vec![FieldError::new(
            if outcome.seen_metrics {
                "metrics"
            } else {
                "body"
            },
            error.to_string(),
        )])),
        Err(error) => Err(malformed(error)),
    }
}

struct BatchOutcome<'m> {
    meter: &'m mut Meter,
    batch: DecodedBatch,
    seen_metrics: bool,
    too_many: bool,
    busy: bool,
}

/// The batch object: `metrics` is decoded point by point, other fields are skipped unread.
struct BatchSeed<'a, 'm>(&'a mut BatchOutcome<'m>);

impl<'de> DeserializeSeed<'de> for BatchSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a JSON object {"metrics": [...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "metrics" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if self.0.seen_metrics {
                return Err(de::Error::custom("must appear once"));
            }
            self.0.seen_metrics = true;
            map.next_value_seed(PointsSeed(self.0))?;
        }
        Ok(())
    }
}

/// The `metrics` array: each element is captured as raw text (syntax checked, numbers not
/// parsed) and decoded on its own, so an invalid element rejects only itself.
struct PointsSeed<'a, 'm>(&'a mut BatchOutcome<'m>);

impl<'de> DeserializeSeed<'de> for PointsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PointsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of 1 to 10,000 points")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(element) = seq.next_element::<Box<RawValue>>()? {
            if index == MAX_BATCH_POINTS {
                self.0.too_many = true;
                return Err(de::Error::custom("too many points"));
            }
            match point(element.get()) {
                Ok(point) => {
                    // Rejected points' errors are in every body's working memory.
                    if self
                        .0
                        .meter
                        .charge(held_by_point(element.get().len()))
                        .is_err()
                    {
                        self.0.busy = true;
                        return Err(de::Error::custom("out of memory budget"));
                    }
                    self.0.batch.points.push(point);
                }
                Err(errors) => self.0.batch.rejected.push(RejectedPoint { index, errors }),
            }
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(body: serde_json::Value) -> Vec<String> {
        point(&body.to_string())
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_point_is_normalised_to_utc() {
        let point = point(
            r#"{"timestamp": "2026-01-01T12:00:00+02:00", "value": 42, "type": "cpu_usage",
                "tags": {"host": "web-1"}, "unknown": [1, {"a": 1e400}]}"#,
        )
        .unwrap();
        assert_eq!(point.timestamp.to_rfc3339(), "2026-01-01T10:00:00+00:00");
        assert_eq!(point.value, 42.0);
        assert_eq!(point.metric_type.as_str(), "cpu_usage");
        assert_eq!(point.tags.as_json(), r#"{"host":"web-1"}"#);
    }

    #[test]
    fn every_offending_field_is_reported() {
        assert_eq!(fields(json!({})), ["timestamp", "value", "type"]);
        assert_eq!(
            fields(
                json!({"timestamp": "yesterday", "value": "1.5", "type": "", "tags": [], "extra": 1})
            ),
            ["timestamp", "value", "type", "tags"]
        );
        assert_eq!(fields(json!([1, 2])), ["body"]);
        assert_eq!(
            fields(json!(["2026-01-01T00:00:00Z", 1, "cpu", null])),
            ["body"],
            "the fields in order are not a point"
        );
        assert_eq!(
            fields(json!({"timestamp": null, "value": null, "type": null, "tags": null})),
            ["timestamp", "value", "type"]
        );
    }

    #[test]
    fn numbers_beyond_f64_and_non_numbers_are_value_errors() {
        for value in ["1e400", "-1e400", "1e101", r#""1""#, "true", "[1]", "{}"] {
            let body = format!(
                r#"{{"timestamp": "2026-01-01T00:00:00Z", "type": "t", "value": {value}}}"#
            );
            let errors = point(&body).unwrap_err();
            assert_eq!(errors.len(), 1, "{value}");
            assert_eq!(errors[0].field, "value", "{value}");
        }
    }

    #[test]
    fn tags_are_bounded_and_checked() {
        let with_tags = |tags: serde_json::Value| {
            point(
                &json!({"timestamp": "2026-01-01T00:00:00Z", "type": "t", "value": 1, "tags": tags})
                    .to_string(),
            )
        };
        let many: serde_json::Map<String, serde_json::Value> =
            (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(with_tags(serde_json::Value::Object(many)).is_err());
        assert!(with_tags(json!({"k": 1e300})).is_err());
        assert!(with_tags(json!({"": "v"})).is_err());
        assert!(with_tags(json!({"k": "x".repeat(501)})).is_err());
        assert_eq!(with_tags(json!(null)).unwrap().tags, Tags::default());
        // Duplicate keys: the last one counts, as in PostgreSQL's jsonb.
        let duplicate = point(
            r#"{"timestamp": "2026-01-01T00:00:00Z", "type": "t", "value": 1,
                "tags": {"b": "2", "a": "x", "a": "1"}}"#,
        );
        assert_eq!(duplicate.unwrap().tags.as_json(), r#"{"a":"1","b":"2"}"#);
    }

    #[test]
    fn a_single_body_that_is_not_json_is_malformed() {
        assert!(matches!(single(b"{"), Err(DecodeError::Malformed(_))));
        assert!(matches!(single(b"NaN"), Err(DecodeError::Malformed(_))));
        assert!(matches!(single(b"[1]"), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn a_batch_keeps_valid_points_and_lists_invalid_ones_by_index() {
        let body = r#"{"padding": [1, 2, {"x": 1e400}], "metrics": [
            {"timestamp": "2026-01-01T00:00:00Z", "type": "t", "value": 1},
            1,
            {"timestamp": "2026-01-01T00:00:00Z", "type": "t", "value": 1e400}
        ]}"#;
        let batch = batch(body.as_bytes(), &mut Meter::unlimited()).unwrap();
        assert_eq!(batch.points.len(), 1);
        let indexes: Vec<usize> = batch.rejected.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [1, 2]);
    }

    #[test]
    fn a_batch_stops_at_the_first_point_past_the_limit() {
        let mut body = String::from(r#"{"metrics": ["#);
        body.push_str(&vec!["1"; MAX_BATCH_POINTS + 1].join(","));
        body.push_str("]}");
        assert!(matches!(
            batch(body.as_bytes(), &mut Meter::unlimited()),
            Err(DecodeError::TooManyPoints)
        ));
        // Cut short after the limit: still "too many", not "malformed".
        let cut = format!(
            r#"{{"metrics": [{},1,"#,
            vec!["1"; MAX_BATCH_POINTS].join(",")
        );
        assert!(matches!(
            batch(cut.as_bytes(), &mut Meter::unlimited()),
            Err(DecodeError::TooManyPoints)
        ));
    }

    #[test]
    fn a_batch_of_another_shape_is_invalid_and_broken_json_malformed() {
        for body in [
            r#"{"other": 1}"#,
            r#"{"metrics": 5}"#,
            "[]",
            r#"{"metrics": [], "metrics": []}"#,
        ] {
            assert!(
                matches!(
                    batch(body.as_bytes(), &mut Meter::unlimited()),
                    Err(DecodeError::Invalid(_))
                ),
                "{body}"
            );
        }
        for body in [r#"{"metrics": [1,"#, r#"{"metrics": []} x"#, "NaN"] {
            assert!(
                matches!(
                    batch(body.as_bytes(), &mut Meter::unlimited()),
                    Err(DecodeError::Malformed(_))
                ),
                "{body}"
            );
        }
        assert_eq!(
            batch(r#"{"metrics": []}"#.as_bytes(), &mut Meter::unlimited())
                .unwrap()
                .points
                .len(),
            0
        );
    }
}
