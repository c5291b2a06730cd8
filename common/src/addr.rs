//! Address helpers usable in the kernel (no_std, no panics) and in the agent.
//!
//! The kernel hands IPv4 addresses over as a network-order `u32` and IPv6 addresses as four
//! network-order `u32`s. Read natively, the bytes of those words in memory are the address's
//! octets in order, so converting is a matter of `to_ne_bytes`/`from_ne_bytes`.

/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as stored in memory.
pub const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Maps a network-order IPv4 word into the 16-byte layout.
#[inline(always)]
pub const fn from_v4(ip4: u32) -> [u32; 4] {
    [0, 0, V4_MAPPED_PREFIX, ip4]
}

/// Whether the address is IPv4 mapped into IPv6.
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX
}

/// Whether a network-order IPv4 word is in 127.0.0.0/8.
#[inline(always)]
pub const fn is_loopback_v4(ip4: u32) -> bool {
    ip4.to_ne_bytes()[0] == 127
}

/// Whether the address is a loopback address of either family (`::1`, or `127.0.0.0/8` mapped).
#[inline(always)]
pub const fn is_loopback(addr: &[u32; 4]) -> bool {
    if is_v4_mapped(addr) {
        return is_loopback_v4(addr[3]);
    }
    addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && addr[3] == u32::from_ne_bytes([0, 0, 0, 1])
}

/// The network-order IPv4 word of `a.b.c.d`.
#[inline(always)]
pub const fn v4(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// `::1` in the 16-byte layout.
pub const LOOPBACK_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// Converts a port the kernel stored in network order in the low 16 bits of a word
/// (`bpf_sock_addr.user_port`, `bpf_sk_lookup.remote_port`) to host order.
#[inline(always)]
pub const fn port_from_be_low(word: u32) -> u16 {
    u16::from_be(word as u16)
}

/// Converts a host-order port to the layout of `bpf_sock_addr.user_port`.
#[inline(always)]
pub const fn port_to_be_low(port: u16) -> u32 {
    port.to_be() as u32
}

/// Converts a port the kernel exposes in network order in the *upper* 16 bits of a word
/// (`bpf_sock_ops.remote_port`, `__sk_buff.remote_port` on little-endian machines) to host
/// order.
#[inline(always)]
pub const fn port_from_be_high(word: u32) -> u16 {
    if cfg!(target_endian = "little") { u16::from_be((word >> 16) as u16) } else { word as u16 }
}

/// An address in the 16-byte layout (IPv4 mapped into IPv6), as user space writes keys.
pub const fn from_ip(ip: core::net::IpAddr) -> [u32; 4] {
    let o = match ip {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(v6) => v6.octets(),
    };
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The address a 16-byte-layout value holds: IPv4 when it is IPv4-mapped.
pub const fn to_ip(addr: &[u32; 4]) -> core::net::IpAddr {
    let [a, b, c, d] =
        [addr[0].to_ne_bytes(), addr[1].to_ne_bytes(), addr[2].to_ne_bytes(), addr[3].to_ne_bytes()];
    if is_v4_mapped(addr) {
        return core::net::IpAddr::V4(core::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]));
    }
    core::net::IpAddr::V6(core::net::Ipv6Addr::from_octets([
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_round_trip_through_the_kernel_layout() {
        for text in ["10.1.2.3", "fd00::5", "::1", "::ffff:10.0.0.1"] {
            let ip: core::net::IpAddr = text.parse().expect("ip");
            let canonical = ip.to_canonical();
            assert_eq!(to_ip(&from_ip(ip)), canonical, "{text}");
        }
        assert_eq!(from_ip("10.1.2.3".parse().expect("ip")), from_v4(v4([10, 1, 2, 3])));
    }

    #[test]
    fn v4_mapping_round_trips_octets() {
        let a = from_v4(v4([10, 1, 2, 3]));
        assert!(is_v4_mapped(&a));
        let mut octets = [0u8; 16];
        for (i, w) in a.iter().enumerate() {
            octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(octets, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback(&from_v4(v4([127, 0, 0, 6]))));
        assert!(is_loopback(&LOOPBACK_V6));
        assert!(!is_loopback(&from_v4(v4([10, 0, 0, 1]))));
        assert!(!is_loopback(&[0, 0, 0, 0]));
    }

    #[test]
    fn ports_in_kernel_layouts() {
        assert_eq!(port_from_be_low(port_to_be_low(8080)), 8080);
        let high = (u32::from(8080u16.to_be())) << 16;
        if cfg!(target_endian = "little") {
            assert_eq!(port_from_be_high(high), 8080);
        }
    }
}
