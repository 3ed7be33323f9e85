//! Keeping one instance's registry equal to the control database.
//!
//! The protocol, and why it cannot lose a change:
//! - Every write commits to the control database under one lock and takes its version from
//!   one global sequence, so versions become visible in increasing order (`crate::control`).
//! - The registry's version `v` means "everything up to `v` is applied". Catching up is one
//!   query, `changes_since(v)`, whose result holds every committed change above `v`.
//! - A hint on the bus only says "there is something newer than N". A subscriber that gets
//!   one newer than what it holds catches up; an older one is ignored.
//! - On every (re)subscribe, the subscriber subscribes first and catches up second, so a
//!   change committed in between is either in the catch-up or arrives as a hint.
//! - A periodic reconcile compares the control database's highest version with `v`, which
//!   covers a hint dropped anywhere (publisher crash, Redis restart, a full output buffer).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::watch;

use crate::bus::Hint;
use crate::control::ControlDb;
use crate::registry::Registry;

/// How long connecting and subscribing may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle subscriber pings Redis, to notice a connection that died silently.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// After a failed catch-up (control database unreachable), how soon to try again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The bus as this instance sees it, for `/readyz`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BusState {
    /// No Redis configured: changes arrive by reconciling only.
    Disabled,
    /// Not connected yet.
    Connecting,
    /// Subscribed.
    Connected,
    /// Redis unreachable: serving what is held, reconciling, reconnecting.
    Degraded,
}

/// A report on the bus and the last synchronisation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct BusReport {
    /// The state.
    pub state: BusState,
    /// Since when (Unix seconds).
    pub since: u64,
    /// The last error, while degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Keeps a registry in step with the control database: catch-up, reconcile, and the bus
/// subscriber loop.
pub struct ConfigSync {
    registry: Arc<Registry>,
    control: ControlDb,
    /// One catch-up at a time, so they apply in order and never query twice for one change.
    catching_up: tokio::sync::Mutex<()>,
    /// The token of the last change applied (see [`crate::control::Changes`]): by version,
    /// so a catch-up can tell that the control database still holds that change.
    mark: Mutex<Option<(i64, String)>>,
    report: Mutex<BusReport>,
}

/// Where the subscriber listens.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Redis.
    pub redis: crate::RedisEndpoint,
    /// Channel name.
    pub channel: String,
}

enum Ended {
    Shutdown,
    Lost(String),
}

impl ConfigSync {
    /// A sync for `registry` against `control`.
    pub fn new(registry: Arc<Registry>, control: ControlDb) -> Self {
        Self {
            registry,
            control,
            catching_up: tokio::sync::Mutex::new(()),
            mark: Mutex::new(None),
            report: Mutex::new(BusReport {
                state: BusState::Connecting,
                since: unix_now(),
                error: None,
            }),
        }
    }

    /// The control database it follows.
    pub fn control(&self) -> &ControlDb {
        &self.control
    }

    /// The registry it keeps.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The bus as of now.
    pub fn report(&self) -> BusReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_state(&self, state: BusState, error: Option<String>) {
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        if report.state != state {
            match state {
                BusState::Degraded => tracing::warn!(
                    error = error.as_deref().unwrap_or(""),
                    "configuration bus degraded: serving the tenants held, reconnecting"
                ),
                BusState::Connected => tracing::info!("configuration bus connected"),
                _ => {}
            }
            report.since = unix_now();
        }
        report.state = state;
        report.error = error;
    }

    /// Loads every tenant, replacing what the registry holds.
    pub async fn full_load(&self) -> anyhow::Result<()> {
        let _guard = self.catching_up.lock().await;
        self.full_load_locked().await
    }

    async fn full_load_locked(&self) -> anyhow::Result<()> {
        let (tenants, version, mark) = self.control.load_all_marked().await?;
        self.registry.replace_all(tenants, version);
        *self.mark.lock().unwrap_or_else(|e| e.into_inner()) = mark.map(|m| (version, m));
        Ok(())
    }

    /// Applies everything the control database has above the registry's version. Returns
    /// how many changes were applied. When the control database no longer holds the change
    /// this instance applied last (it was restored to an earlier state), reloads everything
    /// instead.
    pub async fn catch_up(&self) -> anyhow::Result<usize> {
        let _guard = self.catching_up.lock().await;
        let held = self.registry.version();
        let changes = self.control.changes_after(held).await?;
        let remembered = self.mark.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((version, mark)) = remembered
            && version == held
            && changes.mark_at_after.as_ref() != Some(&mark)
        {
            tracing::warn!(
                held,
                "the control database no longer holds the change this instance applied \
                     last (restored from a backup?); reloading every tenant"
            );
            self.full_load_locked().await?;
            return Ok(self.registry.snapshot().len());
        }
        let applied = self.registry.apply(changes.changes);
        if let Some(last) = changes.last_mark
            && last.0 == self.registry.version()
        {
            *self.mark.lock().unwrap_or_else(|e| e.into_inner()) = Some(last);
        }
        Ok(applied)
    }

