//! Keeping the client's address on the HBONE server's connection to the app, as ztunnel does:
//! the proxy's socket in the pod binds the client's address (`IP_TRANSPARENT`) and carries
//! [`MARK`]. The app's answers must then come back to that socket instead of leaving the pod
//! for the real client, so inside each enrolled pod's namespace the agent sets up, with
//! rtnetlink and no iptables:
//!
//! - `tcp_fwmark_accept = 1`: a connection the app accepts takes the mark of the SYN that
//!   opened it (ours), and so does every packet it sends;
//! - `fwmark_reflect = 1` (IPv4 and IPv6): the reset the kernel sends when nothing listens on
//!   the app's port takes the mark of the SYN it answers, so it comes back to our socket too
//!   and the connect is refused at once (unmarked, it left for the real client, and the
//!   connect waited out its timeout: a dead app looked like a slow one);
//! - a rule sending marked packets to table [`TABLE`], whose one route says every address is
//!   local (`local default dev lo`), so they are delivered back inside the pod, to us.
//!
//! Nothing else changes: other connections carry no mark. sk_lookup never steers what arrives
//! on `lo` (`ebpf/src/sk_lookup.rs`), so the proxy's connection does not loop back into it.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use super::{Netns, rtnetlink};

/// The mark of the proxy's transparent sockets (Istio's 1337).
pub const MARK: u32 = 0x539;
/// The routing table of marked packets.
pub const TABLE: u32 = 133;
/// The rule's preference: before `main` (32766), as istio-cni places its own.
const PRIORITY: u32 = 32_764;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const LOOPBACK_IFINDEX: u32 = 1;

/// Sets the pod's namespace up for transparent sockets, for the families it has addresses of.
pub fn install(netns: &Netns, v4: bool, v6: bool) -> io::Result<()> {
    netns.run(|| {
        std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1")?;
        std::fs::write("/proc/sys/net/ipv4/fwmark_reflect", "1")?;
        if v6 {
            std::fs::write("/proc/sys/net/ipv6/fwmark_reflect", "1")?;
        }
        let socket = rtnetlink::open()?;
        for (family, wanted) in [(libc::AF_INET as u8, v4), (libc::AF_INET6 as u8, v6)] {
            if wanted {
                request(&socket, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, &rule(family))?;
                request(&socket, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &route(family))?;
            }
        }
        Ok(())
    })?
}

/// Undoes [`install`] (a pod leaving the mesh); what is already gone is no error.
pub fn remove(netns: &Netns) -> io::Result<()> {
    netns.run(|| {
        let socket = rtnetlink::open()?;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            for (kind, body) in [(RTM_DELRULE, rule(family)), (RTM_DELROUTE, route(family))] {
                match request(&socket, kind, 0, &body) {
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT | libc::ESRCH | libc::EAFNOSUPPORT)
                        ) => {}
                    other => other?,
                }
            }
        }
        Ok(())
    })?
}

/// `fwmark MARK lookup TABLE pref PRIORITY`.
fn rule(family: u8) -> Vec<u8> {
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
    let mut body = vec![family, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
    attribute(&mut body, FRA_PRIORITY, PRIORITY);
    attribute(&mut body, FRA_FWMARK, MARK);
    attribute(&mut body, FRA_FWMASK, u32::MAX);
    attribute(&mut body, FRA_TABLE, TABLE);
    body
}

/// `local default dev lo table TABLE`.
fn route(family: u8) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let mut body = vec![family, 0, 0, 0, 0, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL, 0, 0, 0, 0];
    attribute(&mut body, RTA_TABLE, TABLE);
    attribute(&mut body, RTA_OIF, LOOPBACK_IFINDEX);
    body
}

fn attribute(body: &mut Vec<u8>, kind: u16, value: u32) {
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(&value.to_ne_bytes());
}

/// Sends one request and reads its acknowledgement; `EEXIST` (already set up) is success.
fn request(socket: &OwnedFd, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    let len = 16 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    rtnetlink::send(socket, &msg)?;
    let mut reply = [0u8; 512];
    let n = rtnetlink::recv(socket, &mut reply)?;
    if n >= 20 && u16::from_ne_bytes([reply[4], reply[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        return match -code {
            0 | libc::EEXIST => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no acknowledgement from rtnetlink"))
}

/// Makes `socket` (created in the pod) a transparent one: it may bind the client's address,
/// and carries the mark that brings the app's answers back to it.
pub fn prepare_socket(socket: &socket2::Socket, ipv6: bool) -> io::Result<()> {
    const IP_TRANSPARENT: libc::c_int = 19;
    const IPV6_TRANSPARENT: libc::c_int = 75;
    let (level, option) =
        if ipv6 { (libc::IPPROTO_IPV6, IPV6_TRANSPARENT) } else { (libc::IPPROTO_IP, IP_TRANSPARENT) };
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size on a valid socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            std::ptr::from_ref(&one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.set_mark(MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_what_ip_rule_and_ip_route_would() {
        let r = rule(libc::AF_INET as u8);
        assert_eq!((r[0], r[7], r.len()), (libc::AF_INET as u8, FR_ACT_TO_TBL, 12 + 4 * 8));
        let table = &r[12 + 3 * 8 + 4..];
        assert_eq!(u32::from_ne_bytes([table[0], table[1], table[2], table[3]]), TABLE);
        let route = route(libc::AF_INET6 as u8);
        assert_eq!((route[0], route[6], route[7]), (libc::AF_INET6 as u8, RT_SCOPE_HOST, RTN_LOCAL));
    }
}
