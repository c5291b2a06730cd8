//! Nodemesh's reference control plane: reads Kubernetes-style YAML from a directory, or
//! watches the Kubernetes API server (`kubernetes.rs`), and serves
//! delta ADS with Istio's workload API (`istio.workload.Address`) and L4 policy
//! (`istio.security.Authorization`), so the same agents could be driven by istiod.
//! Run as `nodemesh controlplane`.

pub mod admin;
pub mod ca;
pub mod fuzzing;
mod inputs;
pub mod kubernetes;
pub mod model;
pub mod server;
pub mod store;
pub mod world;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use nodemesh_proto::{
    envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer,
    istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer,
};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

pub use kubernetes::KubernetesSettings;
pub use world::MeshSettings;

/// How long the start waits for files that are still being written.
const STARTUP_SETTLE: Duration = Duration::from_secs(1);
/// How long shutdown lets connections close on their own once their streams have ended.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the inputs come from.
    pub source: Source,
    /// xDS (gRPC, plaintext: istiod's 15010).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub mesh: MeshSettings,
    /// How often the directory is re-read even without an inotify event (a safety net).
    pub poll: Duration,
    /// The certificate authority, served beside xDS when set.
    pub ca: Option<CaSettings>,
}

/// Where the control plane's inputs come from (one or the other).
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory of YAML files (`store.rs`, `inputs.rs`).
    Directory(PathBuf),
    /// The Kubernetes API server (`kubernetes.rs`).
    Kubernetes(KubernetesSettings),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Directory(dir) => write!(f, "{}", dir.display()),
            Source::Kubernetes(k) => match &k.config {
                Some(config) => write!(f, "kubernetes {}", config.cluster_url),
                None => write!(f, "kubernetes"),
            },
        }
    }
}

/// The certificate authority's settings (`ca.rs`).
#[derive(Clone, Debug)]
pub struct CaSettings {
    /// Where the signing key and certificates come from.
    pub source: ca::CaSource,
    /// How nodes authenticate: bootstrap token files (`ca::NodeTokens`), or service-account
    /// tokens checked by TokenReview (`ca::TokenReviewer`, with the Kubernetes source).
    pub node_auth: ca::NodeAuth,
    /// A workload certificate's lifetime when the request does not ask for one.
    pub default_lifetime: Duration,
    /// The TLS port (istiod's 15012): xDS and the CA, with a serving certificate from this
    /// CA for `tls_names`.
    pub tls_listen: Option<SocketAddr>,
    /// The names (DNS names or addresses) clients reach the control plane by.
    pub tls_names: Vec<String>,
}

/// How long the control plane's own serving certificate lasts; a new one is made at every
/// start.
const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {dir}: {source}")]
    Input {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the Kubernetes API server: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the certificate authority: {0}")]
    Ca(#[from] ca::CaError),
    #[error("serving xDS on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: nodemesh_proto::tonic::transport::Error,
    },
}

/// Binds `settings.listen` and serves until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
    };
    let (xds, admin) = (bind(settings.listen).await?, bind(settings.admin).await?);
    serve(settings, xds, admin, shutdown).await
}

