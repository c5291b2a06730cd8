//! Kubernetes' own syntax rules (k8s.io/apimachinery `validation`), as the API server applies
//! them, so a file the control plane accepts is one a cluster would accept too, and no name
//! or string it serves is longer than Kubernetes allows; the agent applies the same rules to
//! what it is sent (addresses, labels), so both sides refuse the same things. Each returns
//! the message for the field at fault.

use std::net::IpAddr;

/// RFC 1123 label: namespaces, container names, port names.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err(format!("{} characters; at most 63 (an RFC 1123 label)", s.len()));
    }
    if label_chars(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an RFC 1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ))
    }
}

/// RFC 1123 subdomain: most object names, node and service account names.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("{} characters; at most 253 (an RFC 1123 subdomain)", s.len()));
    }
    if s.split('.').all(label_chars) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an RFC 1123 subdomain (dot-separated lowercase letters, digits and '-', each part starting and ending with a letter or digit)"
        ))
    }
}

/// RFC 1035 label: Service names (they become DNS names, which may not start with a digit).
pub fn dns1035_label(s: &str) -> Result<(), String> {
    dns_label(s)?;
    if s.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!("{s:?} is not an RFC 1035 label: it must start with a letter"))
    }
}

fn label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// IANA service name: a container port's name, a Service's named targetPort.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a port name (at most 15 lowercase letters, digits and single '-', with a letter)"
        ))
    }
}

/// A label or annotation key (a "qualified name"): `[prefix/]name`, the prefix a DNS
/// subdomain, the name at most 63 characters of letters, digits, '-', '_', '.', starting and
/// ending with a letter or digit.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        dns_subdomain(prefix).map_err(|e| format!("key {s:?}: its prefix: {e}"))?;
    }
    if name.len() > 63 {
        return Err(format!("key {s:?}: the name after any prefix is {} characters; at most 63", name.len()));
    }
    if name.is_empty() || !name_chars(name) {
        return Err(format!(
            "key {s:?}: the name (after any prefix) must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of letters, digits, '-', '_', '.',
/// starting and ending with a letter or digit.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err(format!("{} characters; a label value is at most 63", s.len()));
    }
    if s.is_empty() || name_chars(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a label value (letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ))
    }
}

fn name_chars(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// An address a pod (or a Service VIP) can have: unicast and routable between pods. IPv4
/// addresses written IPv4-mapped (`::ffff:a.b.c.d`) are judged, and served, as IPv4.
pub fn unicast(ip: IpAddr) -> Result<IpAddr, String> {
    let ip = ip.to_canonical();
    let what = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() || v4.octets()[0] == 0 => Some("\"this network\" (0.0.0.0/8)"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
        _ if ip.is_loopback() => Some("loopback"),
        _ if ip.is_multicast() => Some("multicast"),
        _ => None,
    };
    match what {
        Some(what) => Err(format!("{ip} is {what}, not an address a pod or service can have")),
        None => Ok(ip),
    }
}

/// Every byte printable ASCII: strings that end up in identities and matches.
pub fn printable(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes() {
        assert!(dns_label("shop-1").is_ok());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(dns_label("a.b").is_err() && dns_label("-a").is_err() && dns_label("A").is_err());
        assert!(dns_subdomain("cart-7d9f.shop").is_ok());
        assert!(dns_subdomain(&format!("{}.b", "a".repeat(252))).is_err());
        assert!(dns_subdomain("a..b").is_err() && dns_subdomain("a/b").is_err());
        assert!(dns1035_label("web").is_ok() && dns1035_label("1web").is_err());
        assert!(iana_svc_name("http-alt").is_ok());
        assert!(iana_svc_name("8080").is_err() && iana_svc_name("a--b").is_err());
        assert!(iana_svc_name("sixteen-letters1").is_err());
    }

    #[test]
    fn labels_follow_kubernetes() {
        for key in ["app", "nodemesh.io/intercept", "app.kubernetes.io/name", "A_b.c"] {
            assert!(qualified_name(key).is_ok(), "{key}");
        }
        for key in ["", "/a", "a/", "Nodemesh.io/x", "a b", "-a", &"a".repeat(64), "a/b/c"] {
            assert!(qualified_name(key).is_err(), "{key}");
        }
        for value in ["", "enabled", "v1.2_3", "A"] {
            assert!(label_value(value).is_ok(), "{value}");
        }
        for value in ["-a", "a b", "a/b", &"a".repeat(64)] {
            assert!(label_value(value).is_err(), "{value}");
        }
    }

    #[test]
    fn only_unicast_addresses() {
        for ip in ["10.0.0.1", "fd00::1", "2001:db8::1", "::ffff:10.0.0.1"] {
            assert!(unicast(ip.parse().expect("ip")).is_ok(), "{ip}");
        }
        assert_eq!(unicast("::ffff:10.0.0.1".parse().expect("ip")), Ok("10.0.0.1".parse().expect("ip")));
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
        ] {
            assert!(unicast(ip.parse().expect("ip")).is_err(), "{ip}");
        }
    }
}
