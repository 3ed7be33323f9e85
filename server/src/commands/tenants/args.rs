//! Pool settings and rate limits as the tenant commands take them: flags that, when given,
//! become the request fields the API takes.

use tenant_router::operations::PoolRequest;
use tenant_router::tenant::RateLimit;

#[derive(clap::Args)]
pub(crate) struct PoolArgs {
    /// Most connections of the tenant's pool.
    #[arg(long)]
    max_connections: Option<u32>,
    /// Seconds an idle connection is kept.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// Milliseconds a statement may run (0: the router's default).
    #[arg(long)]
    statement_timeout_ms: Option<u32>,
    /// Milliseconds a transaction may sit idle (0: the router's default).
    #[arg(long)]
    idle_in_transaction_timeout_ms: Option<u32>,
}

#[derive(clap::Args)]
pub(crate) struct RateLimitArgs {
    /// Requests per second the tenant may make (on update, 0: the router's default).
    #[arg(long)]
    rate_limit_rps: Option<u32>,
    /// Requests at once above that rate [default: the rate].
    #[arg(long)]
    rate_limit_burst: Option<u32>,
}

impl RateLimitArgs {
    /// `None`: not given; `Some(None)`: back to the default; `Some(Some(_))`: this limit.
    pub(super) fn request(&self) -> Option<Option<RateLimit>> {
        self.rate_limit_rps.map(|rps| {
            (rps > 0).then(|| RateLimit {
                requests_per_second: rps,
                burst: self.rate_limit_burst.unwrap_or(rps),
            })
        })
    }
}

impl PoolArgs {
    pub(super) fn request(&self) -> Option<PoolRequest> {
        // 0 on the command line clears an override, as `null` does in the API.
        let clearable = |v: Option<u32>| v.map(|ms| (ms > 0).then_some(ms));
        let any = self.max_connections.is_some()
            || self.idle_timeout_secs.is_some()
            || self.statement_timeout_ms.is_some()
            || self.idle_in_transaction_timeout_ms.is_some();
        any.then_some(PoolRequest {
            max_connections: self.max_connections,
            idle_timeout_secs: self.idle_timeout_secs,
            statement_timeout_ms: clearable(self.statement_timeout_ms),
            idle_in_transaction_timeout_ms: clearable(self.idle_in_transaction_timeout_ms),
        })
    }
}
