//! The invariants of the module's doc, under load and when requests go away.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::super::connector::First;
use super::super::tenant_pool::{CHECK_AFTER_IDLE, REUSE_WAIT, SETTLE_WITHIN};
use super::{Budget, Check, MS, Member as _, StandIn, counts, pool, settle};

#[tokio::test(start_paused = true)]
async fn the_budget_holds_with_many_concurrent_acquirers() {
    let budget = Budget::with_cold_after(5, 20 * MS);
    let db = StandIn::new();
    let pools: Vec<_> = (0..12)
        .map(|i| pool(&format!("p{i}"), &budget, &db, 3, Duration::from_secs(10)))
        .collect();
    let tasks: Vec<_> = (0..40)
        .map(|t| {
            let pools = pools.clone();
            tokio::spawn(async move {
                for j in 0..25 {
                    let conn = pools[(t * 7 + j * 3) % 12].acquire().await.unwrap();
                    tokio::time::sleep(((t + j) % 4 + 1) as u32 * MS).await;
                    drop(conn);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(db.max_live() <= 5, "the server saw {}", db.max_live());
    assert_eq!(db.max_live(), 5, "the load did use the budget");

    settle().await;
    let s = budget.stats();
    assert_eq!(
        (s.in_use, s.idle, s.refusals_total),
        (0, s.open, 0),
        "{s:?}"
    );
    assert_eq!(s.opened_total - s.closed_total, s.open as u64, "{s:?}");
    assert_eq!(db.live(), s.open);
    assert_eq!(budget.queued.load(Ordering::Relaxed), 0);
    assert_eq!(budget.closing.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_working_set_that_fits_the_budget_does_not_churn() {
    let budget = Budget::with_cold_after(6, Duration::from_secs(3600));
    let db = StandIn::new();
    let pools: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|l| pool(l, &budget, &db, 5, Duration::from_secs(10)))
        .collect();
    for p in &pools {
        drop(p.acquire().await.unwrap());
    }
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let pools = pools.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    let conn = pools[(task + i) % 4].acquire().await.unwrap();
                    tokio::time::sleep(MS).await;
                    drop(conn);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = budget.stats();
    assert!(s.waits_total > 0, "there was pressure: {s:?}");
    assert_eq!(s.evictions_total, 0, "{s:?}");
    assert!(s.opened_total <= 6, "{s:?}");
    for p in &pools {
        assert!(counts(p).0 >= 1, "{:?}", p.stats());
    }
}

#[tokio::test(start_paused = true)]
async fn an_acquire_dropped_while_queued_leaves_nothing_counted() {
    let budget = Budget::new(1);
    let db = StandIn::new();
    let [a, b, c] = ["a", "b", "c"].map(|l| pool(l, &budget, &db, 1, 1000 * MS));
    let held = a.acquire().await.unwrap();
    let gone = tokio::time::timeout(50 * MS, b.acquire()).await;
    assert!(gone.is_err(), "the budget is spent");
    assert_eq!(counts(&b), (0, 0, 0));
    assert_eq!(budget.queued.load(Ordering::Relaxed), 0);

    // Its place in the queue is gone with it: the next empty pool gets the next permit.
    drop(held);
    settle().await;
    let start = Instant::now();
    let _conn = c.acquire().await.unwrap();
    assert!(start.elapsed() < 50 * MS, "{:?}", start.elapsed());
    let s = budget.stats();
    assert_eq!((s.waits_total, s.refusals_total), (2, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn an_acquire_dropped_mid_connect_leaves_its_connection_to_the_next_one() {
    let budget = Budget::new(1);
    let db = StandIn::slow(100 * MS);
    let p = pool("p", &budget, &db, 1, 1000 * MS);
    let gone = tokio::time::timeout(50 * MS, p.acquire()).await;
    assert!(gone.is_err(), "the connect should still be pending");
    tokio::time::sleep(100 * MS).await;
    assert_eq!(counts(&p), (1, 1, 0));
    assert_eq!(budget.stats().open, 1);

    let conn = p.acquire().await.unwrap();
    assert_eq!((conn.id, db.connects()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_connection_broken_mid_request_never_reaches_the_next_request() {
    let budget = Budget::new(2);
    let db = StandIn::new();
    let p = pool("p", &budget, &db, 1, 1000 * MS);
    let mut conn = p.acquire().await.unwrap();
    let first = conn.id;
    conn.broken = true;
    drop(conn);

    let next = p.acquire().await.unwrap();
    assert_ne!(next.id, first);
    settle().await;
    assert_eq!((db.connects(), db.live()), (2, 1));
    assert_eq!(budget.stats().closed_total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_returned_connection_is_checked_by_what_its_request_left_open() {
    let budget = Budget::new(1);
    let db = StandIn::new();
    let p = pool("p", &budget, &db, 1, 1000 * MS);
    drop(p.acquire().await.unwrap());
    settle().await;
    let mut conn = p.acquire().await.unwrap();
    conn.set_dirty(true);
    drop(conn);
    settle().await;
    let mut conn = p.acquire().await.unwrap();
    conn.set_dirty(true);
    conn.set_dirty(false);
    drop(conn);
    settle().await;
    assert_eq!(
        *db.0.checks.lock().unwrap(),
        [Check::Abandoned, Check::Rollback, Check::Abandoned]
    );
    assert_eq!(db.connects(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_transaction_left_open_is_rolled_back_by_the_next_begin_in_its_round_trip() {
    let budget = Budget::new(1);
    let db = StandIn::new();
    let p = pool("p", &budget, &db, 1, 1000 * MS);
    let mut conn = p.acquire_ready(&First::Begin(None)).await.unwrap();
    conn.set_dirty(true);
    drop(conn);
    // Taken again at once: the rollback it owes goes with its next `BEGIN`, and no sweep
    // checks it on its own.
    let conn = p.acquire_ready(&First::Begin(None)).await.unwrap();
    assert_eq!((conn.id, conn.begun), (1, 2));
    assert_eq!(*db.0.checks.lock().unwrap(), [Check::Rollback]);
    drop(conn);
    settle().await;
    assert_eq!(
        *db.0.checks.lock().unwrap(),
        [Check::Rollback, Check::Abandoned]
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_owing_a_rollback_is_settled_within_the_bound() {
    let budget = Budget::new(1);
    let db = StandIn::new();
    let p = pool("p", &budget, &db, 1, 1000 * MS);
    let mut conn = p.acquire().await.unwrap();
    conn.set_dirty(true);
    drop(conn);
    let returned = Instant::now();
    // Nobody takes it: the sweep rolls it back, and not before its bound.
    while db.0.checks.lock().unwrap().is_empty() {
        tokio::time::sleep(MS / 4).await;
        assert!(
            returned.elapsed() <= 2 * SETTLE_WITHIN + MS,
            "not settled in time"
        );
    }
    assert!(returned.elapsed() >= SETTLE_WITHIN);
    assert_eq!(*db.0.checks.lock().unwrap(), [Check::Rollback]);
    // Settled, it owes nothing: the next acquire checks nothing.
    settle().await;
    let conn = p.acquire().await.unwrap();
    assert_eq!(conn.id, 1);
    assert_eq!(db.0.checks.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_broken_connection_fails_its_begin_and_another_is_taken() {
    let budget = Budget::new(2);
    let db = StandIn::new();
    let p = pool("p", &budget, &db, 2, 1000 * MS);
    let mut conn = p.acquire_ready(&First::Begin(None)).await.unwrap();
    conn.set_dirty(true);
    conn.broken = true;
    drop(conn);
    let next = p.acquire_ready(&First::Begin(None)).await.unwrap();
    assert_eq!((next.id, next.begun), (2, 1));
    settle().await;
    assert_eq!((db.connects(), db.live()), (2, 1));
    assert_eq!(budget.stats().closed_total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_still_busy_with_an_abandoned_query_is_not_waited_for() {
    let budget = Budget::new(2);
    let db = StandIn::new();
    let p = pool("p", &budget, &db, 2, 5000 * MS);
    let mut conn = p.acquire_ready(&First::Begin(None)).await.unwrap();
    conn.set_dirty(true);
    conn.busy_for = 3000 * MS;
    drop(conn);
    let asked = Instant::now();
    let next = p.acquire_ready(&First::Begin(None)).await.unwrap();
    // The next request gave up on it after `REUSE_WAIT` and got a new one.
    assert_eq!(next.id, 2);
    assert!(asked.elapsed() < 2 * REUSE_WAIT);
    drop(next);
    // The busy one finishes off the path, is rolled back, and stays open for reuse.
    tokio::time::sleep(4000 * MS).await;
    assert_eq!((db.connects(), db.live()), (2, 2));
    assert_eq!(budget.stats().closed_total, 0);
    assert!(db.0.checks.lock().unwrap().contains(&Check::Abandoned));
    assert_eq!(counts(&p), (2, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_connection_idle_past_the_bound_is_pinged_before_reuse() {
    let budget = Budget::new(1);
    let db = StandIn::new();
    let p = pool("p", &budget, &db, 1, 1000 * MS);
    let mut conn = p.acquire().await.unwrap();
    conn.settled();
    drop(conn);
    // Back at once: reused as it is.
    tokio::time::sleep(CHECK_AFTER_IDLE / 2).await;
    let mut conn = p.acquire().await.unwrap();
    assert_eq!(conn.id, 1);
    assert!(db.0.checks.lock().unwrap().is_empty());
    conn.settled();
    drop(conn);
    // Idle long enough for the server to have dropped it: checked first.
    tokio::time::sleep(CHECK_AFTER_IDLE).await;
    let conn = p.acquire().await.unwrap();
    assert_eq!(conn.id, 1);
    assert_eq!(*db.0.checks.lock().unwrap(), [Check::Ping]);
}
