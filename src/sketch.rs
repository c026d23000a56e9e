//! Mergeable quantile sketch (DDSketch-style) for pre-aggregated percentile rollups.
//!
//! Values are counted in logarithmically spaced buckets: bucket `i` of a store holds the
//! magnitudes in `(gamma^(i-1), gamma^i]`, and every value in it is within
//! [`RELATIVE_ACCURACY`] of the bucket's representative value. Because a sketch is nothing
//! but counts per bucket, merging is adding counts, which PostgreSQL can do on the JSON form
//! (see [`QuantileSketch::to_json`]) without knowing anything about sketches.
//!
//! Each order statistic is estimated by the representative of the bucket that holds it, so it
//! is within `RELATIVE_ACCURACY` of the true one; interpolating two such estimates the way
//! `percentile_cont` does keeps that relative error whenever both have the same sign.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use serde::{
    Deserializer,
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Value};

/// Relative accuracy of every bucket's representative value.
pub const RELATIVE_ACCURACY: f64 = 0.005;

/// Ratio between consecutive bucket boundaries; chosen so that the representative
/// `2 * gamma^i / (gamma + 1)` is within `RELATIVE_ACCURACY` of everything in `(gamma^(i-1), gamma^i]`.
const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// Magnitudes below this count as zero: logarithmic buckets cannot reach zero itself, and this
/// is far below any real metric value (so 1e-6 or 1e-30 keep full relative accuracy) while it
/// bounds bucket indices to about ±23,000.
const ZERO_THRESHOLD: f64 = 1e-100;

/// Largest magnitude callers may insert.
const MAX_MAGNITUDE: f64 = 1e100;

/// Bucket index of a magnitude in `[ZERO_THRESHOLD, MAX_MAGNITUDE]`.
fn bucket_index(magnitude: f64) -> i32 {
    // The quotient is at most about 23,000 in magnitude, so the cast cannot truncate.
    (magnitude.ln() / GAMMA.ln()).ceil() as i32
}

/// The value reported for everything in bucket `index`: the point of `(gamma^(i-1), gamma^i]`
/// with equal relative distance to both ends.
fn representative(index: i32) -> f64 {
    2.0 * GAMMA.powi(index) / (GAMMA + 1.0)
}

/// Mergeable quantile sketch; see the module documentation.
///
/// Invariant: no bucket holds a zero count, so equal contents compare equal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantileSketch {
    /// Counts of positive values by bucket index.
    positive: BTreeMap<i32, u64>,
    /// Counts of negative values by the bucket index of their magnitude.
    negative: BTreeMap<i32, u64>,
    /// Count of values whose magnitude is below `ZERO_THRESHOLD`.
    zero_count: u64,
}

