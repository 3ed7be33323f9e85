//! A test kit for apps built on tenant-router (feature `testing`): throwaway PostgreSQL,
//! Citus and Redis servers started from the binaries on `PATH`.

mod local;

pub use local::{LocalCitus, LocalPostgres, LocalRedis, citus_library, free_port};
