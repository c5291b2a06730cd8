//! The addresses a pod really has: whatever a pod spec says, the agent steers only addresses
//! assigned inside the pod's own network namespace. A spec naming the node's address, another
//! pod's, or an address nobody has would otherwise point that address's inbound steering (and
//! policy) at the wrong pod.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::Netns;
use crate::claims::canonical;

/// Every address assigned to an interface of the calling thread's namespace.
pub fn assigned() -> io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a heap list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: a non-null sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET means a sockaddr_in.
                let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// Checks that every address in `claimed` is assigned inside `netns`.
pub fn verify(netns: &Netns, claimed: &[IpAddr]) -> Result<(), String> {
    let assigned =
        netns.run(assigned).and_then(|r| r).map_err(|e| format!("listing the pod's addresses: {e}"))?;
    let assigned: Vec<IpAddr> = assigned.into_iter().map(canonical).collect();
    match claimed.iter().find(|ip| !assigned.contains(&canonical(**ip))) {
        Some(ip) => Err(format!(
            "the pod claims {ip}, which is not an address of its network namespace (it has {})",
            assigned.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback_at_least() {
        let here = assigned().expect("getifaddrs");
        assert!(here.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{here:?}");
    }
}
