//! The host-side end of a pod's veth, where the tc flow programs attach.
//!
//! Inside the pod's namespace, a veth whose peer lives in another namespace names that peer
//! by index (`IFLA_LINK`). The agent then checks, in the node's namespace, that the link with
//! that index is a veth pointing back at the pod's end, so an index that merely exists in both
//! namespaces is never mistaken for the peer. Plain rtnetlink, no external tool.

use std::io;

use super::{Netns, rtnetlink};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// One link as rtnetlink describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    /// The peer's index (veth), in the namespace `peer_netnsid` names, or in this one.
    pub peer_index: Option<u32>,
    pub peer_netnsid: Option<i32>,
}

/// The node-side end of the pod's veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVeth {
    pub index: u32,
    pub name: String,
}

/// Finds the host-side veth of the pod in `pod`. `None` when the pod has no veth into the
/// node's namespace (another CNI design, or a namespace made by hand).
pub fn host_side(pod: &Netns) -> io::Result<Option<HostVeth>> {
    let inside = pod.run(list_links)??;
    let outside = list_links()?;
    Ok(inside.iter().filter(|l| l.kind.as_deref() == Some("veth") && l.peer_netnsid.is_some()).find_map(
        |pod_end| {
            let peer = pod_end.peer_index?;
            outside
                .iter()
                .find(|l| {
                    l.index == peer
                        && l.kind.as_deref() == Some("veth")
                        && l.peer_index == Some(pod_end.index)
                })
                .map(|l| HostVeth { index: l.index, name: l.name.clone() })
        },
    ))
}

/// Every link of the calling thread's namespace.
pub fn list_links() -> io::Result<Vec<Link>> {
    let socket = rtnetlink::open()?;
    rtnetlink::send(&socket, &dump_request())?;
    let mut links = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = rtnetlink::recv(&socket, &mut buffer)?;
        let mut messages = &buffer[..n];
        while messages.len() >= NLMSG_HDRLEN {
            let len = u32_at(messages, 0) as usize;
            let kind = u16_at(messages, 4);
            if len < NLMSG_HDRLEN || len > messages.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
            }
            match kind {
                NLMSG_DONE => return Ok(links),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(
                        messages.get(16..20).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]),
                    );
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                RTM_NEWLINK => links.push(parse_link(&messages[NLMSG_HDRLEN..len])),
                _ => {}
            }
            messages = &messages[align(len).min(messages.len())..];
        }
    }
}

fn dump_request() -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + IFINFOMSG_LEN);
    msg.extend_from_slice(&((NLMSG_HDRLEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&[0u8; IFINFOMSG_LEN]); // any family, any link
    msg
}

/// Parses an `ifinfomsg` and its attributes.
fn parse_link(body: &[u8]) -> Link {
    let mut link = Link { index: body.get(4..8).map_or(0, |_| u32_at(body, 4)), ..Link::default() };
    for (kind, value) in attributes(body.get(IFINFOMSG_LEN..).unwrap_or_default()) {
        match kind {
            IFLA_IFNAME => link.name = c_string(value),
            IFLA_LINK if value.len() >= 4 => link.peer_index = Some(u32_at(value, 0)),
            IFLA_LINK_NETNSID if value.len() >= 4 => link.peer_netnsid = Some(u32_at(value, 0) as i32),
            IFLA_LINKINFO => {
                link.kind = attributes(value).find(|(k, _)| *k == IFLA_INFO_KIND).map(|(_, v)| c_string(v))
            }
            _ => {}
        }
    }
    link
}

/// The `rtattr`s in `data`: (type without the nested/byte-order flags, payload).
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16_at(data, 0));
        if len < 4 || len > data.len() {
            return None;
        }
        let item = (u16_at(data, 2) & 0x3fff, &data[4..len]);
        data = &data[align(len).min(data.len())..];
        Some(item)
    })
}

const fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([data[at], data[at + 1]])
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_loopback_link() {
        let links = list_links().expect("rtnetlink dump");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.index, 1);
        assert_eq!(lo.peer_index, None);
    }

    #[test]
    fn attributes_stop_at_a_bad_length() {
        let data = [8, 0, 3, 0, b'l', b'o', 0, 0, 200, 0, 1, 0];
        let parsed: Vec<_> = attributes(&data).collect();
        assert_eq!(parsed, vec![(3, &b"lo\0\0"[..])]);
    }
}
