//! TLS to PostgreSQL and Redis, against servers that speak nothing else: certificates from a
//! private CA made here, a PostgreSQL whose `pg_hba.conf` rejects plain connections, and a
//! Redis with only a TLS port. The binaries are configured as an operator would, through
//! `sslmode=verify-full&sslrootcert=` and `TENANT_ROUTER_REDIS_CA_FILE`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tenant_router::RedisEndpoint;
use tenant_router::testing::{LocalPostgres, LocalRedis, ServerTls, free_port};

/// A CA and a certificate it signed for 127.0.0.1 and localhost.
fn private_ca() -> ServerTls {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tenant-router test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = server.signed_by(&key, &ca).unwrap();
    ServerTls {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
        ca_pem: ca.pem(),
    }
}

fn verify_full(pg: &LocalPostgres, db: &str, ca: &Path) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.display()
    )
}

#[tokio::test]
async fn the_servers_refuse_what_is_not_verified_tls() {
    let tls = private_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let pg = LocalPostgres::start_ephemeral_tls(&tls).await.unwrap();
    let redis = LocalRedis::start_ephemeral_tls(&tls).unwrap();

    // What the other tests rely on: plain connections are refused, and a certificate from an
    // unknown CA is not accepted.
    let plain = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port()
    );
    let err = PgConnection::connect(&plain).await.unwrap_err().to_string();
    assert!(err.contains("no encryption"), "{err}");
    let unverified = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full",
        pg.port()
    );
    assert!(PgConnection::connect(&unverified).await.is_err());
    let mut conn = PgConnection::connect(&verify_full(&pg, "postgres", &ca))
        .await
        .unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ssl);

    let plain_redis = format!("redis://127.0.0.1:{}/", redis.port());
    assert!(ping(RedisEndpoint::new(plain_redis)).await.is_err());
    assert!(
        ping(RedisEndpoint::new(redis.url())).await.is_err(),
        "unknown CA"
    );
    ping(RedisEndpoint::new(redis.url()).with_ca_pem(tls.ca_pem.as_bytes().to_vec()))
        .await
        .unwrap();
    // A CA file that holds another CA is not enough.
    let other = private_ca();
    assert!(
        ping(RedisEndpoint::new(redis.url()).with_ca_pem(other.ca_pem.as_bytes().to_vec()))
            .await
            .is_err()
    );
}

async fn ping(redis: RedisEndpoint) -> anyhow::Result<()> {
    let client = redis.client()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await??;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_worker_and_cli_work_over_tls_only() {
    let tls = private_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let pg = LocalPostgres::start_ephemeral_tls(&tls).await.unwrap();
    let redis = LocalRedis::start_ephemeral_tls(&tls).unwrap();
    let control = verify_full(&pg, "control", &ca);
    tenant_router::provision::create_database_if_missing(
        &tenant_router::tenant::DatabaseUrl::parse(&verify_full(&pg, "postgres", &ca)).unwrap(),
        "control",
    )
    .await
    .unwrap();

    let (token, hash) = admin_token();
    let port = free_port().unwrap();
    let admin_port = free_port().unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenant-router"));
        cmd.args(args)
            .current_dir(dir.path())
            .env("TENANT_ROUTER_DATABASE_URL", &control)
            .env("TENANT_ROUTER_REDIS_URL", redis.url())
            .env("TENANT_ROUTER_REDIS_CA_FILE", &ca)
            .env("TENANT_ROUTER_ADMIN_TOKEN_HASH", &hash)
            .env("TENANT_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "TENANT_ROUTER_ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            // Only the bus can bring a change in time: no reconcile during the test.
            .env("TENANT_ROUTER_RECONCILE_INTERVAL", "3600")
            .env("TENANT_ROUTER_FILES_DIR", dir.path().join("files"))
            .env_remove("RUST_LOG");
        cmd
    };
    let run = |args: &[&str]| {
        let out = cli(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["migrate"]);
    let mut processes = Processes(Vec::new());
    processes.0.push(
        cli(&["serve"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    processes.0.push(
        cli(&["worker"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until("serve is ready", || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    // The bus is up over TLS.
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_until("the bus is connected", || async {
        let Ok(r) = client
            .get(format!("{admin}/admin/registry"))
            .bearer_auth(&token)
            .send()
            .await
        else {
            return false;
        };
        let body: Value = r.json().await.unwrap_or_default();
        body["bus"]["state"] == "connected"
    })
    .await;

    // Tenants added after the start, with their databases provisioned through the same TLS
    // URL: a dedicated one (its URL derived from the provisioning URL) and a shared one.
    run(&["tenants", "add", "tls-one", "--host", "one.tls.test"]);
    run(&[
        "tenants",
        "add",
        "tls-two",
        "--host",
        "two.tls.test",
        "--isolation",
        "shared",
    ]);
    for (host, user) in [("one.tls.test", "ann"), ("two.tls.test", "bob")] {
        // Served without a reconcile: the hint came over the TLS bus.
        wait_until("the new tenant resolves", || async {
            client
                .post(format!("{base}/api/register"))
                .header("Host", host)
                .json(&json!({"username": user, "email": format!("{user}@example.com"), "password": "correct horse"}))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::CREATED)
        })
        .await;
        let r = client
            .post(format!("{base}/api/login"))
            .header("Host", host)
            .json(&json!({"email": format!("{user}@example.com"), "password": "correct horse"}))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        let bearer = body["token"].as_str().unwrap().to_string();
        // A job through the TLS queue, run by the worker over TLS.
        let r = client
            .post(format!("{base}/api/jobs"))
            .header("Host", host)
            .bearer_auth(&bearer)
            .json(&json!({"kind": "notes.create", "payload": {"content": format!("from {user}'s job")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        wait_until("the job's note is there", || async {
            let r = client
                .get(format!("{base}/api/notes"))
                .header("Host", host)
                .bearer_auth(&bearer)
                .send()
                .await
                .unwrap();
            let notes: Value = r.json().await.unwrap_or_default();
            notes.to_string().contains(&format!("from {user}'s job"))
        })
        .await;
    }

    // The dedicated tenant's database is on this server, and its stored URL keeps the TLS
    // parameters it was derived with.
    let mut conn = PgConnection::connect(&control).await.unwrap();
    let url: String = sqlx::query_scalar("SELECT database_url FROM tenants WHERE id = 'tls-one'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        url.contains("sslmode=verify-full") && url.contains("sslrootcert="),
        "{url}"
    );
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE backend_type = 'client backend' AND NOT ssl",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(plain, 0);
}

fn admin_token() -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-router"))
        .arg("admin-token")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().find_map(|l| l.strip_prefix("token: "));
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("TENANT_ROUTER_ADMIN_TOKEN_HASH='"))
        .and_then(|l| l.strip_suffix('\''));
    match (token, hash) {
        (Some(t), Some(h)) => (t.to_string(), h.to_string()),
        _ => panic!("no token and hash in {text}"),
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
