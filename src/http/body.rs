//! Request bodies of the write endpoints, read within bounds: bytes before and after
//! inflation, JSON nesting depth, the size of one point of a batch, and the memory that
//! decoded bodies hold over all requests at once.
//!
//! A small uncompressed body is read and decoded where it arrives. Any other body streams:
//! frames go through a bounded channel to a blocking-pool thread that inflates, checks and
//! decodes them as they come, and stops at the first limit. Memory is metered from a shared
//! budget: a request first reserves what it will need at least (it waits, unread, in the
//! kernel's socket buffers, until the budget has room), and a decoder charges what it keeps
//! as it goes. A body that would take the budget past its end is refused with a 503 at once
//! rather than waiting mid-way, so no two requests can wait on each other. The reservation
//! is held until the request is answered, since the decoded points live that long.

use std::{
    io::{self, BufReader, Read},
    sync::Arc,
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, header},
};
use flate2::read::GzDecoder;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tower_http::timeout::TimeoutError;

use super::{
    decode::{DecodeError, MAX_BATCH_POINTS},
    error::{ApiError, caused_by},
};
use crate::{idempotency::Fingerprinter, storage::MAX_STATEMENT_BYTES};

/// Bodies up to this size, uncompressed and of known length, are decoded where they arrive.
const INLINE_BODY_BYTES: usize = 64 * 1024;
/// Memory for inline bodies, over all requests.
const INLINE_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// Memory for streamed bodies and what is decoded from them, over all requests: room for
/// one maximal batch (16 MiB of points held as in [`held_by_point`]) and its working set,
/// and a little more.
const STREAMED_BUDGET_BYTES: usize = 48 * 1024 * 1024;
/// What a streamed body holds whatever its size: the largest point of a batch being read,
/// the inflater's window, the read buffers, the frames in flight, the errors of up to 10,000
/// rejected points, and one insert statement's arguments and write buffer (each at most
/// twice a statement's points, as vectors grow by doubling).
const STREAM_WORKING_BYTES: usize = MAX_POINT_BYTES
    + 256 * 1024
    + MAX_BATCH_POINTS * REJECTED_POINT_BYTES
    + 4 * MAX_STATEMENT_BYTES;
/// What a rejected point's errors hold, about.
const REJECTED_POINT_BYTES: usize = 200;
/// The shortest JSON a valid point can be written in, about:
/// `{"timestamp":"1970-01-01 00:00:00","value":0,"type":"a"}`.
const MIN_POINT_JSON_BYTES: usize = 50;
/// What a gzip body's reservation up front takes it to inflate to, times its length. Metric
/// JSON compresses 10 to 40 times; a body that inflates more grows its reservation as it goes.
const GZIP_RATIO_EXPECTED: usize = 16;
/// One point of a batch, as JSON, at most: what one element may hold while it is decoded.
pub(super) const MAX_POINT_BYTES: usize = 1024 * 1024;
/// Budgets count in KiB, so that any reservation fits a semaphore's permit count.
const BUDGET_UNIT: usize = 1024;
/// A decoder that runs out of its reservation takes at least this much more at a time.
const GROWTH_BYTES: usize = 1024 * 1024;
/// How long a streamed decode waits for more of the budget before it gives up (a 503): two
/// requests that each wait for what the other holds are parted by this.
const GROWTH_WAIT: Duration = Duration::from_secs(2);
/// Nesting of arrays and objects, at most; a point needs three levels inside a batch.
const MAX_JSON_DEPTH: usize = 32;
/// Frames in flight between the connection and the decoding thread.
const FRAMES_IN_FLIGHT: usize = 4;

/// The shared memory budgets for request bodies.
pub struct BodyBudget {
    inline: Arc<Semaphore>,
    streamed: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new() -> Self {
        let permits = |bytes: usize| Arc::new(Semaphore::new(bytes / BUDGET_UNIT));
        Self {
            inline: permits(INLINE_BUDGET_BYTES),
            streamed: permits(STREAMED_BUDGET_BYTES),
        }
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        Self::new()
    }
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(BUDGET_UNIT)
}

