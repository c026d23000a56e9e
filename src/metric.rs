//! The domain: metric points, their types and time ranges, and what is read back (summaries,
//! series, stored points), with the validation rules of the API contract. Nothing here knows
//! of HTTP, JSON bodies or SQL; the messages of the rules are the contract's.

use std::{collections::BTreeMap, fmt, str::FromStr, sync::Arc};

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        RefOr,
        schema::{ObjectBuilder, Schema, SchemaType, Type},
    },
};

use crate::{enrichment::EnrichmentData, tenant::Tenant};

pub const MAX_TYPE_CHARS: usize = 100;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_KEY_CHARS: usize = 100;
pub const MAX_TAG_VALUE_CHARS: usize = 500;
/// Values are bounded so that no accepted value can overflow an aggregate (PostgreSQL's avg
/// of double precision also sums squares, which overflows for values near 1e154).
pub const MAX_ABS_VALUE: f64 = 1e100;

/// The accepted years (1970 to 9999) of an RFC 3339 timestamp, as a JSON Schema pattern beside
/// `format: date-time`, which cannot say it. Schema attributes take only literals, so they
/// repeat it; a test of the document checks they agree.
pub const TIMESTAMP_YEARS: &str = "^(19[7-9][0-9]|[2-9][0-9]{3})-";

/// Text without control characters (C0, DEL, C1), as a JSON Schema pattern.
pub const NO_CONTROL_CHARACTERS: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

/// The earliest timestamp accepted anywhere (a point, a series range): the Unix epoch. Every
/// sender we speak with (remote write, OTLP) counts time from it, and it keeps every bucket
/// computation far inside PostgreSQL's range.
pub fn earliest_timestamp() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH
}

/// The latest timestamp accepted anywhere: the end of the last year RFC 3339 can write.
pub fn latest_timestamp() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|day| day.and_hms_micro_opt(23, 59, 59, 999_999))
        .expect("a valid date")
        .and_utc()
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

/// A metric's type: 1–100 characters (not bytes), no control characters. Shared text: the
/// samples of one series share their type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MetricType(Arc<str>);

impl MetricType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MetricType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let chars = text.chars().count();
        if chars == 0 || chars > MAX_TYPE_CHARS {
            Err(format!("must be 1 to {MAX_TYPE_CHARS} characters"))
        } else if text.chars().any(char::is_control) {
            Err("must not contain control characters".into())
        } else {
            Ok(Self(text.into()))
        }
    }
}

deserialize_from_str!(MetricType);

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialSchema for MetricType {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("1–100 characters, no control characters."))
            .min_length(Some(1))
            .max_length(Some(MAX_TYPE_CHARS))
            .pattern(Some(NO_CONTROL_CHARACTERS))
            .into()
    }
}

impl ToSchema for MetricType {}

/// RFC 3339 within [`earliest_timestamp`] and [`latest_timestamp`]; a timestamp without an
/// offset is UTC. Offsets are normalised to UTC.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    let timestamp = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|naive| naive.and_utc())
                .ok_or(())
        })
        .map_err(|()| "must be an RFC 3339 timestamp, e.g. 2026-01-01T12:00:00Z".to_owned())?;
    if (earliest_timestamp()..=latest_timestamp()).contains(&timestamp) {
        Ok(timestamp)
    } else {
        Err("must be from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z".into())
    }
}

/// A finite value within ±[`MAX_ABS_VALUE`].
pub fn check_value(value: f64) -> Result<f64, String> {
    if value.is_finite() && value.abs() <= MAX_ABS_VALUE {
        Ok(value)
    } else {
        Err(format!(
            "must be a finite number with absolute value at most {MAX_ABS_VALUE:e}"
        ))
    }
}

/// The rules for one tag (the count is checked by whoever collects them).
pub fn check_tag(key: &str, value: &str) -> Result<(), String> {
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
    Ok(())
}

/// A point's validated tags, kept as compact JSON text (an object of string to string): that
/// is how they are stored, and as text a point's tags take little more memory than they did
/// in the request. Shared: the samples of one series share their tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags(Arc<str>);

