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
    /// With TLS: only a TLS port, and the CA its certificate is verified against.
    tls_ca: Option<String>,
}

impl LocalRedis {
    /// Starts a throwaway server on a free port.
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        Self::start_ephemeral_inner(None)
    }

    /// A throwaway server with only a TLS port, serving `tls`'s certificate; [`Self::url`]
    /// is then `rediss://`.
    pub fn start_ephemeral_tls(tls: &super::ServerTls) -> anyhow::Result<Self> {
        Self::start_ephemeral_inner(Some(tls))
    }

    fn start_ephemeral_inner(tls: Option<&super::ServerTls>) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("tenant-router-redis-")
            .tempdir()?
            .keep();
        let binary = find_binary("redis-server", &[PathBuf::from("/usr/sbin")]).context(
            "redis-server was not found on PATH (install it with: apt-get install redis-server)",
        )?;
        if let Some(tls) = tls {
            std::fs::write(root.join("server.crt"), &tls.certificate_pem)?;
            std::fs::write(root.join("server.key"), &tls.private_key_pem)?;
        }
        let mut redis = Self {
            root,
            port: 0,
            ephemeral: true,
            binary,
            server: None,
            tls_ca: tls.map(|t| t.ca_pem.clone()),
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
        let port = self.port.to_string();
        let root = |name: &str| self.root.join(name).display().to_string();
        let listen: Vec<String> = match self.tls_ca {
            None => vec!["--port".into(), port],
            Some(_) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                root("server.crt"),
                "--tls-key-file".into(),
                root("server.key"),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        };
        let args: Vec<String> = listen
            .into_iter()
            .chain(
                [
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
                .map(|s| s.to_string()),
            )
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
        let url = self.url();
        let tls_ca = self.tls_ca.clone();
        let result = wait_until(Duration::from_secs(20), "Redis", || {
            if !self.server.as_mut().is_some_and(Supervised::is_running) {
                bail!("Redis exited while starting");
            }
            Ok(match &tls_ca {
                None => redis_ping(port),
                Some(ca) => tls_ping(&url, ca),
            })
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

    /// Its URL: `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
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

fn tls_ping(url: &str, ca: &str) -> bool {
    let Ok(client) = crate::RedisEndpoint::new(url)
        .with_ca_pem(ca.as_bytes().to_vec())
        .client()
    else {
        return false;
    };
    client
        .get_connection_with_timeout(Duration::from_millis(500))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
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