/// What a valid point decoded from `json_len` bytes holds until the answer: its strings (at
/// most its text's worth, and as much again for the allocator's rounding and the points'
/// vector growing by doubling) and the struct around them. Its encoding for the insert is in
/// the working set: statements are of bounded size.
pub(super) fn held_by_point(json_len: usize) -> usize {
    json_len * 2 + 256
}

/// The most that the points of `json_len` bytes of JSON can hold: what the decoder will be
/// charged, at most, so that a body of known length never needs to grow its reservation.
fn held_by_points_in(json_len: usize) -> usize {
    let points = (json_len / MIN_POINT_JSON_BYTES).min(MAX_BATCH_POINTS);
    held_by_point(json_len) - held_by_point(0) + points * held_by_point(0)
}

/// A request's share of a budget: reserved up front, grown as its decoder charges more.
pub(super) struct Meter {
    budget: Arc<Semaphore>,
    held: OwnedSemaphorePermit,
    charged: usize,
    /// Whether `charge` may block for room (only off the async runtime's workers).
    may_wait: bool,
}

impl Meter {
    /// Waits (in line with the other requests) until `bytes` are free in `budget`; never more
    /// than the whole budget.
    async fn reserve(budget: &Arc<Semaphore>, bytes: usize, total: usize, may_wait: bool) -> Self {
        let held = budget
            .clone()
            .acquire_many_owned(units(bytes.min(total)).max(1) as u32)
            .await
            .expect("body budgets are never closed");
        Self {
            budget: budget.clone(),
            held,
            charged: 0,
            may_wait,
        }
    }

    /// A meter of a budget that never runs out, for decoders' tests.
    #[cfg(test)]
    pub(super) fn unlimited() -> Self {
        let budget = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        let held = budget
            .clone()
            .try_acquire_owned()
            .expect("a permit is free");
        Self {
            budget,
            held,
            charged: 0,
            may_wait: false,
        }
    }

    /// Records that the decoder keeps `bytes` more; refused (a 503) when the budget has no
    /// room for them within [`GROWTH_WAIT`] (at once on the async runtime).
    pub(super) fn charge(&mut self, bytes: usize) -> Result<(), DecodeError> {
        self.charged += bytes;
        let missing = units(self.charged).saturating_sub(self.held.num_permits());
        if missing == 0 {
            return Ok(());
        }
        let grow = missing.max(units(GROWTH_BYTES)) as u32;
        let more = match self.budget.clone().try_acquire_many_owned(grow) {
            Ok(more) => more,
            Err(_) if self.may_wait => {
                let waiting = self.budget.clone().acquire_many_owned(grow);
                tokio::runtime::Handle::current()
                    .block_on(tokio::time::timeout(GROWTH_WAIT, waiting))
                    .ok()
                    .and_then(Result::ok)
                    .ok_or(DecodeError::Busy)?
            }
            Err(_) => return Err(DecodeError::Busy),
        };
        self.held.merge(more);
        Ok(())
    }
}

/// Why reading stopped early. Travels as an `io::Error` through the decoders.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the body is over the size limit")]
    TooLarge,
    #[error("a point is over the size limit")]
    PointTooLarge,
    #[error("the body nests deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("the body was not received in time")]
    Timeout,
    #[error("the body could not be read: {0}")]
    Broken(String),
}

impl Stop {
    fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// The limits of one endpoint's bodies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Bytes, before and after inflation.
    pub(super) body: usize,
    /// Bytes of one value nested in a top-level array (a batch's point), when limited.
    pub(super) point: Option<usize>,
}

/// What a decoded body comes with.
pub(super) struct DecodedBody<T> {
    pub(super) value: T,
    /// The fingerprint of path and body, when one was asked for.
    pub(super) fingerprint: Option<Vec<u8>>,
    /// Memory held for what was decoded, until the answer.
    pub(super) _meter: Meter,
}

