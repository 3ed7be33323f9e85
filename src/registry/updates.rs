//! Changing the registry: a full load, one upsert or removal, or a batch of changes, each
//! published as one new snapshot by one writer at a time. A change older than what is held
//! is ignored.

use super::{Registry, Snapshot};
use crate::control::Change;
use crate::tenant::{Tenant, TenantId};

impl Registry {
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::RegistryOptions;
    use crate::tenant::{DatabaseUrl, Isolation, PoolSettings, TenantHost, TenantState};

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
