//! The agent's configuration: file, then flags, into one validated `Config` that is printed at
//! start-up and by `/config_dump`, then shared read-only. Nothing else reads the environment.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use nodemesh_common::ports;
use nodemesh_conventions::FieldError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name (defaults to the host name).
    pub node_name: String,
    /// Where links and maps are pinned (on a bpffs).
    pub bpffs_dir: PathBuf,
    /// The cgroup v2 directory under which kubelet creates pod cgroups; defaults to the
    /// cgroup2 mount point.
    pub cgroup_root: Option<PathBuf>,
    /// Local mode: the node's pods and namespaces (docs/enrollment.md).
    pub enrollment_file: Option<PathBuf>,
    /// Control-plane mode: delta xDS server, e.g. `https://istiod.istio-system:15012` (TLS,
    /// checked against `mesh_root`) or `http://...:15010` (plaintext, for local use).
    pub xds_address: Option<String>,
    /// Where the last state accepted from the control plane is kept.
    pub xds_snapshot: PathBuf,
    /// The mesh root (PEM): what the control plane's TLS certificate and every workload
    /// certificate must chain to. Required for an `https://` control plane and for HBONE.
    pub mesh_root: Option<PathBuf>,
    /// The node's bootstrap token for the CA (docs/security.md). Setting it turns workload
    /// identities and HBONE on: certificates for the enrolled pods' identities, mutual TLS
    /// between nodes.
    pub node_token_file: Option<PathBuf>,
    /// The CA (`https://host:15012`); defaults to the control plane's address.
    pub ca_address: Option<String>,
    /// Sent to the CA and the control plane as `clusterid`, as ztunnel sends it.
    pub cluster_id: String,
    /// The workload certificate lifetime asked of the CA, in seconds (the CA may cap it).
    pub cert_lifetime_s: u64,
    /// Admin API (status, config dump, flows, logging); loopback in the node's namespace.
    pub admin_addr: SocketAddr,
    /// Prometheus metrics (`/metrics`).
    pub metrics_addr: SocketAddr,
    /// Readiness (`/healthz/ready`), for the DaemonSet's readiness probe.
    pub readiness_addr: SocketAddr,
    /// Closed flows kept for `/flows` and `nodemesh flows` (the oldest give way).
    pub flows_max_closed: usize,
    pub ports: Ports,
    /// Destination ports never intercepted (connect4/connect6).
    pub excluded_outbound_ports: Vec<u16>,
    /// Pod ports never steered to the proxy (sk_lookup).
    pub excluded_inbound_ports: Vec<u16>,
    /// Upstream connect timeout.
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    /// How long a retired listener keeps accepting what the kernel had already queued, and
    /// how long shutdown waits for proxied connections to finish.
    #[serde(with = "millis")]
    pub drain_timeout: Duration,
    /// Hand established connections to the kernel (sockmap splice). See docs/acceleration.md
    /// for why it is on by default (the evidence that it never changes a byte).
    pub splice: bool,
    /// Spliced bytes a direction may have given the other socket that it has not sent yet,
    /// before the proxy steps in (backpressure on slow readers).
    pub splice_inflight_bytes: u64,
    /// Also splice connections whose proxy socket receives from the network (cross-node and
    /// external legs). Off by default: `tcp_read_skb` hands the verdict a retransmitted skb
    /// whole, including a prefix already delivered; the verdict now cuts that prefix off by
    /// sequence number, but only loopback legs have been through the stress run
    /// (docs/acceleration.md).
    pub splice_network_legs: bool,
    /// Bytes a connection moves through the copying proxy before it is spliced (0: at once).
    /// Short connections are cheaper copied than handed over.
    pub splice_after_bytes: u64,
    /// Largest copy buffer per direction of a proxied connection (buffers start small and
    /// grow while reads fill them).
    pub max_buffer_bytes: usize,
    /// Proxied connections at once, node-wide; past it new connections are reset and counted.
    /// 0: as many as the descriptor limit allows while keeping `fd_reserve` descriptors.
    pub max_connections: usize,
    /// Proxied connections at once per pod (both directions); past it the pod's new
    /// connections are reset and counted, so one pod cannot take the node's share.
    pub max_connections_per_pod: usize,
    /// Descriptors kept for everything but proxied connections (pod listeners, admin API,
    /// xDS, maps): the proxy never lets its connections eat into them.
    pub fd_reserve: usize,
    /// A proxied connection that moves no byte either way for this long is reset. 0: never
    /// (as Istio's default).
    #[serde(with = "millis")]
    pub idle_timeout: Duration,
    /// The longest a data-plane worker polls for work before it sleeps, in microseconds
    /// (adaptive below it; `idle_poll.rs`). 0: it sleeps at once.
    pub idle_poll_us: u64,
    /// Log filter (tracing EnvFilter syntax).
    pub log: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub outbound: u16,
    pub inbound: u16,
    pub hbone: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self { outbound: ports::OUTBOUND, inbound: ports::INBOUND, hbone: ports::HBONE }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/nodemesh"),
            cgroup_root: None,
            enrollment_file: None,
            xds_address: None,
            xds_snapshot: PathBuf::from("/var/lib/nodemesh/xds-snapshot.pb"),
            mesh_root: None,
            node_token_file: None,
            ca_address: None,
            cluster_id: "Kubernetes".into(),
            cert_lifetime_s: 86_400,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], ports::ADMIN)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], ports::METRICS)),
            readiness_addr: SocketAddr::from(([0, 0, 0, 0], ports::READINESS)),
            flows_max_closed: crate::flows::DEFAULT_MAX_CLOSED,
            ports: Ports::default(),
            excluded_outbound_ports: Vec::new(),
            excluded_inbound_ports: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            splice: true,
            splice_inflight_bytes: 4 << 20,
            splice_after_bytes: 16 << 10,
            splice_network_legs: false,
            max_buffer_bytes: 256 * 1024,
            max_connections: 0,
            max_connections_per_pod: 10_000,
            fd_reserve: 4096,
            idle_timeout: Duration::ZERO,
            idle_poll_us: 50,
            log: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// In the file at `path` (or `(flags)`).
    #[error("{path}: {error}")]
    Invalid { path: String, error: FieldError },
}

