//! The reference app's tenant data, as the router needs to know it: its tables in
//! dependency order, and the migrations of dedicated databases (`migrations/tenant/`) and of
//! the shared schema (`migrations/shared/`).

use sqlx::migrate::Migrator;
use tenant_router::schema::{TenantSchema, TenantTable};

/// Migrations of a dedicated tenant's database.
pub static TENANT_MIGRATOR: Migrator = sqlx::migrate!("../migrations/tenant");

/// Migrations of the shared schema. (The first ones also made the tenant directory and
/// `tenant_router_enter`, from before the router made them itself; the router leaves them.)
pub static SHARED_MIGRATOR: Migrator = sqlx::migrate!("../migrations/shared");

/// The tenant tables, a table after the ones it references.
pub static TABLES: [TenantTable; 4] = [
    TenantTable {
        name: "users",
        columns: &["id", "username", "email", "password_hash", "created_at"],
        identity: Some("id"),
    },
    TenantTable {
        name: "sessions",
        columns: &["token_hash", "user_id", "created_at", "expires_at"],
        identity: None,
    },
    TenantTable {
        name: "notes",
        columns: &["id", "user_id", "content", "created_at", "updated_at"],
        identity: Some("id"),
    },
    TenantTable {
        name: "job_runs",
        columns: &["job_id", "kind", "result", "completed_at"],
        identity: None,
    },
];

/// The names of [`TABLES`], in the same order.
pub static TABLE_NAMES: [&str; 4] = ["users", "sessions", "notes", "job_runs"];

/// The reference app's schema.
pub fn schema() -> TenantSchema {
    TenantSchema::new(&TABLES, &TENANT_MIGRATOR, &SHARED_MIGRATOR)
        .expect("the reference app's tables are plain identifiers")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_schema_is_valid() {
        assert_eq!(super::schema().anchor(), "users");
        let names: Vec<_> = super::TABLES.iter().map(|t| t.name).collect();
        assert_eq!(names, super::TABLE_NAMES);
    }
}
