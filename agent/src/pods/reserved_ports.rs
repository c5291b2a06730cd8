//! The proxy's ports, kept out of the pod's ephemeral range. An app's outgoing connection may
//! otherwise take 127.0.0.1:15008 (or 15001, 15006) as its own source port, and while that
//! socket or its TIME_WAIT lasts the agent cannot open its listener there: a pod with a wide
//! `ip_local_port_range` and many short connections (a load tester) kept a restarted agent
//! from enrolling it. `ip_local_reserved_ports` is per network namespace; the ports are added
//! to what the pod already reserves, never replacing it. Binding them explicitly still works.

use std::io;

use super::Netns;

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Adds `ports` to the pod's reserved ports (those not covered already).
pub fn reserve(netns: &Netns, ports: &[u16]) -> io::Result<()> {
    netns.run(|| {
        let current = std::fs::read_to_string(SYSCTL)?;
        let missing: Vec<u16> = ports.iter().copied().filter(|p| !covers(&current, *p)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        std::fs::write(SYSCTL, merged(&current, &missing))
    })?
}

/// Whether the sysctl's list (`a,b-c,...`) covers `port`.
fn covers(list: &str, port: u16) -> bool {
    list.trim().split(',').filter(|s| !s.is_empty()).any(|item| match item.split_once('-') {
        Some((lo, hi)) => {
            matches!((lo.trim().parse::<u16>(), hi.trim().parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= port && port <= hi)
        }
        None => item.trim().parse::<u16>() == Ok(port),
    })
}

fn merged(current: &str, missing: &[u16]) -> String {
    let mut items: Vec<String> =
        current.trim().split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    items.extend(missing.iter().map(u16::to_string));
    items.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_what_is_missing_and_keeps_what_is_there() {
        assert!(covers("15000-15010", 15008) && covers("80,15008", 15008) && !covers("", 15008));
        assert!(!covers("15009-15020,1", 15008));
        assert_eq!(merged("", &[15001, 15006]), "15001,15006");
        assert_eq!(merged("8080,9000-9010\n", &[15008]), "8080,9000-9010,15008");
    }
}
