//! `nodemesh controlplane`: the reference control plane (the `nodemesh-controlplane` crate)
//! in the one binary.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::commands::ControlplaneArgs;

/// The CA's settings, when a root source is given (it then needs the node tokens).
fn ca_settings(args: &ControlplaneArgs) -> anyhow::Result<Option<nodemesh_controlplane::CaSettings>> {
    use nodemesh_controlplane::ca::CaSource;
    let source = match (&args.ca_state_dir, &args.cacerts) {
        (Some(dir), _) => CaSource::StateDir(dir.clone()),
        (None, Some(dir)) => CaSource::CaCerts(dir.clone()),
        (None, None) => return Ok(None),
    };
    let Some(node_tokens) = args.node_token_dir.clone() else {
        anyhow::bail!(
            "--node-token-dir is required with a certificate authority: nodes authenticate with its tokens"
        );
    };
    Ok(Some(nodemesh_controlplane::CaSettings {
        source,
        node_tokens,
        default_lifetime: Duration::from_secs(args.cert_lifetime_s.max(1)),
        tls_listen: Some(args.tls_listen),
        tls_names: args.tls_names.clone(),
    }))
}

pub fn main(args: ControlplaneArgs) -> anyhow::Result<()> {
    // kube-rs logs every failed request at ERROR (each retry of a kind whose CRD is absent);
    // the Kubernetes source reports those once, itself. Asked for by name, they show.
    let filter = if args.log.contains("kube_client") {
        args.log.clone()
    } else {
        format!("{},kube_client::client::builder=off", args.log)
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).context("--log")?)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if args.istio_dataplane_mode && !args.kubernetes {
        anyhow::bail!("--istio-dataplane-mode is a setting of the Kubernetes source: it needs --kubernetes");
    }
    let ca = ca_settings(&args)?;
    let settings = nodemesh_controlplane::Settings {
        source: match args.config_dir {
            Some(dir) if !args.kubernetes => nodemesh_controlplane::Source::Directory(dir),
            _ => nodemesh_controlplane::Source::Kubernetes(nodemesh_controlplane::KubernetesSettings {
                config: None,
                istio_dataplane_mode: args.istio_dataplane_mode,
            }),
        },
        listen: args.listen,
        admin: args.admin,
        mesh: nodemesh_controlplane::MeshSettings {
            trust_domain: args.trust_domain.clone(),
            domain_suffix: args.trust_domain,
            root_namespace: args.root_namespace,
            ..Default::default()
        },
        poll: Duration::from_secs(2),
        ca,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("nm-cp").build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        nodemesh_controlplane::run(settings, shutdown).await.map_err(anyhow::Error::from)
    })
}