/// Serves xDS on `listener` and the admin API on `admin` until `shutdown`
/// (`settings.listen` and `settings.admin` are not used).
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    // One client for the source's watchers and the CA (its Secret, its TokenReviews).
    let kube_client = match &settings.source {
        Source::Kubernetes(kubernetes) => Some(kubernetes::client(kubernetes).await?),
        Source::Directory(_) => None,
    };
    // A CA that cannot start is a start-up error, before anything is served.
    let (authority, node_authenticator) = match &settings.ca {
        Some(ca) => {
            let nodes = node_authenticator(&ca.node_auth, kube_client.as_ref())?;
            let authority =
                ca::Authority::open(&ca.source, &settings.mesh.trust_domain, kube_client.as_ref()).await?;
            (Some(Arc::new(authority)), Some(nodes))
        }
        None => (None, None),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let served = Arc::new(Mutex::new(admin::Served::default()));
    let world_rx = match (&settings.source, kube_client) {
        (Source::Directory(dir), _) => start_directory(dir, &settings, &served).await?,
        (Source::Kubernetes(kubernetes), client) => {
            let client = match client {
                Some(client) => client,
                None => kubernetes::client(kubernetes).await?,
            };
            // The start waits for the API server's first lists; a signal meanwhile stops it.
            let mut started = tokio::select! {
                started = kubernetes::start(client, kubernetes, &settings.mesh) => started?,
                () = &mut shutdown => return Ok(()),
            };
            inputs::record(&served, &started.first, std::mem::take(&mut started.errors));
            let (world_tx, world_rx) = watch::channel(Arc::new(std::mem::take(&mut started.first)));
            started.spawn(settings.mesh.clone(), Arc::clone(&served), world_tx);
            world_rx
        }
    };
    let world_watch = world_rx.clone();

    let registry = server::Registry::default();
    let (stop, stopping) = watch::channel(false);
    let ca_counters = authority.as_ref().map(|_| Arc::new(ca::CaCounters::default()));
    let admin_state = admin::AdminState { served, registry: Arc::clone(&registry), ca: ca_counters.clone() };
    let admin_stopping = stopping.clone();
    tokio::spawn(async move {
        if let Err(e) = admin::serve(admin, admin_state, stopped(admin_stopping)).await {
            tracing::error!(error = %e, "admin API failed");
        }
    });

    let ads = AggregatedDiscoveryServiceServer::new(server::Ads::new(world_rx, registry, stopping.clone()))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let tls = match (&settings.ca, &authority) {
        (Some(CaSettings { tls_listen: Some(addr), tls_names, .. }), Some(authority)) => {
            let (chain, key) = authority.issue_server(tls_names, SERVING_CERT_LIFETIME)?;
            let identity = nodemesh_proto::tonic::transport::Identity::from_pem(chain, key);
            let addr = *addr;
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
            Some((
                addr,
                listener,
                nodemesh_proto::tonic::transport::ServerTlsConfig::new().identity(identity),
            ))
        }
        _ => None,
    };
    let certificates = match (&settings.ca, authority, node_authenticator) {
        (Some(ca), Some(authority), Some(nodes)) => {
            tracing::info!(source = ?ca.source, trust_domain = authority.trust_domain(), "certificate authority ready");
            let service =
                ca::CertificateService::new(authority, world_watch.clone(), nodes, ca.default_lifetime)
                    .with_counters(ca_counters.clone().unwrap_or_default());
            Some(IstioCertificateServiceServer::new(service))
        }
        _ => None,
    };
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: settings.listen, source })?;
    tracing::info!(%addr, source = %settings.source, ca = certificates.is_some(), "serving delta xDS");
    if let Some((asked, tls_listener, config)) = tls {
        let tls_addr = tls_listener.local_addr().map_err(|source| Error::Bind { addr: asked, source })?;
        let server = nodemesh_proto::tonic::transport::Server::builder()
            .tls_config(config)
            .map_err(|source| Error::Serve { addr: tls_addr, source })?
            .add_service(ads.clone())
            .add_optional_service(certificates.clone());
        tracing::info!(addr = %tls_addr, "serving delta xDS and the CA over TLS");
        let tls_stopping = stopping.clone();
        tokio::spawn(async move {
            let incoming = TcpListenerStream::new(tls_listener);
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, stopped(tls_stopping)).await {
                tracing::error!(addr = %tls_addr, error = %e, "the TLS port failed");
            }
        });
    }
    let serving = nodemesh_proto::tonic::transport::Server::builder()
        .add_service(ads)
        .add_optional_service(certificates)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped(stopping));
    tokio::pin!(serving);
    let served = |result: Result<(), nodemesh_proto::tonic::transport::Error>| {
        result.map_err(|source| Error::Serve { addr, source })
    };
    tokio::select! {
        result = &mut serving => return served(result),
        () = &mut shutdown => {}
    }
    // Streams end on the signal (UNAVAILABLE: agents keep their state and reconnect); the
    // connections then close as their streams are done. Whatever is still open after the
    // grace period (a client that never reads) is dropped.
    tracing::info!(%addr, "shutting down: ending the agents' streams");
    let _ = stop.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await {
        Ok(result) => served(result),
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
            Ok(())
        }
    }
}

/// How the CA will authenticate nodes; TokenReview needs the Kubernetes source's client.
fn node_authenticator(
    auth: &ca::NodeAuth,
    kube_client: Option<&kube::Client>,
) -> Result<ca::NodeAuthenticator, ca::CaError> {
    match (auth, kube_client) {
        (ca::NodeAuth::Tokens(dir), _) => Ok(ca::NodeTokens::new(dir.clone()).into()),
        (ca::NodeAuth::TokenReview(review), Some(client)) => {
            Ok(ca::TokenReviewer::new(client.clone(), review.clone()).into())
        }
        (ca::NodeAuth::TokenReview(_), None) => Err(ca::CaError::Invalid(
            "authenticating nodes by TokenReview needs the Kubernetes source".into(),
        )),
    }
}

/// Reads the directory, starts its input loop, and returns the world it publishes.
async fn start_directory(
    dir: &std::path::Path,
    settings: &Settings,
    served: &Arc<Mutex<admin::Served>>,
) -> Result<watch::Receiver<Arc<world::World>>, Error> {
    let input_error = |source| Error::Input { dir: dir.to_owned(), source };
    // Watching before the first scan: no change made after that scan goes unnoticed.
    let directory = inputs::Watch::start(dir, settings.poll);
    let mut store = store::Store::new(dir).with_domain_suffix(&settings.mesh.domain_suffix);
    // Files written just before the start are given a moment to settle (there is no inotify
    // word yet that their writers are done), so the first state is whole; a file still
    // changing after that is picked up by the input loop once it settles.
    let started = tokio::time::Instant::now();
    let again_in = loop {
        let scanned = store.scan(&store::Hints::none()).map_err(input_error)?;
        match scanned.again_in {
            Some(wait) if started.elapsed() < STARTUP_SETTLE => tokio::time::sleep(wait).await,
            again_in => break again_in,
        }
    };
    let first = world::World::build(&store.inputs(), &settings.mesh, 1, None);
    inputs::record(served, &first, store.errors());
    let (world_tx, world_rx) = watch::channel(Arc::new(first));
    inputs::InputLoop {
        watch: directory,
        store,
        dir: dir.to_owned(),
        mesh: settings.mesh.clone(),
        poll: settings.poll,
        served: Arc::clone(served),
        world: world_tx,
        generation: 1,
        again_in,
    }
    .spawn()
    .map_err(input_error)?;
    Ok(world_rx)
}

/// Resolves once `stopping` turns true (or its sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}
