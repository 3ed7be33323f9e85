//! PostgreSQL and Redis servers started from the binaries installed on this machine, for the
//! demo and for tests. Nothing here is used by `serve`.
//!
//! Each server runs under a small `sh` supervisor whose standard input is a pipe from us.
//! When we exit, however we exit (even `kill -9`), the pipe closes, and the supervisor stops
//! the server and, for throwaway servers, removes its directory. So no test leaves a server
//! behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use sqlx::{Connection, PgConnection};

use crate::tenant::DatabaseUrl;

/// A free TCP port on 127.0.0.1, as the kernel hands it out. Another process may take it
/// before we bind it; starting a server retries on that.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

const SUPERVISOR: &str = r#"
"$@" </dev/null >>"$TR_LOG" 2>&1 &
pid=$!
echo "$pid"
if read -r cmd; then :; else cmd=eof; fi
kill -"$TR_SIGNAL" "$pid" 2>/dev/null
wait "$pid"
if [ "$cmd" = eof ] && [ -n "${TR_CLEANUP:-}" ]; then rm -rf "$TR_CLEANUP"; fi
"#;

/// A server process under the supervisor described in the module docs.
struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
    server_pid: Pid,
}

impl Supervised {
    fn spawn(
        program: &Path,
        args: &[String],
        log: &Path,
        signal: &str,
        cleanup: Option<&Path>,
        run_as: Option<(Uid, Gid)>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("tenant-router-supervisor")
            .arg(program)
            .args(args)
            .env("TR_LOG", log)
            .env("TR_SIGNAL", signal)
            .env(
                "TR_CLEANUP",
                cleanup.map(Path::as_os_str).unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
            // Our HOME is not theirs: libpq inside the server (Citus' connections to other
            // nodes) would look for client certificates under it, and fail on permissions.
            if let Some(dir) = log.parent() {
                cmd.env("HOME", dir);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the server's pid")?;
        let server_pid = Pid::from_raw(line.trim().parse().context("parsing the server's pid")?);
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            server_pid,
        })
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None)) && kill(self.server_pid, None::<Signal>).is_ok()
    }

    /// Stops the server; with `cleanup`, the supervisor also removes its directory.
    fn stop(mut self, cleanup: bool) {
        match self.stdin.take() {
            Some(mut stdin) if !cleanup => {
                let _ = stdin.write_all(b"stop\n");
                let _ = stdin.flush();
                let _ = self.child.wait();
            }
            stdin => {
                drop(stdin);
                let _ = self.child.wait();
            }
        }
    }
}

