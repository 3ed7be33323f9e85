//! Passwords (argon2id) and bearer tokens (random, stored as SHA-256, expiring).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};

use tenant_router::middleware::CurrentTenant;
use tenant_router::problem::ApiError;

/// Argon2 behind a limit: `concurrency` threads of its own run it (each run holds about
/// 19 MiB and tens of milliseconds of CPU), a short queue feeds them, and beyond the queue
/// the answer is a 503 with `Retry-After`. A flood of logins then costs bounded memory (a
/// few threads' worth, where the blocking pool would spread runs over many threads, each
/// keeping its allocator's memory).
///
/// The queue is fair: every caller names whose work it is (a tenant, the apex login, an
/// admin client's address), each of them may have at most `concurrency` runs waiting, and
/// the threads take the waiting runs in turn, one per name. A caller with nothing waiting
/// always gets a place, so tenants flooding their logins fill only their own shares, and
/// another tenant's login waits for one run per flooding tenant at most.
/// The threads also run at a lower CPU priority (nice 10, on Linux), so the CPU they take
/// is what the rest of the server leaves: other requests are not slowed by a login flood.
/// Shared by registration, login, the apex login and the admin token check.
pub struct PasswordLimiter {
    shared: Arc<Shared>,
}

type Job = Box<dyn FnOnce() + Send>;

struct Shared {
    state: Mutex<Queues>,
    ready: Condvar,
    /// Runs waiting, in all.
    capacity: usize,
    /// Runs waiting, per name.
    per_key: usize,
}

#[derive(Default)]
struct Queues {
    waiting: HashMap<String, VecDeque<Job>>,
    /// The names with waiting runs, in the order they are served; each appears once.
    turns: VecDeque<String>,
    /// Places taken per name: runs waiting, and admissions not yet turned into runs.
    held: HashMap<String, usize>,
    /// Places taken in all.
    total: usize,
    closed: bool,
}

impl Queues {
    fn release(&mut self, key: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.held.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(key);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next run, taking names in turn; `None` once the limiter is gone.
    fn next(&self) -> Option<Job> {
        let mut queues = self.lock();
        loop {
            if queues.closed {
                return None;
            }
            if let Some(key) = queues.turns.pop_front() {
                let (job, more) = {
                    let queue = queues.waiting.get_mut(&key).expect("a turn has runs");
                    (
                        queue.pop_front().expect("a turn has runs"),
                        !queue.is_empty(),
                    )
                };
                queues.release(&key);
                if more {
                    queues.turns.push_back(key);
                } else {
                    queues.waiting.remove(&key);
                }
                return Some(job);
            }
            queues = self.ready.wait(queues).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The CPU priority of the hashing threads: below the request threads', so a login flood
/// uses only the CPU nothing else wants.
const HASHING_NICE: i32 = 10;

fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASHING_NICE)
    {
        tracing::debug!(error = %e, "could not lower a password-hashing thread's priority");
    }
}

impl PasswordLimiter {
    /// `concurrency` threads; each caller may have as many runs waiting, and four times as
    /// many may wait in all.
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            ready: Condvar::new(),
            capacity: concurrency * 4,
            per_key: concurrency,
        });
        for n in 0..concurrency {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    while let Some(job) = shared.next() {
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        Self { shared }
    }

    /// Takes a place in the queue for `key` (whose work it is: a tenant id, say), or
    /// answers [`ApiError::Overloaded`] when the queue, or `key`'s share of it, is full.
    /// Taking the place before the work is ready (before the database lookup of a login)
    /// makes a refused request cost nothing else.
    pub fn admit(&self, key: &str) -> Result<Admission<'_>, ApiError> {
        let mut queues = self.shared.lock();
        let mine = queues.held.get(key).copied().unwrap_or(0);
        // A caller with nothing waiting always gets one place, even in a full queue: callers
        // at their share cannot, together, lock another one out. So the queue holds at most
        // `capacity` runs plus one per other caller.
        let room = mine == 0 || (queues.total < self.shared.capacity && mine < self.shared.per_key);
        if queues.closed || !room {
            return Err(overloaded());
        }
        *queues.held.entry(key.to_string()).or_default() += 1;
        queues.total += 1;
        Ok(Admission {
            shared: &self.shared,
            key: Some(key.to_string()),
        })
    }

