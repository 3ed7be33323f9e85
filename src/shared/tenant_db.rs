//! The tenant data path: [`TenantDb`] and the [`TenantConn`] transactions it hands out.

use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt as _};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Database, Either, Execute, Postgres, SqlStr};

use sqlx::postgres::PgTransactionManager;
use sqlx::{AssertSqlSafe, PgConnection, SqlSafeStr as _};
use sqlx_core::transaction::TransactionManager as _;

use super::{quote_literal, scope_sql};
use crate::pool::{PooledConn, TenantPool};
use crate::tenant::{Isolation, Tenant};

/// A tenant's database, as handlers and jobs use it: [`Self::conn`] and [`Self::scope`].
pub struct TenantDb<'a> {
    pool: &'a Arc<TenantPool>,
    tenant: &'a Tenant,
}

impl<'a> TenantDb<'a> {
    /// The handle for `tenant` over `pool` (its dedicated pool, or the shared one).
    pub fn new(pool: &'a Arc<TenantPool>, tenant: &'a Tenant) -> Self {
        Self { pool, tenant }
    }

    /// The value of `tenant_id` in this tenant's rows; bind it in every query.
    pub fn scope(&self) -> &'a str {
        self.tenant.scope()
    }

    /// A connection for this tenant, in a transaction: writes last only after
    /// [`TenantConn::commit`]; dropped without it, everything rolls back. Dedicated and shared
    /// tenants behave the same, so a handler tested on one kind cannot lose writes on the
    /// other. For a shared tenant the transaction is also scoped to it (role and
    /// `app.tenant_id` set locally). sqlx knows the transaction is open, so a handler's own
    /// `conn.begin()` is a savepoint inside it, never a transaction of its own.
    pub async fn conn(&self) -> Result<TenantConn, sqlx::Error> {
        self.begin().await
    }

    /// The same as [`Self::conn`]: a transaction, rolled back unless committed.
    pub async fn begin(&self) -> Result<TenantConn, sqlx::Error> {
        let conn = match self.tenant.isolation {
            // One round trip: the `BEGIN`, with the rollback of what the connection's last
            // request left (see `TenantPool::begin`).
            Isolation::Dedicated => self.pool.begin(None).await?,
            // Two round trips: the tenant's lock and check (shared migration 0004) with the
            // role, then the tenant's `SET LOCAL`, which must travel alone (see `scope_sql`).
            Isolation::Shared => {
                let [role, tenant] = scope_sql(self.scope());
                let enter = format!(
                    "SELECT tenant_router_enter({})",
                    quote_literal(self.scope())
                );
                // A tenant's own timeouts replace the shared pool's for its transactions.
                let mut own = String::new();
                if let Some(ms) = self.tenant.pool.statement_timeout_ms {
                    own.push_str(&format!("; SET LOCAL statement_timeout = {ms}"));
                }
                if let Some(ms) = self.tenant.pool.idle_in_transaction_timeout_ms {
                    own.push_str(&format!(
                        "; SET LOCAL idle_in_transaction_session_timeout = {ms}"
                    ));
                }
                let begin = format!("BEGIN; {enter}; {role}{own}");
                let mut conn = self
                    .pool
                    .begin(Some(AssertSqlSafe(begin).into_sql_str()))
                    .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(tenant))
                    .execute(&mut *conn)
                    .await?;
                conn
            }
        };
        Ok(TenantConn::new(conn, true))
    }

    /// A connection for reads only. A dedicated tenant's is outside any transaction: each
    /// statement is a transaction of its own, which PostgreSQL makes read-only (a write is
    /// refused with SQLSTATE 25006, never committed), and it costs no `BEGIN` or `ROLLBACK`:
    /// a request that makes one query makes one round trip. A shared tenant's is its scoped
    /// transaction, as [`Self::conn`] gives, rolled back when dropped.
    ///
    /// Run queries on `&mut conn` (the connection itself, not `&mut *conn`): it then sees
    /// each statement end, so the next request gets it without a check; used through the
    /// `PgConnection` it still works, and is checked before reuse. A statement that may
    /// begin a transaction or change the read-only setting (its text holds `BEGIN`, `START`,
    /// `SET` or `DISCARD`) is undone before the next request, whatever it left.
    ///
    /// Read-only is a guard against mistakes, not a permission boundary: SQL that itself
    /// turns it off (`SET transaction_read_only = off; INSERT …`) writes. Give the app a role
    /// without write grants where reads must be unable to write.
    pub async fn read(&self) -> Result<TenantConn, sqlx::Error> {
        match self.tenant.isolation {
            Isolation::Dedicated => Ok(TenantConn::new(self.pool.read().await?, false)),
            Isolation::Shared => self.begin().await,
        }
    }
}

