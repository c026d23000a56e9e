//! Metric points and summaries: the domain, with the validation rules of the API contract.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::enrichment::EnrichmentData;

pub const MAX_TYPE_CHARS: usize = 100;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_KEY_CHARS: usize = 100;
pub const MAX_TAG_VALUE_CHARS: usize = 500;
/// Values are bounded so that no accepted value can overflow an aggregate (PostgreSQL's avg
/// of double precision also sums squares, which overflows for values near 1e154).
pub const MAX_ABS_VALUE: f64 = 1e100;

/// Text without control characters (C0, DEL, C1), as a JSON Schema pattern. Attributes of
/// the OpenAPI derive take only literals, so they repeat it; a test in `http` checks that.
pub const NO_CONTROL_CHARACTERS: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

/// A validated metric point, ready to store. The schema carries every rule `from_json`
/// enforces, so that a client (or a fuzzer) can tell a valid point from the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricPoint {
    /// When the point was measured (RFC 3339; without an offset it is taken as UTC).
    pub timestamp: DateTime<Utc>,
    /// A finite JSON number with absolute value at most 1e100.
    #[schema(minimum = -1e100, maximum = 1e100)]
    pub value: f64,
    /// 1–100 characters, no control characters.
    #[serde(rename = "type")]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub metric_type: String,
    #[serde(default)]
    #[schema(schema_with = tags_schema)]
    pub tags: BTreeMap<String, String>,
}

/// The rules of `parse_tags` as a schema (key rules need `propertyNames`, which the derive
/// cannot express).
fn tags_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_TAG_KEY_CHARS))
        .pattern(Some(NO_CONTROL_CHARACTERS));
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_TAG_VALUE_CHARS))
        .pattern(Some(r"^[^\u0000]*$"));
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(
            "Optional labels (null or absent: none): at most 32 pairs; keys 1–100 characters without control \
             characters, values at most 500 characters without NUL.",
        ))
        .max_properties(Some(MAX_TAGS))
        .property_names(Some(key))
        .additional_properties(Some(value))
        .build()
}

/// One offending field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl MetricPoint {
    /// Validates a parsed JSON body, reporting every offending field, not only the first.
    /// Unknown fields are ignored, as the seed's model did.
    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = body.as_object() else {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        };
        let mut errors = Vec::new();
        let timestamp = collect(
            &mut errors,
            "timestamp",
            required(object, "timestamp").and_then(parse_timestamp),
        );
        let value = collect(
            &mut errors,
            "value",
            required(object, "value").and_then(parse_value),
        );
        let metric_type = required(object, "type")
            .and_then(|v| v.as_str().ok_or_else(|| "must be a string".to_owned()))
            .and_then(validate_type);
        let metric_type = collect(&mut errors, "type", metric_type);
        let tags = collect(&mut errors, "tags", parse_tags(object.get("tags")));
        match (timestamp, value, metric_type, tags) {
            (Some(timestamp), Some(value), Some(metric_type), Some(tags)) if errors.is_empty() => {
                Ok(Self {
                    timestamp,
                    value,
                    metric_type: metric_type.to_owned(),
                    tags,
                })
            }
            _ => Err(errors),
        }
    }
}

/// Keeps the value, or records the field's error.
pub fn collect<T>(
    errors: &mut Vec<FieldError>,
    field: &str,
    result: Result<T, String>,
) -> Option<T> {
    result
        .map_err(|message| errors.push(FieldError::new(field, message)))
        .ok()
}

fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, String> {
    match object.get(field) {
        None | Some(Value::Null) => Err("is required".into()),
        Some(value) => Ok(value),
    }
}

/// RFC 3339; a timestamp without an offset is UTC. Offsets are normalised to UTC.
pub fn parse_timestamp(value: &Value) -> Result<DateTime<Utc>, String> {
    let text = value.as_str().ok_or("must be an RFC 3339 string")?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|naive| naive.and_utc())
                .ok_or(())
        })
        .map_err(|()| "must be an RFC 3339 timestamp, e.g. 2026-01-01T12:00:00Z".into())
}

fn parse_value(value: &Value) -> Result<f64, String> {
    let number = value
        .as_number()
        .and_then(|n| n.as_f64())
        .ok_or("must be a JSON number")?;
    if number.is_finite() && number.abs() <= MAX_ABS_VALUE {
        Ok(number)
    } else {
        Err(format!(
            "must be a finite number with absolute value at most {MAX_ABS_VALUE:e}"
        ))
    }
}

/// The rules for a metric type, shared by writes and queries.
pub fn validate_type(metric_type: &str) -> Result<&str, String> {
    let chars = metric_type.chars().count();
    if chars == 0 || chars > MAX_TYPE_CHARS {
        Err(format!("must be 1 to {MAX_TYPE_CHARS} characters"))
    } else if metric_type.chars().any(char::is_control) {
        Err("must not contain control characters".into())
    } else {
        Ok(metric_type)
    }
}

