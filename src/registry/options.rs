//! How a registry builds its tenants' pools: timeouts, budget, limits, the shared database.

use std::time::Duration;

use crate::tenant::{DatabaseUrl, RateLimit};

/// How tenant pools are built, for every tenant of one registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// With `Some("test.com")`, `acme.test.com` resolves to tenant `acme` when no tenant
    /// claims that host exactly.
    pub base_domain: Option<String>,
    /// How long a request waits for a connection of its tenant's pool before it is refused.
    pub acquire_timeout: Duration,
    /// The shared database: every shared tenant uses one pool on it. Without it, a shared
    /// tenant gets a pool of its own on its configured database.
    pub shared_database: Option<DatabaseUrl>,
    /// Most connections open at once, across every tenant pool.
    pub max_total_connections: usize,
    /// What every tenant connection is opened with.
    pub connection_limits: ConnectionLimits,
    /// The request rate limit of tenants without one of their own; `None`: unlimited.
    pub default_rate_limit: Option<RateLimit>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            base_domain: None,
            acquire_timeout: Duration::from_secs(5),
            shared_database: None,
            max_total_connections: 64,
            connection_limits: ConnectionLimits::default(),
            default_rate_limit: None,
        }
    }
}

/// What every tenant connection is opened with, so a runaway query or a forgotten
/// transaction cannot hold a tenant's connections forever. A tenant's pool settings may
/// override the two timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `statement_timeout`, in milliseconds.
    pub statement_timeout_ms: u32,
    /// `idle_in_transaction_session_timeout`, in milliseconds.
    pub idle_in_transaction_timeout_ms: u32,
    /// A connection older than this is closed when it comes back, not reused.
    pub max_lifetime: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            statement_timeout_ms: 25_000,
            idle_in_transaction_timeout_ms: 60_000,
            max_lifetime: Duration::from_secs(1800),
        }
    }
}
