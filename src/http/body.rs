//! Request bodies of the write endpoints, read within bounds: bytes before and after
//! inflation, JSON nesting depth, and memory over all requests at once.
//!
//! A small uncompressed body is read and decoded where it arrives. Any other body first
//! reserves its worst case from a shared memory budget (requests beyond it wait, unread, in
//! the kernel's socket buffers), then streams: frames go through a bounded channel to a
//! blocking-pool thread that inflates, checks and decodes them as they come, and stops at the
//! first limit. The reservation is held until the request is answered, since the decoded
//! points live that long.

use std::{
    io::{self, BufReader, Read},
    sync::Arc,
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
    decode::DecodeError,
    error::{ApiError, caused_by},
};
use crate::idempotency::Fingerprinter;

/// Bodies up to this size, uncompressed and of known length, are decoded where they arrive.
const INLINE_BODY_BYTES: usize = 64 * 1024;
/// Memory for inline bodies being read, over all requests.
const INLINE_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// Memory for every other body and its decoded points, over all requests. A request reserves
/// its worst case: its length, or for a compressed body or one of unknown length the limit.
const STREAMED_BUDGET_BYTES: usize = 24 * 1024 * 1024;
/// Budgets count in KiB, so that a 16 MiB reservation fits a semaphore's permit count.
const BUDGET_UNIT: usize = 1024;
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

async fn reserve(semaphore: &Arc<Semaphore>, bytes: usize) -> OwnedSemaphorePermit {
    let units = bytes.div_ceil(BUDGET_UNIT).max(1) as u32;
    semaphore
        .clone()
        .acquire_many_owned(units)
        .await
        .expect("body budgets are never closed")
}

/// Why reading stopped early. Travels as an `io::Error` through the decoders.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the body is over the size limit")]
    TooLarge,
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

/// What a decoded body comes with.
pub(super) struct DecodedBody<T> {
    pub(super) value: T,
    /// The fingerprint of path and body, when one was asked for.
    pub(super) fingerprint: Option<Vec<u8>>,
    /// Memory reserved for the body and what was decoded from it, until the answer.
    pub(super) _reservation: OwnedSemaphorePermit,
}

/// A JSON body of at most `limit` bytes (also after inflation) decoded by `decode`:
/// 415 without a JSON content type or with an encoding other than gzip, 413 over the limit,
/// 400 when it is not JSON or nests too deeply, 408 when it arrives too slowly.
pub(super) async fn read_json<T, F>(
    budget: &BodyBudget,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    fingerprint: Option<Fingerprinter>,
    decode: F,
) -> Result<DecodedBody<T>, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> Result<T, DecodeError> + Send + 'static,
{
    if !has_json_content_type(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let gzipped = is_gzipped(headers)?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if length.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let decoded = match length {
        Some(length) if length <= INLINE_BODY_BYTES && !gzipped => {
            let reservation = reserve(&budget.inline, length).await;
            let bytes = collect(body, length).await?;
            let mut reader = Guarded::new(&bytes[..], limit, fingerprint);
            let value = decode(&mut reader);
            (value, reader.finish(), reservation)
        }
        _ => {
            let worst_case = if gzipped {
                limit
            } else {
                length.unwrap_or(limit)
            };
            let reservation = reserve(&budget.streamed, worst_case).await;
            let (value, fingerprint) = stream(body, gzipped, limit, fingerprint, decode).await?;
            (value, fingerprint, reservation)
        }
    };
    let (value, fingerprint, reservation) = decoded;
    Ok(DecodedBody {
        value: value.map_err(|error| into_api_error(error, limit))?,
        fingerprint,
        _reservation: reservation,
    })
}

/// The whole body, of a length already known to be small.
async fn collect(body: Body, length: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, length)
        .await
        .map_err(|error| into_api_error(DecodeError::Read(frame_error(error).into_io()), length))
}

/// Feeds the body's frames to `decode` on the blocking pool, through the guards.
async fn stream<T, F>(
    mut body: Body,
    gzipped: bool,
    limit: usize,
    fingerprint: Option<Fingerprinter>,
    decode: F,
) -> Result<(Result<T, DecodeError>, Option<Vec<u8>>), ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> Result<T, DecodeError> + Send + 'static,
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
        let mut reader = BufReader::new(Guarded::new(inflated, limit, fingerprint));
        let value = decode(&mut reader);
        (value, reader.into_inner().finish())
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
            let data = if sent > limit {
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
    fn new(inner: R, limit: usize, fingerprint: Option<Fingerprinter>) -> Self {
        Self {
            inner,
            remaining: limit,
            depth: DepthScan::default(),
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

/// Tracks how deeply the JSON text seen so far nests, outside of strings.
#[derive(Debug, Default)]
struct DepthScan {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl DepthScan {
    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        for &byte in bytes {
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
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
        }
        Ok(())
    }
}

fn into_api_error(error: DecodeError, limit: usize) -> ApiError {
    match error {
        DecodeError::Malformed(reason) => ApiError::MalformedJson(reason),
        DecodeError::Invalid(errors) => ApiError::Validation(errors),
        DecodeError::TooManyPoints => ApiError::TooManyPoints {
            limit: super::decode::MAX_BATCH_POINTS,
        },
        DecodeError::Read(error) => match error.get_ref().and_then(|e| e.downcast_ref::<Stop>()) {
            Some(Stop::TooLarge) => ApiError::PayloadTooLarge { limit },
            Some(Stop::Timeout) => ApiError::BodyReadTimeout,
            Some(stop @ (Stop::TooDeep | Stop::Broken(_))) => {
                ApiError::MalformedJson(stop.to_string())
            }
            // Not ours: the inflater's.
            None => ApiError::MalformedJson(format!("invalid gzip body: {error}")),
        },
    }
}

fn is_gzipped(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|value| value.to_str())
    {
        None => Ok(false),
        Some(Ok(encoding)) if encoding.trim().eq_ignore_ascii_case("identity") => Ok(false),
        Some(Ok(encoding)) if encoding.trim().eq_ignore_ascii_case("gzip") => Ok(true),
        Some(_) => Err(ApiError::UnsupportedEncoding),
    }
}

fn has_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|essence| essence == "application/json" || essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn read_all(reader: &mut dyn Read) -> Result<Vec<u8>, DecodeError> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(DecodeError::Read)?;
        Ok(bytes)
    }

    fn stop_of(result: Result<Vec<u8>, DecodeError>) -> String {
        match result {
            Err(error) => format!("{:?}", into_api_error(error, 0)),
            Ok(_) => "read".into(),
        }
    }

    #[test]
    fn the_guard_allows_exactly_the_limit_and_stops_one_byte_past_it() {
        let body = [b' '; 100];
        let mut reader = Guarded::new(&body[..], 100, None);
        assert_eq!(read_all(&mut reader).unwrap().len(), 100);
        let mut reader = Guarded::new(&body[..], 99, None);
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
    fn a_gzip_bomb_stops_at_the_limit_after_inflating_little_more() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b' '; 16 * 1024 * 1024]).unwrap();
        let bomb = encoder.finish().unwrap();
        let mut reader = Guarded::new(GzDecoder::new(&bomb[..]), 1024 * 1024, None);
        assert!(stop_of(read_all(&mut reader)).contains("PayloadTooLarge"));
    }
}
