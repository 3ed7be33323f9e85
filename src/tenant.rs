//! The tenant model: newtypes parsed at the edge, so nothing past it holds a raw string.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

/// Why a value given for a tenant field was refused. The message is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

/// A tenant's identifier: a lower-case slug of 1 to 63 characters of `a-z`, `0-9` and `-`,
/// neither starting nor ending with `-` (the shape of one DNS label).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, example = "acme")
)]
pub struct TenantId(Box<str>);

impl TenantId {
    /// Parses an id. Upper case is refused rather than folded: two spellings of one id would
    /// otherwise collide silently.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if is_dns_label(s) {
            Ok(Self(s.into()))
        } else {
            Err(invalid(
                "must be 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            ))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True for `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Lets maps keyed by `TenantId` be probed with a `&str` without allocating. Sound because
/// `TenantId` hashes and compares exactly as its string does (derived over `Box<str>`).
impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> String {
        id.0.into()
    }
}

impl FromStr for TenantId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A host name a tenant answers on, in canonical form: lower case, no port, no trailing dot.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantHost(Box<str>);

impl TenantHost {
    /// Parses a configured host name. Case and one trailing dot are normalised away; a port,
    /// a path or anything that is not a DNS name is refused.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.contains(':') {
            return Err(invalid("must be a host name without a port"));
        }
        // One grammar for configured and requested hosts: the request parser's.
        crate::host::normalize(s.as_bytes())
            .map(|h| Self(h.into()))
            .map_err(|_| {
                invalid(
                    "must be a DNS name: dot-separated labels of a-z, 0-9 and '-', at most 253 characters",
                )
            })
    }

    /// The host as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantHost {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TenantHost> for String {
    fn from(h: TenantHost) -> String {
        h.0.into()
    }
}

impl fmt::Display for TenantHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A PostgreSQL connection URL. It is a secret: `Debug` and `Display` show it with the
/// password replaced, and only [`DatabaseUrl::expose`] gives the whole string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DatabaseUrl(Box<str>);

impl DatabaseUrl {
    /// Parses a `postgres://` or `postgresql://` URL.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err(invalid("must be a postgres:// or postgresql:// URL"));
        }
        PgConnectOptions::from_str(s)
            .map_err(|_| invalid("is not a valid PostgreSQL connection URL"))?;
        Ok(Self(s.into()))
    }

    /// The full URL, password included. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Connection options for sqlx.
    ///
    /// TLS as the URL's `sslmode` (or `PGSSLMODE`) says, with `sslrootcert` for `verify-ca`
    /// and `verify-full`. When neither says, the connection is plain: sqlx's default,
    /// `prefer`, unlike libpq's, does not fall back to plain when the handshake fails, and a
    /// server with a certificate rustls cannot read (Citus nodes make X.509 v1 ones) would
    /// refuse every connection.
    pub fn connect_options(&self) -> PgConnectOptions {
        // Parsed once already in `parse`, so this cannot fail.
        let options = PgConnectOptions::from_str(&self.0).expect("validated in DatabaseUrl::parse");
        if self.names_ssl_mode() || std::env::var_os("PGSSLMODE").is_some() {
            options
        } else {
            options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
        }
    }

    /// Whether the query names a TLS mode, read as sqlx reads it (percent-escapes decoded),
    /// so `?%73slmode=verify-full` is never taken for silence.
    /// Whether the query names a TLS mode, read as sqlx reads it (percent-escapes decoded),
    /// so `?%73slmode=verify-full` is never taken for silence.
    fn names_ssl_mode(&self) -> bool {
        url::Url::parse(&self.0).is_ok_and(|u| {
            u.query_pairs()
                .any(|(key, _)| key == "sslmode" || key == "ssl-mode")
        })
    }

    /// The database name in the URL's path, if any.
    pub fn database_name(&self) -> Option<String> {
        // As the driver reads it: percent-escapes decoded, `?dbname=` obeyed.
        self.connect_options()
            .get_database()
            .filter(|name| !name.is_empty())
            .map(str::to_string)
    }

    /// The same server with another database name (query parameters kept).
    pub fn with_database(&self, name: &str) -> Self {
        let (scheme, rest) = self.0.split_once("://").expect("validated scheme");
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
        Self(format!("{scheme}://{authority}/{name}{query}").into())
    }

    /// The URL with its password masked, for logs and API output. Query parameters are
    /// dropped too, since `?password=` is another place a password can hide.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("postgres", &self.0));
        let (rest, query) = match rest.split_once('?') {
            Some((before, _)) => (before, "?…"),
            None => (rest, ""),
        };
        let end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("{userinfo}@{host}"),
            },
            None => authority.to_string(),
        };
        format!("{scheme}://{authority}{path}{query}")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How many requests a tenant may make: a token bucket refilled at `requests_per_second`,
