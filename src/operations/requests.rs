//! Tenant requests as clients send them, and their validation: every field checked, every
//! bad one named at once.

use serde::{Deserialize, Serialize};

use crate::control::TenantSpec;
use crate::problem::FieldError;
use crate::tenant::{
    DatabaseUrl, Isolation, PoolSettings, RateLimit, Tenant, TenantHost, TenantId, TenantState,
};

/// A tenant to create, as a client sends it. Every field is checked; see [`NewTenant`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenantRequest {
    /// Id: `[a-z0-9-]`, 1 to 63 characters.
    pub id: Option<String>,
    /// At least one host name, no port.
    pub hosts: Option<Vec<String>>,
    /// An existing database; without it one is provisioned.
    pub database: Option<String>,
    /// Pool settings; omitted ones take the defaults.
    pub pool: Option<PoolRequest>,
    /// `active` (default) or `suspended`.
    pub state: Option<String>,
    /// `dedicated` (default: its own database) or `shared` (the shared database).
    pub isolation: Option<String>,
    /// Take over data that is already there: what a removal of this id kept, or an existing
    /// `tenant_<id>` database. Without it, such data makes the create a 409.
    pub adopt: Option<bool>,
    /// Its own request rate limit; omitted: the router's default.
    pub rate_limit: Option<RateLimit>,
}

/// Pool settings as a client sends them; omitted fields keep their current (or default)
/// values.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    /// Most connections.
    pub max_connections: Option<u32>,
    /// Seconds before an idle connection closes.
    pub idle_timeout_secs: Option<u64>,
    /// Milliseconds a statement may run; `null` returns to the router's default.
    #[serde(default, deserialize_with = "some_or_null")]
    pub statement_timeout_ms: Option<Option<u32>>,
    /// Milliseconds a transaction may sit idle; `null` returns to the router's default.
    #[serde(default, deserialize_with = "some_or_null")]
    pub idle_in_transaction_timeout_ms: Option<Option<u32>>,
}

/// A field that may be absent (left alone), `null` (cleared) or a value.
fn some_or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A change to a tenant, as a client sends it; omitted fields are left alone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPatchRequest {
    /// Replaces the hosts.
    pub hosts: Option<Vec<String>>,
    /// Moves the tenant to another database (no data is copied).
    pub database: Option<String>,
    /// Changes pool settings.
    pub pool: Option<PoolRequest>,
    /// `active` or `suspended`.
    pub state: Option<String>,
    /// Its own request rate limit; `null` returns to the router's default.
    #[serde(default, deserialize_with = "some_or_null")]
    pub rate_limit: Option<Option<RateLimit>>,
}

/// A validated [`NewTenantRequest`].
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Id.
    pub id: TenantId,
    /// Hosts.
    pub hosts: Vec<TenantHost>,
    /// Database, or `None` to provision.
    pub database: Option<DatabaseUrl>,
    /// Pool.
    pub pool: PoolSettings,
    /// State.
    pub state: TenantState,
    /// Dedicated or shared.
    pub isolation: Isolation,
    /// Take over data that is already there (see [`NewTenantRequest::adopt`]).
    pub adopt: bool,
    /// Its own request rate limit.
    pub rate_limit: Option<RateLimit>,
}

impl NewTenantRequest {
    /// Checks every field, reporting all that are wrong at once.
    pub fn validate(self) -> Result<NewTenant, Vec<FieldError>> {
        let mut errors = Vec::new();
        let id = match self.id.as_deref() {
            None => {
                errors.push(FieldError::new("id", "is required"));
                None
            }
            Some(raw) => TenantId::parse(raw)
                .map_err(|e| errors.push(FieldError::new("id", e.0)))
                .ok(),
        };
        let hosts = match self.hosts {
            None => {
                errors.push(FieldError::new("hosts", "is required"));
                None
            }
            Some(raw) => parse_hosts(&raw, &mut errors),
        };
        let database = parse_database(self.database.as_deref(), &mut errors);
        let pool = parse_pool(self.pool, PoolSettings::default(), &mut errors);
        let state = parse_state(self.state.as_deref(), &mut errors).unwrap_or_default();
        let isolation = match self.isolation.as_deref().map(str::parse::<Isolation>) {
            None => Isolation::Dedicated,
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                errors.push(FieldError::new("isolation", e.0));
                Isolation::Dedicated
            }
        };
        if let Some(Err(e)) = self.rate_limit.as_ref().map(RateLimit::validate) {
            errors.push(FieldError::new("rate_limit", e.0));
        }
        if isolation == Isolation::Shared && self.database.is_some() {
            errors.push(FieldError::new(
                "database",
                "a shared tenant lives in the shared database; omit it",
            ));
        }
        match (id, hosts, pool) {
            (Some(id), Some(hosts), Some(pool)) if errors.is_empty() => Ok(NewTenant {
                id,
                hosts,
                database,
                pool,
                state,
                isolation,
                adopt: self.adopt.unwrap_or(false),
                rate_limit: self.rate_limit,
            }),
            _ => Err(errors),
        }
    }
}