/// The agent's flags: each overrides the configuration file's field of the same name. The
/// command line flattens this into `nodemesh agent` (`cli.rs`), so each flag is defined here
/// once.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// This node's name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Where to pin links and maps (on a bpffs).
    #[arg(long)]
    pub bpffs_dir: Option<PathBuf>,
    /// cgroup v2 directory under which kubelet creates pod cgroups.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Local mode: a YAML file listing the node's pods and namespaces (docs/enrollment.md).
    #[arg(long)]
    pub enrollment_file: Option<PathBuf>,
    /// Control-plane mode: the delta xDS server (e.g. http://istiod.istio-system:15010).
    #[arg(long)]
    pub xds_address: Option<String>,
    /// Where to keep the last state accepted from the control plane.
    #[arg(long)]
    pub xds_snapshot: Option<PathBuf>,
    /// The mesh root certificate (PEM) the control plane and workload certificates chain to.
    #[arg(long)]
    pub mesh_root: Option<PathBuf>,
    /// The node's bootstrap token for the CA; turns workload identities and HBONE on.
    #[arg(long)]
    pub node_token_file: Option<PathBuf>,
    /// The CA, e.g. https://nodemesh-controlplane:15012 (defaults to the control plane).
    #[arg(long)]
    pub ca_address: Option<String>,
    /// Workload certificate lifetime asked of the CA, in seconds.
    #[arg(long)]
    pub cert_lifetime_s: Option<u64>,
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