fn parse_tags(value: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let object = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(object)) => object,
        Some(_) => return Err("must be an object of string to string".into()),
    };
    if object.len() > MAX_TAGS {
        return Err(format!("must have at most {MAX_TAGS} pairs"));
    }
    object
        .iter()
        .map(|(key, value)| {
            let value = value
                .as_str()
                .ok_or_else(|| format!("{key:?}: tag values must be strings"))?;
            let key_chars = key.chars().count();
            if key_chars == 0 || key_chars > MAX_TAG_KEY_CHARS || key.chars().any(char::is_control) {
                return Err(format!(
                    "{key:?}: tag keys must be 1 to {MAX_TAG_KEY_CHARS} characters without control characters"
                ));
            }
            // PostgreSQL's jsonb cannot hold U+0000.
            if value.chars().count() > MAX_TAG_VALUE_CHARS || value.contains('\0') {
                return Err(format!(
                    "{key:?}: tag values must be at most {MAX_TAG_VALUE_CHARS} characters without NUL"
                ));
            }
            Ok((key.clone(), value.to_owned()))
        })
        .collect()
}

/// The time span a summary covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    All,
    Daily,
    Hourly,
}

impl Period {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::All),
            "daily" => Ok(Self::Daily),
            "hourly" => Ok(Self::Hourly),
            _ => Err("must be one of all, daily, hourly".into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Daily => "daily",
            Self::Hourly => "hourly",
        }
    }

    /// The earliest timestamp the period includes, seen from `now`; `None` for all time.
    pub fn since(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::All => None,
            Self::Daily => Some(now - TimeDelta::hours(24)),
            Self::Hourly => Some(now - TimeDelta::hours(1)),
        }
    }
}

/// Aggregates over the points of one type and period; all zero when there are none.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Aggregates {
    pub count: i64,
    pub average_value: f64,
    pub min_value: f64,
    pub max_value: f64,
    /// The value of the point with the greatest timestamp.
    pub latest_value: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnrichmentStatus {
    Ok,
    Failed,
    CircuitOpen,
}

/// The body of `GET /api/metrics/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    #[serde(rename = "type")]
    pub metric_type: String,
    pub period: Period,
    #[serde(flatten)]
    pub aggregates: Aggregates,
    pub enrichment: Option<EnrichmentData>,
    pub enrichment_status: EnrichmentStatus,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(body: Value) -> Vec<String> {
        MetricPoint::from_json(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_point_is_normalised_to_utc() {
        let point = MetricPoint::from_json(&json!({
            "timestamp": "2026-01-01T12:00:00+02:00", "value": 42, "type": "cpu_usage",
            "tags": {"host": "web-1"}
        }))
        .unwrap();
        assert_eq!(point.timestamp.to_rfc3339(), "2026-01-01T10:00:00+00:00");
        assert_eq!(point.value, 42.0);
        assert_eq!(point.tags["host"], "web-1");
    }

    #[test]
    fn a_timestamp_without_offset_is_utc() {
        for text in [
            "2026-01-01T12:00:00",
            "2026-01-01T12:00:00.250",
            "2026-01-01 12:00:00",
        ] {
            let t = parse_timestamp(&json!(text)).unwrap();
            assert_eq!(t.format("%H:%M:%S").to_string(), "12:00:00", "{text}");
        }
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
    }

    #[test]
    fn type_length_is_counted_in_characters() {
        assert!(validate_type(&"é".repeat(100)).is_ok());
        assert!(validate_type(&"é".repeat(101)).is_err());
        assert!(validate_type("").is_err());
        assert!(validate_type("cpu\0usage").is_err());
    }

    #[test]
    fn values_are_bounded_so_aggregates_cannot_overflow() {
        assert!(parse_value(&json!(1e100)).is_ok());
        assert!(parse_value(&json!(-1e100)).is_ok());
        assert!(parse_value(&json!(1.1e100)).is_err());
        assert!(parse_value(&json!("1")).is_err());
        assert!(parse_value(&json!(true)).is_err());
    }

    #[test]
    fn tags_are_bounded() {
        let many: Map<String, Value> = (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(parse_tags(Some(&Value::Object(many))).is_err());
        assert!(parse_tags(Some(&json!({"k": 1}))).is_err());
        assert!(parse_tags(Some(&json!({"": "v"}))).is_err());
        assert!(parse_tags(Some(&json!({"k": "a\u{0}b"}))).is_err());
        assert!(parse_tags(Some(&json!({"k": "x".repeat(501)}))).is_err());
        assert_eq!(parse_tags(Some(&Value::Null)).unwrap().len(), 0);
    }

    #[test]
    fn periods_parse_strictly() {
        assert_eq!(Period::parse("daily"), Ok(Period::Daily));
        assert!(Period::parse("weekly").is_err());
        assert!(Period::parse("DAILY").is_err());
        let now = Utc::now();
        assert_eq!(Period::All.since(now), None);
        assert_eq!(
            Period::Hourly.since(now),
            Some(now - TimeDelta::minutes(60))
        );
    }
}
