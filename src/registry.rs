//! The tenant registry: an immutable snapshot behind an `ArcSwap`, so a lookup is a pointer
//! load and a hash probe, and a change is a new snapshot swapped in by one writer.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::pool::{Budget, TenantPool};
use arc_swap::ArcSwap;
use foldhash::fast::RandomState;

use crate::control::Change;
use crate::tenant::{DatabaseUrl, Isolation, PoolSettings, RateLimit, Tenant, TenantId};

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

/// The tenants an instance serves. Lives in application state; clone the `Arc`.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    /// Serialises writers, so two changes never race to build a snapshot from the same base.
    writer: Mutex<()>,
    /// `.test.com` for base domain `test.com`: the suffix a wildcard host ends with.
    wildcard_suffix: Option<String>,
    acquire_timeout: Duration,
    limits: ConnectionLimits,
    default_rate_limit: Option<RateLimit>,
    /// The one pool of every shared tenant.
    shared: Option<Arc<LazyPool>>,
    /// Open connections of all pools together.
    budget: Arc<Budget>,
    /// The applied version, for whoever waits on convergence (the bus, tests, benchmarks).
    applied: tokio::sync::watch::Sender<i64>,
    /// Rung when a request found its tenant gone from where this registry routes it (a
    /// move's guard answered): the sync catches up without waiting for a hint.
    stale: tokio::sync::Notify,
}

/// Maps keyed by strings a client sends. foldhash is several times faster than SipHash on
/// short keys; hash flooding is no concern since clients only look up, never insert.
/// Persistent (HAMT) maps: a new snapshot shares all but the changed path with the old one,
/// so one update at 100,000 tenants copies a few nodes, not the whole map.
type HashMap<K, V> = imbl::GenericHashMap<K, V, RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// One immutable view of all tenants.
#[derive(Default)]
pub struct Snapshot {
    version: i64,
    by_id: HashMap<TenantId, Arc<TenantEntry>>,
    by_host: HashMap<Box<str>, Arc<TenantEntry>>,
    /// Versions at which absent tenants were removed, so a late, older upsert cannot bring
    /// one back.
    removed: HashMap<TenantId, i64>,
}

impl Snapshot {
    /// Highest tenant version applied.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no tenant is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The tenant with this id.
    pub fn get(&self, id: &TenantId) -> Option<&Arc<TenantEntry>> {
        self.by_id.get(id)
    }

    /// All tenants, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<TenantEntry>> {
        self.by_id.values()
    }
}

/// A registered tenant and its (lazily opened) pool.
pub struct TenantEntry {
    tenant: Tenant,
    pool: Arc<LazyPool>,
    /// Its request rate limit (its own, or the router's default), if any.
    limit: Option<RateLimit>,
    /// The limiter, made on the first request (a change of the tenant starts a new one).
    limiter: OnceLock<governor::DefaultDirectRateLimiter>,
}

impl TenantEntry {
    /// The tenant's configuration.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The tenant's pool, created on first use. Creating it opens no connection: the first
    /// acquire does, within the registry's connection budget.
    pub fn pool(&self) -> &Arc<TenantPool> {
        self.pool.get()
    }

    /// True once the pool has been created.
    pub fn pool_is_open(&self) -> bool {
        self.pool.cell.get().is_some()
    }

