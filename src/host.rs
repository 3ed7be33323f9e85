//! Normalising the `Host` a request names into the form tenants are registered under.

use std::borrow::Cow;

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
    if raw[0] == b'[' {
        return ipv6_literal(raw);
    }
    let name = match raw.iter().position(|&c| c == b':') {
        Some(i) if is_port(&raw[i + 1..]) => &raw[..i],
        Some(_) => return Err(HostError::Malformed),
        None => raw,
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    let has_upper = check_name(name)?;
    // `check_name` admitted only ASCII, so this cannot fail.
    let name = std::str::from_utf8(name).map_err(|_| HostError::Malformed)?;
    Ok(if has_upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// One pass over a host name: labels of 1 to 63 letters, digits and inner `-`, at most 253
/// bytes in all. Returns whether it has upper-case letters. This runs on every request, so
/// it is written as a single scan rather than a split and a check per label.
fn check_name(name: &[u8]) -> Result<bool, HostError> {
    if name.is_empty() || name.len() > 253 {
        return Err(HostError::Malformed);
    }
    let (mut label_len, mut prev, mut upper) = (0usize, b'.', false);
    for &c in name {
        match c {
            b'a'..=b'z' | b'0'..=b'9' => label_len += 1,
            b'A'..=b'Z' => {
                upper = true;
                label_len += 1;
            }
            b'-' if label_len > 0 => label_len += 1,
            b'.' if label_len > 0 && prev != b'-' => label_len = 0,
            _ => return Err(HostError::Malformed),
        }
        if label_len > 63 {
            return Err(HostError::Malformed);
        }
        prev = c;
    }
    if label_len == 0 || prev == b'-' {
        return Err(HostError::Malformed);
    }
    Ok(upper)
}

fn ipv6_literal(raw: &[u8]) -> Result<Cow<'_, str>, HostError> {
    let raw = std::str::from_utf8(raw).map_err(|_| HostError::Malformed)?;
    let rest = &raw[1..];
    let (literal, after) = rest.split_once(']').ok_or(HostError::Malformed)?;
    let port_ok = after.is_empty()
        || after
            .strip_prefix(':')
            .is_some_and(|p| is_port(p.as_bytes()));
    let literal_ok = !literal.is_empty()
        && literal
            .bytes()
            .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.');
    if port_ok && literal_ok {
        Ok(Cow::Owned(format!("[{}]", literal.to_ascii_lowercase())))
    } else {
        Err(HostError::Malformed)
    }
}

fn is_port(s: &[u8]) -> bool {
    (1..=5).contains(&s.len()) && s.iter().all(u8::is_ascii_digit)
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