impl Config {
    /// Reads the file (if any), applies the flags, fills defaults and validates.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                Self::parse(&text, &path.display().to_string())?
            }
            None => Self::default(),
        };
        let Overrides {
            node_name,
            bpffs_dir,
            cgroup_root,
            enrollment_file,
            xds_address,
            xds_snapshot,
            mesh_root,
            node_token_file,
            ca_address,
            cert_lifetime_s,
            admin_addr,
            splice,
            log,
        } = overrides;
        if mesh_root.is_some() {
            config.mesh_root = mesh_root;
        }
        if node_token_file.is_some() {
            config.node_token_file = node_token_file;
        }
        if ca_address.is_some() {
            config.ca_address = ca_address;
        }
        if let Some(v) = cert_lifetime_s {
            config.cert_lifetime_s = v;
        }
        if let Some(v) = node_name {
            config.node_name = v;
        }
        if let Some(v) = bpffs_dir {
            config.bpffs_dir = v;
        }
        if cgroup_root.is_some() {
            config.cgroup_root = cgroup_root;
        }
        if enrollment_file.is_some() {
            config.enrollment_file = enrollment_file;
        }
        if xds_address.is_some() {
            config.xds_address = xds_address;
        }
        if let Some(v) = xds_snapshot {
            config.xds_snapshot = v;
        }
        if let Some(v) = admin_addr {
            config.admin_addr = v;
        }
        if let Some(v) = splice {
            config.splice = v;
        }
        if let Some(v) = log {
            config.log = v;
        }
        if config.node_name.is_empty() {
            config.node_name = hostname();
        }
        config.validate("(flags)")?;
        Ok(config)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Invalid {
            path: origin.into(),
            error: FieldError::new(e.path().to_string(), e.into_inner().to_string()),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: origin.into(),
            error: FieldError::new(field, message),
        };
        let p = self.ports;
        for (field, port) in
            [("ports.outbound", p.outbound), ("ports.inbound", p.inbound), ("ports.hbone", p.hbone)]
        {
            if port == 0 {
                return Err(invalid(field, "must not be 0".into()));
            }
        }
        if p.outbound == p.inbound || p.outbound == p.hbone || p.inbound == p.hbone {
            return Err(invalid("ports", "outbound, inbound and hbone must differ".into()));
        }
        if self.enrollment_file.is_some() && self.xds_address.is_some() {
            return Err(invalid(
                "enrollment_file, xds_address",
                "set one: the local file (no control plane) or a control plane".into(),
            ));
        }
        if let Some(address) = &self.xds_address
            && !(address.starts_with("http://") || address.starts_with("https://"))
        {
            return Err(invalid(
                "xds_address",
                format!("{address:?} needs a scheme, e.g. http://host:15010"),
            ));
        }
        let tls_control_plane = self.xds_address.as_deref().is_some_and(|a| a.starts_with("https://"));
        if tls_control_plane && self.mesh_root.is_none() {
            return Err(invalid(
                "mesh_root",
                "required with an https:// control plane: the root its certificate must chain to".into(),
            ));
        }
        if self.node_token_file.is_some() {
            match self.ca() {
                None => {
                    return Err(invalid(
                        "ca_address",
                        "node_token_file turns identities on: set ca_address, or an https:// xds_address"
                            .into(),
                    ));
                }
                Some(ca) if !ca.starts_with("https://") => {
                    return Err(invalid(
                        "ca_address",
                        format!("{ca:?} must be https:// (the CA is reached over TLS)"),
                    ));
                }
                Some(_) => {}
            }
            if self.mesh_root.is_none() {
                return Err(invalid(
                    "mesh_root",
                    "required with node_token_file: the root certificates chain to".into(),
                ));
            }
        }
        if !(1..=90 * 86_400).contains(&self.cert_lifetime_s) {
            return Err(invalid("cert_lifetime_s", "must be between 1 and 7776000 (90 days)".into()));
        }
        if !self.bpffs_dir.is_absolute() {
            return Err(invalid("bpffs_dir", format!("{} is not absolute", self.bpffs_dir.display())));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be above 0".into()));
        }
        if !(4096..=16 << 20).contains(&self.max_buffer_bytes) {
            return Err(invalid("max_buffer_bytes", "must be between 4096 and 16 MiB".into()));
        }
        if self.max_connections_per_pod == 0 {
            return Err(invalid("max_connections_per_pod", "must be above 0".into()));
        }
        if !(256..=1 << 20).contains(&self.fd_reserve) {
            return Err(invalid("fd_reserve", "must be between 256 and 1048576".into()));
        }
        if self.idle_poll_us > 1000 {
            return Err(invalid("idle_poll_us", "must be at most 1000 (µs): past that, sleep".into()));
        }
        if !self.idle_timeout.is_zero() && self.idle_timeout < Duration::from_secs(1) {
            return Err(invalid("idle_timeout", "must be 0 (never) or at least 1000 ms".into()));
        }
        if self.flows_max_closed > 1_000_000 {
            return Err(invalid("flows_max_closed", "must be at most 1000000".into()));
        }
        for (field, addr) in [
            ("admin_addr", self.admin_addr),
            ("metrics_addr", self.metrics_addr),
            ("readiness_addr", self.readiness_addr),
        ] {
            if addr.port() == 0 {
                return Err(invalid(field, format!("{addr} needs a port")));
            }
        }
        if !(64 << 10..=1 << 30).contains(&self.splice_inflight_bytes) {
            return Err(invalid("splice_inflight_bytes", "must be between 64 KiB and 1 GiB".into()));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return Err(invalid("log", format!("{:?} is not a log filter", self.log)));
        }
        Ok(())
    }
}

