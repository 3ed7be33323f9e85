//! The edge under abuse: slow request heads, idle and surplus connections, requests past
//! their deadline, and a flood of password checks.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::cluster::Cluster;
use crate::harness::{TestApp, shared_postgres, spec, tenant_database};

async fn app_with(adjust: impl FnOnce(&mut tenant_router_server::config::Settings)) -> TestApp {
    let pg = shared_postgres().await;
    let t1 = tenant_database(pg, "edge").await;
    TestApp::spawn_with(vec![spec("tenant-1", &["tenant-1.test.com"], t1)], adjust).await
}

/// Reads until the server closes the connection; the bytes read. Fails after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection is still open after {within:?}"),
        }
    }
}

#[tokio::test]
async fn slow_heads_and_idle_connections_are_closed() {
    let app = app_with(|s| s.http.header_timeout = Duration::from_secs(1)).await;
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: tenant-1.test.com\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // A keep-alive connection that made one request and then says nothing.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: tenant-1.test.com\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    for stream in &mut slow {
        let got = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(
            !String::from_utf8_lossy(&got).contains("200 OK"),
            "an unfinished head got an answer"
        );
    }
    let got = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 OK"));
    assert!(started.elapsed() >= Duration::from_millis(900));
    // And the server still serves.
    let r = app.get("tenant-1.test.com", "/healthz", None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_request_past_its_deadline_is_a_503_and_frees_its_connection() {
    // Long enough for register and login (argon2) on a loaded machine, which are under the
    // same deadline: at 1 s a busy CI run saw the login itself answered 503.
    let app = app_with(|s| s.http.request_timeout = Duration::from_secs(5)).await;
    let token = app.user_token("tenant-1.test.com", "waiter").await;
    // Someone holds the tenant's notes table: the list waits on the lock.
    let mut holder = app.tenant_connection("tenant-1").await;
    sqlx::raw_sql("BEGIN; LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let r = app
        .get("tenant-1.test.com", "/api/notes", Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    // The abandoned query did not keep its connection: the next request is served.
    let r = app
        .get("tenant-1.test.com", "/api/notes", Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Reads one whole answer from `stream`, after the bytes already in `got` (what an earlier
/// read brought of later answers, with pipelined requests): its status and body. Fails
/// after 10 s, or when the connection closes first.
pub(crate) async fn read_answer(stream: &mut TcpStream, got: &mut Vec<u8>) -> (u16, String) {
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(got).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            let end = head_end + 4 + length;
            if got.len() >= end {
                let answer = (text[9..12].parse().unwrap(), text[head_end + 4..end].into());
                got.drain(..end);
                return answer;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "the connection closed");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Sends `GET /api/notes` on a kept-alive connection; the answer's status code.
async fn notes_on(stream: &mut TcpStream, token: &str) -> u16 {
    let request = format!(
        "GET /api/notes HTTP/1.1\r\nHost: tenant-1.test.com\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(stream, &mut Vec::new()).await.0
}

/// Holds the tenant's notes table for `hold`, from now: a list waits on it that long.
pub(crate) async fn hold_notes(app: &TestApp, hold: Duration) -> tokio::task::JoinHandle<()> {
    let mut holder = app.tenant_connection("tenant-1").await;
    sqlx::raw_sql("BEGIN; LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut holder)
            .await
            .unwrap();
    })
}

/// Each request on a kept-alive connection gets the whole deadline from when it began: a
/// later request is not cut short by an earlier one's deadline, one past its own is still
/// a 503, and the request after that 503 again gets its whole deadline.
#[tokio::test]
async fn each_request_on_a_connection_gets_its_own_deadline() {
    let limit = Duration::from_secs(4);
    let app = app_with(|s| s.http.request_timeout = limit).await;
    let token = app.user_token("tenant-1.test.com", "keeper").await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(notes_on(&mut stream, &token).await, 200);
    // Past the first request's deadline before this one is answered, within its own.
    tokio::time::sleep(limit * 5 / 8).await;
    let held = hold_notes(&app, limit / 2).await;
    assert_eq!(notes_on(&mut stream, &token).await, 200);
    held.await.unwrap();
    let held = hold_notes(&app, limit * 5 / 4).await;
    assert_eq!(notes_on(&mut stream, &token).await, 503);
    held.await.unwrap();
    let held = hold_notes(&app, limit / 2).await;
    assert_eq!(notes_on(&mut stream, &token).await, 200);
    held.await.unwrap();
}

/// The wait for a head begins again after each answer: a connection idle after a request
/// that took longer than the head deadline is still closed one head deadline later, and
/// the next head sent a byte at a time is cut off like the first one would be.
#[tokio::test]
async fn the_head_deadline_starts_again_after_each_answer() {
    let head = Duration::from_secs(1);
    let app = app_with(|s| s.http.header_timeout = head).await;
    let token = app.user_token("tenant-1.test.com", "idler").await;

    // Longer than the head deadline, within the request deadline: answered, then closed
    // once idle for the head deadline.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let held = hold_notes(&app, head * 2).await;
    assert_eq!(notes_on(&mut idle, &token).await, 200);
    held.await.unwrap();
    let answered = Instant::now();
    let got = read_until_closed(&mut idle, head * 5).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        answered.elapsed() >= head * 3 / 4,
        "closed before the head deadline"
    );

    // A second head a byte every 300 ms: closed before it is whole.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(notes_on(&mut slow, &token).await, 200);
    let request = b"GET /healthz HTTP/1.1\r\nHost: tenant-1.test.com\r\n\r\n";
    let mut closed = false;
    for byte in request {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let got = if closed {
        Vec::new()
    } else {
        read_until_closed(&mut slow, head * 5).await
    };
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "a head that took {:?} was answered",
        Duration::from_millis(300) * request.len() as u32
    );
}

/// An answer that takes longer than the head deadline to go out (a big page, a slow reader)
/// is written whole: the wait for the next head begins with its last write, not when it
/// was ready (hyper reads while it writes, to see the client go away).
#[tokio::test]
async fn a_slow_reader_gets_the_whole_answer() {
    let head = Duration::from_secs(1);
    let app = app_with(|s| {
        s.http.header_timeout = head;
        // A note's 10,000 characters, each sent escaped in 6 bytes.
        s.max_body_bytes = 128 * 1024;
    })
    .await;
    let token = app.user_token("tenant-1.test.com", "slowreader").await;
    // 100 notes that JSON escapes to 60 KB each: a 6 MB page, more than a socket buffers.
    let content = "\u{1}".repeat(10_000);
    for _ in 0..100 {
        let r = app
            .post(
                "tenant-1.test.com",
                "/api/notes",
                json!({ "content": content }),
                Some(&token),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/notes?limit=100 HTTP/1.1\r\nHost: tenant-1.test.com\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // About 2 MB a second: three head deadlines and more to read it all.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (start, end) = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the answer stalled")
            .unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a content-length");
            if got.len() >= head_end + 4 + length {
                break (head_end + 4, head_end + 4 + length);
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    let page: serde_json::Value = serde_json::from_slice(&got[start..end]).unwrap();
    assert_eq!(page["notes"].as_array().unwrap().len(), 100);
    // Read whole, then idle: still closed within a head deadline of the last write.
    let rest = read_until_closed(&mut stream, head * 5).await;
    assert!(rest.is_empty(), "{} more bytes", rest.len());
}

/// A request's body is under the request deadline, not the head deadline: a body that
/// takes longer than the head deadline to arrive is still read and answered.
#[tokio::test]
async fn a_slow_body_is_under_the_request_deadline() {
    let head = Duration::from_secs(1);
    let app = app_with(|s| {
        s.http.header_timeout = head;
        s.http.request_timeout = Duration::from_secs(10);
    })
    .await;
    let token = app.user_token("tenant-1.test.com", "slowpoke").await;
    let body = br#"{"content":"written slowly"}"#;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head_text = format!(
        "POST /api/notes HTTP/1.1\r\nHost: tenant-1.test.com\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head_text.as_bytes()).await.unwrap();
    for part in body.chunks(body.len() / 3 + 1) {
        tokio::time::sleep(head * 3 / 4).await;
        stream.write_all(part).await.unwrap();
    }
    let (status, answer) = read_answer(&mut stream, &mut Vec::new()).await;
    assert_eq!(status, 201, "{answer}");
    assert!(answer.contains("written slowly"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    let app = app_with(|s| s.http.max_connections = 3).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: tenant-1.test.com\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut fourth = TcpStream::connect(app.addr).await.unwrap();
    fourth.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf))
            .await
            .is_err(),
        "a fourth connection was served while three were open"
    );
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_keeps_memory_bounded_and_other_tenants_served() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let pg = shared_postgres().await;
    for id in ["flood-a", "flood-b", "flood-c", "flood-d", "flood-e"] {
        let db = tenant_database(pg, id).await;
        let r = cluster
            .admin(
                &server,
                Method::POST,
                "/admin/tenants",
                Some(json!({"id": id, "hosts": [format!("{id}.example.org")], "database": db.expose()})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let login = |host: &'static str| {
        cluster
            .client
            .post(server.url("/api/login"))
            .header("Host", host)
            .json(&json!({"email": "nobody@example.com", "password": "wrong password"}))
            .send()
    };
    let pid = server.pid().as_raw() as u32;
    let before = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // 300 wrong-password logins at once on one tenant, while another tenant is served, and
    // then a flood kept up on that tenant while the other one logs in.
    let flood = futures_util::future::join_all((0..300).map(|_| login("flood-a.example.org")));
    let other = async {
        let mut served = 0;
        for _ in 0..20 {
            let r = cluster
                .client
                .get(server.url("/api/notes"))
                .header("Host", "flood-b.example.org")
                .send()
                .await
                .unwrap();
            if r.status() == StatusCode::UNAUTHORIZED {
                served += 1;
            }
        }
        served
    };
    let (answers, served) = tokio::join!(flood, other);
    let mut refused = 0;
    for r in answers {
        let r = r.unwrap();
        match r.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.headers()["retry-after"], "1");
                refused += 1;
            }
            other => panic!("a login answered {other}"),
        }
    }
    let flooding = std::sync::atomic::AtomicBool::new(true);
    // 32 clients that each log in again as soon as they are answered, on each of four
    // tenants: together they hold every place a share allows.
    let kept_up = futures_util::future::join_all(
        [
            "flood-a.example.org",
            "flood-c.example.org",
            "flood-d.example.org",
            "flood-e.example.org",
        ]
        .into_iter()
        .flat_map(|host| std::iter::repeat_n(host, 8))
        .map(|host| {
            let flooding = &flooding;
            let login = &login;
            async move {
                let mut sent = 0;
                while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                    login(host).await.unwrap();
                    sent += 1;
                }
                sent
            }
        }),
    );
    let other_logins = async {
        // Let the flood fill the queue first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(login("flood-b.example.org").await.unwrap().status());
        }
        flooding.store(false, std::sync::atomic::Ordering::Relaxed);
        statuses
    };
    let (sent, other_logins) = tokio::join!(kept_up, other_logins);
    assert!(
        sent.iter().all(|n| *n > 1),
        "the flood was not kept up during the other tenant's logins"
    );
    // Each tenant has its own share of the password queue, taken in turn, and a tenant with
    // nothing waiting always gets a place: the flooding tenants fill only their own.
    assert!(
        other_logins.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "the other tenant's logins during the flood answered {other_logins:?}"
    );
    sampler.abort();
    assert!(refused > 0, "300 argon2 runs at once were all accepted");
    assert_eq!(served, 20, "the other tenant was not served meanwhile");
    // Each argon2 run holds about 19 MiB: unbounded, 300 at once took gigabytes; with a
    // fresh allocation per run, the allocator kept about 20 MiB per accepted check. Now: a
    // reused buffer per hashing thread (two here).
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "login flood: RSS {before} KiB before, {peak} KiB at peak; {refused} of 300 refused with 503"
    );
    assert!(
        peak < before + 100 * 1024,
        "resident memory grew from {before} KiB to {peak} KiB"
    );
}

async fn show(app: &TestApp, tenant: &str, setting: &str) -> String {
    let snapshot = app.registry.snapshot();
    let entry = snapshot.get(&tenant.parse().unwrap()).unwrap();
    let mut conn = entry.pool().acquire().await.unwrap();
    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// The router's backends on tenant-1's database: every test's first tenant has the same
/// name (and so the same application name) on the shared PostgreSQL.
async fn backends(app: &TestApp, application: &str) -> Vec<i32> {
    let mut conn = app.tenant_connection("tenant-1").await;
    let pids = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE application_name = $1 AND datname = current_database() ORDER BY pid",
    )
    .bind(application)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    pids
}

#[tokio::test]
async fn tenant_connections_carry_timeouts_a_name_and_a_lifetime() {
    let app = app_with(|s| {
        s.connection_limits.statement_timeout_ms = 4321;
        s.connection_limits.idle_in_transaction_timeout_ms = 5432;
        // Long enough that the first request's connection is still young on a loaded
        // machine when it is looked up.
        s.connection_limits.max_lifetime = Duration::from_secs(3);
    })
    .await;
    assert_eq!(show(&app, "tenant-1", "statement_timeout").await, "4321ms");
    assert_eq!(
        show(&app, "tenant-1", "idle_in_transaction_session_timeout").await,
        "5432ms"
    );
    assert_eq!(
        show(&app, "tenant-1", "application_name").await,
        "tenant-router/tenant-1"
    );

    // A connection is not reused past its lifetime.
    let token = app.user_token("tenant-1.test.com", "lifer").await;
    let r = app
        .get("tenant-1.test.com", "/api/notes", Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let first = backends(&app, "tenant-router/tenant-1").await;
    assert!(!first.is_empty());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for _ in 0..3 {
        let r = app
            .get("tenant-1.test.com", "/api/notes", Some(&token))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = backends(&app, "tenant-router/tenant-1").await;
    assert!(
        now.iter().all(|pid| !first.contains(pid)),
        "connections outlived their lifetime: {first:?} then {now:?}"
    );

    // A tenant's own timeout replaces the default, for its new connections; a statement
    // past it is a 503 for that tenant, not a 500.
    let r = app
        .admin_send(
            Method::PATCH,
            "/admin/tenants/tenant-1",
            Some(json!({"pool": {"statement_timeout_ms": 300}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    app.reload().await;
    assert_eq!(show(&app, "tenant-1", "statement_timeout").await, "300ms");
    let mut holder = app.tenant_connection("tenant-1").await;
    sqlx::raw_sql("BEGIN; LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = Instant::now();
    let r = app
        .get("tenant-1.test.com", "/api/notes", Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(10));
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    let r = app
        .get("tenant-1.test.com", "/api/notes", Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // `null` goes back to the default.
    let r = app
        .admin_send(
            Method::PATCH,
            "/admin/tenants/tenant-1",
            Some(json!({"pool": {"statement_timeout_ms": null}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.reload().await;
    assert_eq!(show(&app, "tenant-1", "statement_timeout").await, "4321ms");
}

/// Statuses of `n` requests made one after another to `host`.
async fn statuses(app: &TestApp, host: &str, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(app.get(host, "/api/notes", None).await.status());
    }
    out
}

#[tokio::test]
async fn a_tenant_over_its_rate_limit_gets_429_and_only_that_tenant() {
    let pg = shared_postgres().await;
    let t1 = tenant_database(pg, "rl1").await;
    let t2 = tenant_database(pg, "rl2").await;
    // A default for every tenant: 2 per second, bursts of 5.
    let app = TestApp::spawn_with(
        vec![
            spec("tenant-1", &["tenant-1.test.com"], t1),
            spec("tenant-2", &["tenant-2.test.com"], t2),
        ],
        |s| {
            s.default_rate_limit = Some(tenant_router::tenant::RateLimit {
                requests_per_second: 2,
                burst: 5,
            })
        },
    )
    .await;
    let started = Instant::now();
    let seen = statuses(&app, "tenant-1.test.com", 30).await;
    // The bucket: 5 at once, then 2 per second of however long the requests took.
    let allowed = 5 + (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    let served = seen
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(served >= 5, "{seen:?}");
    assert!(
        served <= allowed,
        "{served} served, {allowed} allowed: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{seen:?}"
    );
    let r = app.get("tenant-1.test.com", "/api/notes", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // The other tenant has its own bucket.
    let other = statuses(&app, "tenant-2.test.com", 5).await;
    assert!(
        other.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{other:?}"
    );

    // A tenant's own limit replaces the default (and `null` returns to it).
    let r = app
        .admin_send(
            Method::PATCH,
            "/admin/tenants/tenant-2",
            Some(json!({"rate_limit": {"requests_per_second": 1000, "burst": 1000}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let own = statuses(&app, "tenant-2.test.com", 30).await;
    assert!(
        own.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{own:?}"
    );
    let r = app
        .admin_send(
            Method::PATCH,
            "/admin/tenants/tenant-2",
            Some(json!({"rate_limit": {"requests_per_second": 0, "burst": 1}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .admin_send(
            Method::PATCH,
            "/admin/tenants/tenant-2",
            Some(json!({"rate_limit": null})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let back = statuses(&app, "tenant-2.test.com", 30).await;
    assert!(back.contains(&StatusCode::TOO_MANY_REQUESTS), "{back:?}");
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_loses_its_connection() {
    let app = app_with(|s| {
        s.http.header_timeout = Duration::from_secs(1);
        s.http.max_connections = 2;
    })
    .await;
    // Two clients fill the cap: they pipeline requests and never read the answers, so the
    // server's writes stall once their small windows are full.
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(app.addr).await.unwrap();
        hogs.push(tokio::spawn(async move {
            let request = b"GET /healthz HTTP/1.1\r\nHost: tenant-1.test.com\r\n\r\n".repeat(1000);
            for _ in 0..200 {
                if stream.write_all(&request).await.is_err() {
                    break;
                }
            }
            stream
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Within a few write deadlines they are closed, and a normal client is served.
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        app.get("tenant-1.test.com", "/healthz", None),
    )
    .await
    .expect("served once the stalled connections were closed");
    assert_eq!(r.status(), StatusCode::OK);
    for hog in hogs {
        hog.abort();
    }
}