/// holding at most `burst`. Beyond it, the tenant's requests get a 429 with `Retry-After`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

impl RateLimit {
    /// Checks the bounds: 1 to 1,000,000 each.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if !(1..=1_000_000).contains(&self.requests_per_second) {
            return Err(invalid(
                "rate_limit.requests_per_second must be between 1 and 1000000",
            ));
        }
        if !(1..=1_000_000).contains(&self.burst) {
            return Err(invalid("rate_limit.burst must be between 1 and 1000000"));
        }
        Ok(())
    }
}

/// Connection pool settings of one tenant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Most connections this tenant's pool may hold open.
    #[serde(default = "PoolSettings::default_max_connections")]
    pub max_connections: u32,
    /// Seconds an idle connection is kept before it is closed.
    #[serde(default = "PoolSettings::default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Milliseconds a statement may run (`statement_timeout`); none: the router's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout_ms: Option<u32>,
    /// Milliseconds a transaction may sit idle before PostgreSQL ends its session
    /// (`idle_in_transaction_session_timeout`); none: the router's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_in_transaction_timeout_ms: Option<u32>,
}

impl PoolSettings {
    fn default_max_connections() -> u32 {
        5
    }
    fn default_idle_timeout_secs() -> u64 {
        300
    }

    /// Checks the bounds: 1 to 1,000 connections, an idle timeout of 1 s to 1 day.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if !(1..=1000).contains(&self.max_connections) {
            return Err(invalid("max_connections must be between 1 and 1000"));
        }
        if !(1..=86_400).contains(&self.idle_timeout_secs) {
            return Err(invalid("idle_timeout_secs must be between 1 and 86400"));
        }
        if self
            .statement_timeout_ms
            .is_some_and(|ms| !(1..=3_600_000).contains(&ms))
        {
            return Err(invalid(
                "statement_timeout_ms must be between 1 and 3600000",
            ));
        }
        if self
            .idle_in_transaction_timeout_ms
            .is_some_and(|ms| !(1..=3_600_000).contains(&ms))
        {
            return Err(invalid(
                "idle_in_transaction_timeout_ms must be between 1 and 3600000",
            ));
        }
        Ok(())
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: Self::default_max_connections(),
            idle_timeout_secs: Self::default_idle_timeout_secs(),
            statement_timeout_ms: None,
            idle_in_transaction_timeout_ms: None,
        }
    }
}

/// Whether a tenant is served.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// Requests are served.
    #[default]
    Active,
    /// Requests are refused with 503 and `Retry-After`; the data is kept.
    Suspended,
}

impl TenantState {
    /// The state as stored in the control database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

impl FromStr for TenantState {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            _ => Err(invalid("must be 'active' or 'suspended'")),
        }
    }
}

/// Where a tenant's rows live.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own database.
    #[default]
    Dedicated,
    /// The shared database, every row tagged with its id.
    Shared,
}

impl Isolation {
    /// `dedicated` or `shared`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dedicated => "dedicated",
            Self::Shared => "shared",
        }
    }
}

impl FromStr for Isolation {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dedicated" => Ok(Self::Dedicated),
            "shared" => Ok(Self::Shared),
            _ => Err(invalid("must be 'dedicated' or 'shared'")),
        }
    }
}

