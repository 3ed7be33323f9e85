#![allow(unreachable_pub)]
//! Integration tests: one test binary (it compiles much faster than many), real PostgreSQL
//! and Redis started from the binaries on PATH by `harness`.

mod admin;
mod app_schema;
mod attack_perf;
mod attack_reads;
mod budget;
mod citus;
mod cluster;
mod console;
mod demo;
mod edge;
mod embed;
mod harness;
mod jobs;
mod kit;
mod lifecycle;
mod local;
mod migrate;
mod notes;
mod observability;
mod openapi;
mod propagation;
mod reads;
mod routing;
mod serve;
mod shared;
mod tenant_handle;
mod tenant_safety;
mod tls;
