//! The decisions of an acquire, as plain functions of its pool's and the budget's counts and
//! of what the acquire has done so far: no connection, pool or runtime needed to test them.

use std::time::Duration;

use tokio::time::Instant;

/// How often a pool with no connection, waiting while every connection is in use, looks
/// again for one to close.
pub(super) const EVICT_RETRY: Duration = Duration::from_millis(5);

/// How long a queued pool with no connection waits for the permit its eviction freed
/// before it checks whether that permit went to an earlier acquire.
pub(super) const REEVICT_AFTER: Duration = Duration::from_millis(50);

/// At most how long a pool that wants to grow waits before it looks for a cold connection
/// again.
pub(super) const COLD_RETRY: Duration = Duration::from_millis(250);

/// What an acquire that found no idle connection may do, by its pool's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// No connection at all: queue for a permit, first come, first served, so that the
    /// permit an eviction frees is not taken by pools that only want to grow; it may close
    /// any idle connection, since it cannot make progress otherwise.
    Queue,
    /// Some connections and room for more: a free permit, or another pool's cold connection.
    Grow,
    /// At the pool's cap: wait for one of its own.
    Full,
}

impl Plan {
    /// The plan of a pool with `open` connections (counting those being opened), none idle.
    pub(super) fn of(open: usize, cap: usize) -> Self {
        if open >= cap {
            Self::Full
        } else if open == 0 {
            Self::Queue
        } else {
            Self::Grow
        }
    }
}

/// The budget's counts that decide whether a queued acquire closes a second connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueCounts {
    /// Connections being closed: permits on their way.
    pub(super) closing: usize,
    /// Acquires of pools with no connection, queued for a permit.
    pub(super) queued: usize,
}

/// What an acquire has done so far: waits are counted and evictions allowed once per
/// acquire, whatever its plan in between.
#[derive(Debug, Default)]
pub(super) struct History {
    waited: bool,
    /// Closed a cold connection to grow.
    cold_evicted: bool,
    /// Last closed a connection because its pool had none.
    warm_evicted_at: Option<Instant>,
}

impl History {
    /// Whether this is the acquire's first wait, the one counted.
    pub(super) fn first_wait(&mut self) -> bool {
        !std::mem::replace(&mut self.waited, true)
    }

    /// Whether, finding no free permit, the acquire may close another pool's idle
    /// connection now: `Some(how long that connection must have been idle)`.
    pub(super) fn may_evict(
        &self,
        plan: Plan,
        queue: QueueCounts,
        cold_after: Duration,
        now: Instant,
    ) -> Option<Duration> {
        match plan {
            Plan::Grow => (!self.cold_evicted).then_some(cold_after),
            // Once on arrival; again only if the permit it freed went to an earlier acquire
            // and no other is on its way for this one.
            Plan::Queue => {
                let stalled = self
                    .warm_evicted_at
                    .is_some_and(|at| now.duration_since(at) >= REEVICT_AFTER)
                    && queue.closing < queue.queued;
                (self.warm_evicted_at.is_none() || stalled).then_some(Duration::ZERO)
            }
            Plan::Full => None,
        }
    }

    /// Records that the eviction [`Self::may_evict`] allowed did close a connection.
    pub(super) fn evicted(&mut self, plan: Plan, now: Instant) {
        match plan {
            Plan::Grow => self.cold_evicted = true,
            Plan::Queue => self.warm_evicted_at = Some(now),
            Plan::Full => {}
        }
    }

