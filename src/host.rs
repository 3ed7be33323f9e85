//! Normalising the `Host` a request names into the form tenants are registered under.

use std::borrow::Cow;

use crate::tenant::is_host_name;

/// Why a request's host could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The request names no host at all.
    Missing,
    /// The host is not a DNS name with an optional numeric port.
    Malformed,
}

/// Canonical lookup form of a `Host` header value: port stripped, lower-cased, one trailing
/// dot removed. Borrows when the value is already canonical, which is the common case.
///
/// An IPv6 literal (`[::1]:8080`) is returned in brackets: it is well formed but no tenant
/// can be registered under it, so it resolves to "unknown host" rather than "bad request".
pub fn normalize(raw: &[u8]) -> Result<Cow<'_, str>, HostError> {
    if raw.is_empty() {
        return Err(HostError::Missing);
    }
    let raw = std::str::from_utf8(raw).map_err(|_| HostError::Malformed)?;
    if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(HostError::Malformed)?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        let literal_ok = !literal.is_empty()
            && literal
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.');
        return if port_ok && literal_ok {
            Ok(Cow::Owned(format!("[{}]", literal.to_ascii_lowercase())))
        } else {
            Err(HostError::Malformed)
        };
    }
    let name = match raw.split_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return Err(HostError::Malformed),
        None => raw,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let name = if name.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    if is_host_name(&name) {
        Ok(name)
    } else {
        Err(HostError::Malformed)
    }
}

fn is_port(s: &str) -> bool {
    (1..=5).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> Result<String, HostError> {
        normalize(s.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn examples() {
        assert_eq!(n("tenant-1.test.com").unwrap(), "tenant-1.test.com");
        assert_eq!(n("Tenant-1.TEST.com:9500").unwrap(), "tenant-1.test.com");
        assert_eq!(n("tenant-1.test.com.").unwrap(), "tenant-1.test.com");
        assert_eq!(n("tenant-1.test.com.:80").unwrap(), "tenant-1.test.com");
        assert_eq!(n("localhost").unwrap(), "localhost");
        assert_eq!(n("127.0.0.1:9500").unwrap(), "127.0.0.1");
        assert_eq!(n("[::1]:9500").unwrap(), "[::1]");
        assert_eq!(n(""), Err(HostError::Missing));
        for bad in [
            "a b", "a:", "a:port", "a:1:2", "a:123456", "a/b", "user@a", ".", "a..b", "-a.com",
            "[::1", "[zz]", "a_b.com",
        ] {
            assert_eq!(n(bad), Err(HostError::Malformed), "{bad}");
        }
        assert_eq!(normalize(b"\xff"), Err(HostError::Malformed));
    }

    #[test]
    fn canonical_input_is_borrowed() {
        assert!(matches!(normalize(b"a.test.com"), Ok(Cow::Borrowed(_))));
    }

    proptest! {
        #[test]
        fn never_panics(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = normalize(&raw);
        }

        #[test]
        fn port_case_and_dot_do_not_change_the_result(
            labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..4),
            port in proptest::option::of(1u32..65536),
            dot in any::<bool>(),
            upper in any::<bool>(),
        ) {
            let name = labels.join(".");
            let mut raw = if upper { name.to_ascii_uppercase() } else { name.clone() };
            if dot { raw.push('.'); }
            if let Some(p) = port { raw.push_str(&format!(":{p}")); }
            prop_assert_eq!(n(&raw).unwrap(), name);
        }

        #[test]
        fn output_is_a_valid_tenant_host(raw in "[a-zA-Z0-9.:-]{1,40}") {
            if let Ok(h) = n(&raw) {
                prop_assert!(crate::tenant::TenantHost::parse(&h).is_ok());
            }
        }
    }
}
