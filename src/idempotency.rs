//! Idempotent retries: a write sent again with the same `Idempotency-Key` by the same client
//! within a day gets the first response and writes nothing. The key is stored with the points,
//! in their transaction (see `storage::idempotency`), so a crash can never separate the two.
//! Keys are scoped to the client that sent them: another client's key, however alike, is
//! another key.

use std::{fmt, str::FromStr, time::Duration};

use sha2::{Digest, Sha256};

/// How long a key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a request waits for a concurrent one with the same key before it gets a 409.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);
/// How often expired keys are deleted.
pub const CLEANUP_PERIOD: Duration = Duration::from_secs(60);
pub const MAX_KEY_CHARS: usize = 255;

/// A client's key: 1 to 255 visible ASCII characters (what a UUID or a ULID is made of).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = String;

    fn from_str(key: &str) -> Result<Self, String> {
        if key.is_empty() || key.len() > MAX_KEY_CHARS {
            Err(format!("must be 1 to {MAX_KEY_CHARS} characters"))
        } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
            Err("must hold only visible ASCII characters".into())
        } else {
            Ok(Self(key.to_owned()))
        }
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a request's path and (decompressed) body, fed as the body streams in: a repeat
/// must match it.
pub struct Fingerprinter(Sha256);

impl Fingerprinter {
    pub fn new(path: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(path.as_bytes());
        hasher.update([0]);
        Self(hasher)
    }

    pub fn update(&mut self, body: &[u8]) {
        self.0.update(body);
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

/// A keyed write: who sent it, its key, and a fingerprint of what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRequest {
    /// The client the key belongs to (today its address; see `client`).
    pub scope: String,
    pub key: IdempotencyKey,
    pub fingerprint: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(
            "3f2b8c1e-7d4a-4c9b-9a61-0f5e2d7c8b90"
                .parse::<IdempotencyKey>()
                .is_ok()
        );
        assert!("".parse::<IdempotencyKey>().is_err());
        assert!("k".repeat(MAX_KEY_CHARS).parse::<IdempotencyKey>().is_ok());
        assert!(
            "k".repeat(MAX_KEY_CHARS + 1)
                .parse::<IdempotencyKey>()
                .is_err()
        );
        assert!("has space".parse::<IdempotencyKey>().is_err());
        assert!("tab\there".parse::<IdempotencyKey>().is_err());
        assert!("é".parse::<IdempotencyKey>().is_err());
    }

    #[test]
    fn the_fingerprint_covers_the_path_and_the_body_however_it_is_streamed() {
        let fingerprint = |path, chunks: &[&[u8]]| {
            let mut hasher = Fingerprinter::new(path);
            chunks.iter().for_each(|chunk| hasher.update(chunk));
            hasher.finish()
        };
        let original = fingerprint("/api/metrics", &[b"{\"value\": 1}"]);
        assert_eq!(
            original,
            fingerprint("/api/metrics", &[b"{\"val", b"ue\": 1}"])
        );
        assert_ne!(original, fingerprint("/api/metrics", &[b"{\"value\": 2}"]));
        assert_ne!(
            original,
            fingerprint("/api/metrics/batch", &[b"{\"value\": 1}"])
        );
    }
}