    /// At most how long the acquire waits before it looks again, when nothing wakes it;
    /// `None`: only a wake-up (a connection back, a permit back) or the deadline ends it.
    pub(super) fn look_again(&self, plan: Plan, cold_after: Duration) -> Option<Duration> {
        match plan {
            // Shortly until it has closed a connection (one may have gone idle), then now
            // and then (the permit it freed may have gone to an earlier acquire).
            Plan::Queue => Some(if self.warm_evicted_at.is_some() {
                REEVICT_AFTER
            } else {
                EVICT_RETRY
            }),
            // As idle connections turn cold: nothing else may happen meanwhile to wake it.
            Plan::Grow if !self.cold_evicted => {
                Some((cold_after / 4).clamp(EVICT_RETRY, COLD_RETRY))
            }
            Plan::Grow | Plan::Full => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const COLD: Duration = Duration::from_secs(1);

    fn queue(closing: usize, queued: usize) -> QueueCounts {
        QueueCounts { closing, queued }
    }

    #[test]
    fn the_pools_counts_decide_the_plan() {
        assert_eq!(Plan::of(0, 3), Plan::Queue);
        assert_eq!(Plan::of(1, 3), Plan::Grow);
        assert_eq!(Plan::of(2, 3), Plan::Grow);
        assert_eq!(Plan::of(3, 3), Plan::Full);
        assert_eq!(Plan::of(0, 1), Plan::Queue);
        assert_eq!(Plan::of(1, 1), Plan::Full);
    }

    #[test]
    fn a_pool_at_its_cap_waits_for_its_own_only() {
        let h = History::default();
        assert_eq!(
            h.may_evict(Plan::Full, queue(0, 9), COLD, Instant::now()),
            None
        );
        assert_eq!(h.look_again(Plan::Full, COLD), None);
    }

    #[test]
    fn a_growing_pool_closes_only_a_cold_connection_and_once() {
        let mut h = History::default();
        let now = Instant::now();
        assert_eq!(h.may_evict(Plan::Grow, queue(0, 0), COLD, now), Some(COLD));
        assert_eq!(h.look_again(Plan::Grow, COLD), Some(COLD_RETRY));
        h.evicted(Plan::Grow, now);
        assert_eq!(h.may_evict(Plan::Grow, queue(0, 0), COLD, now + COLD), None);
        assert_eq!(
            h.look_again(Plan::Grow, COLD),
            None,
            "it waits for that permit"
        );
    }

    #[test]
    fn a_growing_pool_looks_again_as_connections_turn_cold() {
        let h = History::default();
        assert_eq!(h.look_again(Plan::Grow, 200 * MS), Some(50 * MS));
        assert_eq!(h.look_again(Plan::Grow, 4 * MS), Some(EVICT_RETRY));
        assert_eq!(
            h.look_again(Plan::Grow, Duration::from_secs(3600)),
            Some(COLD_RETRY)
        );
    }

    #[test]
    fn an_empty_pool_closes_any_connection_on_arrival_and_again_only_when_stalled() {
        let mut h = History::default();
        let t0 = Instant::now();
        assert_eq!(
            h.may_evict(Plan::Queue, queue(5, 1), COLD, t0),
            Some(Duration::ZERO)
        );
        assert_eq!(h.look_again(Plan::Queue, COLD), Some(EVICT_RETRY));

        h.evicted(Plan::Queue, t0);
        assert_eq!(h.look_again(Plan::Queue, COLD), Some(REEVICT_AFTER));
        // Its permit is on its way.
        assert_eq!(
            h.may_evict(Plan::Queue, queue(1, 1), COLD, t0 + 49 * MS),
            None
        );
        assert_eq!(
            h.may_evict(Plan::Queue, queue(0, 1), COLD, t0 + 49 * MS),
            None
        );
        // Long enough, but as many permits are on their way as acquires queued.
        assert_eq!(
            h.may_evict(Plan::Queue, queue(2, 2), COLD, t0 + REEVICT_AFTER),
            None
        );
        // Stalled: the permit went to an earlier acquire, none is coming for this one.
        let stalled = t0 + REEVICT_AFTER;
        assert_eq!(
            h.may_evict(Plan::Queue, queue(1, 2), COLD, stalled),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn waits_and_evictions_are_counted_per_acquire_across_plans() {
        let mut h = History::default();
        assert!(h.first_wait());
        assert!(!h.first_wait());

        // Its pool filled up and emptied again meanwhile: the warm eviction it already made
        // counts, the cold one it did not make is still allowed, and vice versa.
        let t0 = Instant::now();
        h.evicted(Plan::Queue, t0);
        assert_eq!(h.may_evict(Plan::Grow, queue(0, 0), COLD, t0), Some(COLD));
        h.evicted(Plan::Grow, t0);
        assert_eq!(
            h.may_evict(Plan::Queue, queue(0, 1), COLD, t0 + 10 * MS),
            None
        );
        assert_eq!(h.may_evict(Plan::Grow, queue(0, 0), COLD, t0 + COLD), None);

        let mut h = History::default();
        h.evicted(Plan::Grow, t0);
        assert_eq!(
            h.may_evict(Plan::Queue, queue(0, 1), COLD, t0),
            Some(Duration::ZERO)
        );
    }
}