fn wait_until<F: FnMut() -> anyhow::Result<bool>>(
    timeout: Duration,
    what: &str,
    mut ready: F,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not become ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Finds a server binary on `PATH`, then in `extra` directories (newest first).
fn find_binary(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

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
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
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
    port: u16,
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

    fn log_path(&self) -> PathBuf {
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

    /// A URL for database `db` on this server.
    pub fn url(&self, db: &str) -> DatabaseUrl {
        DatabaseUrl::parse(&format!("postgres://postgres@127.0.0.1:{}/{db}", self.port))
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

/// Where Citus would be for the PostgreSQL we run: `citus.so` in its library directory
/// (`pg_config --pkglibdir`, else `../lib` beside the binaries). `Err` says why it is not.
pub fn citus_library() -> Result<PathBuf, String> {
    let bin_dir = postgres_bin_dir().map_err(|e| format!("{e:#}"))?;
    let lib_dir = Command::new(bin_dir.join("pg_config"))
        .arg("--pkglibdir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| bin_dir.with_file_name("lib"));
    let so = lib_dir.join("citus.so");
    if so.is_file() {
        Ok(so)
    } else {
        Err(format!(
            "citus.so is not in {} (the library directory of the PostgreSQL in {})",
            lib_dir.display(),
            bin_dir.display()
        ))
    }
}

/// A throwaway Citus cluster of our own: a coordinator and two workers, each a
/// [`LocalPostgres`] with Citus preloaded. Citus keeps its metadata per database, so each
/// [`LocalCitus::create_database`] is a cluster of its own: the database on every node, the
/// extension in each, the workers registered with the coordinator. Tests share the servers
/// and stay apart by database.
pub struct LocalCitus {
    coordinator: LocalPostgres,
    workers: Vec<LocalPostgres>,
}

/// The server settings of every node.
const CITUS_SETTINGS: &[(&str, &str)] = &[
    ("shared_preload_libraries", "citus"),
    // Tenant isolation and shard moves copy with logical replication.
    ("wal_level", "logical"),
    // `citus_stat_tenants` counts only when tracking is on, and only a superuser may turn
    // it on.
    ("citus.stat_tenants_track", "all"),
];

impl LocalCitus {
    /// Starts a coordinator and two workers on free ports. Fails, saying why, when Citus is
    /// not installed ([`citus_library`]).
    pub async fn start_ephemeral() -> anyhow::Result<Self> {
        citus_library().map_err(anyhow::Error::msg)?;
        let (coordinator, w1, w2) = tokio::try_join!(
            LocalPostgres::start_ephemeral_with(CITUS_SETTINGS),
            LocalPostgres::start_ephemeral_with(CITUS_SETTINGS),
            LocalPostgres::start_ephemeral_with(CITUS_SETTINGS),
        )?;
        let citus = Self {
            coordinator,
            workers: vec![w1, w2],
        };
        // The roles shared mode switches to, allowed to log in on every node, as
        // docker-compose's `citus-setup` makes them. Roles belong to a server, not to a
        // database: were they made by the first test database's `migrate`, a later
        // database's `citus_add_node` could copy a state read before the `LOGIN` onto the
        // workers.
        for node in std::iter::once(&citus.coordinator).chain(&citus.workers) {
            let mut conn =
                PgConnection::connect_with(&node.url("postgres").connect_options()).await?;
            for role in crate::shared::ROLES {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("creating role {role} on port {}", node.port))?;
            }
            let _ = conn.close().await;
        }
        Ok(citus)
    }

    /// The coordinator, where the router connects.
    pub fn coordinator(&self) -> &LocalPostgres {
        &self.coordinator
    }

    /// The workers.
    pub fn workers(&self) -> &[LocalPostgres] {
        &self.workers
    }

    /// Creates database `name` on every node with the citus extension, registers the
    /// workers with the coordinator, and returns its URL on the coordinator.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<DatabaseUrl> {
        for node in std::iter::once(&self.coordinator).chain(&self.workers) {
            let url = node.create_database(name).await?;
            let mut conn = PgConnection::connect_with(&url.connect_options()).await?;
            sqlx::query("CREATE EXTENSION IF NOT EXISTS citus")
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating the citus extension on port {}", node.port))?;
            let _ = conn.close().await;
        }
        let url = self.coordinator.url(name);
        let mut conn = PgConnection::connect_with(&url.connect_options()).await?;
        sqlx::query("SELECT citus_set_coordinator_host('127.0.0.1', $1)")
            .bind(i32::from(self.coordinator.port))
            .execute(&mut conn)
            .await
            .context("citus_set_coordinator_host")?;
        for worker in &self.workers {
            // `citus_add_node` is idempotent, and its connection to the worker has failed
            // once in CI ("failure on connection marked as essential") while other tests
            // were busy on the same servers: try again, and say what the servers logged.
            let mut attempt = 0;
            loop {
                attempt += 1;
                match sqlx::query("SELECT citus_add_node('127.0.0.1', $1)")
                    .bind(i32::from(worker.port))
                    .execute(&mut conn)
                    .await
                {
                    Ok(_) => break,
                    Err(e) if attempt < 5 => {
                        tracing::warn!(port = worker.port, error = %e, "citus_add_node failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "citus_add_node for port {} ({attempt} attempts)\n--- worker log ---\n{}\n--- coordinator log ---\n{}",
                            worker.port,
                            tail(&worker.log_path()),
                            tail(&self.coordinator.log_path()),
                        )));
                    }
                }
            }
        }
        let _ = conn.close().await;
        Ok(url)
    }
}

/// A Redis server of our own, on a free port, without persistence unless a directory is kept.
pub struct LocalRedis {
    root: PathBuf,
    port: u16,
    ephemeral: bool,
    binary: PathBuf,
    server: Option<Supervised>,
}

impl LocalRedis {
    /// Starts a throwaway server on a free port.
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("tenant-router-redis-")
            .tempdir()?
            .keep();
        let binary = find_binary("redis-server", &[PathBuf::from("/usr/sbin")]).context(
            "redis-server was not found on PATH (install it with: apt-get install redis-server)",
        )?;
        let mut redis = Self {
            root,
            port: 0,
            ephemeral: true,
            binary,
            server: None,
        };
        let mut attempts = 0;
        loop {
            redis.port = free_port()?;
            match redis.start() {
                Ok(()) => return Ok(redis),
                Err(e) if attempts < 3 => {
                    attempts += 1;
                    tracing::debug!(error = %e, "retrying Redis on another port");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the server (again, on the same port) and waits until it answers `PING`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &self.root.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.root.join("redis.log");
        let cleanup = self.ephemeral.then_some(self.root.as_path());
        self.server = Some(Supervised::spawn(
            &self.binary,
            &args,
            &log,
            "TERM",
            cleanup,
            None,
        )?);
        let port = self.port;
        let result = wait_until(Duration::from_secs(20), "Redis", || {
            if !self.server.as_mut().is_some_and(Supervised::is_running) {
                bail!("Redis exited while starting");
            }
            Ok(redis_ping(port))
        });
        if let Err(e) = result {
            self.stop();
            bail!("{e:#}\n--- {} ---\n{}", log.display(), tail(&log));
        }
        Ok(())
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(false);
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(self.ephemeral);
        } else if self.ephemeral {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
