//! API keys: `ra_<id>_<secret>`. The id (16 hex digits) names the key and is not secret; the
//! secret (32 bytes from the operating system's CSPRNG, 64 hex digits) is shown once, at
//! creation, and stored only as its SHA-256.

use std::{fmt, str::FromStr};

use rand::{TryRngCore, rngs::OsRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "ra_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A key's id: 16 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if is_lower_hex(text, ID_BYTES * 2) {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("must be {} lower-case hex digits", ID_BYTES * 2))
        }
    }
}

deserialize_from_str!(KeyId);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a key's secret, which is all that is stored of it.
///
/// A fast hash is enough here, unlike for passwords: the secret is 256 random bits, so
/// nobody can try a useful fraction of the secrets against a leaked hash however fast the
/// hash is, and a slow KDF (bcrypt, Argon2) would only cost CPU on every request.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// `None` unless it is 32 bytes (as the table's constraint also says).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `key`'s secret hashes to this, in time that does not depend on where the two
    /// hashes differ.
    pub fn matches(&self, key: &ApiKey) -> bool {
        bool::from(self.0.ct_eq(&SecretHash::of(&key.secret).0))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A whole key as a client sends it. Its `Debug` never shows the secret, and it has no
/// `Display`: the one place its text is written out is [`ApiKey::reveal`].
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    id: KeyId,
    secret: String,
}

impl ApiKey {
    /// A new key, its id and secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        OsRng
            .try_fill_bytes(&mut id)
            .and_then(|()| OsRng.try_fill_bytes(&mut secret))
            .expect("the operating system's random number generator failed");
        Self {
            id: KeyId(hex(&id)),
            secret: hex(&secret),
        }
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn secret_hash(&self) -> SecretHash {
        SecretHash::of(&self.secret)
    }

    /// The key's full text, to show its owner once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({PREFIX}{}_...)", self.id)
    }
}

/// Parsing never echoes the text: it may be a secret with a typo.
impl FromStr for ApiKey {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const SHAPE: &str = "an API key has the shape ra_<16 hex digits>_<64 hex digits>";
        let rest = text.strip_prefix(PREFIX).ok_or(SHAPE)?;
        let (id, secret) = rest.split_once('_').ok_or(SHAPE)?;
        if !is_lower_hex(secret, SECRET_BYTES * 2) {
            return Err(SHAPE);
        }
        Ok(Self {
            id: id.parse().map_err(|_| SHAPE)?,
            secret: secret.to_owned(),
        })
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_reads_back_as_itself_and_matches_its_hash() {
        let key = ApiKey::generate();
        let text = key.reveal();
        assert_eq!(text.len(), 3 + 16 + 1 + 64);
        let parsed: ApiKey = text.parse().unwrap();
        assert_eq!(parsed, key);
        assert!(key.secret_hash().matches(&parsed));
    }

    #[test]
    fn keys_are_distinct_and_a_wrong_secret_does_not_match() {
        let (a, b) = (ApiKey::generate(), ApiKey::generate());
        assert_ne!(a.id(), b.id());
        assert!(!a.secret_hash().matches(&b));
        let forged: ApiKey = format!("ra_{}_{}", a.id(), "0".repeat(64)).parse().unwrap();
        assert!(!a.secret_hash().matches(&forged));
    }

    #[test]
    fn only_the_exact_shape_is_a_key_and_errors_never_echo_it() {
        let good = ApiKey::generate().reveal();
        for bad in [
            String::new(),
            good.replacen("ra_", "rb_", 1),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_owned(),
            good.replacen('_', "-", 2),
            format!(" {good}"),
        ] {
            let error = bad.parse::<ApiKey>().unwrap_err();
            assert!(!error.contains(&good[20..]), "{error}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let key = ApiKey::generate();
        let shown = format!("{key:?} {:?}", key.secret_hash());
        assert!(!shown.contains(&key.secret), "{shown}");
        assert!(shown.contains(key.id().as_str()));
    }
}