    /// Counts one request against the tenant's rate limit: `None` when it may go ahead,
    /// else how long until it could.
    pub fn throttled(&self) -> Option<Duration> {
        let limit = self.limit?;
        let limiter = self.limiter.get_or_init(|| {
            let per_second = NonZeroU32::new(limit.requests_per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::direct(
                governor::Quota::per_second(per_second).allow_burst(burst),
            )
        });
        limiter.check().err().map(|not_until| {
            use governor::clock::Clock as _;
            not_until.wait_time_from(limiter.clock().now())
        })
    }
}

/// A pool that does not exist until first asked for, so an idle tenant costs no connection and
/// no background task.
struct LazyPool {
    /// The tenant's id, or `shared`.
    label: Box<str>,
    /// The shared database's pool: connections search the shared schema.
    shared: bool,
    database: DatabaseUrl,
    settings: PoolSettings,
    acquire_timeout: Duration,
    limits: ConnectionLimits,
    budget: Arc<Budget>,
    cell: OnceLock<Arc<TenantPool>>,
}

impl LazyPool {
    fn get(&self) -> &Arc<TenantPool> {
        self.cell.get_or_init(|| {
            // No ping before use: a round trip per request; a connection that died with its
            // server fails one query instead.
            let options = if self.shared {
                crate::shared::connect_options(&self.database)
            } else {
                self.database.connect_options()
            };
            // Named after the router and the tenant (`pg_stat_activity` shows whose it is),
            // with the timeouts that stop a runaway query or a forgotten transaction from
            // holding a connection for good.
            let statement = self
                .settings
                .statement_timeout_ms
                .unwrap_or(self.limits.statement_timeout_ms);
            let idle = self
                .settings
                .idle_in_transaction_timeout_ms
                .unwrap_or(self.limits.idle_in_transaction_timeout_ms);
            let options = options
                .application_name(&format!("tenant-router/{}", self.label))
                .options([
                    ("statement_timeout", statement.to_string()),
                    ("idle_in_transaction_session_timeout", idle.to_string()),
                ]);
            TenantPool::with_max_lifetime(
                &self.label,
                &self.budget,
                options,
                self.settings.max_connections as usize,
                self.settings.idle_timeout(),
                self.acquire_timeout,
                self.limits.max_lifetime,
            )
        })
    }

    fn same_database(&self, tenant: &Tenant) -> bool {
        self.database == tenant.database && self.settings == tenant.pool
    }

    /// Closes the pool, if it was ever opened: idle connections now, in-use ones when their
    /// queries are done.
    fn retire(self: Arc<Self>) {
        if let Some(pool) = self.cell.get() {
            pool.close();
        }
    }
}

impl Registry {
    /// An empty registry.
    /// Says that a request found its tenant moved away from where this registry sent it:
    /// the routing may be stale (a move whose announcement was lost, for instance).
    pub fn suspect_stale(&self) {
        self.stale.notify_one();
    }

    /// Completes when [`Self::suspect_stale`] was called since the last time.
    pub async fn stale_suspected(&self) {
        self.stale.notified().await;
    }

    /// A registry with `options`; empty until a load or an apply.
    pub fn new(options: RegistryOptions) -> Self {
        let budget = Budget::new(options.max_total_connections.max(1));
        budget.spawn_reaper(Duration::from_secs(1));
        let wildcard_suffix = options
            .base_domain
            .map(|d| format!(".{}", d.trim_start_matches('.').to_ascii_lowercase()));
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            stale: tokio::sync::Notify::new(),
            wildcard_suffix,
            acquire_timeout: options.acquire_timeout,
            limits: options.connection_limits,
            default_rate_limit: options.default_rate_limit,
            shared: options.shared_database.map(|database| {
                Arc::new(LazyPool {
                    label: "shared".into(),
                    budget: Arc::clone(&budget),
                    shared: true,
                    database,
                    settings: PoolSettings {
                        max_connections: 20,
                        idle_timeout_secs: 300,
                        ..PoolSettings::default()
                    },
                    acquire_timeout: options.acquire_timeout,
                    limits: options.connection_limits,
                    cell: OnceLock::new(),
                })
            }),
            applied: tokio::sync::watch::Sender::new(0),
            budget,
        }
    }

    /// The connection budget of every pool of this registry.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The applied version (the current snapshot's).
    pub fn version(&self) -> i64 {
        self.current.load().version
    }

