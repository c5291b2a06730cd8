//! The kernel side: loads and pins the eBPF programs and maps, attaches them per enrolled pod,
//! and owns every pin so it can remove them all on shutdown.

mod bpf_sys;
pub mod btf;
mod connections;
mod hooks;
mod loader;
mod maps;
mod pins;
mod pod_links;
mod records;
mod steering;

use std::{io, os::fd::AsFd};

pub use crate::report::status::ProgramStatus;
use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
};
use nodemesh_common::{Counter, maps as names};

use bpf_sys::MapFd;
pub use connections::{OriginalDestinations, SpliceKeys, SpliceMaps};
pub use hooks::{DROP_TRACER, Hook, PROXY_SOCK_OPS, SPLICE_VERDICT};
pub use loader::DatapathSettings;
pub use pins::PinDir;
pub use pod_links::PodLinks;
pub use records::{KernelRecords, MapOccupancy, Occupancy};
pub use steering::{ListenerMarks, Steering};

/// What went wrong in the kernel side. Each variant keeps the error underneath as its source
/// (aya keeps the errno, and the verifier's log, in theirs); [`error_chain`] or anyhow's
/// `{:#}` print the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} {name}")]
    Missing { kind: &'static str, name: String },
    #[error("reading the kernel's BTF")]
    Btf(#[source] aya::BtfError),
    #[error("program {name} has an unexpected type {kind}")]
    UnexpectedProgram { name: String, kind: String },
    #[error("program {name}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching {hook:?} for pod {uid}")]
    Attach {
        uid: String,
        hook: Hook,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl DatapathError {
    fn io(what: &'static str, source: io::Error) -> Self {
        Self::Io { what, source }
    }

    fn missing(kind: &'static str, name: &str) -> Self {
        Self::Missing { kind, name: name.into() }
    }

    fn map(name: &str) -> impl FnOnce(aya::maps::MapError) -> Self + '_ {
        move |source| Self::Map { name: name.into(), source }
    }

    fn program(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> Self + '_ {
        move |source| Self::Program { name: name.into(), source }
    }
}

/// The map handles the rest of the agent uses, each typed for its one user and owned by it:
/// nothing outside this module reads or writes a map by name. Every operation is one
/// syscall on a duplicated descriptor, so users share them without a lock.
#[derive(Debug)]
pub struct Handles {
    /// The reconciler's.
    pub steering: Steering,
    /// The proxy's: its listeners, its connections' original destinations, its splices.
    pub listener_marks: ListenerMarks,
    pub original_destinations: OriginalDestinations,
    pub splice: SpliceMaps,
    /// The flow table's.
    pub kernel_records: KernelRecords,
    /// The metrics endpoint's.
    pub occupancy: Occupancy,
}

pub struct Datapath {
    ebpf: Ebpf,
    pins: PinDir,
    /// This agent owns the pin directory while it runs.
    _lock: pins::PinLock,
    counters: PerCpuArray<MapData, u64>,
}

impl Datapath {
    /// Loads everything, adopting compatible maps an earlier agent pinned.
    pub fn load(pins: PinDir, settings: &DatapathSettings) -> Result<Self, DatapathError> {
        let (ebpf, lock) = loader::load(&pins, settings)?;
        let counters = open_pinned(&pins, names::COUNTERS)
            .and_then(|m| PerCpuArray::try_from(m).map_err(DatapathError::map(names::COUNTERS)))?;
        Ok(Self { ebpf, pins, _lock: lock, counters })
    }

    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Typed handles on the maps the agent's other parts use (see [`Handles`]).
    pub fn handles(&self) -> Result<Handles, DatapathError> {
        let open = |name: &str| -> Result<MapFd, DatapathError> {
            let map = self.ebpf.map(name).ok_or_else(|| DatapathError::missing("map", name))?;
            let fd = map_fd(map).ok_or_else(|| DatapathError::missing("map descriptor for", name))?;
            MapFd::new(fd).map_err(|e| DatapathError::io("duplicating a map fd", e))
        };
        Ok(Handles {
            steering: Steering { listeners: open(names::LISTENERS)? },
            listener_marks: ListenerMarks { marks: open(names::LISTENER_MARK)? },
            original_destinations: OriginalDestinations { map: open(names::ORIG_DST)? },
            splice: SpliceMaps {
                socks: open(names::SPLICE_SOCKS)?,
                state: open(names::SPLICE_STATE)?,
                ctl: open(names::SPLICE_CTL)?,
            },
            kernel_records: KernelRecords {
                flows: open(names::FLOWS)?,
                tcp_health: open(names::TCP_HEALTH)?,
                splice_state: open(names::SPLICE_STATE)?,
                splice_ctl: open(names::SPLICE_CTL)?,
            },
            occupancy: Occupancy {
                flows: open(names::FLOWS)?,
                tcp_health: open(names::TCP_HEALTH)?,
                orig_dst: open(names::ORIG_DST)?,
            },
        })
    }

    /// Attaches every hook for one pod, replacing links an earlier agent pinned for it.
    pub fn attach_pod(
        &mut self,
        uid: &str,
        cgroup: impl AsFd,
        netns: impl AsFd,
        host_veth: Option<&str>,
    ) -> Result<PodLinks, DatapathError> {
        pod_links::attach(&mut self.ebpf, &self.pins, uid, cgroup.as_fd(), netns.as_fd(), host_veth)
    }

    /// Removes the pins of pods that are not in `keep` (left by an earlier agent).
    pub fn sweep_stale_pods(&self, keep: &std::collections::HashSet<String>) {
        match self.pins.pinned_pods() {
            Ok(uids) => {
                for uid in uids.into_iter().filter(|u| !keep.contains(u)) {
                    tracing::info!(%uid, "removing links left for a pod that is not enrolled");
                    pod_links::remove_pinned(&self.pins, &uid);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list pinned pods"),
        }
    }

    /// Sums every per-CPU counter.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let total =
                    self.counters.get(&(c as u32), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
                (c, total)
            })
            .collect()
    }

    pub fn programs(&self) -> Vec<ProgramStatus> {
        let mut out: Vec<ProgramStatus> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgramStatus {
                    name: name.to_owned(),
                    kind: format!("{:?}", p.prog_type()),
                    id: info.id(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Removes every pin the agent owns. Links detach as their last reference goes.
    pub fn remove_all(self) -> io::Result<()> {
        // The lock goes last, with the directory it protects.
        let Self { ebpf, pins, _lock: lock, counters } = self;
        drop(counters);
        drop(ebpf);
        let removed = pins.remove_all();
        drop(lock);
        removed
    }
}

/// An error and all its sources on one line (aya keeps the errno in the source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn open_pinned(pins: &PinDir, name: &str) -> Result<Map, DatapathError> {
    let data = MapData::from_pin(pins.maps().join(name)).map_err(DatapathError::map(name))?;
    Map::from_map_data(data).map_err(DatapathError::map(name))
}

fn map_fd(map: &Map) -> Option<std::os::fd::BorrowedFd<'_>> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd())
}