impl Tags {
    /// Tags already checked with [`check_tag`] (at most [`MAX_TAGS`] of them).
    pub fn from_checked(pairs: &BTreeMap<String, String>) -> Self {
        Self(
            serde_json::to_string(pairs)
                .expect("string maps serialise")
                .into(),
        )
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl Default for Tags {
    fn default() -> Self {
        Self("{}".into())
    }
}

/// Which of the receivers (or the JSON API) a point came in through: `metrics.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Prometheus,
    Otlp,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Prometheus => "prometheus",
            Self::Otlp => "otlp",
        }
    }
}

/// Tag pairs that a read's points must all carry (`tag=key:value`, repeatable): the points
/// whose tags include every pair. A key asked for with two values matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TagFilter {
    pairs: BTreeMap<String, String>,
    contradictory: bool,
}

impl TagFilter {
    /// From `key:value` texts (split at the first colon), each checked like a point's tag.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut filter = Self::default();
        for pair in pairs {
            let (key, value) = pair
                .split_once(':')
                .ok_or_else(|| format!("{pair:?}: must be key:value"))?;
            check_tag(key, value)?;
            match filter.pairs.insert(key.to_owned(), value.to_owned()) {
                Some(previous) if previous != value => filter.contradictory = true,
                _ => {}
            }
            if filter.pairs.len() > MAX_TAGS {
                return Err(format!("at most {MAX_TAGS} tags"));
            }
        }
        Ok(filter)
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Whether no point can match (a key with two values).
    pub fn is_contradictory(&self) -> bool {
        self.contradictory
    }

    /// The pairs as a JSON object, for `tags @>`.
    pub fn as_json(&self) -> String {
        serde_json::to_string(&self.pairs).expect("string maps serialise")
    }

    /// What tells one filter from another (in a cache key): the pairs, and whether a key had
    /// two values.
    pub fn identity(&self) -> String {
        let marker = if self.contradictory { "!" } else { "" };
        format!("{marker}{}", self.as_json())
    }
}

/// A validated metric point, ready to store. The schema carries every rule the decoders
/// enforce, so that a client (or a fuzzer) can tell a valid point from the document.
#[derive(Debug, Clone, PartialEq, ToSchema)]
pub struct MetricPoint {
    /// When the point was measured (RFC 3339, 1970 to 9999; without an offset it is UTC).
    #[schema(value_type = String, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    pub timestamp: DateTime<Utc>,
    /// A finite JSON number with absolute value at most 1e100.
    #[schema(minimum = -1e100, maximum = 1e100)]
    pub value: f64,
    #[schema(rename = "type", inline)]
    pub metric_type: MetricType,
    #[schema(schema_with = tags_schema, required = false)]
    pub tags: Tags,
}

/// A point with the tenant it belongs to, as it is stored: a group commit mixes tenants in
/// one insert, so each point carries its own (a cheap clone).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPoint {
    pub tenant: Tenant,
    pub point: MetricPoint,
}

/// The tag rules as a schema (key rules need `propertyNames`, which the derive cannot express).
fn tags_schema() -> utoipa::openapi::schema::Object {
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

/// The time span a summary covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    #[default]
    All,
    Daily,
    Hourly,
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::All),
            "daily" => Ok(Self::Daily),
            "hourly" => Ok(Self::Hourly),
            _ => Err("must be one of all, daily, hourly".into()),
        }
    }
}

deserialize_from_str!(Period);

impl Period {
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

/// `t` rounded down to a whole `unit` (a whole number of seconds) since the Unix epoch; works
/// for every year, unlike chrono's nanosecond-based rounding.
pub fn floor(t: DateTime<Utc>, unit: TimeDelta) -> DateTime<Utc> {
    let unit = unit.num_seconds();
    DateTime::from_timestamp(t.timestamp().div_euclid(unit) * unit, 0)
        .expect("timestamps are in range")
}

/// Bucket widths of a series. Buckets are aligned to the Unix epoch, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
pub enum SeriesBucket {
    #[serde(rename = "1m")]
    OneMinute,
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "1h")]
    #[default]
    OneHour,
    #[serde(rename = "1d")]
    OneDay,
}

impl FromStr for SeriesBucket {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "1m" => Ok(Self::OneMinute),
            "5m" => Ok(Self::FiveMinutes),
            "1h" => Ok(Self::OneHour),
            "1d" => Ok(Self::OneDay),
            _ => Err("must be one of 1m, 5m, 1h, 1d".into()),
        }
    }
}