/// A JSON body within `limits` decoded by `decode` (which charges `Meter` for what it
/// keeps): 415 without a JSON content type or with an encoding other than gzip, 413 over a
/// limit, 400 when it is not JSON or nests too deeply, 408 when it arrives too slowly, 503
/// when the memory budget has no room for it.
pub(super) async fn read_json<T, F>(
    budget: &BodyBudget,
    headers: &HeaderMap,
    body: Body,
    limits: Limits,
    fingerprint: Option<Fingerprinter>,
    decode: F,
) -> Result<DecodedBody<T>, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read, &mut Meter) -> Result<T, DecodeError> + Send + 'static,
{
    if !has_json_content_type(headers) {
        return Err(ApiError::UnsupportedMediaType("application/json"));
    }
    let gzipped = is_gzipped(headers)?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if length.is_some_and(|length| length > limits.body) {
        return Err(ApiError::PayloadTooLarge { limit: limits.body });
    }
    let (value, fingerprint, meter) = match length {
        Some(length) if length <= INLINE_BODY_BYTES && !gzipped => {
            let mut meter = Meter::reserve(
                &budget.inline,
                held_by_points_in(length),
                INLINE_BUDGET_BYTES,
                false,
            )
            .await;
            let bytes = collect(body, length).await?;
            let mut reader = Guarded::new(&bytes[..], limits, fingerprint);
            let value = decode(&mut reader, &mut meter);
            (value, reader.finish(), meter)
        }
        _ => {
            // What it will hold at least: the working set, and what its body's length says.
            let expected = match (gzipped, length) {
                (false, Some(length)) => length,
                (true, Some(length)) => length * GZIP_RATIO_EXPECTED,
                (_, None) => 0,
            };
            let meter = Meter::reserve(
                &budget.streamed,
                STREAM_WORKING_BYTES + held_by_points_in(expected.min(limits.body)),
                STREAMED_BUDGET_BYTES,
                true,
            )
            .await;
            stream(body, gzipped, limits, fingerprint, meter, decode).await?
        }
    };
    Ok(DecodedBody {
        value: value.map_err(|error| into_api_error(error, limits))?,
        fingerprint,
        _meter: meter,
    })
}

/// What a receiver's decoded request holds, about, per byte of its inflated message: protobuf
/// and OTLP JSON decode into structures a few times larger than their text, and the points
/// taken from them share their strings.
const DECODED_PER_MESSAGE_BYTE: usize = 6;

/// A receiver's body: its bytes as sent (at most `limit`), inflated with `inflate` (into at
/// most `limit` bytes), with memory for the body, the message and what is decoded from it
/// metered from the streamed budget: reserved up front for the body as sent, then charged for
/// the rest (a 503 when the budget has no room). 413 past the limit, 408 when the body
/// arrives too slowly.
pub(super) async fn read_message(
    budget: &BodyBudget,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    inflate: impl FnOnce(Bytes, usize) -> Result<Bytes, ApiError>,
) -> Result<(Bytes, Meter), ApiError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if length.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut meter = Meter::reserve(
        &budget.streamed,
        length.unwrap_or(limit),
        STREAMED_BUDGET_BYTES,
        false,
    )
    .await;
    let sent = axum::body::to_bytes(body, limit).await.map_err(|error| {
        if caused_by::<http_body_util::LengthLimitError>(&error) {
            ApiError::PayloadTooLarge { limit }
        } else {
            into_api_error(
                DecodeError::Read(frame_error(error).into_io()),
                Limits {
                    body: limit,
                    point: None,
                },
            )
        }
    })?;
    meter.charge(sent.len()).map_err(|_| ApiError::Busy)?;
    let message = inflate(sent, limit)?;
    meter
        .charge(message.len() * DECODED_PER_MESSAGE_BYTE)
        .map_err(|_| ApiError::Busy)?;
    Ok((message, meter))
}

/// A gzip body inflated, at most `limit` bytes of it (413 past that).
pub(super) fn gunzip(body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let mut inflated = Vec::new();
    GzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|error| ApiError::Undecodable(format!("invalid gzip body: {error}")))?;
    if inflated.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(inflated.into())
}

/// The essence of the Content-Type (lower case, without parameters), if any.
pub(super) fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
}

/// The whole body, of a length already known to be small.
async fn collect(body: Body, length: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, length).await.map_err(|error| {
        let limits = Limits {
            body: length,
            point: None,
        };
        into_api_error(DecodeError::Read(frame_error(error).into_io()), limits)
    })
}

type Streamed<T> = (Result<T, DecodeError>, Option<Vec<u8>>, Meter);

