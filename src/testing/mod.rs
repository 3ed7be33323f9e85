//! A test kit for apps built on tenant-router (feature `testing`): throwaway PostgreSQL,
//! Citus and Redis servers started from the binaries on `PATH`; [`TestKit`], a test's own
//! control database with tenants of both kinds and a started router; and [`drain()`],
//! which runs queued jobs to completion deterministically.

mod citus;
mod drain;
mod kit;
mod postgres;
mod redis_server;
mod supervisor;

pub use crate::jobs::DrainReport;
pub use citus::{LocalCitus, citus_library};
pub use drain::{DrainOptions, drain};
pub use kit::{TestKit, TestKitBuilder, process_postgres, process_redis};
pub use postgres::LocalPostgres;
pub use redis_server::LocalRedis;
pub use supervisor::free_port;

/// A server certificate for a throwaway server with TLS, made by the caller from its own CA.
#[derive(Clone)]
pub struct ServerTls {
    /// The server's certificate chain (PEM).
    pub certificate_pem: String,
    /// The server's private key (PEM).
    pub private_key_pem: String,
    /// The CA that signed it (PEM): what clients verify against.
    pub ca_pem: String,
}
