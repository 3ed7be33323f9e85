//! `tenants …`: the tenant operations, from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tenant_router::operations::{NewTenantRequest, TenantPatchRequest};
use tenant_router_server::config::Settings;

mod args;
mod changes;
mod import;
mod inspect;
mod isolate;

use args::{PoolArgs, RateLimitArgs};
pub(super) use import::import;

#[derive(Subcommand)]
pub(crate) enum TenantsCommand {
    /// Import a declarative tenants file; importing the same file twice changes nothing.
    Import {
        /// The file [default: the configured tenants file].
        #[arg(long)]
        file: Option<PathBuf>,
        /// Make existing tenants look like the file (state, hosts, pool, rate limit). Without it they
        /// are only compared, and differences reported. Isolation is never flipped: use
        /// `move`.
        #[arg(long)]
        force: bool,
    },
    /// List tenants (database passwords are masked).
    List,
    /// Add a tenant. Without --database, its database is created and migrated first.
    Add {
        /// The tenant's id: a-z, 0-9 and '-'.
        id: String,
        /// A host name it answers on (repeat for more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// An existing database URL instead of provisioning one.
        #[arg(long)]
        database: Option<String>,
        #[command(flatten)]
        pool: PoolArgs,
        #[command(flatten)]
        rate: RateLimitArgs,
        /// active or suspended [default: active].
        #[arg(long)]
        state: Option<String>,
        /// dedicated (its own database) or shared (the shared database) [default: dedicated].
        #[arg(long)]
        isolation: Option<String>,
        /// Take over data already there: what a removal of this id kept, or an existing
        /// tenant_<id> database.
        #[arg(long)]
        adopt: bool,
    },
    /// Change a tenant; what is not given is left alone.
    Update {
        /// The tenant's id.
        id: String,
        /// Replace the hosts with these (repeat for more).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Move it to this database (no data is copied).
        #[arg(long)]
        database: Option<String>,
        #[command(flatten)]
        pool: PoolArgs,
        #[command(flatten)]
        rate: RateLimitArgs,
        /// active or suspended.
        #[arg(long)]
        state: Option<String>,
        /// Refuse unless the tenant is at this version.
        #[arg(long)]
        if_match: Option<i64>,
    },
    /// Move a tenant to its own database or to the shared one: rows copied and counted,
    /// configuration switched in one version bump, then the source rows deleted.
    Move {
        /// The tenant's id.
        id: String,
        /// dedicated or shared.
        #[arg(long)]
        to: String,
    },
    /// Give a shared tenant a shard of its own (Citus `isolate_tenant_to_new_shard`).
    Isolate {
        /// The tenant's id.
        id: String,
    },
    /// Remove a tenant. Without --drop-database its data (database or shared rows, Redis
    /// keys, jobs, files) is kept, and the id cannot be created again until that data is
    /// adopted (`add --adopt`) or discarded (`purge`).
    Remove {
        /// The tenant's id.
        id: String,
        /// Delete everything of it: its database (if tenant-router created it) or shared
        /// rows, its Redis keys and jobs, its files.
        #[arg(long, alias = "purge")]
        drop_database: bool,
    },
    /// Delete what the removal of a tenant kept (see `remove`).
    Purge {
        /// The removed tenant's id.
        id: String,
    },
    /// List what removals kept.
    Leftovers,
    /// List operations that did not finish: running, or interrupted (their process died).
    Doctor,
    /// Complete an interrupted move or removal of a tenant, or roll back an interrupted
    /// create.
    Repair {
        /// The tenant's id.
        id: String,
    },
}

pub(crate) async fn run(settings: &Settings, command: TenantsCommand) -> anyhow::Result<ExitCode> {
    match command {
        TenantsCommand::Import { file, force } => {
            let path = file.unwrap_or_else(|| settings.tenants_file.clone());
            import(settings, &path, force).await
        }
        TenantsCommand::Add {
            id,
            hosts,
            database,
            pool,
            state,
            isolation,
            adopt,
            rate,
        } => {
            let request = NewTenantRequest {
                id: Some(id),
                hosts: Some(hosts),
                database,
                pool: pool.request(),
                state,
                isolation,
                adopt: Some(adopt),
                rate_limit: rate.request().flatten(),
            };
            changes::add(settings, request).await
        }
        TenantsCommand::Update {
            id,
            hosts,
            database,
            pool,
            state,
            if_match,
            rate,
        } => {
            let patch = TenantPatchRequest {
                hosts: (!hosts.is_empty()).then_some(hosts),
                database,
                pool: pool.request(),
                state,
                rate_limit: rate.request(),
            };
            changes::update(settings, id, patch, if_match).await
        }
        TenantsCommand::Move { id, to } => changes::move_tenant(settings, id, to).await,
        TenantsCommand::Isolate { id } => isolate::isolate(settings, id).await,
        TenantsCommand::Remove { id, drop_database } => {
            changes::remove(settings, id, drop_database).await
        }
        TenantsCommand::Purge { id } => changes::purge(settings, id).await,
        TenantsCommand::Leftovers => inspect::leftovers(settings).await,
        TenantsCommand::Doctor => inspect::doctor(settings).await,
        TenantsCommand::Repair { id } => changes::repair(settings, id).await,
        TenantsCommand::List => inspect::list(settings).await,
    }
}
