//! A Redis server of our own, from the `redis-server` installed on this machine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::supervisor::{Supervised, find_binary, free_port, tail, wait_until};

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
