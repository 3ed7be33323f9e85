//! A PostgreSQL server of our own, from the binaries installed on this machine (as the
//! `postgres` account when we are root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::unistd::{Gid, Uid, User};
use sqlx::{Connection, PgConnection};

use super::supervisor::{Supervised, find_binary, free_port, tail};
use crate::tenant::DatabaseUrl;

/// Debian installs PostgreSQL under `/usr/lib/postgresql/<major>/bin`, off `PATH`.
fn debian_postgres_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, d)| d).collect()
}

/// The directory of the PostgreSQL server binaries we run: `initdb`'s, on `PATH` or the
/// newest under `/usr/lib/postgresql`.
pub(super) fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let initdb = find_binary("initdb", &debian_postgres_dirs()).context(
        "PostgreSQL's initdb was not found on PATH or under /usr/lib/postgresql \
         (install it with: apt-get install postgresql)",
    )?;
    // `/usr/local/bin/initdb` may be a link into the real installation; its lib directory
    // is beside the real one.
    let initdb = initdb.canonicalize().unwrap_or(initdb);
    let bin_dir = initdb.parent().expect("a file has a parent").to_path_buf();
    anyhow::ensure!(
        bin_dir.join("postgres").is_file(),
        "no postgres binary beside {}",
        initdb.display()
    );
    Ok(bin_dir)
}

/// PostgreSQL refuses to run as root; as root we run it as the `postgres` account.
fn postgres_account() -> anyhow::Result<Option<(Uid, Gid)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")?.context(
        "running as root, and PostgreSQL refuses to run as root: \
         no 'postgres' account exists to run it as (apt-get install postgresql creates one)",
    )?;
    Ok(Some((user.uid, user.gid)))
}

/// Fails with advice when the `postgres` account cannot write `dir`, as happens under a
/// root-only home such as `/root`.
fn ensure_reachable(dir: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    let ok = Command::new("sh")
        .args(["-c", "test -w \"$1\" && test -x \"$1\"", "sh"])
        .arg(dir)
        .uid(uid.as_raw())
        .gid(gid.as_raw())
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(
        ok,
        "PostgreSQL runs as the 'postgres' account here (we are root), and that account cannot \
         reach {}: a parent directory is closed to other users. Point TENANT_ROUTER_DATA_DIR \
         at a directory it can reach, for example /var/tmp/tenant-router",
        dir.display()
    );
    Ok(())
}

/// A PostgreSQL server of our own: throwaway (a temporary directory, removed when dropped)
/// or persistent (a directory that survives restarts, for the demo). Trust authentication on
/// 127.0.0.1 only, user `postgres`, no Unix socket.
pub struct LocalPostgres {
    root: PathBuf,
    pub(super) port: u16,
    ephemeral: bool,
    bin_dir: PathBuf,
    run_as: Option<(Uid, Gid)>,
    /// Extra `-c name=value` settings, for every start.
    settings: Vec<(String, String)>,
    server: Option<Supervised>,
}

impl LocalPostgres {
    /// Initialises and starts a throwaway server on a free port.
    pub async fn start_ephemeral() -> anyhow::Result<Self> {
        Self::start_ephemeral_with(&[]).await
    }

