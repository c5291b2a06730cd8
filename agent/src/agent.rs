//! `nodemesh agent`: wires the datapath, the proxy, the enrollment source and the admin API.
//!
//! Two runtimes, as in ztunnel: connections run on a multi-thread data-plane runtime; the
//! reconciler, the enrollment source and the admin API share a current-thread control runtime
//! on the main thread, so control work never adds tail latency to traffic.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nodemesh_common::{DatapathConfig, TcpSockOffsets};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin::SpecSource,
    admin::{self, AdminState},
    config::{Config, Overrides},
    datapath::{Datapath, DatapathSettings, Occupancy, PinDir, Steering, btf},
    enroll::FileSource,
    flows::{FlowTable, kernel::DropReasons},
    identity::{CaClient, CaSettings, IdentityManager, MeshRoots},
    idle_poll::IdlePoll,
    pods::{cgroup, netns},
    proxy::{Proxy, ProxyMaps, ProxySettings, hbone::Hbone},
    reconcile::Reconciler,
    spec::NodeSpec,
    xds,
};

/// How often enrollment is re-checked without a spec change (pods whose cgroup or process
/// was not there yet, replaced sandboxes).
const RECHECK: Duration = Duration::from_millis(500);

/// `nodemesh agent`: the configuration file, if any, and the flags that override it.
pub fn main(config_file: Option<&std::path::Path>, overrides: Overrides) -> anyhow::Result<()> {
    // The configuration first: a mistake in it is worth saying even where privileges lack.
    let config = Config::load(config_file, overrides)?;
    check_privileges()?;
    crate::logging::init(&config.log);
    tracing::info!(config = %serde_json::to_string(&config)?, "starting");
    run(config)
}

