//! One immutable view of every tenant, by id and by host; a change makes the next one.

use std::sync::Arc;

use foldhash::fast::RandomState;

use super::TenantEntry;
use crate::tenant::TenantId;

/// Maps keyed by strings a client sends. foldhash is several times faster than SipHash on
/// short keys; hash flooding is no concern since clients only look up, never insert.
/// Persistent (HAMT) maps: a new snapshot shares all but the changed path with the old one,
/// so one update at 100,000 tenants copies a few nodes, not the whole map.
type HashMap<K, V> = imbl::GenericHashMap<K, V, RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// One immutable view of all tenants.
#[derive(Default)]
pub struct Snapshot {
    pub(super) version: i64,
    pub(super) by_id: HashMap<TenantId, Arc<TenantEntry>>,
    pub(super) by_host: HashMap<Box<str>, Arc<TenantEntry>>,
    /// Versions at which absent tenants were removed, so a late, older upsert cannot bring
    /// one back.
    pub(super) removed: HashMap<TenantId, i64>,
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

impl Snapshot {
    pub(super) fn insert(&mut self, entry: Arc<TenantEntry>) {
        self.version = self.version.max(entry.tenant.version);
        self.removed.remove(&entry.tenant.id);
        for host in &entry.tenant.hosts {
            self.by_host
                .insert(host.as_str().into(), Arc::clone(&entry));
        }
        self.by_id.insert(entry.tenant.id.clone(), entry);
    }

    pub(super) fn clone_without(&self, id: &TenantId) -> Snapshot {
        let mut next = self.clone_without_none();
        next.detach(id);
        next
    }

    pub(super) fn clone_without_none(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            by_id: self.by_id.clone(),
            by_host: self.by_host.clone(),
            removed: self.removed.clone(),
        }
    }

    /// Takes a tenant out, with the hosts that still point at it (a host another tenant has
    /// claimed since stays with that tenant).
    pub(super) fn detach(&mut self, id: &TenantId) {
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