/// A connection handed out by [`TenantDb`], in a transaction (or, from [`TenantDb::read`],
/// for reads): run queries on `&mut conn` (it is an [`sqlx::Executor`]) or on the
/// `PgConnection` it derefs to, then [`Self::commit`] to keep what it wrote.
///
/// Used as an executor, it watches its statements: one that fails on the connection itself
/// (I/O, TLS, protocol) marks it broken, so it is closed when dropped and never reaches the
/// next request; one whose every statement ran to its end goes back with nothing to check.
pub struct TenantConn {
    conn: PooledConn,
    in_tx: bool,
    health: Health,
}

/// What a [`TenantConn`] saw of its statements.
#[derive(Debug, Default)]
struct Health {
    /// A statement started and was not seen to end (abandoned, or it failed).
    busy: bool,
    /// Used through `DerefMut`, where its statements cannot be seen.
    untracked: bool,
    /// It ran a statement that may have begun a transaction of its own or changed the
    /// session's read-only setting (see [`may_change_state`]): sqlx counts neither, so
    /// before reuse any transaction is rolled back and the setting made again.
    may_change: bool,
    /// A statement failed on the connection itself.
    broken: bool,
}

impl Health {
    fn ended<T>(&mut self, result: &Result<T, sqlx::Error>) {
        match result {
            Ok(_) => self.busy = false,
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, e: &sqlx::Error) {
        let ended_by_server = e
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|c| {
                // The server ended the session (shut down, terminated, crashed) or lost it.
                c.starts_with("57P") || c.starts_with("08") || c == "25P03" || c == "25P04"
            });
        if ended_by_server
            || matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::WorkerCrashed
            )
        {
            self.broken = true;
        }
    }
}

impl std::fmt::Debug for TenantConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConn")
            .field("in_tx", &self.in_tx)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Drop for TenantConn {
    fn drop(&mut self) {
        if self.health.broken {
            self.conn.broken();
        } else if self.health.untracked || self.health.may_change {
            // A transaction sqlx does not count may be open (a raw `BEGIN`, ended or not),
            // or the read-only setting changed, even in a transaction (a setting made for
            // the session outlives its commit): the next user's acquire undoes both.
            self.conn.unsure();
        } else if !self.in_tx && !self.health.busy {
            self.conn.ended();
        }
    }
}

impl TenantConn {
    fn new(conn: PooledConn, in_tx: bool) -> Self {
        Self {
            conn,
            in_tx,
            health: Health::default(),
        }
    }

    /// The connection and what is seen of it, borrowed apart.
    fn parts(&mut self) -> (&mut PgConnection, &mut Health) {
        (&mut self.conn, &mut self.health)
    }

    /// Commits the transaction. An error when it failed earlier (a statement of it was
    /// refused, even one the handler went past): PostgreSQL would answer that `COMMIT` with
    /// a rollback and no error, and the writes would be lost without a word.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.in_tx {
            // In a failed transaction every statement is refused (25P02).
            sqlx::raw_sql("SELECT 1").execute(&mut *self.conn).await?;
            PgTransactionManager::commit(&mut self.conn).await?;
            self.conn.ended();
            self.in_tx = false;
        }
        Ok(())
    }

    /// Rolls the transaction back now (dropping does the same, off the request's path).
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if self.in_tx {
            PgTransactionManager::rollback(&mut self.conn).await?;
            self.conn.ended();
            self.in_tx = false;
        }
        Ok(())
    }
}

impl Deref for TenantConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for TenantConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.health.untracked = true;
        &mut self.conn
    }
}