deserialize_from_str!(SeriesBucket);

impl SeriesBucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneMinute => "1m",
            Self::FiveMinutes => "5m",
            Self::OneHour => "1h",
            Self::OneDay => "1d",
        }
    }

    pub fn width(self) -> TimeDelta {
        match self {
            Self::OneMinute => TimeDelta::minutes(1),
            Self::FiveMinutes => TimeDelta::minutes(5),
            Self::OneHour => TimeDelta::hours(1),
            Self::OneDay => TimeDelta::days(1),
        }
    }

    /// The start of the bucket holding `t`.
    pub fn start_of(self, t: DateTime<Utc>) -> DateTime<Utc> {
        floor(t, self.width())
    }
}

/// A series' range: whole buckets from the one holding `from` to the one before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesRange {
    pub bucket: SeriesBucket,
    /// The first bucket's start.
    pub first: DateTime<Utc>,
    /// The last bucket's start.
    pub last: DateTime<Utc>,
}

/// A series may have at most this many buckets.
pub const MAX_SERIES_BUCKETS: i64 = 10_000;

impl SeriesRange {
    /// The buckets covering `[from, to)`; an error names the offending end.
    pub fn new(
        bucket: SeriesBucket,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Self, FieldError> {
        if from >= to {
            return Err(FieldError::new("to", "must be later than from"));
        }
        let first = bucket.start_of(from);
        let last = bucket.start_of(to - TimeDelta::microseconds(1));
        let buckets = (last - first).num_seconds() / bucket.width().num_seconds() + 1;
        if buckets > MAX_SERIES_BUCKETS {
            return Err(FieldError::new(
                "to",
                format!(
                    "the range holds {buckets} buckets of {}; at most {MAX_SERIES_BUCKETS}",
                    bucket.as_str()
                ),
            ));
        }
        Ok(Self {
            bucket,
            first,
            last,
        })
    }
}

/// One bucket of a series; an empty bucket has count 0 and no values.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SeriesPoint {
    pub start: DateTime<Utc>,
    pub count: i64,
    pub avg: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A stored point as it is read back.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StoredMetric {
    pub id: i64,
    pub timestamp: DateTime<Utc>,
    pub value: f64,
    #[serde(rename = "type")]
    pub metric_type: String,
    pub tags: BTreeMap<String, String>,
}

/// An invalid point of a batch, by its position in the batch.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RejectedPoint {
    pub index: usize,
    pub errors: Vec<FieldError>,
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

/// A summary of one type over one period, as it is answered and cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    #[serde(rename = "type")]
    pub metric_type: MetricType,
    pub period: Period,
    #[serde(flatten)]
    pub aggregates: Aggregates,
    pub enrichment: Option<EnrichmentData>,
    pub enrichment_status: EnrichmentStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_filters_split_at_the_first_colon_and_follow_the_tag_rules() {
        let filter = TagFilter::parse(["instance:web-1:9100", "job:node", "job:node"]).unwrap();
        assert_eq!(
            filter.as_json(),
            r#"{"instance":"web-1:9100","job":"node"}"#
        );
        assert!(!filter.is_contradictory());
        let both = TagFilter::parse(["job:a", "job:b"]).unwrap();
        assert!(
            both.is_contradictory(),
            "no point has two values of one key"
        );
        assert_ne!(
            both.identity(),
            TagFilter::parse(["job:b"]).unwrap().identity()
        );
        assert!(TagFilter::parse(["nocolon"]).is_err());
        assert!(TagFilter::parse([":value"]).is_err());
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("k{i}:v")).collect();
        assert!(TagFilter::parse(many.iter().map(String::as_str)).is_err());
        assert!(TagFilter::parse([]).unwrap().is_empty());
    }

    #[test]
    fn a_timestamp_without_offset_is_utc_and_offsets_are_normalised() {
        for text in [
            "2026-01-01T12:00:00",
            "2026-01-01T12:00:00.250",
            "2026-01-01 12:00:00",
            "2026-01-01T14:00:00+02:00",
        ] {
            let t = parse_timestamp(text).unwrap();
            assert_eq!(t.format("%H:%M:%S").to_string(), "12:00:00", "{text}");
        }
    }

    #[test]
    fn timestamps_outside_1970_to_9999_are_refused() {
        for text in [
            "-5000-01-01T00:00:00",
            "+150000-01-01T00:00:00",
            "1969-12-31T23:59:59.999Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(parse_timestamp(text).is_err(), "{text}");
        }
        assert!(parse_timestamp("1970-01-01T00:00:00Z").is_ok());
        assert!(parse_timestamp("9999-12-31T23:59:59.999999Z").is_ok());
        assert!(parse_timestamp("9999-12-31T23:59:59+01:00").is_ok());
        assert!(parse_timestamp("9999-12-31T23:59:59-01:00").is_err());
    }

    #[test]
    fn type_length_is_counted_in_characters() {
        assert!("é".repeat(100).parse::<MetricType>().is_ok());
        assert!("é".repeat(101).parse::<MetricType>().is_err());
        assert!("".parse::<MetricType>().is_err());
        assert!("cpu\0usage".parse::<MetricType>().is_err());
        assert!("cpu\u{85}usage".parse::<MetricType>().is_err());
    }

    #[test]
    fn values_are_bounded_so_aggregates_cannot_overflow() {
        assert!(check_value(1e100).is_ok());
        assert!(check_value(-1e100).is_ok());
        assert!(check_value(1.1e100).is_err());
        assert!(check_value(f64::NAN).is_err());
        assert!(check_value(f64::INFINITY).is_err());
    }

    #[test]
    fn tags_are_bounded() {
        assert!(check_tag("host", "web-1").is_ok());
        assert!(check_tag("", "v").is_err());
        assert!(check_tag(&"k".repeat(101), "v").is_err());
        assert!(check_tag("k", "a\u{0}b").is_err());
        assert!(check_tag("k", &"x".repeat(501)).is_err());
        assert!(check_tag("k\n", "v").is_err());
    }

    #[test]
    fn periods_and_buckets_parse_strictly() {
        assert_eq!("daily".parse(), Ok(Period::Daily));
        assert!("weekly".parse::<Period>().is_err());
        assert!("DAILY".parse::<Period>().is_err());
        assert_eq!("5m".parse(), Ok(SeriesBucket::FiveMinutes));
        assert!("2m".parse::<SeriesBucket>().is_err());
        let now = Utc::now();
        assert_eq!(Period::All.since(now), None);
        assert_eq!(
            Period::Hourly.since(now),
            Some(now - TimeDelta::minutes(60))
        );
    }

    #[test]
    fn a_series_range_is_whole_buckets_and_bounded() {
        let at = |text: &str| parse_timestamp(text).unwrap();
        let range = SeriesRange::new(
            SeriesBucket::FiveMinutes,
            at("2026-05-01T10:02:00Z"),
            at("2026-05-01T10:10:00Z"),
        )
        .unwrap();
        assert_eq!(range.first, at("2026-05-01T10:00:00Z"));
        assert_eq!(range.last, at("2026-05-01T10:05:00Z"));
        let reversed = SeriesRange::new(
            SeriesBucket::OneHour,
            at("2026-05-01T11:00:00Z"),
            at("2026-05-01T10:00:00Z"),
        );
        assert_eq!(reversed.unwrap_err().field, "to");
        let ten_thousand = SeriesRange::new(
            SeriesBucket::OneMinute,
            at("2026-01-01T00:00:00Z"),
            at("2026-01-07T22:40:00Z"),
        );
        assert!(ten_thousand.is_ok());
        let too_many = SeriesRange::new(
            SeriesBucket::OneMinute,
            at("2026-01-01T00:00:00Z"),
            at("2026-01-07T22:40:01Z"),
        );
        assert!(too_many.is_err());
    }

    #[test]
    fn bucket_starts_are_aligned_to_the_epoch() {
        let t = parse_timestamp("2026-05-01T10:07:31Z").unwrap();
        assert_eq!(
            SeriesBucket::FiveMinutes.start_of(t),
            parse_timestamp("2026-05-01T10:05:00Z").unwrap()
        );
        assert_eq!(
            SeriesBucket::OneDay.start_of(t),
            parse_timestamp("2026-05-01T00:00:00Z").unwrap()
        );
    }
}
