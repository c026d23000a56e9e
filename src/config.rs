//! Settings from environment variables. The names are the seed's, so its deployments carry over.

use std::{net::IpAddr, str::FromStr, time::Duration};

use ipnet::IpNet;

use crate::{
    auth::{ApiKey, AuthMode},
    client::Ipv6Prefix,
    rate_limiter::Quota,
};

/// The longest any duration setting may be, one day: it keeps every value derived from one far
/// from overflowing (the rate limiter counts its window in i64 microseconds), and the summary
/// TTL well below the 7 days after which a type's cache generation key expires.
const MAX_SECONDS: u64 = 86_400;
/// The largest `CIRCUIT_BREAKER_FAILURE_THRESHOLD`.
const MAX_FAILURE_THRESHOLD: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
#[error("invalid value for {name}: {value:?} ({reason})")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// An address or host name to listen on.
    pub host: String,
    pub port: u16,
    pub database_url: String,
    /// After this, PostgreSQL itself cancels a statement (and ends a session idle in a
    /// transaction), so a statement that timed out never commits later.
    pub database_statement_timeout: Duration,
    pub redis_url: String,
    /// `REDIS_CLUSTER_NODES`: some nodes of a Redis Cluster (`host:port`, comma-separated);
    /// when given, the cluster is used and `redis_url` is not.
    pub redis_cluster_nodes: Vec<String>,
    pub cache_ttl: Duration,
    pub rate_limit: Quota,
    pub auth: AuthSettings,
    pub circuit_breaker: CircuitBreakerSettings,
    pub external_service: ExternalServiceSettings,
    pub trusted_proxies: Vec<IpNet>,
    /// The leading bits of an IPv6 address that name its client (for rate limits).
    pub client_ipv6_prefix: Ipv6Prefix,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Bounds on how long a request, a slow client or a shutdown may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the request's arrival to its response.
    pub request: Duration,
    /// For a client to send its request headers (also bounds idle keep-alive connections).
    pub header_read: Duration,
    /// For a client to send its request body.
    pub body_read: Duration,
    /// For in-flight requests to finish after SIGTERM or SIGINT.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Failed authentications per client address, before its requests are refused.
    pub failure_limit: Quota,
    /// Whether `/metrics` is served without a key when `AUTH_MODE=required`.
    pub metrics_public: bool,
    /// An admin key of tenant `default` made sure of at start-up, for a fresh deployment.
    pub bootstrap_admin_key: Option<ApiKey>,
}

