//! The command line: `nodemesh agent` runs the node agent, `controlplane` the reference
//! control plane, `sidecar` the benchmark's classic sidecar; `status`, `flows` and `config`
//! ask a running agent (over its admin API) and render the records of `nodemesh_agent::report`.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use nodemesh_agent::report::{flows::FlowsReport, status::StatusReport};

use crate::{client, flows_view, status_view};

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
    /// Show the node's flows: both ends, verdict, bytes, kernel RTT and retransmits.
    Flows(FlowsArgs),
    /// Show the agent's configuration (`--json`: everything it holds, the control plane's
    /// state included).
    Config {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Run the reference control plane: Kubernetes-style YAML in, delta xDS out.
    Controlplane(ControlplaneArgs),
    /// Run as a classic per-pod sidecar proxy behind an nftables/iptables REDIRECT rule (for
    /// comparisons; the node agent never needs it).
    Sidecar(nodemesh_agent::sidecar::SidecarArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// YAML configuration file (docs/configuration.md); flags override it.
    #[arg(long, env = "NODEMESH_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: nodemesh_agent::config::Overrides,
}

#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Only the N flows with the most bytes (or retransmits, or the highest share of HTTP
    /// requests answered 5xx, with --by).
    #[arg(long)]
    pub top: Option<usize>,
    /// What --top ranks by.
    #[arg(long, value_parser = ["bytes", "retransmits", "errors"], default_value = "bytes")]
    pub by: String,
    /// Only flows with an end in this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only flows with this pod at an end (`name` or `namespace/name`).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows with this verdict.
    #[arg(long, value_parser = ["allowed", "denied", "failed", "pending"])]
    pub verdict: Option<String>,
    /// Only active or only closed flows.
    #[arg(long, value_parser = ["active", "closed", "all"], default_value = "all")]
    pub state: String,
    /// At most this many flows.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Redraw every 2 seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Print the agent's JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
}

#[derive(Debug, clap::Args)]
pub struct ControlplaneArgs {
    /// Directory of YAML files (Namespaces, Pods, Services, AuthorizationPolicies).
    #[arg(long, required_unless_present = "kubernetes")]
    pub config_dir: Option<PathBuf>,
    /// Watch the Kubernetes API server instead of a directory: in-cluster config, or a
    /// kubeconfig (`KUBECONFIG`, `~/.kube/config`), as kubectl finds it.
    #[arg(long, conflicts_with = "config_dir")]
    pub kubernetes: bool,
    /// With --kubernetes: also honour Istio's `istio.io/dataplane-mode` label (`ambient` on a
    /// namespace enrols it, `none` on a pod opts it out; `nodemesh.io/intercept` wins).
    #[arg(long)]
    pub istio_dataplane_mode: bool,
    /// Delta xDS (gRPC, plaintext).
    #[arg(long, default_value = "0.0.0.0:15010")]
    pub listen: SocketAddr,
    /// Admin API (/status, /ready).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub admin: SocketAddr,
    #[arg(long, default_value = nodemesh_conventions::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Policies without a selector in this namespace apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Serve Istio's certificate authority (CreateCertificate) beside xDS, with its root kept
    /// in this state directory (generated on first start; the key file is mode 0600).
    #[arg(long, conflicts_with = "cacerts")]
    pub ca_state_dir: Option<PathBuf>,
    /// Serve the certificate authority as an intermediate from Istio's `cacerts` files
    /// (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`).
    #[arg(long, conflicts_with = "ca_secret")]
    pub cacerts: Option<PathBuf>,
    /// With --kubernetes: serve the certificate authority with its root kept in this Secret
    /// (`<namespace>/<name>`, keys `root-cert.pem` and `root-key.pem`), generated and created
    /// when absent and shared by every replica.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "ca_state_dir")]
    pub ca_secret: Option<String>,
    /// With --ca-secret: a Secret the control plane creates is owned by this ServiceAccount
    /// (in the Secret's namespace), so it is deleted with it (the chart names its own).
    #[arg(long, value_name = "SERVICE_ACCOUNT", requires = "ca_secret")]
    pub ca_secret_owner: Option<String>,
    /// The nodes' bootstrap tokens: one file per node, named after it (docs/controlplane.md).
    #[arg(long, conflicts_with = "token_audience")]
    pub node_token_dir: Option<PathBuf>,
    /// With --kubernetes: agents authenticate to the CA with their projected service-account
    /// token made for this audience, checked by TokenReview (instead of --node-token-dir).
    #[arg(long, requires = "agent_service_account")]
    pub token_audience: Option<String>,
    /// With --token-audience: the agents' service account (`<namespace>/<name>`); only its
    /// tokens are accepted, and each for the node its pod is bound to.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "token_audience")]
    pub agent_service_account: Option<String>,
    /// A workload certificate's lifetime in seconds, when the request does not ask.
    #[arg(long, default_value_t = 86_400)]
    pub cert_lifetime_s: u64,
    /// With a certificate authority: xDS and the CA over TLS on this address too (istiod's
    /// 15012), with a serving certificate from the mesh's root.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub tls_listen: SocketAddr,
    /// A name (DNS name or address) clients reach the TLS port by; repeat for more.
    #[arg(long = "tls-name", default_value = "localhost")]
    pub tls_names: Vec<String>,
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

impl FlowsArgs {
    /// The `/flows` query these flags ask for.
    fn path(&self) -> String {
        let mut query = vec![format!("state={}", self.state), format!("limit={}", self.limit)];
        if let Some(top) = self.top {
            query.push(format!("top={top}"));
            query.push(format!("by={}", self.by));
        }
        for (key, value) in [("namespace", &self.namespace), ("pod", &self.pod), ("verdict", &self.verdict)] {
            if let Some(v) = value {
                query.push(format!("{key}={}", encode(v)));
            }
        }
        format!("/flows?{}", query.join("&"))
    }
}

/// Percent-encodes a query value (names are DNS labels and `/`, but be safe).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn flows(args: &FlowsArgs) -> anyhow::Result<()> {
    let path = args.path();
    loop {
        let body = client::get(args.admin, &path)?;
        if args.json {
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            let report: FlowsReport = serde_json::from_slice(&body)?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let text = flows_view::render(&report, now_ms, args.top.map(|_| args.by.as_str()));
            if args.watch {
                // Home, clear to the end: redraw in place without scrolling.
                print!("\x1b[H\x1b[2J{text}");
            } else {
                print!("{text}");
            }
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

pub fn config(json: bool, admin: SocketAddr) -> anyhow::Result<()> {
    let body = client::get(admin, "/config_dump")?;
    let dump: serde_json::Value = serde_json::from_slice(&body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&dump)?);
    } else {
        // The agent's effective configuration, in the YAML it reads (docs/configuration.md).
        print!("{}", serde_yaml::to_string(&dump["config"])?);
    }
    Ok(())
}
