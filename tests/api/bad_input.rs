//! Abusive input and slow clients: each gets a clear 4xx or a closed connection, never a 500,
//! never a stored point, and never ties up the server.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Mutex,
    task::JoinHandle,
};

use crate::helpers::{TestApp, metric, spawn_app_with};

const TYPE: &str = "abuse";

async fn spawn() -> TestApp {
    spawn_app_with(|s| {
        s.rate_limit.requests = 100_000;
        s.timeouts.header_read = Duration::from_secs(1);
        s.timeouts.body_read = Duration::from_secs(1);
    })
    .await
}

/// Posts raw bytes as JSON; returns the status and the error code.
async fn post_raw(app: &TestApp, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let response = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("an error body");
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

/// Both write endpoints, each with the point as the single body and inside a batch.
async fn post_both(app: &TestApp, point: &str) -> [(u16, String); 2] {
    [
        post_raw(app, "/api/metrics", point.to_owned()).await,
        post_raw(
            app,
            "/api/metrics/batch",
            format!(r#"{{"metrics": [{point}]}}"#),
        )
        .await,
    ]
}

fn point_with_value(value: &str) -> String {
    format!(r#"{{"timestamp": "2026-01-01T00:00:00Z", "type": "{TYPE}", "value": {value}}}"#)
}

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.count_rows(TYPE).await, 0, "nothing may be stored");
}

#[tokio::test]
async fn deeply_nested_json_is_refused() {
    let app = spawn().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, code) = post_raw(&app, "/api/metrics", deep.clone()).await;
    assert_eq!((status, code.as_str()), (400, "MALFORMED_JSON"));
    let nested_tag = format!(
        r#"{{"timestamp": "2026-01-01T00:00:00Z", "type": "{TYPE}", "value": 1, "tags": {{"a": {deep}}}}}"#
    );
    // Depth is a limit of the body as it streams in (32 levels), like its size: the whole
    // body is refused at the first level too many, in a batch too.
    for (status, code) in post_both(&app, &nested_tag).await {
        assert_eq!((status, code.as_str()), (400, "MALFORMED_JSON"));
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn numbers_out_of_range_and_non_finite_values_are_refused() {
    const MALFORMED: (u16, &str) = (400, "MALFORMED_JSON");
    const INVALID: (u16, &str) = (422, "VALIDATION_ERROR");
    let app = spawn().await;
    // (value as written, single write's answer, batch's answer). Literals that are not JSON
    // make the whole body malformed; a number beyond f64 is valid JSON and an invalid value,
    // as is JSON that is not an acceptable value: both fail validation of that point only.
    let cases = [
        ("NaN", MALFORMED, MALFORMED),
        ("Infinity", MALFORMED, MALFORMED),
        ("-Infinity", MALFORMED, MALFORMED),
        ("nan", MALFORMED, MALFORMED),
        ("1e400", INVALID, INVALID),
        ("-1e400", INVALID, INVALID),
        (r#""NaN""#, INVALID, INVALID),
        (r#""Infinity""#, INVALID, INVALID),
        (r#""-Infinity""#, INVALID, INVALID),
        (r#""1""#, INVALID, INVALID),
        ("1e101", INVALID, INVALID),
        ("-1e101", INVALID, INVALID),
    ];
    for (value, single, batch) in cases {
        let [(single_status, single_code), (batch_status, batch_code)] =
            post_both(&app, &point_with_value(value)).await;
        assert_eq!((single_status, single_code.as_str()), single, "{value}");
        assert_eq!((batch_status, batch_code.as_str()), batch, "{value}");
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn invalid_utf8_is_malformed_json() {
    let app = spawn().await;
    let mut body = point_with_value("1").into_bytes();
    let at = body.iter().position(|&b| b == b'a').unwrap();
    body.splice(at..at + 1, [0xff, 0xfe]);
    for path in ["/api/metrics", "/api/metrics/batch"] {
        let (status, code) = post_raw(&app, path, body.clone()).await;
        assert_eq!((status, code.as_str()), (400, "MALFORMED_JSON"), "{path}");
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn thousands_of_tags_are_refused() {
    let app = spawn().await;
    let tags: serde_json::Map<String, Value> = (0..5_000)
        .map(|i| (format!("tag{i}"), json!("v")))
        .collect();
    let mut point = metric(TYPE, 1.0);
    point["tags"] = Value::Object(tags);
    let [(single, _), (batch, _)] = post_both(&app, &point.to_string()).await;
    assert_eq!((single, batch), (422, 422));
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn very_long_query_strings_and_header_values_get_a_4xx_or_a_closed_connection() {
    let app = spawn().await;
    let long_type = "t".repeat(50_000);
    let response = app
        .get(&format!("/api/metrics/summary?type={long_type}"))
        .await;
    assert_eq!(response.status(), 400);

    // Beyond what the server buffers for a request head: a 4xx or a closed connection.
    let huge = "q".repeat(2 * 1024 * 1024);
    let requests = [
        app.client
            .get(app.url(&format!("/api/metrics/summary?type={huge}"))),
        app.client
            .post(app.url("/api/metrics"))
            .header("x-padding", &huge)
            .json(&metric(TYPE, 1.0)),
    ];
    for request in requests {
        let outcome = request.send().await;
        let status = outcome.as_ref().ok().map(reqwest::Response::status);
        assert!(status.is_none_or(|s| s.is_client_error()), "{status:?}");
    }
    assert_nothing_stored(&app).await;
    // The server is still fine.
    assert_eq!(app.get("/health/live").await.status(), 200);
}

/// Reads until the server closes the connection (or `within` passes); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&received).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_client_that_sends_its_headers_a_byte_at_a_time_is_cut_off() {
    let app = spawn().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    let request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut cut_off = false;
    for byte in request.iter().chain(b"a".repeat(1000).iter()) {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        // Meanwhile the server serves others.
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !cut_off {
        let closed = read_until_closed(&mut stream, Duration::from_secs(3)).await;
        assert!(
            closed.is_some(),
            "the connection is closed after the header timeout"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(app.get("/health/live").await.status(), 200);
}

#[tokio::test]
async fn a_client_that_sends_its_body_a_byte_at_a_time_gets_408_and_stores_nothing() {
    let app = spawn().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let body = point_with_value("1");
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for byte in body.as_bytes().iter().take(body.len() - 1) {
        if stream.write_all(&[*byte]).await.is_err() || started.elapsed() > Duration::from_secs(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server answers and closes");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("BODY_READ_TIMEOUT"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn many_idle_connections_neither_block_others_nor_stay_open() {
    let app = spawn().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    // Others are served at once.
    let started = Instant::now();
    let response = app.post_json("/api/metrics", &metric(TYPE, 1.0)).await;
    assert_eq!(response.status(), 201);
    assert!(started.elapsed() < Duration::from_secs(2));

    // The idle ones are closed once the header timeout has passed.
    for stream in &mut idle {
        assert!(
            read_until_closed(stream, Duration::from_secs(5))
                .await
                .is_some(),
            "an idle connection stays open"
        );
    }
    assert_eq!(app.count_rows(TYPE).await, 1);
}

/// The client preface of HTTP/2 over cleartext with prior knowledge (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
// Frame types and flags.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// A header block of literal fields without indexing or Huffman coding (HPACK's simplest).
fn h2_header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        // A literal field without indexing, with a literal name.
        block.push(0);
        for text in [name, value] {
            // Below 127 the length fits the 7-bit prefix; the high bit 0 means no Huffman.
            let length = u8::try_from(text.len()).ok().filter(|&length| length < 127);
            block.push(length.expect("a short header field"));
            block.extend(text.as_bytes());
        }
    }
    block
}

/// A frame the server sent: its type, stream, and when it arrived.
#[derive(Debug)]
struct Received {
    kind: u8,
    stream: u32,
    at: Instant,
}

/// How an [`H2Client`] treats the server's SETTINGS and PINGs.
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    /// Acknowledges them, as a live client does, so only the server's idle rule can end the
    /// connection.
    Answering,
    /// Acknowledges nothing, as if it had vanished.
    Silent,
}

/// Just enough of an h2c client to open a connection, send raw frames, and see what the
/// server sends back.
struct H2Client {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    reader: JoinHandle<Vec<Received>>,
}

impl H2Client {
    async fn connect(app: &TestApp, peer: Peer) -> Self {
        let stream = TcpStream::connect(app.address.trim_start_matches("http://"))
            .await
            .unwrap();
        let (read, write) = stream.into_split();
        let writer = Arc::new(Mutex::new(write));
        let client = Self {
            writer: writer.clone(),
            reader: tokio::spawn(Self::read_frames(read, writer, peer)),
        };
        let mut opening = H2_PREFACE.to_vec();
        opening.extend(h2_frame(SETTINGS, 0, 0, &[]));
        assert!(client.send(&opening).await);
        client
    }

    /// Whether the bytes could be written (not after the server closed the connection).
    async fn send(&self, bytes: &[u8]) -> bool {
        self.writer.lock().await.write_all(bytes).await.is_ok()
    }

    /// Every frame the server sent, once it has closed the connection; `None` when it is
    /// still open after `within`.
    async fn frames_until_closed(mut self, within: Duration) -> Option<Vec<Received>> {
        match tokio::time::timeout(within, &mut self.reader).await {
            Ok(frames) => Some(frames.unwrap()),
            Err(_) => {
                self.reader.abort();
                None
            }
        }
    }

    async fn read_frames(
        mut read: OwnedReadHalf,
        writer: Arc<Mutex<OwnedWriteHalf>>,
        peer: Peer,
    ) -> Vec<Received> {
        let mut frames = Vec::new();
        loop {
            let mut head = [0; 9];
            if read.read_exact(&mut head).await.is_err() {
                return frames;
            }
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes(head[5..].try_into().unwrap()) & 0x7fff_ffff;
            let mut payload = vec![0; length];
            if read.read_exact(&mut payload).await.is_err() {
                return frames;
            }
            let ack = match kind {
                _ if peer == Peer::Silent || flags & ACK != 0 => None,
                SETTINGS => Some(h2_frame(SETTINGS, ACK, 0, &[])),
                PING => Some(h2_frame(PING, ACK, 0, &payload)),
                _ => None,
            };
            if let Some(ack) = ack {
                let _ = writer.lock().await.write_all(&ack).await;
            }
            frames.push(Received {
                kind,
                stream,
                at: Instant::now(),
            });
        }
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_a_goaway_after_the_header_timeout() {
    let app = spawn().await;
    let client = H2Client::connect(&app, Peer::Answering).await;
    let opened = Instant::now();
    let frames = client
        .frames_until_closed(Duration::from_secs(4))
        .await
        .expect("an idle HTTP/2 connection stays open");
    let goaway = frames
        .iter()
        .find(|frame| frame.kind == GOAWAY)
        .unwrap_or_else(|| panic!("closed without a GOAWAY: {frames:?}"));
    // The server's clock started at accept, a little before `opened`.
    let idle = goaway.at - opened;
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
}

#[tokio::test]
async fn an_idle_http2_peer_that_answers_nothing_is_dropped_too() {
    let app = spawn().await;
    let client = H2Client::connect(&app, Peer::Silent).await;
    // It never acknowledges the ping that a graceful close waits for: the keep-alive
    // timeout ends the connection instead.
    assert!(
        client
            .frames_until_closed(Duration::from_secs(5))
            .await
            .is_some(),
        "the connection stays open"
    );
}

#[tokio::test]
async fn a_client_that_stops_partway_through_the_http2_preface_is_cut_off() {
    let app = spawn().await;
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    // Not yet enough to tell HTTP/2 from HTTP/1, so no protocol's own timeout applies.
    stream.write_all(&H2_PREFACE[..10]).await.unwrap();
    assert!(
        read_until_closed(&mut stream, Duration::from_secs(4))
            .await
            .is_some(),
        "the connection stays open"
    );
}

#[tokio::test]
async fn an_http2_connection_is_not_closed_while_a_request_is_in_flight() {
    let app = spawn().await;
    let client = H2Client::connect(&app, Peer::Answering).await;
    let body = point_with_value("1");
    let length = body.len().to_string();
    let headers = h2_header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/api/metrics"),
        (":authority", "localhost"),
        ("content-type", "application/json"),
        ("content-length", &length),
    ]);
    assert!(
        client
            .send(&h2_frame(HEADERS, END_HEADERS, 1, &headers))
            .await
    );
    // The body trickles in over about three idle timeouts, each chunk well within the body
    // read timeout.
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(body.len().div_ceil(10)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let flags = if i == chunks.len() - 1 { END_STREAM } else { 0 };
        assert!(
            client.send(&h2_frame(DATA, flags, 1, chunk)).await,
            "closed mid-request"
        );
    }
    let frames = client
        .frames_until_closed(Duration::from_secs(4))
        .await
        .expect("the connection is closed once idle");
    let response = frames
        .iter()
        .position(|frame| frame.kind == HEADERS && frame.stream == 1)
        .unwrap_or_else(|| panic!("no response: {frames:?}"));
    let goaway = frames
        .iter()
        .position(|frame| frame.kind == GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY: {frames:?}"));
    assert!(
        response < goaway,
        "asked to close while the request was in flight: {frames:?}"
    );
    assert_eq!(app.count_rows(TYPE).await, 1);
}
