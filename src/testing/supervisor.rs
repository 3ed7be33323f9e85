//! PostgreSQL and Redis servers started from the binaries installed on this machine, for the
//! demo and for tests. Nothing here is used by `serve`.
//!
//! Each server runs under a small `sh` supervisor whose standard input is a pipe from us.
//! When we exit, however we exit (even `kill -9`), the pipe closes, and the supervisor stops
//! the server and, for throwaway servers, removes its directory. So no test leaves a server
//! behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid};

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
pub(super) struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
    server_pid: Pid,
}

impl Supervised {
    pub(super) fn spawn(
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

    pub(super) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None)) && kill(self.server_pid, None::<Signal>).is_ok()
    }

    /// Stops the server; with `cleanup`, the supervisor also removes its directory.
    pub(super) fn stop(mut self, cleanup: bool) {
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

pub(super) fn wait_until<F: FnMut() -> anyhow::Result<bool>>(
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

pub(super) fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Finds a server binary on `PATH`, then in `extra` directories (newest first).
pub(super) fn find_binary(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
