//! Several `tenant-router serve` processes over one control database and one Redis, for the
//! propagation tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tenant_router::control::ControlDb;
use tenant_router::tenant::DatabaseUrl;
use tenant_router::testing::{LocalRedis, free_port};

use crate::harness::{shared_postgres, unique_name};

/// One control database, one Redis, and the instances started over them.
pub struct Cluster {
    pub control_url: DatabaseUrl,
    pub control: ControlDb,
    pub redis: LocalRedis,
    pub token: String,
    token_hash: String,
    pub logs: tempfile::TempDir,
    pub client: reqwest::Client,
    /// Seconds between reconciles of instances started from now on.
    pub reconcile_secs: u64,
    /// More environment for every process started from now on.
    pub env: Vec<(String, String)>,
}

/// One `serve` process; killed when dropped.
pub struct Instance {
    pub name: String,
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    log: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    /// Waits for the process to exit (after a signal), with a deadline.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
}

impl Cluster {
    /// A fresh control database (migrated) and a fresh Redis; no instance yet. Instances
    /// reconcile once an hour, so whatever converges in a test converged through the bus or
    /// a (re)subscribe, not the reconcile.
    pub async fn new() -> Cluster {
        let pg = shared_postgres().await;
        let control_url = pg.create_database(&unique_name("control")).await.unwrap();
        Self::new_on(control_url).await
    }

    /// [`Cluster::new`] over the database `control_url` (a Citus one, for instance).
    pub async fn new_on(control_url: DatabaseUrl) -> Cluster {
        let control = ControlDb::connect_lazy(&control_url);
        control.migrate().await.unwrap();
        let (token, hash) = tenant_router_server::admin_token::generate();
        Cluster {
            control_url,
            control,
            redis: LocalRedis::start_ephemeral().unwrap(),
            token,
            token_hash: hash.as_str().to_string(),
            logs: tempfile::tempdir().unwrap(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            reconcile_secs: 3600,
            env: Vec::new(),
        }
    }

    /// The environment every process of this cluster gets.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenant-router"));
        cmd.args(args)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("TENANT_ROUTER_DATABASE_URL", self.control_url.expose())
            .env("TENANT_ROUTER_REDIS_URL", self.redis.url())
            .env("TENANT_ROUTER_ADMIN_TOKEN_HASH", &self.token_hash)
            .env("TENANT_ROUTER_BASE_DOMAIN", "test.com")
            .env(
                "TENANT_ROUTER_RECONCILE_INTERVAL",
                self.reconcile_secs.to_string(),
            )
            .env("TENANT_ROUTER_LOG", "info,sqlx=warn")
            .env("TENANT_ROUTER_DIAGNOSTIC_JOBS", "true")
            .env("TENANT_ROUTER_DATA_DIR", self.logs.path())
            .env("TENANT_ROUTER_JOB_VISIBILITY_TIMEOUT_MS", "1500")
            .env("TENANT_ROUTER_JOB_BACKOFF_MS", "50")
            .env("TENANT_ROUTER_JOB_MAX_ATTEMPTS", "3")
            .env("TENANT_ROUTER_WORKER_GRACE_SECS", "10")
            .env_remove("TENANT_ROUTER_CONFIG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `serve` and waits until it is ready. A port picked as free can be taken by
    /// another test before the server binds it: then it starts again on other ports.
    pub async fn start(&self, name: &str) -> Instance {
        for _ in 0..4 {
            if let Some(instance) = self.try_start(name).await {
                return instance;
            }
        }
        panic!("{name}: every port picked was taken before the server bound it");
    }

    /// [`Self::start`], once: `None` when a port was taken before the server bound it.
    async fn try_start(&self, name: &str) -> Option<Instance> {
        let port = free_port().unwrap();
        let admin_port = free_port().unwrap();
        let log = self.logs.path().join(format!("{name}.log"));
        let child = self
            .command(&["serve"])
            .env("TENANT_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "TENANT_ROUTER_ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut instance = Instance {
            name: name.to_string(),
            child,
            port,
            admin_port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .client
                .get(instance.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                break;
            }
            if let Ok(Some(_)) = instance.child.try_wait()
                && instance.log().contains("Address already in use")
            {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become ready:\n{}",
                instance.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(instance)
    }

    /// Starts `tenant-router worker` with extra environment; returns once it logged that
    /// it started.
    pub async fn start_worker(&self, name: &str, env: &[(&str, &str)]) -> Instance {
        let log = self.logs.path().join(format!("{name}.log"));
        let mut cmd = self.command(&["worker"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let instance = Instance {
            name: name.to_string(),
            child,
            port: 0,
            admin_port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !instance.log().contains("worker started") {
            assert!(
                Instant::now() < deadline,
                "{name} did not start:\n{}",
                instance.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        instance
    }

    /// An admin call with the right token.
    pub async fn admin(
        &self,
        instance: &Instance,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .client
            .request(method, instance.admin_url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    /// The control database's tenants as `id -> version`, and its highest version.
    pub async fn truth(&self) -> (BTreeMap<String, i64>, i64) {
        let (tenants, version) = self.control.load_all().await.unwrap();
        (
            tenants
                .into_iter()
                .map(|t| (t.id.to_string(), t.version))
                .collect(),
            version,
        )
    }

    /// An instance's registry as `id -> version`, and its applied version.
    pub async fn view(&self, instance: &Instance) -> (BTreeMap<String, i64>, i64) {
        let r = self
            .admin(instance, Method::GET, "/admin/registry", None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        let tenants = body["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_string(),
                    t["version"].as_i64().unwrap(),
                )
            })
            .collect();
        (tenants, body["version"].as_i64().unwrap())
    }

    /// Waits until every instance holds exactly the control database's tenants and
    /// versions; panics with the difference after `within`.
    pub async fn assert_converged(&self, instances: &[&Instance], within: Duration) {
        let deadline = Instant::now() + within;
        let truth = self.truth().await;
        loop {
            let mut lagging = Vec::new();
            for i in instances {
                let view = self.view(i).await;
                if view != truth {
                    lagging.push((i.name.clone(), view));
                }
            }
            if lagging.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = instances
                    .iter()
                    .map(|i| format!("--- {} ---\n{}", i.name, i.log()))
                    .collect();
                panic!(
                    "not converged: control {truth:?}\nlagging {lagging:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls a tenant-facing request on `instance` until `ok` accepts the status.
    pub async fn eventually(
        &self,
        instance: &Instance,
        host: &str,
        path: &str,
        ok: impl Fn(StatusCode) -> bool,
    ) -> StatusCode {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self
                .client
                .get(instance.url(path))
                .header("Host", host)
                .send()
                .await
                .unwrap()
                .status();
            if ok(status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} kept answering {status} for {host}{path}:\n{}",
                instance.name,
                instance.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The `/readyz` body of an instance.
    pub async fn readyz(&self, instance: &Instance) -> Value {
        self.client
            .get(instance.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}