    /// Runs `work` for `key` on the hashing threads: [`Self::admit`], then
    /// [`Admission::run`].
    pub async fn run<T: Send + 'static>(
        &self,
        key: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.admit(key)?.run(work).await
    }

    /// Hashes a password with argon2id, as `key`'s work.
    pub async fn hash(&self, key: &str, password: String) -> Result<String, ApiError> {
        self.run(key, move || hash_password(&password)).await?
    }
}

impl Drop for PasswordLimiter {
    fn drop(&mut self) {
        let mut queues = self.shared.lock();
        queues.closed = true;
        // Waiting runs are dropped, and with them their senders: their callers get an error.
        queues.waiting.clear();
        queues.turns.clear();
        queues.held.clear();
        queues.total = 0;
        drop(queues);
        self.shared.ready.notify_all();
    }
}

impl Default for PasswordLimiter {
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
    }
}

/// A place in the password queue, from [`PasswordLimiter::admit`]; dropped unused, it is
/// given back.
pub struct Admission<'a> {
    shared: &'a Shared,
    /// `None` once turned into a run.
    key: Option<String>,
}

impl Admission<'_> {
    /// Runs `work` on the hashing threads, in this place. Work whose request is gone before
    /// it starts is skipped.
    pub async fn run<T: Send + 'static>(
        mut self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(work());
            }
        });
        let key = self.key.take().expect("an admission runs once");
        {
            let mut queues = self.shared.lock();
            if queues.closed {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "no password-hashing thread is running"
                )));
            }
            let Queues { waiting, turns, .. } = &mut *queues;
            let queue = waiting.entry(key.clone()).or_default();
            if queue.is_empty() {
                turns.push_back(key);
            }
            queue.push_back(job);
        }
        self.shared.ready.notify_one();
        rx.await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a password-hashing thread stopped")))
    }

    /// Verifies a password against a PHC hash in this place. With no hash (unknown email),
    /// it verifies against a dummy hash, so both cases take the same time.
    pub async fn verify(self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        self.run(move || verify_password(&password, hash)).await?
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.lock().release(&key);
        }
    }
}

fn overloaded() -> ApiError {
    ApiError::Overloaded("too many password checks at once; retry in a moment".into())
}

/// The salt comes from the OS CSPRNG: `hash_password` draws it with getrandom.
fn hash_password(password: &str) -> Result<String, ApiError> {
    crate::argon::Argon2Reusing
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
}

fn verify_password(password: &str, hash: Option<String>) -> Result<bool, ApiError> {
    {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored hash is invalid: {e}")))?;
        let matches = crate::argon::Argon2Reusing
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(known && matches)
    }
}

fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        Argon2::default()
            .hash_password(b"no user has this password")
            .expect("hashing a constant")
            .to_string()
    })
}

/// A new random token (256 bits, hex) and the SHA-256 under which it is stored.
pub fn new_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator failed");
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = token_hash(&token);
    (token, hash)
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A request's logged-in user, within its tenant. Extracting it answers 401 for a missing,
/// unknown or expired token, and for a token of another tenant (it is not in this tenant's
/// database).
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    /// The user's id in the tenant's database.
    pub user_id: i64,
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tenant = CurrentTenant::from_request_parts(parts, state).await?;
        let token = BearerToken::from_request_parts(parts, state).await?;
        let db = tenant.db();
        let mut conn = db.read().await?;
        let user_id: Option<i64> = sqlx::query_scalar(
            "SELECT user_id FROM sessions
             WHERE tenant_id = $1 AND token_hash = $2 AND expires_at > now()",
        )
        .bind(db.scope())
        .bind(token.hash())
        .fetch_optional(&mut conn)
        .await?;
        user_id
            .map(|user_id| Self { user_id })
            .ok_or(ApiError::Unauthorized)
    }
}