fn parse_hosts(raw: &[String], errors: &mut Vec<FieldError>) -> Option<Vec<TenantHost>> {
    if raw.is_empty() {
        errors.push(FieldError::new("hosts", "needs at least one host"));
        return None;
    }
    if raw.len() > 100 {
        errors.push(FieldError::new("hosts", "at most 100 hosts per tenant"));
        return None;
    }
    let mut hosts: Vec<TenantHost> = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, h) in raw.iter().enumerate() {
        match TenantHost::parse(h) {
            Ok(host) => hosts.push(host),
            Err(e) => {
                ok = false;
                errors.push(FieldError::new(format!("hosts[{i}]"), e.0));
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    ok.then_some(hosts)
}

fn parse_database(raw: Option<&str>, errors: &mut Vec<FieldError>) -> Option<DatabaseUrl> {
    raw.and_then(|url| {
        DatabaseUrl::parse(url)
            .map_err(|e| errors.push(FieldError::new("database", e.0)))
            .ok()
    })
}

fn parse_pool(
    raw: Option<PoolRequest>,
    base: PoolSettings,
    errors: &mut Vec<FieldError>,
) -> Option<PoolSettings> {
    let Some(raw) = raw else { return Some(base) };
    let pool = PoolSettings {
        max_connections: raw.max_connections.unwrap_or(base.max_connections),
        idle_timeout_secs: raw.idle_timeout_secs.unwrap_or(base.idle_timeout_secs),
        statement_timeout_ms: raw
            .statement_timeout_ms
            .unwrap_or(base.statement_timeout_ms),
        idle_in_transaction_timeout_ms: raw
            .idle_in_transaction_timeout_ms
            .unwrap_or(base.idle_in_transaction_timeout_ms),
    };
    match pool.validate() {
        Ok(()) => Some(pool),
        Err(e) => {
            errors.push(FieldError::new("pool", e.0));
            None
        }
    }
}

fn parse_state(raw: Option<&str>, errors: &mut Vec<FieldError>) -> Option<TenantState> {
    raw.and_then(|s| {
        s.parse::<TenantState>()
            .map_err(|_| errors.push(FieldError::new("state", "must be 'active' or 'suspended'")))
            .ok()
    })
}

/// The tenant as it will look after `patch`.
pub(super) fn merge(
    current: &Tenant,
    provisioned: bool,
    patch: &TenantPatchRequest,
) -> Result<TenantSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let hosts = match &patch.hosts {
        Some(raw) => parse_hosts(raw, &mut errors),
        None => Some(current.hosts.clone()),
    };
    let database = parse_database(patch.database.as_deref(), &mut errors);
    if current.isolation == Isolation::Shared && database.is_some() {
        errors.push(FieldError::new(
            "database",
            "a shared tenant lives in the shared database; move it with `tenants move`",
        ));
    }
    let pool = parse_pool(patch.pool, current.pool, &mut errors);
    let state = parse_state(patch.state.as_deref(), &mut errors);
    let rate_limit = patch.rate_limit.unwrap_or(current.rate_limit);
    if let Some(Err(e)) = rate_limit.as_ref().map(RateLimit::validate) {
        errors.push(FieldError::new("rate_limit", e.0));
    }
    match (hosts, pool) {
        (Some(hosts), Some(pool)) if errors.is_empty() => {
            let moved = database.as_ref().is_some_and(|d| *d != current.database);
            Ok(TenantSpec {
                id: current.id.clone(),
                hosts,
                // A database given by hand was not created by the router: never drop it.
                provisioned: provisioned && !moved,
                database: database.unwrap_or_else(|| current.database.clone()),
                pool,
                state: state.unwrap_or(current.state),
                isolation: current.isolation,
                incarnation: None,
                rate_limit,
            })
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_named() {
        let request = NewTenantRequest {
            id: Some("Acme'; DROP TABLE tenants;--".into()),
            hosts: Some(vec!["ok.example.com".into(), "bad.example.com:8080".into()]),
            database: Some("mysql://x".into()),
            pool: Some(PoolRequest {
                max_connections: Some(0),
                ..Default::default()
            }),
            state: Some("paused".into()),
            isolation: Some("pooled".into()),
            adopt: None,
            rate_limit: None,
        };
        let errors = request.validate().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["id", "hosts[1]", "database", "pool", "state", "isolation"]
        );
    }

    #[test]
    fn hosts_are_normalised_and_deduplicated() {
        let new = NewTenantRequest {
            id: Some("acme".into()),
            hosts: Some(vec!["ACME.Example.com.".into(), "acme.example.com".into()]),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let hosts: Vec<&str> = new.hosts.iter().map(|h| h.as_str()).collect();
        assert_eq!(hosts, ["acme.example.com"]);
        assert!(new.database.is_none());
        assert_eq!(new.state, TenantState::Active);
    }

    #[test]
    fn a_missing_id_and_empty_hosts_are_refused() {
        let errors = NewTenantRequest {
            hosts: Some(vec![]),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["id", "hosts"]);
    }
}
