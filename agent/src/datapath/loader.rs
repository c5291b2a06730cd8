//! Loads the eBPF object: adopts compatible pinned maps, replaces incompatible or unknown
//! ones, loads every program and writes the datapath settings.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, MapInfo, SockHash},
    programs::{BtfTracePoint, CgroupAttachMode, Program, SkSkb, SockOps},
};
use nodemesh_common::{DatapathConfig, SkBuffOffsets, TcpSockOffsets, maps as names};

use super::{
    DatapathError, maps,
    pins::{PinDir, PinLock},
};

/// The eBPF object built by build.rs from the `nodemesh-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodemesh"));

/// The splice verdict's load-time constants (see ebpf/src/splice.rs).
const TCP_SOCK: &str = "NM_TCP_SOCK";
/// The drop tracer's load-time constants (see ebpf/src/drops.rs).
const SK_BUFF: &str = "NM_SK_BUFF";
/// The kernel function whose tracepoint the drop tracer hooks.
const DROP_TRACEPOINT: &str = "kfree_skb";

/// What the kernel programs need to know from the agent's configuration.
#[derive(Clone, Debug)]
pub struct DatapathSettings {
    pub config: DatapathConfig,
    /// Offsets in the kernel's `struct tcp_sock` the splice reads (zeros: unknown, no splice).
    pub tcp_sock: TcpSockOffsets,
    /// Offsets in `struct sk_buff` the drop tracer reads (`None`: no drop tracer).
    pub sk_buff: Option<SkBuffOffsets>,
    /// The agent's own cgroup: sock_ops there records the TCP health of the proxy's sockets.
    pub agent_cgroup: Option<PathBuf>,
    pub excluded_outbound_ports: Vec<u16>,
    pub excluded_inbound_ports: Vec<u16>,
}

pub fn load(pins: &PinDir, settings: &DatapathSettings) -> Result<(Ebpf, PinLock), DatapathError> {
    // Before anything is swept: another agent may own the directory.
    let lock = pins.prepare().map_err(|e| DatapathError::io("preparing the pin directory", e))?;
    sweep_map_pins(&pins.maps())?;

    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps())
        .override_global(TCP_SOCK, &settings.tcp_sock, true)
        .override_global(SK_BUFF, &settings.sk_buff.unwrap_or_default(), true)
        .load(OBJECT)
        .map_err(DatapathError::Object)?;

    for name in names::PINNED {
        if ebpf.map(name).is_none() {
            return Err(DatapathError::missing("map", name));
        }
    }
    let btf = Btf::from_sys_fs().map_err(DatapathError::Btf)?;
    for (name, program) in ebpf.programs_mut() {
        let result = match program {
            Program::CgroupSockAddr(p) => p.load(),
            Program::SockOps(p) => p.load(),
            Program::SkLookup(p) => p.load(),
            Program::SkSkb(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            Program::BtfTracePoint(_) if settings.sk_buff.is_none() => continue,
            Program::BtfTracePoint(p) => p.load(DROP_TRACEPOINT, &btf),
            other => {
                return Err(DatapathError::UnexpectedProgram {
                    name: name.into(),
                    kind: format!("{:?}", other.prog_type()),
                });
            }
        };
        // The verifier's log is in the source (aya's LoadError): it is the whole story.
        result.map_err(DatapathError::program(name))?;
    }
    write_settings(&mut ebpf, settings)?;
    attach_splice_verdict(&mut ebpf)?;
    attach_node_programs(&mut ebpf, settings)?;
    Ok((ebpf, lock))
}

