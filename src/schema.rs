//! The app's description of its tenant data: which tables hold a tenant's rows, in which
//! order, and the migrations of dedicated databases and of the shared schema.
//!
//! The router knows no table of its own app's: shared-mode preparation (row-level security
//! and Citus distribution), moves between dedicated and shared, and purges all work from
//! this description. Every tenant table has a `tenant_id text` column (the tenant's scope);
//! in the shared schema every key includes it.

use sqlx::migrate::Migrator;

/// One tenant table: its name and its columns besides `tenant_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantTable {
    /// The table's name (unqualified: `search_path` picks the schema).
    pub name: &'static str,
    /// Every column besides `tenant_id`: what a move copies.
    pub columns: &'static [&'static str],
    /// A column filled from a sequence (`<table>_<column>_seq`, identity or default), which
    /// a move sets past the ids it copied.
    pub identity: Option<&'static str>,
}

/// The app's tenant tables and migrations. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct TenantSchema {
    tables: &'static [TenantTable],
    dedicated: &'static Migrator,
    shared: &'static Migrator,
}

/// Why a [`TenantSchema`] was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tenant schema: {0}")]
pub struct InvalidSchema(String);

impl TenantSchema {
    /// `tables` in dependency order (a table after every table it references: the order
    /// rows are inserted in; they are deleted in reverse). The first table anchors the
    /// Citus co-location group. `dedicated` migrates a tenant's own database; `shared`
    /// migrates the shared schema, where each of `tables` has `tenant_id` in every key.
    ///
    /// Names are checked to be plain lower-case SQL identifiers, so they can be written into
    /// statements.
    pub fn new(
        tables: &'static [TenantTable],
        dedicated: &'static Migrator,
        shared: &'static Migrator,
    ) -> Result<Self, InvalidSchema> {
        if tables.is_empty() {
            return Err(InvalidSchema("at least one tenant table is needed".into()));
        }
        for (i, t) in tables.iter().enumerate() {
            check_identifier(t.name)?;
            if tables[..i].iter().any(|o| o.name == t.name) {
                return Err(InvalidSchema(format!("table {} is listed twice", t.name)));
            }
            if t.columns.is_empty() {
                return Err(InvalidSchema(format!("table {} lists no column", t.name)));
            }
            for c in t.columns.iter().chain(t.identity.iter()) {
                check_identifier(c)?;
                if *c == "tenant_id" {
                    return Err(InvalidSchema(format!(
                        "table {}: tenant_id is implied, do not list it",
                        t.name
                    )));
                }
            }
            if let Some(id) = t.identity
                && !t.columns.contains(&id)
            {
                return Err(InvalidSchema(format!(
                    "table {}: identity column {id} is not among its columns",
                    t.name
                )));
            }
        }
        Ok(Self {
            tables,
            dedicated,
            shared,
        })
    }

    /// The tenant tables, in dependency order.
    pub fn tables(&self) -> &'static [TenantTable] {
        self.tables
    }

    /// The table that anchors the Citus co-location group.
    pub fn anchor(&self) -> &'static str {
        self.tables[0].name
    }

    /// Migrations of a dedicated tenant's database.
    pub fn dedicated_migrations(&self) -> &'static Migrator {
        self.dedicated
    }

    /// Migrations of the shared schema.
    pub fn shared_migrations(&self) -> &'static Migrator {
        self.shared
    }

    /// The table names, comma-separated (for `LOCK TABLE`).
    pub(crate) fn table_list(&self) -> String {
        self.tables
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Which tables a database may hold besides the listed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unlisted {
    /// Any: a dedicated database given by hand, which the router never drops.
    Allowed,
    /// None but sqlx's: a dedicated database the router made, and drops after a move out.
    NoTable,
    /// None with a `tenant_id` but the directory: the shared schema.
    NoTenantTable,
}

/// Refuses a description that does not match the database `conn` is in (its current
/// schema): a listed table missing, or whose columns are not exactly the listed ones plus
/// `tenant_id`; or a tenant table that is not listed (in a dedicated database, any table but
/// sqlx's; in the shared schema, any with a `tenant_id` but the directory). Moves copy, and
/// purges delete, only what the description lists: whatever else there is would be lost
/// with a dropped source or left for the next tenant of the id.
pub(crate) async fn check_catalog(
    conn: &mut sqlx::PgConnection,
    schema: &TenantSchema,
    unlisted: Unlisted,
) -> anyhow::Result<()> {
    use std::collections::{BTreeMap, BTreeSet};
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text
         FROM information_schema.columns c
         JOIN information_schema.tables t
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (table, column) in rows {
        tables.entry(table).or_default().insert(column);
    }
    for t in schema.tables() {
        let Some(actual) = tables.remove(t.name) else {
            anyhow::bail!("the app's tenant table {} does not exist here", t.name);
        };
        let listed: BTreeSet<String> = t
            .columns
            .iter()
            .map(|c| c.to_string())
            .chain([String::from("tenant_id")])
            .collect();
        if actual != listed {
            let unlisted: Vec<_> = actual.difference(&listed).collect();
            let missing: Vec<_> = listed.difference(&actual).collect();
            anyhow::bail!(
                "table {} does not match the app's TenantSchema (columns not listed: {unlisted:?}; \
                 listed but missing: {missing:?}); nothing was moved or deleted",
                t.name
            );
        }
    }
    let unlisted: Vec<&String> = tables
        .iter()
        .filter(|(name, columns)| match unlisted {
            _ if name.starts_with("_sqlx") => false,
            Unlisted::Allowed => false,
            Unlisted::NoTable => true,
            Unlisted::NoTenantTable => name.as_str() != "tenants" && columns.contains("tenant_id"),
        })
        .map(|(name, _)| name)
        .collect();
    anyhow::ensure!(
        unlisted.is_empty(),
        "tables {unlisted:?} hold tenant data but are not in the app's TenantSchema; nothing \
         was moved or deleted"
    );
    Ok(())
}

fn check_identifier(name: &str) -> Result<(), InvalidSchema> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(InvalidSchema(format!(
            "{name:?} is not a plain lower-case SQL identifier"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NONE: Migrator = Migrator::DEFAULT;

    const fn table(name: &'static str, identity: Option<&'static str>) -> TenantTable {
        TenantTable {
            name,
            columns: &["id", "body"],
            identity,
        }
    }

    #[test]
    fn names_must_be_plain_identifiers_and_listed_once() {
        static GOOD: [TenantTable; 2] = [table("users", Some("id")), table("notes", None)];
        let schema = TenantSchema::new(&GOOD, &NONE, &NONE).unwrap();
        assert_eq!(schema.anchor(), "users");
        assert_eq!(schema.table_list(), "users, notes");

        static INJECTED: [TenantTable; 1] = [table("users; DROP TABLE x", None)];
        static QUOTED: [TenantTable; 1] = [table("\"Users\"", None)];
        static TWICE: [TenantTable; 2] = [table("users", None), table("users", None)];
        static STRAY_ID: [TenantTable; 1] = [table("users", Some("uid"))];
        static TENANT: [TenantTable; 1] = [TenantTable {
            name: "users",
            columns: &["tenant_id", "id"],
            identity: None,
        }];
        for bad in [
            &INJECTED[..],
            &QUOTED[..],
            &TWICE[..],
            &STRAY_ID[..],
            &TENANT[..],
            &[][..],
        ] {
            assert!(TenantSchema::new(bad, &NONE, &NONE).is_err(), "{bad:?}");
        }
    }
}
