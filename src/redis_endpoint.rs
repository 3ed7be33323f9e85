//! Where Redis is: its URL and, for `rediss://`, what its certificate is verified against.
//!
//! Every Redis connection of the router (the bus, its publisher, the job queue, the tenants'
//! namespaces) is made from a [`RedisEndpoint`], so a private CA given once reaches them all.
//! `rediss://` verifies the server's certificate and host name against the system's trust
//! store; [`RedisEndpoint::with_ca_pem`] adds certificates to it (it never replaces it).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;

/// A Redis URL, plus the extra CA certificates (PEM) trusted for `rediss://`.
///
/// `Debug` and `Display` mask the URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisEndpoint {
    url: Arc<str>,
    extra_ca_pem: Option<Arc<[u8]>>,
}

impl RedisEndpoint {
    /// Redis at `url` (`redis://`, `rediss://` or `unix://`), nothing checked yet: see
    /// [`RedisEndpoint::client`].
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().into(),
            extra_ca_pem: None,
        }
    }

    /// Also trusts the certificates in `pem` (one or more `BEGIN CERTIFICATE` blocks) for a
    /// `rediss://` URL, beside the system's trust store.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_ca_pem = Some(pem.into().into());
        self
    }

    /// [`RedisEndpoint::with_ca_pem`] with the contents of a PEM file.
    pub fn with_ca_file(self, path: &std::path::Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the Redis CA file {}", path.display()))?;
        Ok(self.with_ca_pem(pem))
    }

    /// The whole URL, password included. Never log what this returns.
    pub fn expose_url(&self) -> &str {
        &self.url
    }

    /// A client for this endpoint. Fails when the URL is not a Redis URL, when a CA is given
    /// for a URL without TLS, or when the CA file holds no certificate.
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        let Some(extra) = &self.extra_ca_pem else {
            return redis::Client::open(&*self.url).map_err(|e| anyhow::anyhow!("{e}"));
        };
        let info = redis::IntoConnectionInfo::into_connection_info(&*self.url)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            anyhow::bail!("a Redis CA file is given, but the Redis URL is not rediss://");
        }
        let extra_certs = rustls::pki_types::pem::PemObject::pem_slice_iter(extra)
            .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
            .map_err(|e| anyhow::anyhow!("the Redis CA file is not PEM: {e}"))?;
        if extra_certs.is_empty() {
            anyhow::bail!("the Redis CA file holds no certificate");
        }
        // redis-rs trusts exactly the roots it is given, so the system's go in too.
        let mut roots = String::from_utf8_lossy(extra).into_owned();
        roots.push('\n');
        for cert in rustls_native_certs::load_native_certs().certs {
            // Only what rustls accepts as a trust anchor: one bad system certificate must
            // not make the whole list fail.
            if rustls::RootCertStore::empty().add(cert.clone()).is_ok() {
                roots.push_str(&pem_certificate(&cert));
            }
        }
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(roots.into_bytes()),
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A pool of up to `max_size` connections, opened on first use; each wait, connect and
    /// recycle gives up after `timeout`.
    pub fn pool(&self, max_size: usize, timeout: Duration) -> anyhow::Result<deadpool_redis::Pool> {
        let client = self.client()?;
        let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        deadpool_redis::Pool::builder(manager)
            .max_size(max_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .context("configuring the Redis pool")
    }

    /// The URL with its password masked.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return "<not a URL>".into();
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("***@{host}"),
            },
            None => authority.to_string(),
        };
        let path = tail.split(['?', '#']).next().unwrap_or("");
        format!("{scheme}://{authority}{path}")
    }
}

fn pem_certificate(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl From<&str> for RedisEndpoint {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for RedisEndpoint {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl From<&String> for RedisEndpoint {
    fn from(url: &String) -> Self {
        Self::new(url.as_str())
    }
}

impl From<&RedisEndpoint> for RedisEndpoint {
    fn from(endpoint: &RedisEndpoint) -> Self {
        endpoint.clone()
    }
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("url", &self.redacted())
            .field("extra_ca", &self.extra_ca_pem.is_some())
            .finish()
    }
}

impl fmt::Display for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        for url in [
            "redis://:hunter2@h:6379/0",
            "rediss://user:hunter2@h:6380/1?protocol=resp3",
            "redis://h:6379/?password=hunter2",
        ] {
            let e = RedisEndpoint::new(url);
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
        }
        assert_eq!(
            RedisEndpoint::new("rediss://u:p@h:6380/1").redacted(),
            "rediss://u:***@h:6380/1"
        );
    }

    #[test]
    fn a_ca_needs_tls_and_a_certificate() {
        let plain = RedisEndpoint::new("redis://127.0.0.1:1/").with_ca_pem(b"x".to_vec());
        assert!(
            plain
                .client()
                .unwrap_err()
                .to_string()
                .contains("rediss://")
        );
        let empty = RedisEndpoint::new("rediss://127.0.0.1:1/").with_ca_pem(b"no pem".to_vec());
        assert!(
            empty
                .client()
                .unwrap_err()
                .to_string()
                .contains("no certificate")
        );
        assert!(RedisEndpoint::new("http://x").client().is_err());
    }

    #[test]
    fn pem_lines_are_64_wide() {
        let pem = pem_certificate(&[7u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
        let body: String = lines[1..lines.len() - 1].concat();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap(),
            vec![7u8; 100]
        );
    }
}