impl QuantileSketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// `value` is finite with |value| <= 1e100 (callers validate). Values with
    /// |value| < 1e-100 count as zero; every other value is kept within
    /// [`RELATIVE_ACCURACY`].
    pub fn insert(&mut self, value: f64) {
        debug_assert!(
            value.is_finite() && value.abs() <= MAX_MAGNITUDE,
            "sketch value out of range: {value}"
        );
        // Clamp so that even out-of-contract input yields a sketch `from_json` accepts.
        let magnitude = value.abs().min(MAX_MAGNITUDE);
        if magnitude < ZERO_THRESHOLD {
            self.zero_count += 1;
            return;
        }
        let store = if value > 0.0 {
            &mut self.positive
        } else {
            &mut self.negative
        };
        *store.entry(bucket_index(magnitude)).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &QuantileSketch) {
        for (into, from) in [
            (&mut self.positive, &other.positive),
            (&mut self.negative, &other.negative),
        ] {
            for (&index, &count) in from {
                *into.entry(index).or_insert(0) += count;
            }
        }
        self.zero_count += other.zero_count;
    }

    pub fn count(&self) -> u64 {
        self.zero_count + self.positive.values().sum::<u64>() + self.negative.values().sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.zero_count == 0 && self.positive.is_empty() && self.negative.is_empty()
    }

    /// Continuous quantile like PostgreSQL's `percentile_cont`: with rank `r = q * (count - 1)`,
    /// the order statistics at `floor(r)` and `ceil(r)` are estimated from the buckets and
    /// interpolated linearly. None when the sketch is empty or `q` is not in `[0, 1]`
    /// (including NaN).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let last_rank = self.count().checked_sub(1)?;
        let rank = q * last_rank as f64;
        let lower_rank = rank.floor();
        // `min` guards against `last_rank as f64` rounding up for counts above 2^53.
        let lower = self.value_at_rank((lower_rank as u64).min(last_rank))?;
        let upper = self.value_at_rank((rank.ceil() as u64).min(last_rank))?;
        Some(lower + (rank - lower_rank) * (upper - lower))
    }

    /// A JSON object mapping bucket keys to counts, e.g. `{"p123": 4, "n7": 1, "z": 2}`:
    /// `p<index>` is a positive bucket, `n<index>` the negative bucket of that magnitude and
    /// `z` the zeros. Counts are JSON integers and empty buckets are omitted. Summing the
    /// values of equal keys of two such objects (as PostgreSQL does) is exactly [`Self::merge`].
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        for (&index, &count) in &self.positive {
            map.insert(format!("p{index}"), count.into());
        }
        for (&index, &count) in &self.negative {
            map.insert(format!("n{index}"), count.into());
        }
        if self.zero_count > 0 {
            map.insert("z".to_owned(), self.zero_count.into());
        }
        Value::Object(map)
    }

    /// Parses the format written by [`Self::to_json`]. Keys must be spelled exactly as
    /// `to_json` spells them (no `p+1` or `p01`), so that no two keys of one object name the
    /// same bucket and SQL merging stays exact. Buckets with count 0 are ignored.
    pub fn from_json(value: &Value) -> Result<Self, SketchError> {
        let Value::Object(map) = value else {
            return Err(SketchError::NotAnObject);
        };
        let mut sketch = Self::new();
        let mut total: u64 = 0;
        for (key, count_value) in map {
            let count = count_value
                .as_u64()
                .ok_or_else(|| SketchError::InvalidCount {
                    key: key.clone(),
                    value: count_value.to_string(),
                })?;
            sketch.add(key, count, &mut total)?;
        }
        Ok(sketch)
    }

    /// Merges a JSON array of sketches in the [`Self::to_json`] format as it parses it: no
    /// sketch is ever held as a JSON value, so merging a hundred of them costs one sketch's
    /// memory, not a hundred's.
    pub fn merge_json_array(text: &str) -> Result<Self, SketchError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let merged = MergedArray
            .deserialize(&mut deserializer)
            .and_then(|sketch| deserializer.end().map(|()| sketch))
            .map_err(|error| SketchError::Malformed(error.to_string()))?;
        Ok(merged)
    }

    /// Adds `count` values to the bucket of `key`, keeping the running `total` from
    /// overflowing (so that `count` and `quantile` cannot overflow later).
    fn add(&mut self, key: &str, count: u64, total: &mut u64) -> Result<(), SketchError> {
        let bucket = parse_key(key).ok_or_else(|| SketchError::InvalidKey(key.to_owned()))?;
        *total = total.checked_add(count).ok_or(SketchError::CountOverflow)?;
        if count == 0 {
            return Ok(());
        }
        let counter = match bucket {
            Bucket::Zero => &mut self.zero_count,
            Bucket::Positive(index) => self.positive.entry(index).or_insert(0),
            Bucket::Negative(index) => self.negative.entry(index).or_insert(0),
        };
        *counter += count;
        Ok(())
    }

    /// Estimate of the order statistic at 0-based `rank`; None if `rank >= count`.
    fn value_at_rank(&self, rank: u64) -> Option<f64> {
        let mut seen: u64 = 0;
        self.buckets()
            .find(|&(_, count)| {
                seen += count;
                rank < seen
            })
            .map(|(value, _)| value)
    }

    /// `(representative value, count)` of every bucket in ascending value order.
    fn buckets(&self) -> impl Iterator<Item = (f64, u64)> {
        // The largest negative index holds the most negative values.
        let negatives = self
            .negative
            .iter()
            .rev()
            .map(|(&index, &count)| (-representative(index), count));
        let zeros = (self.zero_count > 0).then_some((0.0, self.zero_count));
        let positives = self
            .positive
            .iter()
            .map(|(&index, &count)| (representative(index), count));
        negatives.chain(zeros).chain(positives)
    }
}

/// A parsed JSON bucket key.
enum Bucket {
    Zero,
    Positive(i32),
    Negative(i32),
}