    /// Compares versions with the control database and catches up if behind. If the control
    /// database is *behind* this instance, or holds another change at this instance's
    /// version (restored from a backup, then written to), reloads everything.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let held = self.registry.version();
        let latest = self.control.max_version().await?;
        let remembered = self.mark.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((version, mark)) = remembered.filter(|(v, _)| *v == held && held <= latest)
            && self.control.mark_at(version).await?.as_ref() != Some(&mark)
        {
            tracing::warn!(
                held,
                latest,
                "the control database holds another change at this instance's version \
                     (restored from a backup?); reloading every tenant"
            );
            return self.full_load().await;
        }
        if latest > held {
            let n = self.catch_up().await?;
            tracing::info!(
                held,
                latest,
                applied = n,
                "reconcile found changes no hint announced"
            );
        } else if latest < held {
            tracing::warn!(
                held,
                latest,
                "the control database is behind this instance; reloading every tenant"
            );
            self.full_load().await?;
        }
        Ok(())
    }

    /// Runs until `shutdown` turns true: subscribes to the bus (when configured) and catches
    /// up on every hint and every (re)subscribe, and reconciles every `interval`. Errors are
    /// logged and retried; this never gives up.
    pub async fn run(
        self: Arc<Self>,
        bus: Option<BusConfig>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut reconcile =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(bus) = bus else {
            self.set_state(BusState::Disabled, None);
            loop {
                tokio::select! {
                    _ = reconcile.tick() => self.reconcile_logged().await,
                    () = self.registry.stale_suspected() => self.stale_catch_up().await,
                    () = stopped(&mut shutdown) => return,
                }
            }
        };
        let client = match bus.redis.client() {
            Ok(c) => c,
            Err(e) => {
                // Settings validate the URL at start-up; this is a last resort.
                self.set_state(BusState::Degraded, Some(format!("bad Redis URL: {e}")));
                return;
            }
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&bus.channel).await?;
                redis::RedisResult::Ok(pubsub)
            })
            .await;
            let error = match subscribed {
                Ok(Ok(pubsub)) => {
                    self.set_state(BusState::Connected, None);
                    backoff = BACKOFF_MIN;
                    match self.listen(pubsub, &mut reconcile, &mut shutdown).await {
                        Ended::Shutdown => return,
                        Ended::Lost(e) => e,
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connecting to Redis timed out".to_string(),
            };
            self.set_state(BusState::Degraded, Some(error));
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    _ = reconcile.tick() => self.reconcile_logged().await,
                    () = self.registry.stale_suspected() => self.stale_catch_up().await,
                    () = stopped(&mut shutdown) => return,
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Serves one subscription until it is lost or shutdown comes.
    async fn listen(
        &self,
        pubsub: redis::aio::PubSub,
        reconcile: &mut tokio::time::Interval,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let (mut sink, mut messages) = pubsub.split();
        // Subscribed first, now catch up: nothing committed before this point can be missed,
        // and anything after it comes as a hint.
        let mut behind = self.catch_up_logged().await.is_err();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut retry = tokio::time::interval(RETRY_AFTER_FAILURE);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Ended::Lost("the Redis connection closed".into());
                    };
                    let hint = Hint::parse(message.get_payload_bytes());
                    let newer = hint
                        .as_ref()
                        .is_none_or(|h| h.version > self.registry.version());
                    if newer {
                        behind = self.catch_up_logged().await.is_err();
                    }
                    if let Some(sent) = hint.and_then(|h| h.sent_at_ms).filter(|_| !behind) {
                        metrics::histogram!(crate::telemetry::PROPAGATION_LAG).record(
                            crate::telemetry::ms_between(sent, crate::telemetry::unix_ms()),
                        );
                    }
                }
                _ = retry.tick(), if behind => {
                    behind = self.catch_up_logged().await.is_err();
                }
                () = self.registry.stale_suspected() => self.stale_catch_up().await,
                _ = reconcile.tick() => self.reconcile_logged().await,
                _ = ping.tick() => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(format!("ping failed: {e}")),
                        Err(_) => return Ended::Lost("Redis did not answer a ping".into()),
                    }
                }
                () = stopped(shutdown) => return Ended::Shutdown,
            }
        }
    }

    /// A request found its tenant moved away from where this instance sent it: catch up now
    /// rather than at the next hint or reconcile. At most one such catch-up per 100 ms, so a
    /// burst of refused requests costs one query.
    async fn stale_catch_up(&self) {
        if let Ok(n) = self.catch_up_logged().await
            && n > 0
        {
            tracing::info!(
                applied = n,
                "caught up after a request found its tenant moved"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn catch_up_logged(&self) -> anyhow::Result<usize> {
        let result = self
            .catch_up()
            .await
            .context("catching up with the control database");
        if let Err(e) = &result {
            tracing::warn!(error = %format!("{e:#}"), "will retry");
        }
        result
    }

    async fn reconcile_logged(&self) {
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %format!("{e:#}"), "reconciling with the control database failed; will retry");
        }
    }
}

/// Completes once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