/// One tenant, as the control database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// The hosts that resolve to this tenant; never empty.
    pub hosts: Vec<TenantHost>,
    /// The tenant's own database.
    pub database: DatabaseUrl,
    /// Pool settings for that database.
    pub pool: PoolSettings,
    /// Whether it is served.
    pub state: TenantState,
    /// Its own database, or the shared one.
    pub isolation: Isolation,
    /// Version from the control database's global sequence; grows with every change.
    pub version: i64,
    /// Which tenant of this id it is: an id removed and created again is a new
    /// incarnation, and nothing of the old one (jobs, sessions, data) acts on it.
    pub incarnation: i64,
    /// Its own request rate limit; `None`: the router's default.
    pub rate_limit: Option<RateLimit>,
}

impl Tenant {
    /// The value its rows carry in `tenant_id`: its id in the shared database; `''` in a
    /// dedicated database, where every row is the tenant's own.
    pub fn scope(&self) -> &str {
        match self.isolation {
            Isolation::Dedicated => "",
            Isolation::Shared => self.id.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["a", "tenant-1", "0", "a-b-c", &"x".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a b",
            "é",
            "a;drop",
            "'a'",
            &"x".repeat(64),
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            TenantHost::parse("Tenant-1.Test.COM.").unwrap().as_str(),
            "tenant-1.test.com"
        );
        assert!(TenantHost::parse("tenant-1.test.com:80").is_err());
        assert!(TenantHost::parse("a..b").is_err());
        assert!(TenantHost::parse("").is_err());
        assert!(TenantHost::parse("a/b").is_err());
    }

    #[test]
    fn database_url_is_redacted() {
        let url = DatabaseUrl::parse("postgres://app:s3cret@db.internal:5432/t1").unwrap();
        let shown = format!("{url:?} {url}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("app:***@db.internal:5432/t1"), "{shown}");
        let q = DatabaseUrl::parse("postgres://db/t1?password=hunter2").unwrap();
        assert!(!q.redacted().contains("hunter2"));
        assert_eq!(url.database_name().as_deref(), Some("t1"));
        for spelling in [
            "postgres://u@h/t%5F1",
            "postgres://u@h/x?dbname=t_1",
            "postgres://u@h/?dbname=t_1",
        ] {
            let url = DatabaseUrl::parse(spelling).unwrap();
            assert_eq!(url.database_name().as_deref(), Some("t_1"), "{spelling}");
        }
    }

    #[test]
    fn database_url_with_database() {
        let url = DatabaseUrl::parse("postgres://u:p@h:1/control?sslmode=disable").unwrap();
        assert_eq!(
            url.with_database("t2").expose(),
            "postgres://u:p@h:1/t2?sslmode=disable"
        );
        let bare = DatabaseUrl::parse("postgres://h:1").unwrap();
        assert_eq!(bare.with_database("x").expose(), "postgres://h:1/x");
        assert!(DatabaseUrl::parse("mysql://h/x").is_err());
    }

    #[test]
    fn tls_is_what_the_url_asks_for_and_plain_when_it_is_silent() {
        use sqlx::postgres::PgSslMode;
        let mode = |s: &str| {
            DatabaseUrl::parse(s)
                .unwrap()
                .connect_options()
                .get_ssl_mode()
        };
        if std::env::var_os("PGSSLMODE").is_none() {
            assert!(matches!(mode("postgres://h/db"), PgSslMode::Disable));
            assert!(matches!(
                mode("postgres://h/db?application_name=x"),
                PgSslMode::Disable
            ));
        }
        assert!(matches!(
            mode("postgres://h/db?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://h/db?x=1&sslmode=verify-full&sslrootcert=/ca.pem"),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode("postgres://h/db?ssl-mode=prefer"),
            PgSslMode::Prefer
        ));
        // Percent-escaped keys are what sqlx decodes: never silence.
        assert!(matches!(
            mode("postgres://h/db?%73slmode=verify-full"),
            PgSslMode::VerifyFull
        ));
    }
}