/// The bearer token of a request, not yet checked against the database: for handlers that
/// check it in the same query as their own work, saving a round trip (see `notes::list`).
/// Extracting it answers 401 when the header is missing or not `Bearer`.
pub struct BearerToken(String);

impl BearerToken {
    /// The token's stored form, to compare with `sessions.token_hash`.
    pub fn hash(&self) -> Vec<u8> {
        token_hash(&self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        bearer_token(&parts.headers)
            .map(|t| Self(t.to_string()))
            .ok_or(ApiError::Unauthorized)
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is a non-empty one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `work` for `key` in a task of its own, refused at once if `key` has no place.
    fn spawn_run(
        limiter: &Arc<PasswordLimiter>,
        key: &'static str,
        work: impl FnOnce() + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<(), ApiError>> {
        let limiter = Arc::clone(limiter);
        let place = limiter.admit(key).map(|_| ());
        tokio::spawn(async move {
            place?;
            limiter.run(key, work).await
        })
    }

    #[tokio::test]
    async fn each_caller_has_its_share_and_callers_are_served_in_turn() {
        let limiter = Arc::new(PasswordLimiter::new(2));
        // Both threads busy until told.
        let mut release = Vec::new();
        let (started_tx, started) = std::sync::mpsc::channel();
        for key in ["x", "y"] {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let started_tx = started_tx.clone();
            release.push(tx);
            drop(spawn_run(&limiter, key, move || {
                let _ = started_tx.send(());
                let _ = rx.recv();
            }));
        }
        let mut running = 0;
        while running < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            running += started.try_iter().count();
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let record = |name: &'static str| {
            let order = Arc::clone(&order);
            move || order.lock().unwrap().push(name)
        };
        // Two waiting for "a" is its share; a third is refused, "b" is not.
        let a1 = spawn_run(&limiter, "a", record("a1"));
        tokio::task::yield_now().await;
        let a2 = spawn_run(&limiter, "a", record("a2"));
        tokio::task::yield_now().await;
        assert!(matches!(
            limiter.admit("a").map(|_| ()),
            Err(ApiError::Overloaded(_))
        ));
        let b1 = spawn_run(&limiter, "b", record("b1"));
        // A place given back unused is free again.
        let held = limiter.admit("c").unwrap();
        let _held_too = limiter.admit("c").unwrap();
        assert!(limiter.admit("c").is_err());
        drop(held);
        assert!(limiter.admit("c").is_ok());
        // Wait until all three are queued, then free one thread: it takes them in turn.
        for _ in 0..100 {
            if limiter
                .shared
                .lock()
                .waiting
                .values()
                .map(VecDeque::len)
                .sum::<usize>()
                == 3
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        release[0].send(()).unwrap();
        for task in [a1, a2, b1] {
            task.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a1", "b1", "a2"]);
        release[1].send(()).unwrap();
    }

    #[tokio::test]
    async fn the_queue_is_bounded_but_nobody_is_locked_out() {
        let limiter = PasswordLimiter::new(2);
        // Eight places in all, two per caller: four callers at their share fill it.
        let places: Vec<_> = ["a", "a", "b", "b", "c", "c", "d", "d"]
            .iter()
            .map(|k| limiter.admit(k).unwrap())
            .collect();
        assert!(matches!(
            limiter.admit("a").map(|_| ()),
            Err(ApiError::Overloaded(_))
        ));
        // The queue is full, but a caller with nothing waiting still gets one place, and
        // only one.
        let e = limiter.admit("e").unwrap();
        assert!(matches!(
            limiter.admit("e").map(|_| ()),
            Err(ApiError::Overloaded(_))
        ));
        drop((places, e));
        assert!(limiter.run("e", || 7).await.unwrap() == 7);
    }
}
