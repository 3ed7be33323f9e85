//! What the budget and the pools report.

use serde::Serialize;

/// Counters and gauges of a budget.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BudgetStats {
    /// The budget.
    pub max_total_connections: usize,
    /// Open connections (holding a permit), in all pools.
    pub open: usize,
    /// Of which idle.
    pub idle: usize,
    /// Of which in use.
    pub in_use: usize,
    /// Pools that exist (tenants that had traffic and were not reaped).
    pub pools: usize,
    /// Connections opened since start.
    pub opened_total: u64,
    /// Connections closed since start.
    pub closed_total: u64,
    /// Idle connections of other pools closed to make room.
    pub evictions_total: u64,
    /// Acquires that had to wait.
    pub waits_total: u64,
    /// Acquires that gave up (answered 503).
    pub refusals_total: u64,
}

/// One pool's figures.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolStats {
    /// The tenant (or `shared`).
    pub pool: String,
    /// Open connections.
    pub open: usize,
    /// Idle ones.
    pub idle: usize,
    /// In use.
    pub in_use: usize,
    /// Its own cap.
    pub max_connections: usize,
}
