//! Simulated agents: one delta ADS stream each, in one process. Each subscribes as its own
//! node (wildcard, Address and Authorization), ACKs every response, and reports when it first
//! holds the full state and when each watched change reaches it.

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nodemesh_proto::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, Node, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    prost_types::{Struct, Value, value::Kind},
    tonic::transport::Endpoint,
    type_urls,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

#[derive(clap::Args)]
pub struct Args {
    /// The control plane, e.g. http://127.0.0.1:15010.
    #[arg(long)]
    pub server: String,
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Address resources each agent holds once fully synced.
    #[arg(long)]
    pub expect: usize,
    /// The control plane's input directory (changes are written there).
    #[arg(long)]
    pub dir: PathBuf,
    /// Single changes to time, one after another.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// The control plane's pid, for its memory.
    #[arg(long)]
    pub cp_pid: Option<u32>,
}

enum Report {
    Synced { at: Instant, bytes: u64 },
    Saw { change: usize, at: Instant },
    Failed { agent: usize, error: String },
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    // The change being watched for: (its index, its resource name).
    let (target_tx, target) = watch::channel(None::<(usize, String)>);
    let start = Instant::now();
    for agent in 0..args.agents {
        let (server, reports, target) = (args.server.clone(), reports_tx.clone(), target.clone());
        tokio::spawn(async move {
            if let Err(e) = simulate(agent, &server, args.expect, &reports, target).await {
                let _ = reports.send(Report::Failed { agent, error: format!("{e:#}") });
            }
        });
    }

    let mut synced = Vec::with_capacity(args.agents);
    let mut bytes = 0;
    while synced.len() < args.agents {
        match tokio::time::timeout(Duration::from_secs(120), reports.recv()).await {
            Ok(Some(Report::Synced { at, bytes: b, .. })) => {
                synced.push(at.duration_since(start).as_secs_f64());
                bytes += b;
            }
            Ok(Some(Report::Failed { agent, error })) => anyhow::bail!("agent {agent}: {error}"),
            Ok(Some(Report::Saw { .. })) => {}
            Ok(None) | Err(_) => anyhow::bail!("only {} of {} agents synced", synced.len(), args.agents),
        }
    }
    let full_sync_s = synced.iter().copied().fold(0.0, f64::max);
    let (cp_rss_kib, cp_hwm_kib) = args.cp_pid.map(memory_kib).transpose()?.unwrap_or((0, 0));
    // Let the ACKs of the last chunks land before the first change.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut propagation_ms = Vec::with_capacity(args.changes * args.agents);
    for change in 0..args.changes {
        let i = 1_000_000 + change;
        let name = format!("Kubernetes//Pod/ns-0/pod-{i}");
        target_tx.send_replace(Some((change, name)));
        let file = format!("change-{change}.yaml");
        let tmp = args.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, crate::generate::pod(0, i, 0, 0))?;
        let written = Instant::now();
        std::fs::rename(&tmp, args.dir.join(&file))?;
        let mut seen = 0;
        while seen < args.agents {
            match tokio::time::timeout(Duration::from_secs(30), reports.recv()).await {
                Ok(Some(Report::Saw { change: c, at })) if c == change => {
                    propagation_ms.push(at.duration_since(written).as_secs_f64() * 1e3);
                    seen += 1;
                }
                Ok(Some(Report::Failed { agent, error })) => anyhow::bail!("agent {agent}: {error}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => anyhow::bail!("change {change} reached only {seen} agents"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    propagation_ms.sort_by(f64::total_cmp);
    synced.sort_by(f64::total_cmp);
    Ok(json!({
        "agents": args.agents,
        "resources_per_agent": args.expect,
        "full_sync_s": full_sync_s,
        "agent_sync_p50_s": percentile(&synced, 0.5),
        "bytes_received": bytes,
        "changes": args.changes,
        "propagation_p50_ms": percentile(&propagation_ms, 0.5),
        "propagation_p99_ms": percentile(&propagation_ms, 0.99),
        "propagation_max_ms": propagation_ms.last().copied().unwrap_or(0.0),
        "cp_rss_kib": cp_rss_kib,
        "cp_peak_rss_kib": cp_hwm_kib,
    }))
}

async fn simulate(
    agent: usize,
    server: &str,
    expect: usize,
    reports: &mpsc::UnboundedSender<Report>,
    mut target: watch::Receiver<Option<(usize, String)>>,
) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(server.to_owned())?
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .connect()
        .await
        .context("connecting")?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(16);
    let name = format!("node-{agent:03}");
    let value = Value { kind: Some(Kind::StringValue(name.clone())) };
    let node = Node {
        id: format!("sim~{name}"),
        metadata: Some(Struct { fields: [("NODE_NAME".to_owned(), value)].into() }),
        ..Default::default()
    };
    for (i, type_url) in [type_urls::ADDRESS, type_urls::AUTHORIZATION].into_iter().enumerate() {
        let node = (i == 0).then(|| node.clone());
        tx.send(DeltaDiscoveryRequest { node, type_url: type_url.into(), ..Default::default() }).await?;
    }
    let mut inbound = client.delta_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    let mut held = HashSet::new();
    let mut bytes = 0u64;
    let mut synced = false;
    while let Some(response) = inbound.message().await? {
        let at = Instant::now();
        if response.type_url == type_urls::ADDRESS {
            for r in &response.resources {
                bytes += r.resource.as_ref().map_or(0, |a| a.value.len() as u64);
                held.insert(r.name.clone());
            }
            for name in &response.removed_resources {
                held.remove(name);
            }
            if !synced && held.len() >= expect {
                synced = true;
                let _ = reports.send(Report::Synced { at, bytes });
            }
            let watched = target.borrow_and_update().clone();
            if let Some((change, name)) = watched
                && response.resources.iter().any(|r| r.name == name)
            {
                let _ = reports.send(Report::Saw { change, at });
            }
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Default::default()
        })
        .await?;
    }
    anyhow::bail!("the control plane closed the stream")
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// (VmRSS, VmHWM) in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{key} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
