//! The histograms the router records through the [`metrics`] facade. Nothing is recorded
//! anywhere until the application installs a recorder (the server installs the Prometheus
//! exporter and renders it on `/metrics`); without one, each record is a no-op.
//!
//! No histogram has a tenant label: their series stay bounded whatever the number of
//! tenants.

use std::time::Duration;

/// Time from asking a tenant pool for a connection to having one (or giving up).
/// Label `outcome`: `ok` or `error`.
pub const POOL_ACQUIRE_WAIT: &str = "tenant_router_pool_acquire_wait_seconds";
/// Time a job's handler ran. Labels `kind` and `outcome` (`succeeded`, `retry`, `dead`).
pub const JOB_RUN: &str = "tenant_router_job_run_seconds";
/// Time from a job's submission (or its `run_at`) to its first start.
pub const JOB_QUEUE_WAIT: &str = "tenant_router_job_queue_wait_seconds";
/// Time from a configuration hint's publication, just after its change committed, to this
/// instance having applied the change. Across machines it includes their clock difference.
pub const PROPAGATION_LAG: &str = "tenant_router_propagation_lag_seconds";

/// Describes the histograms above to the installed recorder (their help text and unit).
pub fn describe() {
    use metrics::{Unit, describe_histogram};
    describe_histogram!(
        POOL_ACQUIRE_WAIT,
        Unit::Seconds,
        "Time to get a tenant connection from its pool."
    );
    describe_histogram!(JOB_RUN, Unit::Seconds, "Time a job's handler ran.");
    describe_histogram!(
        JOB_QUEUE_WAIT,
        Unit::Seconds,
        "Time from a job's submission (or run_at) to its first start."
    );
    describe_histogram!(
        PROPAGATION_LAG,
        Unit::Seconds,
        "Time from a configuration hint's publication to this instance applying it."
    );
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A millisecond span between two Unix times as a duration (never negative).
pub(crate) fn ms_between(from: i64, to: i64) -> Duration {
    Duration::from_millis(to.saturating_sub(from).max(0) as u64)
}
