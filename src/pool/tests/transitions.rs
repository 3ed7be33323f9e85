//! Each transition of the acquire's state machine.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Budget, CLOSE_GRACE, MS, StandIn, counts, pool, refused, settle};

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_the_connection_another_request_puts_back() {
    let budget = Budget::new(4);
    let db = StandIn::new();
    let p = pool("a", &budget, &db, 1, 1000 * MS);
    let first = p.acquire().await.unwrap();
    let id = first.id;
    let waiter = tokio::spawn({
        let p = Arc::clone(&p);
        async move { p.acquire().await }
    });
    tokio::time::sleep(100 * MS).await;
    assert!(!waiter.is_finished(), "the pool is at its cap");

    drop(first);
    let second = waiter.await.unwrap().unwrap();
    assert_eq!(second.id, id, "the same connection, not a new one");
    assert_eq!(db.connects(), 1);
    let s = budget.stats();
    assert_eq!((s.waits_total, s.refusals_total), (1, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn the_wait_ends_with_a_refusal_exactly_at_the_acquire_timeout() {
    let budget = Budget::new(4);
    let db = StandIn::new();
    let p = pool("a", &budget, &db, 1, 300 * MS);
    let _held = p.acquire().await.unwrap();
    let start = Instant::now();
    let waiter = tokio::spawn({
        let p = Arc::clone(&p);
        async move { (p.acquire().await.err(), Instant::now()) }
    });
    tokio::task::yield_now().await;
    tokio::time::advance(299 * MS).await;
    assert!(!waiter.is_finished(), "still within the acquire timeout");

    tokio::time::advance(MS).await;
    let (err, at) = waiter.await.unwrap();
    assert!(matches!(err, Some(sqlx::Error::PoolTimedOut)), "{err:?}");
    assert_eq!(at - start, 300 * MS);
    let s = budget.stats();
    assert_eq!((s.waits_total, s.refusals_total), (1, 1), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn an_empty_pool_takes_the_slot_freed_by_closing_another_pools_idle_connection() {
    let budget = Budget::new(1);
    let db = StandIn::new();
    let warm = pool("warm", &budget, &db, 2, 1000 * MS);
    let empty = pool("empty", &budget, &db, 2, 1000 * MS);
    drop(warm.acquire().await.unwrap());
    settle().await;
    assert_eq!(counts(&warm), (1, 1, 0));

    let start = Instant::now();
    let conn = empty.acquire().await.unwrap();
    assert!(
        start.elapsed() >= CLOSE_GRACE,
        "the permit comes back after the grace"
    );
    assert_eq!((counts(&warm), counts(&empty)), ((0, 0, 0), (1, 0, 1)));
    assert_eq!(db.max_live(), 1, "never two at once");
    let s = budget.stats();
    assert_eq!(
        (s.evictions_total, s.waits_total, s.refusals_total),
        (1, 1, 0),
        "{s:?}"
    );
    drop(conn);
}

#[tokio::test(start_paused = true)]
async fn a_growing_pool_takes_another_pools_connection_once_it_turns_cold() {
    let budget = Budget::with_cold_after(2, 200 * MS);
    let db = StandIn::new();
    let a = pool("a", &budget, &db, 5, 3000 * MS);
    let b = pool("b", &budget, &db, 5, 3000 * MS);
    let _held = a.acquire().await.unwrap();
    drop(b.acquire().await.unwrap());
    settle().await;

    let start = Instant::now();
    let _second = a.acquire().await.unwrap();
    let waited = start.elapsed();
    assert!(waited > 150 * MS && waited < 300 * MS, "{waited:?}");
    assert_eq!((counts(&a).0, counts(&b).0), (2, 0));
    let s = budget.stats();
    assert_eq!((s.evictions_total, s.refusals_total), (1, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_growing_pool_never_takes_a_warm_connection() {
    let budget = Budget::with_cold_after(2, Duration::from_secs(3600));
    let db = StandIn::new();
    let a = pool("a", &budget, &db, 5, 300 * MS);
    let b = pool("b", &budget, &db, 5, 300 * MS);
    let _held = a.acquire().await.unwrap();
    drop(b.acquire().await.unwrap());
    settle().await;

    let err = refused(a.acquire().await);
    assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
    assert_eq!(counts(&b), (1, 1, 0));
    let s = budget.stats();
    assert_eq!((s.evictions_total, s.refusals_total), (0, 1), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn pools_without_connections_are_served_in_arrival_order() {
    let budget = Budget::new(1);
    let db = StandIn::new();
    let holder = pool("holder", &budget, &db, 1, 1000 * MS);
    let held = holder.acquire().await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let p = pool(&format!("q{i}"), &budget, &db, 1, 1000 * MS);
        let served = Arc::clone(&served);
        tasks.push(tokio::spawn(async move {
            let conn = p.acquire().await.unwrap();
            served.lock().unwrap().push(i);
            tokio::time::sleep(5 * MS).await;
            drop(conn);
        }));
        // Apart, so that they look again at different times: their order is the queue's.
        tokio::time::sleep(MS).await;
    }
    tokio::time::sleep(20 * MS).await;
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*served.lock().unwrap(), [0, 1, 2, 3]);
    assert_eq!(budget.stats().refusals_total, 0);
}

#[tokio::test(start_paused = true)]
async fn a_permit_that_comes_once_the_pool_is_full_goes_back() {
    // Two acquires of an empty pool with room for one queue for permits; both get one, the
    // second one's permit goes back, and it waits for the first one's connection.
    let budget = Budget::new(2);
    let db = StandIn::new();
    let (h1, h2) = (
        pool("h1", &budget, &db, 1, 1000 * MS),
        pool("h2", &budget, &db, 1, 1000 * MS),
    );
    let (x1, x2) = (h1.acquire().await.unwrap(), h2.acquire().await.unwrap());
    let p = pool("p", &budget, &db, 1, 1000 * MS);
    let acquires: Vec<_> = (0..2)
        .map(|_| {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                let conn = p.acquire().await.unwrap();
                tokio::time::sleep(10 * MS).await;
                conn.id
            })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(budget.queued.load(Ordering::Relaxed), 2);
    drop((x1, x2));
    let mut ids = Vec::new();
    for a in acquires {
        ids.push(a.await.unwrap());
    }
    assert_eq!(ids[0], ids[1], "one connection, used in turn");
    assert_eq!(db.connects(), 3);
    settle().await;
    let s = budget.stats();
    assert_eq!(
        (s.open, s.evictions_total, s.refusals_total),
        (1, 2, 0),
        "{s:?}"
    );
    assert_eq!(budget.queued.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_outlasts_the_acquire_timeout_is_refused_and_leaves_nothing_counted() {
    let budget = Budget::new(1);
    let db = StandIn::slow(Duration::from_secs(10));
    let p = pool("p", &budget, &db, 1, 300 * MS);
    let start = Instant::now();
    let err = refused(p.acquire().await);
    assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
    assert_eq!(start.elapsed(), 300 * MS);
    assert_eq!(counts(&p), (0, 0, 0));

    // Dropped meanwhile, the same.
    let gone = tokio::time::timeout(50 * MS, p.acquire()).await;
    assert!(gone.is_err());
    tokio::time::sleep(300 * MS).await;
    assert_eq!(counts(&p), (0, 0, 0));
    let s = budget.stats();
    assert_eq!(
        (s.open, s.opened_total, s.refusals_total),
        (0, 0, 2),
        "{s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_connect_returns_its_error_and_leaves_nothing_counted() {
    let budget = Budget::new(1);
    let db = StandIn::refusing();
    let p = pool("p", &budget, &db, 1, 300 * MS);
    let err = refused(p.acquire().await);
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
    assert_eq!(counts(&p), (0, 0, 0));
    let s = budget.stats();
    assert_eq!((s.open, s.refusals_total), (0, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retired_pool_refuses_at_once_and_closes_what_comes_back() {
    let budget = Budget::new(1);
    let db = StandIn::new();
    let p = pool("p", &budget, &db, 1, 1000 * MS);
    let conn = p.acquire().await.unwrap();
    p.close();
    let err = refused(p.acquire().await);
    assert!(matches!(err, sqlx::Error::PoolClosed), "{err}");
    drop(conn);
    settle().await;
    assert_eq!((counts(&p), db.live()), ((0, 0, 0), 0));
    let s = budget.stats();
    assert_eq!((s.open, s.closed_total, s.waits_total), (0, 1, 0), "{s:?}");
}
