//! The `tenant-router` binary's crate: the reference app (register, login, notes, jobs),
//! the admin API, the settings every binary reads, the commands, and the demo. The routing
//! itself is the [`tenant_router`] library.

/// mimalloc for every binary of ours (the server, the worker, the benchmarks): the hot
/// path allocates per request (rows, JSON), and glibc's malloc and free were 6% of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
pub mod admin_token;
pub mod app;
pub mod argon;
pub mod config;
pub mod listener;
pub mod openapi;
pub mod process;
pub mod reference_jobs;
pub mod schema;
pub mod server;
pub mod telemetry;
pub mod tenants_file;
pub mod worker_service;
