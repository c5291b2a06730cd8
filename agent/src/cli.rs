//! Command line: `nodemesh agent` runs the node agent; the other commands ask it things.

mod status_view;
mod table;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::{admin::client, status::StatusReport};

#[derive(Debug, Parser)]
#[command(name = "nodemesh", version, about = "eBPF-accelerated node-level service mesh agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (needs root: loads eBPF programs, enters pod namespaces).
    Agent(AgentArgs),
    /// Show the agent's programs, enrolled pods, listeners and counters.
    Status {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The agent's admin API.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Run the reference control plane: Kubernetes-style YAML in, delta xDS out.
    Controlplane(ControlplaneArgs),
    /// Run as a classic per-pod sidecar proxy behind an nftables/iptables REDIRECT rule (for
    /// comparisons; the node agent never needs it).
    Sidecar(crate::sidecar::SidecarArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// YAML configuration file (docs/configuration.md); flags override it.
    #[arg(long, env = "NODEMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Local mode: a YAML file listing the node's pods and namespaces (docs/enrollment.md).
    #[arg(long)]
    pub enrollment_file: Option<PathBuf>,
    /// Control-plane mode: the delta xDS server (e.g. http://istiod.istio-system:15010).
    #[arg(long)]
    pub xds_address: Option<String>,
    /// Where to keep the last state accepted from the control plane.
    #[arg(long)]
    pub xds_snapshot: Option<PathBuf>,
    /// Where to pin links and maps (on a bpffs).
    #[arg(long)]
    pub bpffs_dir: Option<PathBuf>,
    /// cgroup v2 directory under which kubelet creates pod cgroups.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Admin API address.
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// Splice established connections in the kernel (true/false).
    #[arg(long)]
    pub splice: Option<bool>,
    /// Log filter, e.g. `info` or `nodemesh=debug`.
    #[arg(long)]
    pub log: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ControlplaneArgs {
    /// Directory of YAML files (Namespaces, Pods, Services, AuthorizationPolicies).
    #[arg(long)]
    pub config_dir: PathBuf,
    /// Delta xDS (gRPC, plaintext).
    #[arg(long, default_value = "0.0.0.0:15010")]
    pub listen: SocketAddr,
    /// Admin API (/status, /ready).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub admin: SocketAddr,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Policies without a selector in this namespace apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    #[arg(long, default_value = "info")]
    pub log: String,
}

pub fn status(json: bool, admin: SocketAddr) -> anyhow::Result<()> {
    let body = client::get(admin, "/status")?;
    let report: StatusReport = serde_json::from_slice(&body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status_view::render(&report));
    }
    Ok(())
}