    /// [`Self::start_ephemeral`], with extra server settings (`name`, `value`).
    pub async fn start_ephemeral_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("tenant-router-pg-")
            .tempdir()
            .context("creating a temporary directory")?
            .keep();
        let settings = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::init_and_start(root, None, true, settings).await
    }

    /// A throwaway server that speaks only TLS with `tls`'s certificate: `ssl=on`, and its
    /// `pg_hba.conf` rejects every connection without TLS.
    pub async fn start_ephemeral_tls(tls: &super::ServerTls) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("tenant-router-pg-tls-")
            .tempdir()
            .context("creating a temporary directory")?
            .keep();
        let files = root.join("tls");
        std::fs::create_dir(&files)?;
        let write = |name: &str, text: &str, mode: u32| -> anyhow::Result<PathBuf> {
            use std::os::unix::fs::PermissionsExt as _;
            let path = files.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            Ok(path)
        };
        let cert = write("server.crt", &tls.certificate_pem, 0o644)?;
        // PostgreSQL refuses a key that others can read.
        let key = write("server.key", &tls.private_key_pem, 0o600)?;
        let hba = write(
            "pg_hba.conf",
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all all reject\n",
            0o644,
        )?;
        if let Some((uid, gid)) = postgres_account()? {
            for path in [&files, &cert, &key, &hba] {
                std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))?;
            }
        }
        let path = |p: &Path| p.display().to_string();
        let settings = vec![
            ("ssl".to_string(), "on".to_string()),
            ("ssl_cert_file".to_string(), path(&cert)),
            ("ssl_key_file".to_string(), path(&key)),
            ("hba_file".to_string(), path(&hba)),
        ];
        Self::init_and_start(root, None, true, settings).await
    }

    /// Opens the persistent server in `dir`, initialising it on first use. Its port is chosen
    /// once and kept in `dir/port`, since tenant database URLs name it.
    pub async fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let port_file = dir.join("port");
        let port = match std::fs::read_to_string(&port_file) {
            Ok(s) => Some(s.trim().parse().context("parsing the saved port")?),
            Err(_) => None,
        };
        Self::init_and_start(dir, port, false, Vec::new()).await
    }

    async fn init_and_start(
        root: PathBuf,
        port: Option<u16>,
        ephemeral: bool,
        settings: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let bin_dir = postgres_bin_dir()?;
        let run_as = postgres_account()?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&root, Some(uid.as_raw()), Some(gid.as_raw()))
                .with_context(|| format!("handing {} to the postgres account", root.display()))?;
        }
        if let Some((uid, gid)) = run_as {
            ensure_reachable(&root, uid, gid)?;
        }
        let mut pg = Self {
            port: port.unwrap_or(0),
            root,
            ephemeral,
            bin_dir,
            run_as,
            settings,
            server: None,
        };
        if !pg.data_dir().join("PG_VERSION").exists() {
            pg.initdb(&pg.bin_dir.join("initdb"))?;
        }
        let mut attempts = 0;
        loop {
            if port.is_none() {
                pg.port = free_port()?;
            }
            match pg.start().await {
                Ok(()) => break,
                // Someone took the free port between our probe and the bind: pick another.
                Err(e) if port.is_none() && attempts < 3 => {
                    attempts += 1;
                    tracing::debug!(error = %e, "retrying PostgreSQL on another port");
                }
                Err(e) => return Err(e),
            }
        }
        if !ephemeral {
            std::fs::write(pg.root.join("port"), pg.port.to_string())?;
        }
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub(super) fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    fn initdb(&self, initdb: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new(initdb);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-instructions")
            .stdin(Stdio::null());
        if self.ephemeral {
            cmd.arg("--no-sync");
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        let out = cmd.output().context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed in {}: {}{}",
                self.root.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let mut args = vec![
            "-D".to_string(),
            self.data_dir().display().to_string(),
            "-p".into(),
            self.port.to_string(),
        ];
        let mut set = |k: &str, v: &str| args.extend(["-c".into(), format!("{k}={v}")]);
        set("listen_addresses", "127.0.0.1");
        set("unix_socket_directories", "");
        set("max_connections", "300");
        if self.ephemeral {
            // Throwaway data: durability buys nothing and costs the tests time.
            set("fsync", "off");
            set("synchronous_commit", "off");
            set("full_page_writes", "off");
        }
        for (k, v) in &self.settings {
            args.extend(["-c".into(), format!("{k}={v}")]);
        }
        let cleanup = self.ephemeral.then_some(self.root.as_path());
        let log = self.log_path();
        let server = Supervised::spawn(
            &self.bin_dir.join("postgres"),
            &args,
            &log,
            "INT",
            cleanup,
            self.run_as,
        )?;
        self.server = Some(server);
        let url = self.url("postgres");
        let started = wait_for_postgres(&url, self).await;
        if let Err(e) = started {
            if let Some(server) = self.server.take() {
                server.stop(false);
            }
            bail!("{e:#}\n--- {} ---\n{}", log.display(), tail(&log));
        }
        Ok(())
    }

    /// Stops the server (a fast shutdown), keeping its data for [`LocalPostgres::start`].
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(false);
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` on this server (with `sslmode=require` for a server started
    /// by [`LocalPostgres::start_ephemeral_tls`]).
    pub fn url(&self, db: &str) -> DatabaseUrl {
        let tls = self.settings.iter().any(|(k, v)| k == "ssl" && v == "on");
        let query = if tls { "?sslmode=require" } else { "" };
        DatabaseUrl::parse(&format!(
            "postgres://postgres@127.0.0.1:{}/{db}{query}",
            self.port
        ))
        .expect("a well-formed URL")
    }

    /// Creates a database unless it exists.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<DatabaseUrl> {
        crate::provision::create_database_if_missing(&self.url("postgres"), name).await?;
        Ok(self.url(name))
    }

    /// The directory that holds the server's data and log.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

async fn wait_for_postgres(url: &DatabaseUrl, pg: &mut LocalPostgres) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match PgConnection::connect_with(&url.connect_options()).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) => {
                let alive = pg.server.as_mut().is_some_and(Supervised::is_running);
                if !alive {
                    bail!("PostgreSQL exited while starting: {e}");
                }
                if Instant::now() > deadline {
                    bail!("PostgreSQL did not accept connections within 60 s: {e}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(self.ephemeral);
        } else if self.ephemeral {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