/// Parses `z`, `p<index>` or `n<index>` with the index in the range `insert` can produce and
/// written canonically.
fn parse_key(key: &str) -> Option<Bucket> {
    if key == "z" {
        return Some(Bucket::Zero);
    }
    let (sign, digits) = key.split_at_checked(1)?;
    let index: i32 = digits.parse().ok()?;
    let in_range = (bucket_index(ZERO_THRESHOLD)..=bucket_index(MAX_MAGNITUDE)).contains(&index);
    if !in_range || index.to_string() != digits {
        return None;
    }
    match sign {
        "p" => Some(Bucket::Positive(index)),
        "n" => Some(Bucket::Negative(index)),
        _ => None,
    }
}

/// Reads a JSON array of sketch objects into one merged sketch.
struct MergedArray;

impl MergedArray {
    fn deserialize<'de, D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<QuantileSketch, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MergedArray {
    type Value = QuantileSketch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of quantile sketches")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<QuantileSketch, A::Error> {
        let mut merged = Merged {
            sketch: QuantileSketch::new(),
            total: 0,
        };
        while seq.next_element_seed(&mut merged)?.is_some() {}
        Ok(merged.sketch)
    }
}

/// The sketch merged so far; each element of the array is added to it as it is read.
struct Merged {
    sketch: QuantileSketch,
    total: u64,
}

impl<'de> DeserializeSeed<'de> for &mut Merged {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Merged {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantile sketch: an object of bucket keys to counts")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((key, count)) = map.next_entry::<Cow<'de, str>, u64>()? {
            self.sketch
                .add(&key, count, &mut self.total)
                .map_err(de::Error::custom)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SketchError {
    #[error("unreadable quantile sketches: {0}")]
    Malformed(String),
    #[error("a quantile sketch must be a JSON object")]
    NotAnObject,
    #[error("invalid quantile sketch bucket key {0:?}")]
    InvalidKey(String),
    #[error("the count of quantile sketch bucket {key:?} is not a non-negative integer: {value}")]
    InvalidCount { key: String, value: String },
    #[error("the total count of the quantile sketch does not fit in 64 bits")]
    CountOverflow,
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    use super::*;

    /// Quantiles checked on every data set.
    const QUANTILES: [f64; 11] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0];

    /// The product requirement: within 1% of `percentile_cont`.
    const REQUIRED_ACCURACY: f64 = 0.01;

    /// The design bound, with slack for floating-point rounding at bucket boundaries.
    const DESIGN_ACCURACY: f64 = RELATIVE_ACCURACY * (1.0 + 1e-9);

    fn sketch_of(values: &[f64]) -> QuantileSketch {
        let mut sketch = QuantileSketch::new();
        for &value in values {
            sketch.insert(value);
        }
        sketch
    }

    /// PostgreSQL's `percentile_cont` on sorted values.
    fn percentile_cont(sorted: &[f64], q: f64) -> f64 {
        let rank = q * (sorted.len() - 1) as f64;
        let (lower, upper) = (rank.floor(), rank.ceil());
        let (a, b) = (sorted[lower as usize], sorted[upper as usize]);
        a + (rank - lower) * (b - a)
    }

    /// Checks every quantile of `QUANTILES` against `percentile_cont` and returns the largest
    /// normalised error.
    ///
    /// The error is normalised by `(1 - f)|a| + f|b|`, where `a` and `b` are the two order
    /// statistics interpolated with fraction `f`: that is the most the interpolation of two
    /// estimates with relative error ε can be off, divided by ε. When `a` and `b` have the same
    /// sign it equals |expected|, so the check is a plain relative one. When they straddle zero
    /// (e.g. the median of [-3, 5] is 1, estimated from -3·(1±ε) and 5·(1±ε)), the expected
    /// value can be arbitrarily close to zero while the absolute error stays up to ε·(|a|+|b|)/2;
    /// no sketch of relative accuracy can do better, so the tolerance there is absolute and
    /// scaled by the neighbours.
    fn max_error(values: &[f64]) -> f64 {
        let sketch = sketch_of(values);
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut worst: f64 = 0.0;
        for q in QUANTILES {
            let estimate = sketch.quantile(q).unwrap();
            let expected = percentile_cont(&sorted, q);
            let rank = q * (sorted.len() - 1) as f64;
            let fraction = rank - rank.floor();
            let scale = (1.0 - fraction) * sorted[rank.floor() as usize].abs()
                + fraction * sorted[rank.ceil() as usize].abs();
            let error = if scale == 0.0 {
                // Both neighbours are exact zeros, which the sketch keeps exactly.
                assert_eq!(estimate, 0.0, "q={q}");
                0.0
            } else {
                (estimate - expected).abs() / scale
            };
            assert!(
                error <= REQUIRED_ACCURACY,
                "q={q}: estimate {estimate}, expected {expected}, error {error}"
            );
            worst = worst.max(error);
        }
        worst
    }