/// Programs that watch the whole node rather than one pod: the drop tracer, and sock_ops on
/// the agent's own cgroup. Their links belong to the loaded programs and go with the agent:
/// they describe this agent's sockets and flows, nothing a pod needs while it is away.
fn attach_node_programs(ebpf: &mut Ebpf, settings: &DatapathSettings) -> Result<(), DatapathError> {
    if settings.sk_buff.is_some() {
        let tracer: &mut BtfTracePoint = program(ebpf, super::hooks::DROP_TRACER)?;
        tracer.attach().map_err(DatapathError::program(super::hooks::DROP_TRACER))?;
    }
    if let Some(cgroup) = &settings.agent_cgroup {
        let dir = fs::File::open(cgroup).map_err(|e| DatapathError::io("opening the agent's cgroup", e))?;
        let sock_ops: &mut SockOps = program(ebpf, super::hooks::PROXY_SOCK_OPS)?;
        sock_ops
            .attach(dir, CgroupAttachMode::Single)
            .map_err(DatapathError::program(super::hooks::PROXY_SOCK_OPS))?;
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| DatapathError::missing("program", name))?
        .try_into()
        .map_err(DatapathError::program(name))
}

/// The splice verdict runs on every socket in the splice sockhash (only ever the proxy's
/// own), so it is attached to the map once, not per pod.
fn attach_splice_verdict(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let map =
        ebpf.map(names::SPLICE_SOCKS).ok_or_else(|| DatapathError::missing("map", names::SPLICE_SOCKS))?;
    let socks: SockHash<&MapData, u64> =
        SockHash::try_from(map).map_err(DatapathError::map(names::SPLICE_SOCKS))?;
    let fd = socks.fd().try_clone().map_err(|e| DatapathError::io("duplicating the splice map fd", e))?;
    let program: &mut SkSkb = program(ebpf, super::hooks::SPLICE_VERDICT)?;
    program.attach(&fd).map_err(DatapathError::program(super::hooks::SPLICE_VERDICT))?;
    Ok(())
}

/// Removes map pins this build would not adopt: unknown names (older layouts) and maps whose
/// shape changed without a rename.
fn sweep_map_pins(dir: &Path) -> Result<(), DatapathError> {
    let entries = fs::read_dir(dir).map_err(|e| DatapathError::io("reading map pins", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DatapathError::io("reading map pins", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = match maps::shape(&name) {
            Some(shape) => MapInfo::from_pin(entry.path()).is_ok_and(|info| shape.matches(&info)),
            None => false,
        };
        if keep {
            tracing::info!(map = %name, "adopting pinned map");
        } else {
            tracing::warn!(map = %name, "removing a pinned map this build cannot adopt");
            fs::remove_file(entry.path()).map_err(|e| DatapathError::io("removing a map pin", e))?;
        }
    }
    Ok(())
}

fn write_settings(ebpf: &mut Ebpf, settings: &DatapathSettings) -> Result<(), DatapathError> {
    let mut config: Array<&mut MapData, DatapathConfig> = Array::try_from(
        ebpf.map_mut(names::CONFIG).ok_or_else(|| DatapathError::missing("map", names::CONFIG))?,
    )
    .map_err(DatapathError::map(names::CONFIG))?;
    config.set(0, settings.config, 0).map_err(DatapathError::map(names::CONFIG))?;

    for (name, ports) in [
        (names::EXCLUDED_OUTBOUND, &settings.excluded_outbound_ports),
        (names::EXCLUDED_INBOUND, &settings.excluded_inbound_ports),
    ] {
        let mut bitmap: Array<&mut MapData, u64> =
            Array::try_from(ebpf.map_mut(name).ok_or_else(|| DatapathError::missing("map", name))?)
                .map_err(DatapathError::map(name))?;
        for (index, word) in port_bitmap(ports).into_iter().enumerate() {
            bitmap.set(index as u32, word, 0).map_err(DatapathError::map(name))?;
        }
    }
    Ok(())
}

/// One bit per port, in `PORT_BITMAP_WORDS` words (the layout ebpf/src/ports.rs reads).
fn port_bitmap(ports: &[u16]) -> Vec<u64> {
    let mut words = vec![0u64; names::PORT_BITMAP_WORDS as usize];
    for &port in ports {
        words[usize::from(port >> 6)] |= 1 << (port & 63);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sets_exactly_the_listed_ports() {
        let words = port_bitmap(&[0, 63, 64, 15021, 65535]);
        let set: Vec<u16> =
            (0..=u16::MAX).filter(|&p| (words[usize::from(p >> 6)] >> (p & 63)) & 1 == 1).collect();
        assert_eq!(set, vec![0, 63, 64, 15021, 65535]);
    }
}
