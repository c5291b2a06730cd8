//! `nodemesh controlplane`: the reference control plane (the `nodemesh-controlplane` crate)
//! in the one binary.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::commands::ControlplaneArgs;

/// The CA's settings, when a root source is given (it then needs a way to authenticate
/// nodes: their token files, or TokenReview).
fn ca_settings(args: &ControlplaneArgs) -> anyhow::Result<Option<nodemesh_controlplane::CaSettings>> {
    use nodemesh_controlplane::ca::{CaSource, NodeAuth, TokenReviewSettings};
    let source = match (&args.ca_state_dir, &args.cacerts, &args.ca_secret) {
        (Some(dir), _, _) => CaSource::StateDir(dir.clone()),
        (None, Some(dir), _) => CaSource::CaCerts(dir.clone()),
        (None, None, Some(secret)) => {
            let (namespace, name) = namespaced_name(secret).context("--ca-secret")?;
            CaSource::Secret { namespace, name, owner: args.ca_secret_owner.clone() }
        }
        (None, None, None) => return Ok(None),
    };
    let node_auth = match (&args.node_token_dir, &args.token_audience, &args.agent_service_account) {
        (Some(dir), _, _) => NodeAuth::Tokens(dir.clone()),
        (None, Some(audience), Some(agent)) => NodeAuth::TokenReview(TokenReviewSettings {
            audience: audience.clone(),
            agent: agent.parse().map_err(anyhow::Error::msg).context("--agent-service-account")?,
        }),
        _ => anyhow::bail!(
            "a certificate authority needs --node-token-dir, or with --kubernetes --token-audience and \
             --agent-service-account: nodes authenticate with one or the other"
        ),
    };
    Ok(Some(nodemesh_controlplane::CaSettings {
        source,
        node_auth,
        default_lifetime: Duration::from_secs(args.cert_lifetime_s.max(1)),
        tls_listen: Some(args.tls_listen),
        tls_names: args.tls_names.clone(),
    }))
}

/// `<namespace>/<name>`, both non-empty.
fn namespaced_name(text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((namespace.to_owned(), name.to_owned()))
        }
        _ => anyhow::bail!("{text:?}: expected <namespace>/<name>"),
    }
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
    // The CA's Kubernetes settings use the source's client: without it they could not work.
    for (flag, given) in
        [("--ca-secret", args.ca_secret.is_some()), ("--token-audience", args.token_audience.is_some())]
    {
        if given && !args.kubernetes {
            anyhow::bail!("{flag} is a setting of the Kubernetes source: it needs --kubernetes");
        }
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use nodemesh_controlplane::ca::{CaSource, NodeAuth};

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControlplaneArgs,
    }

    fn settings(argv: &str) -> anyhow::Result<Option<nodemesh_controlplane::CaSettings>> {
        let cli = Cli::try_parse_from(std::iter::once("controlplane").chain(argv.split_whitespace()))?;
        ca_settings(&cli.args)
    }

    #[test]
    fn the_ca_on_kubernetes_keeps_its_root_in_a_secret_and_reviews_agents_tokens() {
        let ca = settings(
            "--kubernetes --ca-secret nodemesh/nodemesh-ca --ca-secret-owner nodemesh-controlplane \
             --token-audience nodemesh-ca --agent-service-account nodemesh/nodemesh-agent",
        )
        .expect("valid")
        .expect("a CA");
        let owner = Some("nodemesh-controlplane".to_owned());
        assert_eq!(
            ca.source,
            CaSource::Secret { namespace: "nodemesh".into(), name: "nodemesh-ca".into(), owner }
        );
        let NodeAuth::TokenReview(review) = ca.node_auth else { panic!("TokenReview: {:?}", ca.node_auth) };
        assert_eq!(review.audience, "nodemesh-ca");
        assert_eq!(review.agent.username(), "system:serviceaccount:nodemesh:nodemesh-agent");
    }

    #[test]
    fn conflicting_or_incomplete_ca_flags_are_refused() {
        for argv in [
            "--kubernetes --ca-secret a/b --ca-state-dir /x --node-token-dir /t",
            "--kubernetes --ca-secret a/b --token-audience aud",
            "--kubernetes --ca-secret a/b --token-audience aud --agent-service-account sa --node-token-dir /t",
            "--kubernetes --ca-secret ab --node-token-dir /t",
            "--kubernetes --ca-secret-owner sa --node-token-dir /t",
            "--kubernetes --ca-secret a/b --token-audience aud --agent-service-account sa",
            "--kubernetes --ca-secret a/b",
        ] {
            assert!(settings(argv).is_err(), "{argv}");
        }
        assert!(settings("--config-dir /c").expect("no CA").is_none());
    }
}