    /// Asserts the 1% requirement (in `max_error`) and the tighter design bound, and reports.
    fn assert_accurate(name: &str, values: &[f64]) {
        let worst = max_error(values);
        eprintln!(
            "{name}: {} values, max relative error {worst:.5}",
            values.len()
        );
        assert!(worst <= DESIGN_ACCURACY, "{name}: {worst}");
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x5EED)
    }

    fn uniform_two_decimals(n: usize) -> Vec<f64> {
        let mut rng = rng();
        (0..n)
            .map(|_| f64::from(rng.random_range(0..=10_000)) / 100.0)
            .collect()
    }

    /// Log-uniform over 1e-3..1e6: nine orders of magnitude.
    fn log_uniform(n: usize) -> Vec<f64> {
        let mut rng = rng();
        (0..n)
            .map(|_| 10f64.powf(rng.random_range(-3.0..6.0)))
            .collect()
    }

    /// Positives, negatives and exact zeros mixed.
    fn mixed_signs(n: usize) -> Vec<f64> {
        let mut rng = rng();
        (0..n)
            .map(|_| match rng.random_range(0..10) {
                0 => 0.0,
                1..=4 => -rng.random_range(0.001..1000.0),
                _ => rng.random_range(0.001..1000.0),
            })
            .collect()
    }

    fn bucket_count(sketch: &QuantileSketch) -> usize {
        sketch.positive.len() + sketch.negative.len() + usize::from(sketch.zero_count > 0)
    }

    #[test]
    fn uniform_values_are_accurate() {
        assert_accurate("uniform 0..100", &uniform_two_decimals(10_000));
    }

    #[test]
    fn values_over_many_orders_of_magnitude_are_accurate() {
        assert_accurate("log-uniform 1e-3..1e6", &log_uniform(10_000));

        let mut rng = rng();
        let exponential: Vec<f64> = (0..10_000)
            .map(|_| -rng.random_range(f64::EPSILON..1.0_f64).ln() * 250.0)
            .collect();
        assert_accurate("exponential", &exponential);

        // Log-normal-ish: the exponential of a sum of uniforms.
        let log_normal: Vec<f64> = (0..10_000)
            .map(|_| {
                (0..4)
                    .map(|_| rng.random_range(-3.0..3.0))
                    .sum::<f64>()
                    .exp()
            })
            .collect();
        assert_accurate("log-normal-ish", &log_normal);
    }

    #[test]
    fn tiny_values_keep_relative_accuracy() {
        let values: Vec<f64> = (1..=1000).map(|i| f64::from(i) * 1e-9).collect();
        assert_accurate("1e-9..1e-6", &values);
        assert_accurate("around 1e-90", &[1e-90, 3e-90, 7e-90]);
    }

    #[test]
    fn values_below_the_threshold_count_as_zero() {
        let sketch = sketch_of(&[1e-120, -1e-101, 0.0, -0.0]);
        assert_eq!(sketch.zero_count, 4);
        assert_eq!(sketch.quantile(1.0), Some(0.0));
    }

    #[test]
    fn extreme_magnitudes_are_accurate() {
        assert_accurate("extremes", &[-1e100, -1e-100, 1e-100, 1e100]);
    }

    #[test]
    fn negatives_and_zeros_mixed_are_accurate() {
        assert_accurate("mixed signs", &mixed_signs(10_000));
        assert_accurate("all negative", &[-5.0, -1.0, -0.5, -200.0, -3.0]);
        // Interpolation across zero, where only the absolute tolerance is meaningful.
        assert_accurate("across zero", &[-3.0, 5.0]);
        assert_accurate("zeros in the middle", &[-2.0, 0.0, 0.0, 0.0, 7.0]);
    }

    #[test]
    fn a_single_value_is_every_quantile() {
        for value in [42.0, -42.0, 0.0, 1e-6] {
            assert_accurate("single value", &[value]);
            let sketch = sketch_of(&[value]);
            assert_eq!(sketch.quantile(0.0), sketch.quantile(1.0));
        }
    }

    #[test]
    fn two_values_are_interpolated() {
        assert_accurate("two values", &[10.0, 20.0]);
        let sketch = sketch_of(&[10.0, 20.0]);
        let median = sketch.quantile(0.5).unwrap();
        assert!(
            (median - 15.0).abs() <= 15.0 * RELATIVE_ACCURACY,
            "{median}"
        );
        let quarter = sketch.quantile(0.25).unwrap();
        assert!(
            (quarter - 12.5).abs() <= 12.5 * RELATIVE_ACCURACY,
            "{quarter}"
        );
    }

