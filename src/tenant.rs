//! Tenants: whose data a point is. Every point, rollup, cached summary and idempotency key
//! belongs to exactly one tenant, and no request ever sees another tenant's.

use std::{fmt, str::FromStr, sync::Arc};

use serde::Serialize;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{ObjectBuilder, RefOr, Schema, Type},
};

pub const MAX_TENANT_CHARS: usize = 64;
/// A tenant's name: lower-case letters, digits, `_` and `-`, starting with a letter or a
/// digit. No `:`, so that it can lead a Redis key unambiguously. Checked by the schema too.
pub const TENANT_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,63}$";

/// A tenant's name (cheap to clone: one is carried by every point in flight).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// The tenant of every request when `AUTH_MODE=off`, and of the rows stored before
    /// tenants existed.
    pub const DEFAULT: &str = "default";

    pub fn default_tenant() -> Self {
        Self(Arc::from(Self::DEFAULT))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tenant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut chars = text.chars();
        let valid_start = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let valid_rest =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if valid_start && valid_rest && text.len() <= MAX_TENANT_CHARS {
            Ok(Self(Arc::from(text)))
        } else {
            Err(format!(
                "must be 1 to {MAX_TENANT_CHARS} lower-case letters, digits, '_' or '-', \
                 starting with a letter or a digit"
            ))
        }
    }
}

deserialize_from_str!(Tenant);

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialSchema for Tenant {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A tenant: 1–64 lower-case letters, digits, '_' or '-'. Its data is seen by \
                 its own keys only.",
            ))
            .min_length(Some(1))
            .max_length(Some(MAX_TENANT_CHARS))
            .pattern(Some(TENANT_PATTERN))
            .into()
    }
}

impl ToSchema for Tenant {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_short_lower_case_words() {
        for good in ["default", "acme", "team-42", "a", "0_x", &"a".repeat(64)] {
            assert_eq!(good.parse::<Tenant>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "_x",
            "a:b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<Tenant>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!(Tenant::default_tenant().as_str(), "default");
    }

    #[test]
    fn the_schema_pattern_matches_exactly_the_names_accepted() {
        let pattern = regex::Regex::new(TENANT_PATTERN).unwrap();
        let long = "a".repeat(64);
        let too_long = "a".repeat(65);
        for name in [
            "default", "a", "9", "a-b_c", "-a", "_a", "A", "a.b", "a:b", "", &long, &too_long,
        ] {
            assert_eq!(
                pattern.is_match(name),
                name.parse::<Tenant>().is_ok(),
                "{name:?}"
            );
        }
    }
}