/// Feeds the body's frames to `decode` on the blocking pool, through the guards.
async fn stream<T, F>(
    mut body: Body,
    gzipped: bool,
    limits: Limits,
    fingerprint: Option<Fingerprinter>,
    mut meter: Meter,
    decode: F,
) -> Result<Streamed<T>, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read, &mut Meter) -> Result<T, DecodeError> + Send + 'static,
{
    let (frames, received) = mpsc::channel(FRAMES_IN_FLIGHT);
    let decoding = tokio::task::spawn_blocking(move || {
        let compressed = Frames {
            received,
            current: Bytes::new(),
        };
        let inflated: Box<dyn Read> = if gzipped {
            Box::new(GzDecoder::new(compressed))
        } else {
            Box::new(compressed)
        };
        let mut reader = BufReader::new(Guarded::new(inflated, limits, fingerprint));
        let value = decode(&mut reader, &mut meter);
        (value, reader.into_inner().finish(), meter)
    });
    let forwarding = async move {
        let mut sent = 0usize;
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Err(error) => {
                    let _ = frames.send(Err(frame_error(error))).await;
                    return;
                }
            };
            sent += data.len();
            let data = if sent > limits.body {
                Err(Stop::TooLarge)
            } else {
                Ok(data)
            };
            let stop = data.is_err();
            // A closed channel means the decoder stopped (at a limit): read no further.
            if frames.send(data).await.is_err() || stop {
                return;
            }
        }
    };
    let ((), decoded) = tokio::join!(forwarding, decoding);
    decoded.map_err(|error| ApiError::Internal(Box::new(error)))
}

fn frame_error(error: axum::Error) -> Stop {
    if caused_by::<TimeoutError>(&error) {
        Stop::Timeout
    } else {
        Stop::Broken(error.to_string())
    }
}

/// The compressed body as a blocking reader of the frames the connection forwards.
struct Frames {
    received: mpsc::Receiver<Result<Bytes, Stop>>,
    current: Bytes,
}

impl Read for Frames {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.received.blocking_recv() {
                None => return Ok(0),
                Some(Ok(data)) => self.current = data,
                Some(Err(stop)) => return Err(stop.into_io()),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The inflated body as it is decoded: counts bytes against the limit, tracks the nesting
/// depth of the JSON going through, and feeds the fingerprint.
struct Guarded<R> {
    inner: R,
    remaining: usize,
    depth: DepthScan,
    fingerprint: Option<Fingerprinter>,
}

impl<R: Read> Guarded<R> {
    fn new(inner: R, limits: Limits, fingerprint: Option<Fingerprinter>) -> Self {
        Self {
            inner,
            remaining: limits.body,
            depth: DepthScan::new(limits.point),
            fingerprint,
        }
    }