    #[test]
    fn all_equal_values_give_one_constant_estimate() {
        let values = vec![3.7; 1000];
        assert_accurate("all equal", &values);
        let sketch = sketch_of(&values);
        assert_eq!(bucket_count(&sketch), 1);
        let estimate = sketch.quantile(0.0);
        for q in QUANTILES {
            assert_eq!(sketch.quantile(q), estimate);
        }
    }

    #[test]
    fn large_counts_are_accurate() {
        let mut rng = rng();
        let values: Vec<f64> = (0..200_000)
            .map(|_| {
                (0..4)
                    .map(|_| rng.random_range(-2.5..2.5))
                    .sum::<f64>()
                    .exp()
                    * 100.0
            })
            .collect();
        assert_accurate("200k log-normal-ish", &values);
    }

    #[test]
    fn extremes_are_min_and_max() {
        let values = mixed_signs(5_000);
        let sketch = sketch_of(&values);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let q0 = sketch.quantile(0.0).unwrap();
        let q1 = sketch.quantile(1.0).unwrap();
        assert!(
            (q0 - min).abs() <= min.abs() * DESIGN_ACCURACY,
            "{q0} vs {min}"
        );
        assert!(
            (q1 - max).abs() <= max.abs() * DESIGN_ACCURACY,
            "{q1} vs {max}"
        );
    }

    #[test]
    fn bucket_counts_stay_small() {
        // Every distinct value from 0.00 to 100.00: zeros plus ~100 buckets below 1 (one per
        // value, as they are more than 1% apart) and ~460 from 1 to 100.
        let all_cents: Vec<f64> = (0..=10_000).map(|i| f64::from(i) / 100.0).collect();
        let cents = bucket_count(&sketch_of(&all_cents));
        // 1e-3..1e6 spans ln(1e9) / ln(gamma) ≈ 2072 buckets, 2073 once both ends are counted.
        let wide = bucket_count(&sketch_of(&log_uniform(100_000)));
        let wide_bound = bucket_index(1e6) - bucket_index(1e-3) + 1;
        eprintln!("buckets: 0.00..100.00 -> {cents}, 1e-3..1e6 -> {wide} (bound {wide_bound})");
        assert!(cents <= 600, "{cents}");
        assert!(wide <= usize::try_from(wide_bound).unwrap(), "{wide}");
    }

    #[test]
    fn empty_sketch_has_no_quantiles() {
        let sketch = QuantileSketch::new();
        assert!(sketch.is_empty());
        assert_eq!(sketch.count(), 0);
        for q in QUANTILES {
            assert_eq!(sketch.quantile(q), None);
        }
        assert_eq!(sketch.to_json(), json!({}));
        assert_eq!(QuantileSketch::from_json(&json!({})).unwrap(), sketch);
    }

