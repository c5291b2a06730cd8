//! The benchmark mesh: `workloads` pods and `services` services over `namespaces` namespaces
//! (all intercepted) and `nodes` nodes. Each service selects an equal share of its
//! namespace's pods; every agent therefore receives every workload and service.

use std::{fmt::Write as _, path::PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub workloads: usize,
    #[arg(long, default_value_t = 1_000)]
    pub services: usize,
    #[arg(long, default_value_t = 10)]
    pub namespaces: usize,
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.namespaces > 0 && args.nodes > 0, "--namespaces and --nodes must be positive");
    anyhow::ensure!(args.workloads <= 250 * 256 * 64, "at most {} workloads", 250 * 256 * 64);
    std::fs::create_dir_all(&args.dir)?;
    let mut namespaces = String::new();
    for n in 0..args.namespaces {
        let _ = write!(
            namespaces,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}, labels: {{nodemesh.io/intercept: enabled}}}}\n"
        );
    }
    crate::write_atomic(&args.dir, "namespaces.yaml", &namespaces)?;
    let per_ns_services = args.services.div_ceil(args.namespaces);
    for n in 0..args.namespaces {
        let mut pods = String::new();
        let mut services = String::new();
        let pods_here: Vec<usize> = (n..args.workloads).step_by(args.namespaces).collect();
        let services_here = (0..per_ns_services).filter(|s| n + s * args.namespaces < args.services).count();
        for (k, &i) in pods_here.iter().enumerate() {
            // Pods are spread over the namespace's services round-robin.
            let app = if services_here > 0 { k % services_here } else { 0 };
            pods.push_str(&pod(n, i, app, i % args.nodes));
        }
        for s in 0..services_here {
            let ip = 10 << 24 | 96 << 16 | (n * per_ns_services + s + 1);
            let _ = write!(
                services,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{n}}}\n\
                 spec: {{clusterIP: {}, selector: {{app: app-{s}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n",
                std::net::Ipv4Addr::from(ip as u32)
            );
        }
        crate::write_atomic(&args.dir, &format!("pods-ns-{n}.yaml"), &pods)?;
        crate::write_atomic(&args.dir, &format!("services-ns-{n}.yaml"), &services)?;
    }
    Ok(())
}

/// Pod `i` (globally numbered) of namespace `ns-n`, labelled for service `app`.
pub fn pod(n: usize, i: usize, app: usize, node: usize) -> String {
    let ip = std::net::Ipv4Addr::from(10 << 24 | 64 << 16 | (i as u32 + 1));
    let uid = format!("00000000-0000-4000-8000-{i:012x}");
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: ns-{n}, uid: {uid}, labels: {{app: app-{app}}}}}\n\
         spec: {{nodeName: node-{node:03}, serviceAccountName: sa-{app}}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}