#[derive(Debug, Clone, Copy)]
pub struct CircuitBreakerSettings {
    pub failure_threshold: u32,
    pub reset_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct ExternalServiceSettings {
    pub failure_rate: f64,
    pub timeout: Duration,
}

impl Settings {
    /// Reads the process environment (after a `.env` file, when one is present).
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env file is the normal case in containers.
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds settings from any variable source, so parsing is testable without touching
    /// the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let redis_url = match env.get("REDIS_URL") {
            Some(url) => url,
            None => format!(
                "redis://{}:{}/{}",
                env.get("REDIS_HOST").unwrap_or_else(|| "localhost".into()),
                env.parse::<u16>("REDIS_PORT", 6379)?,
                env.parse::<u8>("REDIS_DB", 0)?,
            ),
        };
        let log_filter = env
            .get("RUST_LOG")
            .or_else(|| env.get("LOG_LEVEL").map(|level| level.to_lowercase()))
            .unwrap_or_else(|| "info".into());
        Ok(Self {
            host: env.get("APP_HOST").unwrap_or_else(|| "0.0.0.0".into()),
            port: env.parse("APP_PORT", 8000)?,
            database_url: env
                .get("DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres:postgres@localhost:5432/analytics".into()),
            database_statement_timeout: env.seconds("DATABASE_STATEMENT_TIMEOUT_SECONDS", 5.0)?,
            redis_url,
            redis_cluster_nodes: env.list("REDIS_CLUSTER_NODES"),
            cache_ttl: env.whole_seconds("CACHE_TTL_SECONDS", 300)?,
            rate_limit: Quota {
                requests: env.positive("RATE_LIMIT_REQUESTS", 10, Quota::MAX_REQUESTS)?,
                window: env.whole_seconds("RATE_LIMIT_WINDOW_SECONDS", 60)?,
            },
            auth: AuthSettings {
                mode: env.parse("AUTH_MODE", AuthMode::Off)?,
                failure_limit: env.parse("AUTH_FAILURE_LIMIT", Quota::new(10, 60).unwrap())?,
                metrics_public: env.parse("METRICS_PUBLIC", false)?,
                bootstrap_admin_key: env.secret("BOOTSTRAP_ADMIN_KEY")?,
            },
            circuit_breaker: CircuitBreakerSettings {
                failure_threshold: env.positive(
                    "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
                    5,
                    MAX_FAILURE_THRESHOLD,
                )?,
                reset_timeout: env.seconds("CIRCUIT_BREAKER_RESET_TIMEOUT", 30.0)?,
            },
            external_service: ExternalServiceSettings {
                failure_rate: env.probability("EXTERNAL_SERVICE_FAILURE_RATE", 0.1)?,
                timeout: env.seconds("EXTERNAL_SERVICE_TIMEOUT", 5.0)?,
            },
            trusted_proxies: env.trusted_proxies("TRUSTED_PROXIES")?,
            client_ipv6_prefix: env.ipv6_prefix("CLIENT_IPV6_PREFIX", 64)?,
            log_filter,
            log_format: match env.get("LOG_FORMAT").map(|f| f.to_lowercase()).as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(_) => {
                    return Err(Env::invalid(
                        "LOG_FORMAT",
                        &env.get("LOG_FORMAT").unwrap_or_default(),
                        "must be text or json",
                    ));
                }
            },
            timeouts: Timeouts {
                request: env.seconds("REQUEST_TIMEOUT_SECONDS", 30.0)?,
                header_read: env.seconds("HEADER_READ_TIMEOUT_SECONDS", 10.0)?,
                body_read: env.seconds("BODY_READ_TIMEOUT_SECONDS", 10.0)?,
                shutdown_grace: env.seconds("SHUTDOWN_GRACE_PERIOD_SECONDS", 30.0)?,
            },
        })
    }
}

