//! Idempotent retries: a write sent again with the same `Idempotency-Key` within a day gets
//! the first response and writes nothing. The key is stored with the points, in their
//! transaction (see `storage::idempotency`), so a crash can never separate the two.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// How long a key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a request waits for a concurrent one with the same key before it gets a 409.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);
/// How often expired keys are deleted.
pub const CLEANUP_PERIOD: Duration = Duration::from_secs(60);
pub const MAX_KEY_CHARS: usize = 255;

/// A keyed write: the client's key and a fingerprint of what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentRequest {
    pub key: String,
    /// SHA-256 of the path and the (decompressed) body: a repeat must match it.
    pub fingerprint: Vec<u8>,
}

impl IdempotentRequest {
    pub fn new(key: String, path: &str, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(body);
        Self {
            key,
            fingerprint: hasher.finalize().to_vec(),
        }
    }
}

/// The rules for a key: 1 to 255 visible ASCII characters (what a UUID or a ULID is made of).
pub fn validate_key(key: &str) -> Result<&str, String> {
    if key.is_empty() || key.len() > MAX_KEY_CHARS {
        Err(format!("must be 1 to {MAX_KEY_CHARS} characters"))
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Err("must hold only visible ASCII characters".into())
    } else {
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(validate_key("3f2b8c1e-7d4a-4c9b-9a61-0f5e2d7c8b90").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_CHARS)).is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_CHARS + 1)).is_err());
        assert!(validate_key("has space").is_err());
        assert!(validate_key("tab\there").is_err());
        assert!(validate_key("é").is_err());
    }

    #[test]
    fn the_fingerprint_covers_the_path_and_the_body() {
        let request = |path, body: &[u8]| IdempotentRequest::new("k".into(), path, body);
        let original = request("/api/metrics", b"{\"value\": 1}");
        assert_eq!(original, request("/api/metrics", b"{\"value\": 1}"));
        assert_ne!(original, request("/api/metrics", b"{\"value\": 2}"));
        assert_ne!(original, request("/api/metrics/batch", b"{\"value\": 1}"));
    }
}