/// A statement whose text was looked at before it went out, for whether it may change the
/// session's state unseen (see [`Health::may_change`]); otherwise what it was.
struct Seen {
    sql: SqlStr,
    statement: Option<PgStatement>,
    arguments: Option<Result<Option<PgArguments>, BoxDynError>>,
    persistent: bool,
}

impl Seen {
    fn new<'q>(mut query: impl Execute<'q, Postgres>, health: &mut Health) -> Self {
        let statement = query.statement().cloned();
        let persistent = query.persistent();
        let arguments = Some(query.take_arguments());
        let sql = query.sql();
        if may_change_state_seen(sql.as_str()) {
            health.may_change = true;
        }
        Self {
            sql,
            statement,
            arguments,
            persistent,
        }
    }
}

/// [`may_change_state`], remembered for the texts this thread sent last: an app sends the
/// same few statements over and over, and comparing a text with a remembered one costs far
/// less than reading it letter by letter. Keyed by the whole text, so a verdict is only
/// ever reused for the very same statement.
fn may_change_state_seen(sql: &str) -> bool {
    /// Texts remembered per thread, and the longest one remembered.
    const KEPT: usize = 32;
    const LONGEST: usize = 4096;
    /// The texts with their verdicts, and where the next one goes once all places are taken.
    struct Remembered {
        texts: Vec<(Box<str>, bool)>,
        next: usize,
    }
    thread_local! {
        static SEEN: std::cell::RefCell<Remembered> = const {
            std::cell::RefCell::new(Remembered { texts: Vec::new(), next: 0 })
        };
    }
    SEEN.with_borrow_mut(|Remembered { texts: seen, next }| {
        if let Some((_, verdict)) = seen.iter().find(|(text, _)| **text == *sql) {
            return *verdict;
        }
        let verdict = may_change_state(sql);
        if sql.len() <= LONGEST {
            let entry = (Box::from(sql), verdict);
            if seen.len() < KEPT {
                seen.push(entry);
            } else {
                // Round robin: a text sent once is gone after KEPT others.
                seen[*next] = entry;
                *next = (*next + 1) % KEPT;
            }
        }
        verdict
    })
}

/// Whether a statement's text may begin a transaction (`BEGIN`, `START TRANSACTION`, a `DO`
/// block's `BEGIN`) or change the session's read-only setting (`SET
/// default_transaction_read_only`, `RESET`, `SET SESSION CHARACTERISTICS`, `set_config`,
/// `DISCARD`): each way spells one of these words (keywords are never escaped; a function
/// name may be, as `U&"…"`, so that is flagged too, and so is `EXECUTE` of a statement
/// prepared earlier, and any backslash: a `DO` body in an `E'…'` string may escape its
/// letters). A false alarm (a column `started_at`, an `OFFSET`) only costs a check
/// before reuse. A function of the app's own that changes the setting is not seen.
fn may_change_state(sql: &str) -> bool {
    // `set` covers `RESET`, `set_config` and `SET SESSION CHARACTERISTICS`; `execute` a
    // statement prepared earlier with any of them; `u&` an identifier spelled in escapes.
    // Each position is compared only with the words its letter can start: this runs on
    // every statement, on the hot path.
    let sql = sql.as_bytes();
    let at = |i: usize, word: &[u8]| {
        sql.get(i + 1..i + word.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(&word[1..]))
    };
    (0..sql.len()).any(|i| match sql[i] | 0x20 {
        b's' => at(i, b"set") || at(i, b"start"),
        b'b' => at(i, b"begin"),
        b'd' => at(i, b"discard"),
        b'e' => at(i, b"execute"),
        b'u' => sql.get(i + 1) == Some(&b'&'),
        // `E'…'` spells any letter as an escape (`\x73et_config`), and a `DO` body is
        // such a string. The byte itself: `| 0x20` would fold `|` onto it.
        _ => sql[i] == b'\\',
    })
}

impl<'q> Execute<'q, Postgres> for Seen {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.statement.as_ref()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.arguments.take().unwrap_or(Ok(None))
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// A statement stream that tells the connection's [`Health`] how it ended.
struct Watched<'e, S> {
    inner: S,
    health: &'e mut Health,
}