    /// A receiver that sees the applied version every time it changes.
    pub fn watch_version(&self) -> tokio::sync::watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// Publishes `next` as the current snapshot and closes the pools `old` held that `next`
    /// does not: among `changed` only (the ids an update touched), or among all when `None`.
    fn store(&self, old: &Snapshot, next: Snapshot, changed: Option<&[TenantId]>) {
        let version = next.version;
        self.current.store(Arc::new(next));
        retire_unused(old, &self.current.load(), self.shared.as_ref(), changed);
        self.applied.send_if_modified(|v| {
            let changed = *v != version;
            *v = version;
            changed
        });
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The tenant for a canonical host name (see [`crate::host::normalize`]): an exact host
    /// match first, then `<id>.<base domain>`. Wait-free for readers.
    pub fn resolve(&self, host: &str) -> Option<Arc<TenantEntry>> {
        let snapshot = self.current.load();
        if let Some(entry) = snapshot.by_host.get(host) {
            return Some(Arc::clone(entry));
        }
        let suffix = self.wildcard_suffix.as_deref()?;
        let label = host.strip_suffix(suffix)?;
        // Ids are single DNS labels; a label with a dot cannot be one.
        if label.contains('.') {
            return None;
        }
        snapshot.by_id.get(label).cloned()
    }

    fn entry(&self, tenant: Tenant, pool: Arc<LazyPool>) -> Arc<TenantEntry> {
        let limit = tenant.rate_limit.or(self.default_rate_limit);
        Arc::new(TenantEntry {
            tenant,
            pool,
            limit,
            limiter: OnceLock::new(),
        })
    }

    /// Replaces every tenant, keeping the pools of tenants whose database settings did not
    /// change. Used at start-up and after a full re-sync. `version` is the control
    /// database's highest version in the same read as `tenants` (it may belong to a
    /// tombstone, newer than any tenant); the snapshot's version is at least the newest
    /// tenant's.
    pub fn replace_all(&self, tenants: Vec<Tenant>, version: i64) {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut next = Snapshot {
            version,
            ..Snapshot::default()
        };
        for tenant in tenants {
            let pool = self.pool_for(&tenant, old.by_id.get(&tenant.id));
            next.insert(self.entry(tenant, pool));
        }
        self.store(&old, next, None);
    }

    /// Adds or replaces one tenant. A version not newer than the one held is ignored, so a
    /// late or repeated change cannot undo a newer one. Returns whether it was applied.
    pub fn upsert(&self, tenant: Tenant) -> bool {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let previous = old.by_id.get(&tenant.id);
        if previous.is_some_and(|p| p.tenant.version >= tenant.version)
            || old
                .removed
                .get(&tenant.id)
                .is_some_and(|&v| v >= tenant.version)
        {
            return false;
        }
        let pool = self.pool_for(&tenant, previous);
        let mut next = old.clone_without(&tenant.id);
        next.version = next.version.max(tenant.version);
        let id = tenant.id.clone();
        next.insert(self.entry(tenant, pool));
        self.store(&old, next, Some(&[id]));
        true
    }

    /// Removes a tenant as of `version`; its pool is closed once in-flight queries finish.
    /// Returns whether a tenant was removed. A removal of a tenant never held (added and
    /// removed while this instance was away) still advances the snapshot's version.
    pub fn remove(&self, id: &TenantId, version: i64) -> bool {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let held = old.by_id.get(id);
        if held.is_some_and(|p| p.tenant.version >= version)
            || (held.is_none() && old.removed.get(id).is_some_and(|&v| v >= version))
        {
            return false;
        }
        let mut next = old.clone_without(id);
        next.version = next.version.max(version);
        next.removed.insert(id.clone(), version);
        self.store(&old, next, Some(std::slice::from_ref(id)));
        held.is_some()
    }

    /// Applies changes in version order (see [`crate::control::ControlDb::changes_since`])
    /// as one new snapshot, so readers see all of them or none. A change is skipped when the
    /// registry already holds something as new. Returns how many were applied.
    pub fn apply(&self, changes: Vec<Change>) -> usize {
        if changes.is_empty() {
            return 0;
        }
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut next = old.clone_without_none();
        let mut applied = 0;
        let mut changed = Vec::new();
        for change in changes {
            match change {
                Change::Upsert(tenant) => {
                    let previous = next.by_id.get(&tenant.id);
                    if previous.is_some_and(|p| p.tenant.version >= tenant.version)
                        || next
                            .removed
                            .get(&tenant.id)
                            .is_some_and(|&v| v >= tenant.version)
                    {
                        continue;
                    }
                    let pool = self.pool_for(&tenant, previous);
                    next.detach(&tenant.id);
                    changed.push(tenant.id.clone());
                    next.insert(self.entry(tenant, pool));
                    applied += 1;
                }
                Change::Remove { id, version } => {
                    let held = next.by_id.get(&id);
                    if held.is_some_and(|p| p.tenant.version >= version)
                        || (held.is_none() && next.removed.get(&id).is_some_and(|&v| v >= version))
                    {
                        continue;
                    }
                    next.detach(&id);
                    next.version = next.version.max(version);
                    changed.push(id.clone());
                    next.removed.insert(id, version);
                    applied += 1;
                }
            }
        }
        if applied > 0 {
            self.store(&old, next, Some(&changed));
        }
        applied
    }

    fn pool_for(&self, tenant: &Tenant, previous: Option<&Arc<TenantEntry>>) -> Arc<LazyPool> {
        if let (Isolation::Shared, Some(shared)) = (tenant.isolation, &self.shared) {
            return Arc::clone(shared);
        }
        match previous {
            Some(p) if p.pool.same_database(tenant) => Arc::clone(&p.pool),
            _ => Arc::new(LazyPool {
                label: tenant.id.as_str().into(),
                budget: Arc::clone(&self.budget),
                shared: tenant.isolation == Isolation::Shared,
                database: tenant.database.clone(),
                settings: tenant.pool,
                acquire_timeout: self.acquire_timeout,
                limits: self.limits,
                cell: OnceLock::new(),
            }),
        }
    }
}

impl Snapshot {
    fn insert(&mut self, entry: Arc<TenantEntry>) {
        self.version = self.version.max(entry.tenant.version);
        self.removed.remove(&entry.tenant.id);
        for host in &entry.tenant.hosts {
            self.by_host
                .insert(host.as_str().into(), Arc::clone(&entry));
        }
        self.by_id.insert(entry.tenant.id.clone(), entry);
    }

