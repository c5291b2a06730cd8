//! `nodemesh controlplane`: the reference control plane (the `nodemesh-controlplane` crate)
//! in the one binary.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::commands::ControlplaneArgs;

pub fn main(args: ControlplaneArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let settings = nodemesh_controlplane::Settings {
        config_dir: args.config_dir,
        listen: args.listen,
        admin: args.admin,
        mesh: nodemesh_controlplane::MeshSettings {
            trust_domain: args.trust_domain.clone(),
            domain_suffix: args.trust_domain,
            root_namespace: args.root_namespace,
            ..Default::default()
        },
        poll: Duration::from_secs(2),
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