    #[test]
    fn quantiles_outside_zero_to_one_are_none() {
        let sketch = sketch_of(&[1.0, 2.0]);
        for q in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            assert_eq!(sketch.quantile(q), None, "{q}");
        }
    }

    #[test]
    fn count_includes_every_value() {
        let sketch = sketch_of(&mixed_signs(1234));
        assert_eq!(sketch.count(), 1234);
        assert!(!sketch.is_empty());
    }

    #[test]
    fn merge_equals_inserting_everything_into_one_sketch() {
        let values = mixed_signs(20_000);
        let whole = sketch_of(&values);

        let (left, right) = values.split_at(7_000);
        let mut merged = sketch_of(left);
        merged.merge(&sketch_of(right));
        assert_eq!(merged, whole);

        let mut from_many = QuantileSketch::new();
        for chunk in values.chunks(17) {
            from_many.merge(&sketch_of(chunk));
        }
        assert_eq!(from_many, whole);

        let mut with_empty = whole.clone();
        with_empty.merge(&QuantileSketch::new());
        assert_eq!(with_empty, whole);
    }

    #[test]
    fn json_has_the_documented_format() {
        // ln(2) / ln(gamma) ≈ 69.3, so 2.0 lands in bucket 70; 1.0 is exactly gamma^0.
        let sketch = sketch_of(&[1.0, 1.0, -1.0, 2.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            sketch.to_json(),
            json!({"p0": 2, "p70": 1, "n0": 1, "z": 3})
        );
        let tiny = sketch_of(&[0.5]);
        assert_eq!(tiny.to_json(), json!({"p-69": 1}));
    }

    #[test]
    fn json_round_trips() {
        for values in [mixed_signs(5_000), log_uniform(5_000), vec![], vec![0.0]] {
            let sketch = sketch_of(&values);
            let json = sketch.to_json();
            assert_eq!(QuantileSketch::from_json(&json).unwrap(), sketch);
            // Through text too, as it is stored in PostgreSQL.
            let reparsed: Value = serde_json::from_str(&json.to_string()).unwrap();
            assert_eq!(QuantileSketch::from_json(&reparsed).unwrap(), sketch);
        }
    }

    /// What the generic SQL merge does: sum the values of equal keys, keep the others.
    fn sql_merge(a: &Value, b: &Value) -> Value {
        let mut sum = a.as_object().unwrap().clone();
        for (key, value) in b.as_object().unwrap() {
            let total = sum.get(key).map_or(0, |v| v.as_u64().unwrap()) + value.as_u64().unwrap();
            sum.insert(key.clone(), total.into());
        }
        Value::Object(sum)
    }

    #[test]
    fn merging_json_by_summing_keys_equals_merge() {
        let values = mixed_signs(10_000);
        let mut merged = QuantileSketch::new();
        let mut merged_json = json!({});
        for chunk in values.chunks(333) {
            let part = sketch_of(chunk);
            merged.merge(&part);
            merged_json = sql_merge(&merged_json, &part.to_json());
        }
        assert_eq!(QuantileSketch::from_json(&merged_json).unwrap(), merged);
        assert_eq!(merged, sketch_of(&values));
    }

    #[test]
    fn zero_counts_are_ignored() {
        let sketch = QuantileSketch::from_json(&json!({"p3": 0, "z": 0, "n0": 2})).unwrap();
        assert_eq!(sketch, sketch_of(&[-1.0, -1.0]));
    }

    #[test]
    fn from_json_rejects_malformed_input() {
        for value in [json!([]), json!(3), json!("p1"), json!(null)] {
            let result = QuantileSketch::from_json(&value);
            assert!(matches!(result, Err(SketchError::NotAnObject)), "{value}");
        }
        for key in [
            "",
            "x1",
            "p",
            "n",
            "pz",
            "p1.5",
            "p01",
            "p+1",
            "p-0",
            "z1",
            "Z",
            "P1",
            " p1",
            "p 1",
            "p99999",
            "n-99999",
            "p2147483648",
        ] {
            let result = QuantileSketch::from_json(&json!({ key: 1 }));
            assert!(matches!(result, Err(SketchError::InvalidKey(_))), "{key:?}");
        }
        for count in [
            json!(-1),
            json!(1.5),
            json!(2.0),
            json!("3"),
            json!(null),
            json!(1e30),
        ] {
            let result = QuantileSketch::from_json(&json!({ "p1": count }));
            assert!(
                matches!(result, Err(SketchError::InvalidCount { .. })),
                "{count}"
            );
        }
        let overflow = json!({"p1": u64::MAX, "p2": 1});
        assert!(matches!(
            QuantileSketch::from_json(&overflow),
            Err(SketchError::CountOverflow)
        ));
    }

    #[test]
    fn an_array_of_sketches_merges_as_it_is_read_into_what_merging_them_gives() {
        let sketches: Vec<QuantileSketch> = (0..5)
            .map(|k| {
                let mut sketch = QuantileSketch::new();
                for i in 0..200 {
                    sketch.insert(f64::from(i * (k + 1)) / 7.0 - 30.0);
                }
                sketch
            })
            .collect();
        let mut expected = QuantileSketch::new();
        sketches.iter().for_each(|sketch| expected.merge(sketch));
        let text = Value::Array(sketches.iter().map(QuantileSketch::to_json).collect()).to_string();
        assert_eq!(QuantileSketch::merge_json_array(&text).unwrap(), expected);
        assert!(QuantileSketch::merge_json_array("[]").unwrap().is_empty());
    }

    #[test]
    fn a_bad_array_of_sketches_is_refused() {
        for bad in [
            "",
            "{}",
            "[1]",
            r#"[{"p1": 1}, {"q1": 1}]"#,
            r#"[{"p01": 1}]"#,
            r#"[{"p1": -1}]"#,
            r#"[{"p1": 18446744073709551615}, {"p2": 1}]"#,
            r#"[{"p1": 1}] x"#,
        ] {
            assert!(
                QuantileSketch::merge_json_array(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }
}