impl<S, T> Stream for Watched<'_, S>
where
    S: Stream<Item = Result<T, sqlx::Error>> + Unpin,
{
    type Item = Result<T, sqlx::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        match &polled {
            Poll::Ready(None) => self.health.busy = false,
            Poll::Ready(Some(Err(e))) => self.health.failed(e),
            _ => {}
        }
        polled
    }
}

impl<'c> sqlx::Executor<'c> for &'c mut TenantConn {
    type Database = Postgres;

    fn fetch_many<'e, 'q, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
        'q: 'e,
    {
        let (conn, health) = self.parts();
        health.busy = true;
        let query = Seen::new(query, health);
        Box::pin(Watched {
            inner: conn.fetch_many(query),
            health,
        })
    }

    fn fetch_optional<'e, 'q, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
        'q: 'e,
    {
        let (conn, health) = self.parts();
        health.busy = true;
        let query = Seen::new(query, health);
        let inner = conn.fetch_optional(query);
        Box::pin(async move {
            let result = inner.await;
            health.ended(&result);
            result
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<<Postgres as Database>::Statement, sqlx::Error>>
    where
        'c: 'e,
    {
        let (conn, health) = self.parts();
        health.busy = true;
        let inner = conn.prepare_with(sql, parameters);
        Box::pin(async move {
            let result = inner.await;
            health.ended(&result);
            result
        })
    }

    fn describe<'e>(
        self,
        sql: SqlStr,
    ) -> BoxFuture<'e, Result<sqlx_core::describe::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        let (conn, health) = self.parts();
        health.busy = true;
        let inner = conn.describe(sql);
        Box::pin(async move {
            let result = inner.await;
            health.ended(&result);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{may_change_state, may_change_state_seen};

    /// The plain definition: any of the words, anywhere, in any case, or a backslash.
    fn spelled(sql: &str) -> bool {
        let lower = sql.to_ascii_lowercase();
        ["begin", "start", "set", "discard", "execute", "u&", "\\"]
            .iter()
            .any(|w| lower.contains(w))
    }

    #[test]
    fn flags_every_spelling_and_nothing_else() {
        for sql in [
            "SELECT 1",
            "select id from notes where user_id = $1",
            "SET default_transaction_read_only = off",
            "reset ALL",
            "SELECT set_config('default_transaction_read_only', 'off', false)",
            "START TRANSACTION",
            "BeGiN",
            "DISCARD ALL",
            "EXECUTE p",
            "SELECT U&\"\\0073et_config\"('a', 'b', false)",
            "SELECT u",
            "SELECT id FROM notes OFFSET 2",
            "se",
            "s",
            "u",
            "",
            "SELECT 'é' || 'sét'",
            "SELECT a || b, c | d",
            r"DO E'\x42EGIN PERFORM \x73et_config(''default_transaction_read_only'', ''off'', false); END'",
        ] {
            assert_eq!(may_change_state(sql), spelled(sql), "{sql:?}");
        }
        // Every short string over an alphabet that can spell (or nearly spell) the words.
        let alphabet = ['s', 'E', 't', 'u', '&', 'x', '\\', '|'];
        let mut words = vec![String::new()];
        for _ in 0..5 {
            words = words
                .iter()
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            for w in &words {
                assert_eq!(may_change_state(w), spelled(w), "{w:?}");
            }
        }
    }

    /// Remembered verdicts are those of the texts themselves: texts of one length with
    /// different verdicts, each asked again while it is remembered and after it was dropped.
    #[test]
    fn a_remembered_verdict_is_the_texts_own() {
        let texts: Vec<String> = (0..100)
            .map(|i| {
                let word = if i % 3 == 0 { "BEGIN" } else { "SELCT" };
                format!("{word} {i:03}")
            })
            .collect();
        for _ in 0..3 {
            for (i, text) in texts.iter().enumerate() {
                assert_eq!(may_change_state_seen(text), i % 3 == 0, "{text:?}");
                // The one before it, still remembered.
                let before = &texts[i.saturating_sub(1)];
                assert_eq!(may_change_state_seen(before), spelled(before), "{before:?}");
            }
        }
        let long = format!("SELECT {}", "x".repeat(5000));
        assert!(!may_change_state_seen(&long));
        assert!(may_change_state_seen(&format!("{long} BEGIN")));
    }
}