    fn clone_without(&self, id: &TenantId) -> Snapshot {
        let mut next = self.clone_without_none();
        next.detach(id);
        next
    }

    fn clone_without_none(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            by_id: self.by_id.clone(),
            by_host: self.by_host.clone(),
            removed: self.removed.clone(),
        }
    }

    /// Takes a tenant out, with the hosts that still point at it (a host another tenant has
    /// claimed since stays with that tenant).
    fn detach(&mut self, id: &TenantId) {
        if let Some(entry) = self.by_id.remove(id) {
            for host in &entry.tenant.hosts {
                if self
                    .by_host
                    .get(host.as_str())
                    .is_some_and(|e| Arc::ptr_eq(e, &entry))
                {
                    self.by_host.remove(host.as_str());
                }
            }
        }
    }
}

/// Closes the pools `old` held that `new` no longer does (never the shared pool), looking
/// only at `changed` when given.
fn retire_unused(
    old: &Snapshot,
    new: &Snapshot,
    shared: Option<&Arc<LazyPool>>,
    changed: Option<&[TenantId]>,
) {
    let entries: Vec<(&TenantId, &Arc<TenantEntry>)> = match changed {
        Some(ids) => ids
            .iter()
            .filter_map(|id| old.by_id.get(id).map(|e| (id, e)))
            .collect(),
        None => old.by_id.iter().collect(),
    };
    for (id, entry) in entries {
        let kept = shared.is_some_and(|s| Arc::ptr_eq(s, &entry.pool))
            || new
                .by_id
                .get(id)
                .is_some_and(|n| Arc::ptr_eq(&n.pool, &entry.pool));
        if !kept {
            Arc::clone(&entry.pool).retire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{TenantHost, TenantState};

    fn tenant(id: &str, hosts: &[&str], db: &str, version: i64) -> Tenant {
        Tenant {
            id: TenantId::parse(id).unwrap(),
            hosts: hosts
                .iter()
                .map(|h| TenantHost::parse(h).unwrap())
                .collect(),
            database: DatabaseUrl::parse(db).unwrap(),
            pool: PoolSettings::default(),
            state: TenantState::Active,
            isolation: Isolation::Dedicated,
            version,
            incarnation: 1,
            rate_limit: None,
        }
    }

    fn registry() -> Registry {
        Registry::new(RegistryOptions {
            base_domain: Some("test.com".into()),
            ..Default::default()
        })
    }

    #[test]
    fn exact_host_then_wildcard() {
        let r = registry();
        r.replace_all(
            vec![
                tenant("t1", &["tenant-1.test.com"], "postgres://h/t1", 1),
                tenant("acme", &["acme.example.org"], "postgres://h/acme", 2),
            ],
            0,
        );
        let id = |h: &str| r.resolve(h).map(|e| e.tenant().id.to_string());
        assert_eq!(id("tenant-1.test.com").as_deref(), Some("t1"));
        assert_eq!(id("acme.example.org").as_deref(), Some("acme"));
        assert_eq!(id("acme.test.com").as_deref(), Some("acme"));
        assert_eq!(id("t1.test.com").as_deref(), Some("t1"));
        assert_eq!(id("x.acme.test.com"), None);
        assert_eq!(id("nobody.test.com"), None);
        assert_eq!(id("test.com"), None);
        assert_eq!(r.snapshot().version(), 2);
    }

    #[test]
    fn stale_versions_are_ignored() {
        let r = registry();
        assert!(r.upsert(tenant("t1", &["a.test.com"], "postgres://h/t1", 5)));
        assert!(!r.upsert(tenant("t1", &["b.test.com"], "postgres://h/t1", 4)));
        assert!(r.resolve("a.test.com").is_some());
        assert!(!r.remove(&TenantId::parse("t1").unwrap(), 5));
        assert!(r.remove(&TenantId::parse("t1").unwrap(), 6));
        assert!(r.resolve("a.test.com").is_none());
        assert_eq!(r.snapshot().version(), 6);
    }

    #[test]
    fn changes_apply_in_order_and_tombstones_advance_the_version() {
        let r = registry();
        let t1 = TenantId::parse("t1").unwrap();
        r.apply(vec![
            Change::Upsert(tenant("t1", &["a.x.org"], "postgres://h/t1", 1)),
            Change::Upsert(tenant("t2", &["b.x.org"], "postgres://h/t2", 2)),
            Change::Remove {
                id: t1.clone(),
                version: 3,
            },
            // A tenant this instance never saw, removed: nothing to drop, version moves.
            Change::Remove {
                id: TenantId::parse("gone").unwrap(),
                version: 4,
            },
        ]);
        let snap = r.snapshot();
        assert_eq!(snap.version(), 4);
        assert!(snap.get(&t1).is_none());
        assert!(r.resolve("b.x.org").is_some());
        // Replaying the same changes is harmless.
        r.apply(vec![Change::Upsert(tenant(
            "t1",
            &["a.x.org"],
            "postgres://h/t1",
            1,
        ))]);
        assert!(
            r.resolve("a.x.org").is_none(),
            "an old upsert must not resurrect"
        );
    }

    #[test]
    fn a_host_moved_to_another_tenant_stays_with_it() {
        let r = registry();
        r.apply(vec![
            Change::Upsert(tenant("t1", &["a.x.org"], "postgres://h/t1", 1)),
            // t1 gives a.x.org up, t2 takes it: one batch, in order.
            Change::Upsert(tenant("t1", &["b.x.org"], "postgres://h/t1", 2)),
            Change::Upsert(tenant("t2", &["a.x.org"], "postgres://h/t2", 3)),
        ]);
        // A late replay of t1's old self is refused, and removing t1 keeps t2's host.
        r.upsert(tenant("t1", &["a.x.org"], "postgres://h/t1", 1));
        assert!(r.remove(&TenantId::parse("t1").unwrap(), 4));
        let owner = r.resolve("a.x.org").map(|e| e.tenant().id.to_string());
        assert_eq!(owner.as_deref(), Some("t2"));
        assert_eq!(r.version(), 4);
        assert_eq!(*r.watch_version().borrow(), 4);
    }

    #[test]
    fn a_full_load_takes_the_control_version() {
        let r = registry();
        r.replace_all(vec![tenant("t1", &["a.x.org"], "postgres://h/t1", 3)], 9);
        assert_eq!(r.version(), 9, "a tombstone can be newer than every tenant");
    }

    #[test]
    fn moving_a_host_drops_the_old_mapping() {
        let r = registry();
        r.upsert(tenant("t1", &["a.x.org"], "postgres://h/t1", 1));
        r.upsert(tenant("t1", &["b.x.org"], "postgres://h/t1", 2));
        assert!(r.resolve("a.x.org").is_none());
        assert!(r.resolve("b.x.org").is_some());
    }

    #[tokio::test]
    async fn pools_are_reused_only_while_the_database_is_unchanged() {
        let r = registry();
        r.upsert(tenant("t1", &["a.x.org"], "postgres://h/t1", 1));
        let first = r.resolve("a.x.org").unwrap();
        let _ = first.pool();
        r.upsert(tenant("t1", &["a.x.org", "c.x.org"], "postgres://h/t1", 2));
        let second = r.resolve("c.x.org").unwrap();
        assert!(Arc::ptr_eq(&first.pool, &second.pool));
        r.upsert(tenant("t1", &["a.x.org"], "postgres://h/other", 3));
        let third = r.resolve("a.x.org").unwrap();
        assert!(!Arc::ptr_eq(&first.pool, &third.pool));
        assert!(!third.pool_is_open(), "a new pool opens on first use only");
    }
}
