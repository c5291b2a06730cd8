//! Nodemesh's reference control plane: reads Kubernetes-style YAML from a directory, serves
//! delta ADS with Istio's workload API (`istio.workload.Address`) and L4 policy
//! (`istio.security.Authorization`), so the same agents could be driven by istiod.
//! Run as `nodemesh controlplane`.

pub mod admin;
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

use nodemesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::sync::watch;

pub use world::MeshSettings;

#[derive(Clone, Debug)]
pub struct Settings {
    /// The directory of YAML inputs.
    pub config_dir: PathBuf,
    /// xDS (gRPC, plaintext: istiod's 15010).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub mesh: MeshSettings,
    /// How often the directory is checked for changes.
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {dir}: {source}")]
    Input {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving xDS on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: nodemesh_proto::tonic::transport::Error,
    },
}

/// Serves until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut store = store::Store::new(&settings.config_dir);
    store.scan().map_err(|source| Error::Input { dir: settings.config_dir.clone(), source })?;
    let first = world::World::build(&store.inputs(), &settings.mesh, 1);
    let served = Arc::new(Mutex::new(admin::Served::default()));
    record(&served, &first, store.errors());
    let (world_tx, world_rx) = watch::channel(Arc::new(first));

    // Reading and translating the inputs is blocking work: its own thread, off the runtime.
    let watcher_served = Arc::clone(&served);
    let (mesh, poll, dir) = (settings.mesh.clone(), settings.poll, settings.config_dir.clone());
    std::thread::Builder::new()
        .name("nm-cp-inputs".into())
        .spawn(move || {
            let mut generation = 1;
            loop {
                std::thread::sleep(poll);
                if world_tx.is_closed() {
                    return;
                }
                match store.scan() {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "cannot read the input directory");
                        continue;
                    }
                }
                generation += 1;
                let world = world::World::build(&store.inputs(), &mesh, generation);
                record(&watcher_served, &world, store.errors());
                world_tx.send_replace(Arc::new(world));
            }
        })
        .map_err(|source| Error::Input { dir: settings.config_dir.clone(), source })?;

    let registry = server::Registry::default();
    let admin_state = admin::AdminState { served, registry: Arc::clone(&registry) };
    let admin_addr = settings.admin;
    tokio::spawn(async move {
        if let Err(e) = admin::serve(admin_addr, admin_state).await {
            tracing::error!(addr = %admin_addr, error = %e, "admin API failed");
        }
    });

    let ads = AggregatedDiscoveryServiceServer::new(server::Ads::new(world_rx, registry))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    tracing::info!(addr = %settings.listen, dir = %settings.config_dir.display(), "serving delta xDS");
    nodemesh_proto::tonic::transport::Server::builder()
        .add_service(ads)
        .serve_with_shutdown(settings.listen, shutdown)
        .await
        .map_err(|source| Error::Serve { addr: settings.listen, source })
}

fn record(served: &Mutex<admin::Served>, world: &world::World, errors: Vec<store::InputError>) {
    *served.lock().unwrap_or_else(|p| p.into_inner()) = admin::Served {
        generation: world.generation,
        addresses: world.addresses.len(),
        authorizations: world.authorizations.len(),
        input_errors: errors,
    };
}