fn run(mut config: Config) -> anyhow::Result<()> {
    // Before any thread exists: every thread returns to this namespace after stepping into a
    // pod's.
    netns::init().context("reading the agent's network namespace")?;
    let fd_limit = raise_fd_limit();
    let max_connections =
        crate::proxy::admission::node_limit_from_fds(config.max_connections, fd_limit, config.fd_reserve);
    tracing::info!(fd_limit, max_connections, per_pod = config.max_connections_per_pod, "connection limits");

    let cgroup_root = match &config.cgroup_root {
        Some(root) => root.clone(),
        None => cgroup::cgroup2_mount().context("finding the cgroup v2 mount")?,
    };
    // The splice's backpressure reads two kernel-internal fields; without their offsets it
    // would have none, so the splice stays off.
    let tcp_sock = match btf::tcp_sock_offsets() {
        Ok(offsets) => offsets,
        Err(e) => {
            if config.splice {
                tracing::warn!(error = %e, "kernel BTF lacks what the splice reads; splice turned off");
            }
            config.splice = false;
            TcpSockOffsets::default()
        }
    };
    // The drop tracer reads a few sk_buff fields; without their offsets flows simply show no
    // drops.
    let sk_buff = btf::sk_buff_offsets()
        .inspect_err(
            |e| tracing::warn!(error = %e, "kernel BTF lacks what the drop tracer reads; no per-flow drops"),
        )
        .ok();
    let drop_reasons: DropReasons =
        Arc::new(btf::drop_reasons().map(|r| r.into_iter().collect()).unwrap_or_default());
    let agent_cgroup = cgroup::own_cgroup()
        .inspect_err(
            |e| tracing::warn!(error = %e, "cannot find the agent's own cgroup; flows show no TCP health"),
        )
        .ok();
    let settings = DatapathSettings {
        tcp_sock,
        sk_buff,
        agent_cgroup,
        config: DatapathConfig {
            outbound_port: config.ports.outbound,
            inbound_port: config.ports.inbound,
            hbone_port: config.ports.hbone,
            _pad: 0,
            node_netns_cookie: netns::home().cookie(),
        },
        excluded_outbound_ports: config.excluded_outbound_ports.clone(),
        excluded_inbound_ports: config.excluded_inbound_ports.clone(),
    };
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    // The mesh root and the CA, checked before anything attaches: a wrong or missing root is
    // a start-up error, not a stream of handshake failures later.
    let roots = match &config.mesh_root {
        Some(path) => Some(Arc::new(MeshRoots::load(path)?)),
        None => None,
    };
    if let (Some(roots), Some(path)) = (&roots, &config.mesh_root) {
        let mut addresses: Vec<&str> =
            config.xds_address.iter().map(String::as_str).chain(config.ca()).collect();
        addresses.dedup();
        for address in addresses {
            control.block_on(crate::identity::probe::check(address, roots, &path.display().to_string()))?;
        }
    }
    let hbone = match (config.ca(), &roots, &config.node_token_file) {
        (Some(ca), Some(roots), Some(token_file)) => {
            crate::identity::ca_client::read_token(token_file)?;
            // The CA's channel lives on the control runtime, with the certificate refreshes.
            let _control = control.enter();
            let client = CaClient::new(
                CaSettings {
                    address: ca.to_owned(),
                    token_file: token_file.clone(),
                    cluster_id: config.cluster_id.clone(),
                    lifetime: Duration::from_secs(config.cert_lifetime_s),
                },
                roots,
            )?;
            tracing::info!(ca, "workload identities on: HBONE (mutual TLS) between nodes");
            Some(Arc::new(Hbone::new(IdentityManager::new(client, Arc::clone(roots)), config.ports.hbone)))
        }
        _ => None,
    };

    let datapath =
        Datapath::load(PinDir::new(&config.bpffs_dir), &settings).context("loading the datapath")?;
    let handles = datapath.handles()?;
    let datapath = Arc::new(Mutex::new(datapath));

    let data_plane = IdlePoll::new(Duration::from_micros(config.idle_poll_us))
        .build(tokio::runtime::Builder::new_multi_thread().thread_name("nm-data").enable_all())
        .context("starting the data-plane runtime")?;
    let proxy = Proxy::new(
        ProxySettings {
            outbound_port: config.ports.outbound,
            inbound_port: config.ports.inbound,
            hbone_port: config.ports.hbone,
            connect_timeout: config.connect_timeout,
            max_buffer_bytes: config.max_buffer_bytes,
            splice: config.splice,
            splice_inflight_cap: config.splice_inflight_bytes,
            splice_after_bytes: config.splice_after_bytes,
            splice_network_legs: config.splice_network_legs,
            max_connections_per_pod: config.max_connections_per_pod,
            max_connections,
            idle_timeout: config.idle_timeout,
        },
        ProxyMaps {
            listener_marks: handles.listener_marks,
            original_destinations: handles.original_destinations,
            splice: handles.splice,
        },
        FlowTable::new(config.flows_max_closed, drop_reasons, Some(handles.kernel_records)),
        data_plane.handle().clone(),
        hbone.clone(),
    );
    if let Some(hbone) = &hbone {
        let hbone = Arc::clone(hbone);
        data_plane.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                hbone.pool.sweep(crate::proxy::hbone::POOL_IDLE);
            }
        });
    }

    let config = Arc::new(config);
    let handles = ControlHandles { steering: handles.steering, occupancy: handles.occupancy };
    control.block_on(control_plane(
        Arc::clone(&config),
        roots,
        Arc::clone(&datapath),
        handles,
        proxy,
        cgroup_root,
    ))?;
    // Dropping the runtimes drops every task, and with them their handles on the datapath.
    drop(control);
    data_plane.shutdown_timeout(Duration::from_secs(1));
    let datapath = Arc::try_unwrap(datapath)
        .map_err(|_| anyhow::anyhow!("the datapath is still in use at shutdown"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    datapath.remove_all().context("removing pins")?;
    tracing::info!("stopped; every link and pin is removed");
    Ok(())
}

/// The datapath handles of the control runtime's users: the reconciler and the metrics.
struct ControlHandles {
    steering: Steering,
    occupancy: Occupancy,
}

async fn control_plane(
    config: Arc<Config>,
    roots: Option<Arc<MeshRoots>>,
    datapath: Arc<Mutex<Datapath>>,
    handles: ControlHandles,
    proxy: Proxy,
    cgroup_root: PathBuf,
) -> anyhow::Result<()> {
    // Without a source the spec stays empty; the sender lives to the end of this function so
    // `changed()` pends instead of failing.
    let (_empty_tx, empty_rx) = tokio::sync::watch::channel(Arc::new(NodeSpec::default()));
    let mut xds = None;
    let (mut spec_rx, source) = match (&config.enrollment_file, &config.xds_address) {
        (Some(path), _) => {
            let (mut file, rx, status) = FileSource::new(path);
            file.poll();
            tokio::spawn(file.run());
            (rx, SpecSource::File(status))
        }
        (None, Some(address)) => {
            let (shared, rx) = xds::start(xds::XdsSettings {
                address: address.clone(),
                node_name: config.node_name.clone(),
                snapshot: config.xds_snapshot.clone(),
                roots: roots.clone().filter(|_| address.starts_with("https://")),
                token_file: config.node_token_file.clone(),
                cluster_id: config.cluster_id.clone(),
            });
            xds = Some(Arc::clone(&shared));
            (rx, SpecSource::ControlPlane(shared))
        }
        (None, None) => {
            tracing::warn!("neither an enrollment file nor a control plane: no pod will be intercepted");
            (empty_rx, SpecSource::None)
        }
    };

    let mut reconciler = Reconciler::new(Arc::clone(&datapath), handles.steering, proxy.clone(), cgroup_root);
    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState {
        config: Arc::clone(&config),
        started: Instant::now(),
        datapath,
        view: reconciler.view(),
        source,
        spec: spec_rx.clone(),
        ready: Arc::clone(&ready),
        proxy: proxy.clone(),
        occupancy: Arc::new(crate::admin::OccupancyCache::new(handles.occupancy)),
    };
    let listeners = admin::bind(&config).await?;
    let admin = tokio::spawn(async move {
        if let Err(e) = admin::serve(listeners, admin_state).await {
            tracing::error!(error = %e, "admin API failed");
        }
    });

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        let spec = Arc::clone(&spec_rx.borrow_and_update());
        // Certificates are asked for as soon as a pod's identity is known, so they are there
        // (or on their way) when its first connection comes.
        if let Some(hbone) = proxy.hbone() {
            hbone.identities.sync(&identities(&spec));
            hbone.retain_identities();
        }
        reconciler.reconcile(&spec).await;
        ready.store(true, std::sync::atomic::Ordering::Release);
        tokio::select! {
            _ = spec_rx.changed() => {}
            _ = recheck.tick() => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    tracing::info!("shutting down: detaching every pod, then draining connections");
    if let Some(xds) = &xds {
        xds.flush();
    }
    reconciler.release_all().await;
    let deadline = Instant::now() + config.drain_timeout;
    while proxy.active_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin.abort();
    Ok(())
}

/// The identities of the node's intercepted pods, with how many pods have each.
fn identities(spec: &NodeSpec) -> std::collections::BTreeMap<String, usize> {
    let mut wanted = std::collections::BTreeMap::new();
    for pod in spec.intercepted() {
        if let Some(workload) = pod.ips.iter().find_map(|ip| spec.directory.workload(ip)) {
            *wanted.entry(workload.identity.to_string()).or_default() += 1;
        }
    }
    wanted
}

/// The capabilities the agent cannot work without: CAP_NET_ADMIN (attaching to cgroups,
/// network namespaces, sockmaps and tc; transparent sockets) and CAP_SYS_ADMIN (`setns` into
/// pods' network namespaces; the kernel also lets it stand for CAP_BPF and CAP_PERFMON, so
/// those add nothing beside it). Checked up front so a missing one is one clear sentence
/// instead of an EPERM later. CAP_SYS_PTRACE (other users' `/proc/<pid>/ns/net`) is named
/// where it is missing: in the pod's enrolment error. The least-privilege test proves the set.
fn check_privileges() -> anyhow::Result<()> {
    const NEEDED: [(u32, &str); 2] = [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")];
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> =
        NEEDED.iter().filter(|(bit, _)| effective & (1 << bit) == 0).map(|(_, n)| *n).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "nodemesh agent needs root (missing {}): it loads eBPF programs, attaches them to pod \
             cgroups and network namespaces, and opens listeners inside pods",
            missing.join(", ")
        );
    }
    Ok(())
}

/// A proxy holds two descriptors per connection; the default soft limit (1,024) would cap
/// a node at a few hundred connections. Raises the soft limit to the hard one (and the hard
/// one to 1 Mi where the kernel allows it); returns the soft limit in force.
fn raise_fd_limit() -> u64 {
    const WANTED: libc::rlim_t = 1 << 20;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_max < WANTED {
            let raised = libc::rlimit { rlim_cur: WANTED, rlim_max: WANTED };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return WANTED;
            }
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            }
        }
    }
    limit.rlim_cur
}
