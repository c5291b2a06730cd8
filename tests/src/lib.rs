//! A fake Kubernetes cluster on one machine, for Nodemesh's tests, demo and benchmarks.
//!
//! - A **node** is a network namespace running one agent, with a bridge for its pods and an
//!   uplink to a shared "fabric" namespace that joins the nodes (and an external host that is
//!   outside the mesh).
//! - A **pod** is a network namespace with a veth to its node's bridge (IPv4, optionally
//!   IPv6), plus a cgroup v2 directory laid out as kubelet does
//!   (`kubepods/pod<uid>/<container>`, or the systemd driver's slices) holding its processes.
//!
//! Everything a cluster creates (namespaces, cgroups, bpffs pins, processes) is removed when
//! it drops, also when a test fails. Processes run in a pod via `setns` + a write to
//! `cgroup.procs` before exec, never `ip netns exec` (which remounts /sys).

pub mod agent;
pub mod apiserver;
pub mod cluster;
mod cmd;
pub mod controlplane;
pub mod kernel;
pub mod mesh;
pub mod scenario;
pub mod services;
pub mod tools;

use std::path::PathBuf;

pub use agent::{Agent, AgentOptions};
pub use cluster::{CgroupLayout, Cluster, External, Node, Pod, PodOptions, enter_netns, wait_for};
pub use controlplane::ControlPlane;

/// Fails loudly (never skips) when the caller is not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root: it creates network namespaces and cgroups and loads eBPF programs \
         (run `cargo xtask test` as root)"
    );
}

/// The `nodemesh` binary under test: `$NODEMESH_BIN`, or the one cargo built next to the
/// running test binary.
pub fn nodemesh_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("NODEMESH_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // Next to xtask (target/<profile>/xtask), or one up from a test (target/<profile>/deps/<test>).
    let dir = exe.parent().expect("exe dir");
    let candidate = [dir.join("nodemesh"), dir.parent().map(|p| p.join("nodemesh")).unwrap_or_default()]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join("nodemesh"));
    assert!(
        candidate.exists(),
        "{} is missing: build it first (`cargo build -p nodemesh`, which `cargo xtask test` does)",
        candidate.display()
    );
    candidate
}

/// Removes what crashed test runs left behind (by our name prefixes only), and only where the
/// process that created it has gone: a test or benchmark running alongside keeps its own.
pub fn sweep_stale() {
    cluster::sweep_stale();
}