impl Config {
    /// The CA's address when identities are on: `ca_address`, else an `https://` control
    /// plane (which serves the CA on its TLS port).
    pub fn ca(&self) -> Option<&str> {
        self.node_token_file.as_ref()?;
        self.ca_address.as_deref().or(self.xds_address.as_deref().filter(|a| a.starts_with("https://")))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into())
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate("test").expect("valid");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::parse("ports: {outbound: 15001, inbound: 15001}\n", "f.yaml").expect_err("dup");
        assert!(e.to_string().contains("ports"), "{e}");
        let e = Config::parse("connect_timeout: soon\n", "f.yaml").expect_err("type");
        assert!(e.to_string().contains("connect_timeout"), "{e}");
        let e = Config::parse("splice: true\nsplce: false\n", "f.yaml").expect_err("unknown");
        assert!(e.to_string().contains("splce"), "{e}");
        let e = Config::parse("idle_poll_us: 5000\n", "f.yaml").expect_err("too long a poll");
        assert!(e.to_string().contains("idle_poll_us"), "{e}");
        assert_eq!(Config::parse("idle_poll_us: 0\n", "f.yaml").expect("off").idle_poll_us, 0);
    }

    #[test]
    fn identities_need_a_root_and_a_tls_ca() {
        let e = Config::parse("xds_address: https://cp:15012\n", "f.yaml").expect_err("no root");
        assert!(e.to_string().contains("mesh_root"), "{e}");
        let e = Config::parse("xds_address: http://cp:15010\nnode_token_file: /t\nmesh_root: /r\n", "f.yaml")
            .expect_err("plaintext CA");
        assert!(e.to_string().contains("ca_address"), "{e}");
        let e = Config::parse("xds_address: https://cp:15012\nnode_token_file: /t\n", "f.yaml")
            .expect_err("root");
        assert!(e.to_string().contains("mesh_root"), "{e}");
        let ok =
            Config::parse("xds_address: https://cp:15012\nnode_token_file: /t\nmesh_root: /r\n", "f.yaml")
                .expect("valid");
        assert_eq!(ok.ca(), Some("https://cp:15012"));
        let e = Config::parse("cert_lifetime_s: 0\n", "f.yaml").expect_err("lifetime");
        assert!(e.to_string().contains("cert_lifetime_s"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "splice: false\nnode_name: a\n").expect("write");
        let config = Config::load(
            Some(&path),
            Overrides { splice: Some(true), node_name: Some("b".into()), ..Default::default() },
        )
        .expect("load");
        assert!(config.splice);
        assert_eq!(config.node_name, "b");
    }
}
