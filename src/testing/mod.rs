//! A test kit for apps built on tenant-router (feature `testing`): throwaway PostgreSQL,
//! Citus and Redis servers started from the binaries on `PATH`.

mod citus;
mod postgres;
mod redis_server;
mod supervisor;

pub use citus::{LocalCitus, citus_library};
pub use postgres::LocalPostgres;
pub use redis_server::LocalRedis;
pub use supervisor::free_port;