/// Variable lookup with parsing that names the variable and value on failure.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// A set variable; an empty value counts as unset, as with docker-compose's `${VAR:-}`.
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.trim().is_empty())
    }

    fn invalid(name: &'static str, value: &str, reason: impl ToString) -> ConfigError {
        ConfigError {
            name,
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn parse<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e| Self::invalid(name, &raw, e)),
        }
    }

    /// A secret: when it is invalid, the error does not repeat it.
    fn secret<T>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|raw| {
                raw.trim()
                    .parse()
                    .map_err(|e| Self::invalid(name, "(not shown)", e))
            })
            .transpose()
    }

    /// A number greater than 0 and at most `max`.
    fn positive<T>(&self, name: &'static str, default: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Default + Copy + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        let value = self.parse(name, default)?;
        if value > T::default() && value <= max {
            Ok(value)
        } else {
            Err(Self::invalid(
                name,
                &self.get(name).unwrap_or_default(),
                format!("must be greater than 0 and at most {max}"),
            ))
        }
    }

    /// Whole seconds, at most `MAX_SECONDS`.
    fn whole_seconds(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.positive(name, default, MAX_SECONDS)
            .map(Duration::from_secs)
    }

    /// Seconds as a number, fractions allowed (the seed accepted floats), at most `MAX_SECONDS`.
    fn seconds(&self, name: &'static str, default: f64) -> Result<Duration, ConfigError> {
        let seconds: f64 = self.parse(name, default)?;
        if seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS as f64 {
            Ok(Duration::from_secs_f64(seconds))
        } else {
            Err(Self::invalid(
                name,
                &self.get(name).unwrap_or_default(),
                format!("must be a number of seconds greater than 0 and at most {MAX_SECONDS}"),
            ))
        }
    }

    fn probability(&self, name: &'static str, default: f64) -> Result<f64, ConfigError> {
        let value: f64 = self.parse(name, default)?;
        if (0.0..=1.0).contains(&value) {
            Ok(value)
        } else {
            Err(Self::invalid(
                name,
                &self.get(name).unwrap_or_default(),
                "must be between 0 and 1",
            ))
        }
    }

    fn ipv6_prefix(&self, name: &'static str, default: u8) -> Result<Ipv6Prefix, ConfigError> {
        Ipv6Prefix::new(self.parse(name, default)?).ok_or_else(|| {
            Self::invalid(
                name,
                &self.get(name).unwrap_or_default(),
                format!(
                    "must be a prefix length from {} to {}",
                    Ipv6Prefix::SHORTEST,
                    Ipv6Prefix::LONGEST
                ),
            )
        })
    }

    /// Comma-separated entries, blanks left out.
    fn list(&self, name: &'static str) -> Vec<String> {
        self.get(name).map_or_else(Vec::new, |raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// Comma-separated IP addresses or CIDR blocks.
    fn trusted_proxies(&self, name: &'static str) -> Result<Vec<IpNet>, ConfigError> {
        self.list(name)
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        Self::invalid(
                            name,
                            &self.get(name).unwrap_or_default(),
                            format!("{entry:?} is not an IP address or CIDR block"),
                        )
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn every_variable_has_the_seeds_default() {
        let s = settings(&[]).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("0.0.0.0", 8000));
        assert_eq!(
            s.database_url,
            "postgres://postgres:postgres@localhost:5432/analytics"
        );
        assert_eq!(s.database_statement_timeout, Duration::from_secs(5));
        assert_eq!(s.redis_url, "redis://localhost:6379/0");
        assert_eq!(s.cache_ttl, Duration::from_secs(300));
        assert_eq!(s.rate_limit.requests, 10);
        assert_eq!(s.rate_limit.window, Duration::from_secs(60));
        assert_eq!(s.circuit_breaker.failure_threshold, 5);
        assert_eq!(s.circuit_breaker.reset_timeout, Duration::from_secs(30));
        assert_eq!(s.external_service.failure_rate, 0.1);
        assert_eq!(s.external_service.timeout, Duration::from_secs(5));
        assert!(s.trusted_proxies.is_empty());
        assert_eq!(s.client_ipv6_prefix, Ipv6Prefix::new(64).unwrap());
        assert_eq!(s.log_filter, "info");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.timeouts.request, Duration::from_secs(30));
        assert_eq!(s.timeouts.header_read, Duration::from_secs(10));
        assert_eq!(s.timeouts.body_read, Duration::from_secs(10));
        assert_eq!(s.timeouts.shutdown_grace, Duration::from_secs(30));
        assert_eq!(
            settings(&[("LOG_FORMAT", "JSON")]).unwrap().log_format,
            LogFormat::Json
        );
    }

    #[test]
    fn redis_url_is_built_from_the_seeds_host_port_and_db_when_unset() {
        let s = settings(&[
            ("REDIS_HOST", "cache"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2"),
        ])
        .unwrap();
        assert_eq!(s.redis_url, "redis://cache:6380/2");
        let s = settings(&[("REDIS_URL", "redis://other:1/3"), ("REDIS_HOST", "cache")]).unwrap();
        assert_eq!(s.redis_url, "redis://other:1/3");
        assert!(s.redis_cluster_nodes.is_empty());
    }

    #[test]
    fn redis_cluster_nodes_are_a_comma_separated_list() {
        let s = settings(&[("REDIS_CLUSTER_NODES", " redis-1:6379, redis-2:6379,,")]).unwrap();
        assert_eq!(s.redis_cluster_nodes, ["redis-1:6379", "redis-2:6379"]);
    }

    #[test]
    fn log_level_is_accepted_when_rust_log_is_unset() {
        assert_eq!(
            settings(&[("LOG_LEVEL", "DEBUG")]).unwrap().log_filter,
            "debug"
        );
        let both = settings(&[("LOG_LEVEL", "DEBUG"), ("RUST_LOG", "warn")]).unwrap();
        assert_eq!(both.log_filter, "warn");
    }

    #[test]
    fn fractional_seconds_and_proxy_lists_parse() {
        let s = settings(&[
            ("CIRCUIT_BREAKER_RESET_TIMEOUT", "0.5"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1"),
        ])
        .unwrap();
        assert_eq!(s.circuit_breaker.reset_timeout, Duration::from_millis(500));
        assert_eq!(s.trusted_proxies.len(), 3);
        assert!(s.trusted_proxies[1].contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn the_ipv6_client_prefix_accepts_32_to_128() {
        for len in [32, 56, 128] {
            let s = settings(&[("CLIENT_IPV6_PREFIX", &len.to_string())]).unwrap();
            assert_eq!(s.client_ipv6_prefix, Ipv6Prefix::new(len).unwrap());
        }
    }

    #[test]
    fn an_invalid_value_names_the_variable_and_the_value() {
        for (name, value) in [
            ("APP_PORT", "eighty"),
            ("APP_PORT", "70000"),
            ("RATE_LIMIT_REQUESTS", "0"),
            ("RATE_LIMIT_WINDOW_SECONDS", "-5"),
            ("CACHE_TTL_SECONDS", "1.5"),
            ("EXTERNAL_SERVICE_FAILURE_RATE", "1.5"),
            ("EXTERNAL_SERVICE_TIMEOUT", "0"),
            ("CIRCUIT_BREAKER_RESET_TIMEOUT", "NaN"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,not-an-ip"),
            ("CLIENT_IPV6_PREFIX", "31"),
            ("CLIENT_IPV6_PREFIX", "129"),
            ("CLIENT_IPV6_PREFIX", "/64"),
            ("LOG_FORMAT", "xml"),
            ("SHUTDOWN_GRACE_PERIOD_SECONDS", "-1"),
            // Too large: u64::MAX seconds, and a window whose microseconds overflow an i64.
            ("CACHE_TTL_SECONDS", "18446744073709551615"),
            ("RATE_LIMIT_WINDOW_SECONDS", "9999999999999"),
            ("RATE_LIMIT_REQUESTS", "4294967295"),
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "4294967295"),
            ("REQUEST_TIMEOUT_SECONDS", "1e9"),
            ("DATABASE_STATEMENT_TIMEOUT_SECONDS", "0"),
        ] {
            let err = settings(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name);
            let message = err.to_string();
            assert!(
                message.contains(name) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn every_numeric_variable_accepts_its_upper_bound_and_nothing_above() {
        for (name, largest) in [
            ("APP_PORT", 65_535),
            ("REDIS_PORT", 65_535),
            ("REDIS_DB", 255),
            ("CACHE_TTL_SECONDS", 86_400),
            ("RATE_LIMIT_REQUESTS", 1_000_000_000),
            ("RATE_LIMIT_WINDOW_SECONDS", 86_400),
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", 10_000),
            ("CIRCUIT_BREAKER_RESET_TIMEOUT", 86_400),
            ("EXTERNAL_SERVICE_FAILURE_RATE", 1),
            ("EXTERNAL_SERVICE_TIMEOUT", 86_400),
            ("REQUEST_TIMEOUT_SECONDS", 86_400),
            ("HEADER_READ_TIMEOUT_SECONDS", 86_400),
            ("BODY_READ_TIMEOUT_SECONDS", 86_400),
            ("SHUTDOWN_GRACE_PERIOD_SECONDS", 86_400),
        ] {
            let largest: u64 = largest;
            assert!(
                settings(&[(name, &largest.to_string())]).is_ok(),
                "{name}={largest} refused"
            );
            let above = settings(&[(name, &(largest + 1).to_string())]);
            assert_eq!(
                above.map(|_| ()).map_err(|err| err.name),
                Err(name),
                "{name}={} accepted",
                largest + 1
            );
        }
    }
}