    fn finish(self) -> Option<Vec<u8>> {
        self.fingerprint.map(Fingerprinter::finish)
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than remains, to tell "exactly at the limit" from "over it".
        let window = buf.len().min(self.remaining.saturating_add(1));
        let n = self.inner.read(&mut buf[..window])?;
        if n > self.remaining {
            return Err(Stop::TooLarge.into_io());
        }
        self.remaining -= n;
        self.depth.feed(&buf[..n])?;
        if let Some(fingerprint) = &mut self.fingerprint {
            fingerprint.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Tracks the JSON text going through: how deeply it nests (outside strings), and how long
/// each value inside a top-level container is (a batch's point), when that is limited.
#[derive(Debug, Default)]
struct DepthScan {
    depth: usize,
    in_string: bool,
    escaped: bool,
    max_element: Option<usize>,
    /// Bytes of the current element of the top-level container.
    element: usize,
}

/// The depth of the elements of a top-level container (`{"metrics": [here]}`).
const ELEMENT_DEPTH: usize = 2;

impl DepthScan {
    fn new(max_element: Option<usize>) -> Self {
        Self {
            max_element,
            ..Self::default()
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        for &byte in bytes {
            let separates = !self.in_string && self.depth == ELEMENT_DEPTH && byte == b',';
            self.step(byte)?;
            if separates || self.depth < ELEMENT_DEPTH {
                self.element = 0;
            } else {
                self.element += 1;
                if self.max_element.is_some_and(|max| self.element > max) {
                    return Err(Stop::PointTooLarge.into_io());
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, byte: u8) -> io::Result<()> {
        if self.in_string {
            match byte {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.in_string = false,
                _ => {}
            }
            return Ok(());
        }
        match byte {
            b'"' => self.in_string = true,
            b'[' | b'{' => {
                self.depth += 1;
                if self.depth > MAX_JSON_DEPTH {
                    return Err(Stop::TooDeep.into_io());
                }
            }
            b']' | b'}' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        Ok(())
    }
}

fn into_api_error(error: DecodeError, limits: Limits) -> ApiError {
    match error {
        DecodeError::Busy => ApiError::Busy,
        DecodeError::Malformed(reason) => ApiError::MalformedJson(reason),
        DecodeError::Invalid(errors) => ApiError::Validation(errors),
        DecodeError::TooManyPoints => ApiError::TooManyPoints {
            limit: super::decode::MAX_BATCH_POINTS,
        },
        DecodeError::Read(error) => match error.get_ref().and_then(|e| e.downcast_ref::<Stop>()) {
            Some(Stop::TooLarge) => ApiError::PayloadTooLarge { limit: limits.body },
            Some(Stop::PointTooLarge) => ApiError::PointTooLarge {
                limit: limits.point.unwrap_or(limits.body),
            },
            Some(Stop::Timeout) => ApiError::BodyReadTimeout,
            Some(stop @ (Stop::TooDeep | Stop::Broken(_))) => {
                ApiError::MalformedJson(stop.to_string())
            }
            // Not ours: the inflater's.
            None => ApiError::MalformedJson(format!("invalid gzip body: {error}")),
        },
    }
}

pub(super) fn is_gzipped(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|value| value.to_str())
    {
        None => Ok(false),
        Some(Ok(encoding)) if encoding.trim().eq_ignore_ascii_case("identity") => Ok(false),
        Some(Ok(encoding)) if encoding.trim().eq_ignore_ascii_case("gzip") => Ok(true),
        Some(_) => Err(ApiError::UnsupportedEncoding(
            "uncompressed or with Content-Encoding: gzip",
        )),
    }
}

fn has_json_content_type(headers: &HeaderMap) -> bool {
    content_type(headers)
        .is_some_and(|essence| essence == "application/json" || essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn limits(body: usize, point: Option<usize>) -> Limits {
        Limits { body, point }
    }

    fn read_all(reader: &mut dyn Read) -> Result<Vec<u8>, DecodeError> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(DecodeError::Read)?;
        Ok(bytes)
    }

    fn stop_of(result: Result<Vec<u8>, DecodeError>) -> String {
        match result {
            Err(error) => format!("{:?}", into_api_error(error, limits(0, None))),
            Ok(_) => "read".into(),
        }
    }

    #[test]
    fn the_guard_allows_exactly_the_limit_and_stops_one_byte_past_it() {
        let body = [b' '; 100];
        let mut reader = Guarded::new(&body[..], limits(100, None), None);
        assert_eq!(read_all(&mut reader).unwrap().len(), 100);
        let mut reader = Guarded::new(&body[..], limits(99, None), None);
        assert!(stop_of(read_all(&mut reader)).contains("PayloadTooLarge"));
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let mut scan = DepthScan::default();
        let deep_in_a_string = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert!(scan.feed(deep_in_a_string.as_bytes()).is_ok());
        assert_eq!(scan.depth, 0);
        let mut scan = DepthScan::default();
        assert!(scan.feed("[".repeat(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert!(scan.feed(b"[").is_err());
        // Split anywhere, the same text gives the same answer.
        let mut scan = DepthScan::default();
        for byte in br#"{"k": "\\", "l": [[]]}"# {
            scan.feed(&[*byte]).unwrap();
        }
        assert_eq!((scan.depth, scan.in_string), (0, false));
    }

    #[test]
    fn each_point_of_a_batch_is_limited_not_the_batch() {
        let point = format!(r#"{{"type": "{}"}}"#, "x".repeat(80));
        let batch = format!(
            r#"{{"metrics": [{point}, {point}, "{}"], "other": "{}"}}"#,
            "s".repeat(50),
            "y".repeat(500)
        );
        let mut scan = DepthScan::new(Some(point.len() + 1));
        assert!(
            scan.feed(batch.as_bytes()).is_ok(),
            "every element within the limit"
        );
        let long = format!(r#"{{"metrics": ["{}"]}}"#, "s".repeat(100));
        let mut scan = DepthScan::new(Some(100));
        let error = scan.feed(long.as_bytes()).unwrap_err();
        assert!(matches!(
            error.get_ref().and_then(|e| e.downcast_ref::<Stop>()),
            Some(Stop::PointTooLarge)
        ));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit_after_inflating_little_more() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b' '; 16 * 1024 * 1024]).unwrap();
        let bomb = encoder.finish().unwrap();
        let mut reader = Guarded::new(GzDecoder::new(&bomb[..]), limits(1024 * 1024, None), None);
        assert!(stop_of(read_all(&mut reader)).contains("PayloadTooLarge"));
    }

    #[test]
    fn a_maximal_batch_fits_the_budget_and_its_reservation_covers_its_points() {
        let maximal = STREAM_WORKING_BYTES + held_by_points_in(16 * 1024 * 1024);
        assert!(maximal <= STREAMED_BUDGET_BYTES, "{maximal}");
        // However the body splits into points, their charges stay within the reservation.
        for (len, points) in [
            (1_000_000, 10_000),
            (5_000, 100),
            (16 * 1024 * 1024, 10_000),
        ] {
            let charged = points * held_by_point(len / points);
            assert!(
                charged <= held_by_points_in(len),
                "{len} bytes, {points} points"
            );
        }
    }

    #[tokio::test]
    async fn a_meter_grows_while_the_budget_has_room_and_refuses_past_it() {
        let budget = Arc::new(Semaphore::new(units(4 * GROWTH_BYTES)));
        let mut first = Meter::reserve(&budget, GROWTH_BYTES, 4 * GROWTH_BYTES, false).await;
        first.charge(GROWTH_BYTES).unwrap();
        assert_eq!(
            first.held.num_permits(),
            units(GROWTH_BYTES),
            "within the reservation"
        );
        first.charge(1).unwrap();
        assert_eq!(
            first.held.num_permits(),
            units(2 * GROWTH_BYTES),
            "grown by a step"
        );
        let mut second = Meter::reserve(&budget, 2 * GROWTH_BYTES, 4 * GROWTH_BYTES, false).await;
        assert!(matches!(
            second.charge(3 * GROWTH_BYTES),
            Err(DecodeError::Busy)
        ));
        drop(first);
        second.charge(GROWTH_BYTES).unwrap();
        // A reservation is never larger than the whole budget, so it can always be had.
        drop(second);
        let whole = Meter::reserve(&budget, 100 * GROWTH_BYTES, 4 * GROWTH_BYTES, false).await;
        assert_eq!(whole.held.num_permits(), units(4 * GROWTH_BYTES));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streamed_decode_waits_a_little_for_room_then_gives_up() {
        let budget = Arc::new(Semaphore::new(units(2 * GROWTH_BYTES)));
        let first = Meter::reserve(&budget, GROWTH_BYTES, 2 * GROWTH_BYTES, false).await;
        let mut second = Meter::reserve(&budget, GROWTH_BYTES, 2 * GROWTH_BYTES, true).await;
        // The budget is spent: the second's growth waits until the first is answered.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(first);
        });
        let (grew, mut second) = tokio::task::spawn_blocking(move || {
            let grew = second.charge(2 * GROWTH_BYTES).is_ok();
            (grew, second)
        })
        .await
        .unwrap();
        release.await.unwrap();
        assert!(grew);
        assert_eq!(second.held.num_permits(), units(2 * GROWTH_BYTES));
        // Nothing more will be released: it gives up after the wait.
        let gave_up = tokio::task::spawn_blocking(move || second.charge(1).is_err())
            .await
            .unwrap();
        assert!(gave_up);
    }

    #[test]
    fn content_types() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            has_json_content_type(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!has_json_content_type(&HeaderMap::new()));
    }
}
