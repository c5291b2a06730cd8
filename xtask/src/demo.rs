//! `cargo xtask demo`: a fake two-node cluster driven by the reference control plane from its
//! embedded default (Kubernetes YAML the demo writes), with its CA: real traffic through the
//! mesh, mutual TLS between the nodes with both identities in the flows, a label flipped live,
//! an authorization policy enforced, a Service balanced over three endpoints and one of them
//! killed without a client noticing, an HTTP canary's weight shifted live with the request
//! metrics following, the control plane killed, `nodemesh status` and
//! `nodemesh flows`.

mod canary;

use std::{net::IpAddr, time::Duration};

use anyhow::Context as _;
use nodemesh_testbed::{
    AgentOptions, Cluster, Pod, PodOptions,
    scenario::{BULK_PORT, HTTP_PORT},
    tools::{self, authority},
};

pub fn run(splice: bool) -> anyhow::Result<()> {
    nodemesh_testbed::sweep_stale();
    println!("\n== Nodemesh demo ==");
    let cluster = Cluster::new("demo")?;
    let node1 = cluster.add_node("node1", 1)?;
    let node2 = cluster.add_node("node2", 2)?;
    let ext = cluster.add_external("ext")?;
    let mut cp = cluster.add_control_plane()?;
    let account = |sa: &str| PodOptions { service_account: Some(sa.into()), ..Default::default() };
    let client = node1.add_pod("mesh", "client", account("client"))?;
    let server = node2.add_pod("mesh", "server", account("server"))?;
    let plain = node1.add_pod("plain", "plain", PodOptions::default())?;
    let cart = |sa: &str| PodOptions {
        labels: [("app".to_owned(), "cart".to_owned())].into(),
        service_account: Some(sa.into()),
        ..Default::default()
    };
    let carts = [
        node1.add_pod("mesh", "cart-1", cart("cart"))?,
        node2.add_pod("mesh", "cart-2", cart("cart"))?,
        node2.add_pod("mesh", "cart-3", cart("cart"))?,
    ];
    let reviews = canary::add_pods(&node1, &node2)?;
    cp.write("cart.yaml", CART)?;
    cp.write("reviews.yaml", &canary::objects(90, 10))?;
    cp.write_namespace("mesh", true)?;
    cp.write_namespace("plain", false)?;
    cp.write_pods(&[&node1, &node2])?;
    cp.enable_ca(86_400)?;
    cp.start()?;
    println!(
        "[1/12] a fake cluster: node1 (mesh/client, plain/plain), node2 (mesh/server), a host outside \
         the mesh, and `nodemesh controlplane` serving delta xDS and its CA over TLS from {} \
         (Kubernetes YAML: namespace mesh labelled nodemesh.io/intercept=enabled, plain not)",
        cp.config_dir.display()
    );

    let payloads = cluster.work_dir().join("payloads");
    std::fs::create_dir_all(&payloads)?;
    let sha = tools::write_payload(&payloads.join("payload"), 1 << 20)?;
    let any = IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED);
    server.spawn(tools::http_server(any, HTTP_PORT, &payloads))?;
    // The timing probes connect and close at once; the servers' complaints about that would
    // only clutter the demo's output.
    let quiet = || {
        let mut cmd = tools::bulk_server(any, BULK_PORT);
        cmd.stderr(std::process::Stdio::null());
        cmd
    };
    server.spawn(quiet())?;
    ext.spawn(quiet())?;
    tools::wait_listening(&server.netns_path(), HTTP_PORT)?;
    tools::wait_listening(&server.netns_path(), BULK_PORT)?;
    tools::wait_listening(&ext.netns_path(), BULK_PORT)?;

    // The agent's defaults: spliced legs are the loopback ones (same node). Each node gets the
    // mesh root and its own bootstrap token for the CA.
    let agent = |node: &nodemesh_testbed::Node| -> anyhow::Result<nodemesh_testbed::Agent> {
        let (address, mesh) = cp.mesh_agent_config(&node.name)?;
        let options = AgentOptions {
            splice,
            splice_network_legs: Some(false),
            xds_address: Some(address),
            extra_config: mesh,
            ..Default::default()
        };
        node.start_agent(&options)
    };
    let (agent1, agent2) = (agent(&node1)?, agent(&node2)?);
    agent1.wait_enrolled(&["mesh/client", "mesh/cart-1", "mesh/reviews-1"], Duration::from_secs(10))?;
    agent2.wait_enrolled(
        &["mesh/server", "mesh/cart-2", "mesh/cart-3", "mesh/reviews-2"],
        Duration::from_secs(10),
    )?;
    for a in [&agent1, &agent2] {
        nodemesh_testbed::wait_for("workload certificates", Duration::from_secs(10), || {
            a.status().is_ok_and(|s| {
                s["certificates"]
                    .as_array()
                    .is_some_and(|c| c.len() >= 2 && c.iter().all(|c| c["state"] == "valid"))
            })
        })?;
    }
    println!(
        "[2/12] an agent on each node (kernel splice {} for same-node legs) synced over delta xDS (TLS, \
         checked against the mesh root), enrolled its mesh pods and got a certificate for their \
         identity from the CA (key generated in memory, never written)",
        if splice { "on" } else { "off" }
    );

    let url = format!("http://{}/payload", authority(IpAddr::from(server.ipv4), HTTP_PORT));
    let got = curl_sha(&client, &url, &cluster.work_dir().join("download"))?;
    anyhow::ensure!(got == sha, "the download through the mesh was corrupted");
    println!(
        "[3/12] mesh/client (node1) curl {url}: 1 MiB, sha256 matches; out through node1's agent, \
         in through node2's (sk_lookup)"
    );
    let outbound = agent1.flows("state=all")?;
    let inbound = agent2.flows("state=all")?;
    let peer = |flows: &[serde_json::Value], direction: &str| {
        flows
            .iter()
            .find(|f| f["direction"] == direction && f["mtls"] == true)
            .and_then(|f| f["peer_identity"].as_str().map(str::to_owned))
    };
    let (server_id, client_id) = (peer(&outbound, "outbound"), peer(&inbound, "inbound"));
    anyhow::ensure!(
        server_id.is_some() && client_id.is_some(),
        "the cross-node connection was not mutual TLS"
    );
    println!(
        "[4/12] that connection crossed the nodes in HBONE (HTTP/2 CONNECT over mutual TLS 1.3): node1's \
         agent verified the server as {}, node2's the client as {}",
        server_id.unwrap_or_default(),
        client_id.unwrap_or_default()
    );
    let r = bulk(&client, IpAddr::from(ext.ipv4))?;
    println!(
        "[5/12] mesh/client to the external host: through the proxy (the app's local address {}), \
         the host saw {} (the pod's own address)",
        r["local"][0], r["greeting"]
    );
    let r = bulk(&plain, IpAddr::from(ext.ipv4))?;
    println!(
        "[6/12] plain/plain (namespace not labelled) to the external host: direct, local address {}",
        r["local"][0]
    );

    // Timed by a probe that is already connecting when the label changes.
    let (mut cmd, probe) =
        tools::ArmedProbe::new(IpAddr::from(ext.ipv4), BULK_PORT, "intercepted", cluster.work_dir(), "plain");
    let probe_out = cluster.work_dir().join("probe-plain.out");
    cmd.args(["--timeout", "10"]).stdout(std::fs::File::create(&probe_out)?);
    let pid = plain.spawn(cmd)?;
    probe.wait_ready()?;
    probe.mark(tools::unix_now())?;
    cp.write_namespace("plain", true)?;
    anyhow::ensure!(plain.wait(pid, Duration::from_secs(15))?.success(), "plain/plain was never intercepted");
    let r: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&probe_out)?.trim())?;
    println!(
        "[7/12] label namespace plain in the YAML: plain/plain's connections are intercepted {:.2} s later",
        r["seconds"].as_f64().unwrap_or(f64::NAN)
    );

    cp.write("policy.yaml", &format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: not-from-plain, namespace: mesh}}\n\
         spec:\n  action: DENY\n  rules: [{{from: [{{source: {{ipBlocks: [{}/32]}}}}]}}]\n",
        plain.ipv4
    ))?;
    let server_ip = IpAddr::from(server.ipv4);
    nodemesh_testbed::wait_for("the policy denying plain/plain", Duration::from_secs(10), || {
        plain.output(tools::bulk_client(server_ip, BULK_PORT, 1024, 1024)).is_ok_and(|o| !o.status.success())
    })?;
    bulk(&client, server_ip).context("mesh/client is still allowed")?;
    println!(
        "[8/12] an AuthorizationPolicy (DENY from plain/plain's address) in the YAML: node2's agent \
         resets plain/plain's connections to mesh/server; mesh/client still gets through"
    );

    let mut servers = Vec::new();
    for pod in &carts {
        let mut cmd = tools::name_server(&pod.name, CART_PORT, 0);
        cmd.stdout(std::process::Stdio::null());
        servers.push(pod.spawn(cmd)?);
    }
    for pod in &carts {
        tools::wait_listening(&pod.netns_path(), CART_PORT)?;
    }
    let vip = IpAddr::from([10, 96, 0, 10]);
    let r = service_client(&client, "count", vip, &["--count", "60", "--concurrency", "3"])?;
    println!(
        "[9/12] Service mesh/cart ({vip}:80, its three endpoints on both nodes): 60 connections from mesh/client, each to the endpoint node1's proxy picked (P2C, by load and latency): {}",
        r["by_endpoint"]
    );
    let out = cluster.work_dir().join("cart-loop.json");
    let mut cmd = tools::service_client("loop", vip, 80, &["--seconds", "5"]);
    cmd.stdout(std::fs::File::create(&out)?);
    let looping = client.spawn(cmd)?;
    std::thread::sleep(Duration::from_secs(1));
    carts[1].kill(servers[1]);
    anyhow::ensure!(client.wait(looping, Duration::from_secs(20))?.success(), "the connect loop failed");
    let r: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out)?.trim())?;
    let failed = r["failures"].as_array().map_or(0, Vec::len);
    // SIGKILL may cut the one connection cart-2 was serving at that instant; no other may fail.
    anyhow::ensure!(failed <= 1, "client connections failed when cart-2 died: {r}");
    println!(
        "[10/12] cart-2's server killed while mesh/client connects in a loop: {} connections, none refused (a refused connect is retried on another endpoint before the app's bytes are read; {failed} in flight on cart-2 was cut by the kill); cart-2 is ejected by the DestinationRule's outlierDetection (SERVICES in nodemesh status below)",
        r["attempts"]
    );

    canary::run(&cp, &client, &reviews, &agent1)?;

    cp.kill();
    std::thread::sleep(Duration::from_millis(500));
    let r = bulk(&client, IpAddr::from(ext.ipv4))?;
    anyhow::ensure!(r["local"][0] == "127.0.0.1", "no longer intercepted after the control plane died: {r}");
    bulk(&client, server_ip).context("mutual TLS with the control plane away")?;
    println!(
        "[12/12] control plane (and CA) killed: traffic still flows through the mesh from the last good \
         state, in mutual TLS with the certificates the agents hold"
    );

    println!("\n$ nodemesh status   (on node1)");
    print!("{}", agent1.cli(&["status"]).context("nodemesh status")?);
    println!(
        "\n$ nodemesh flows --top 8   (on node1: the mesh's names joined with the kernel's RTT and retransmits; \
         cross-node flows in mutual TLS name the peer their certificate proved)"
    );
    print!("{}", agent1.cli(&["flows", "--top", "8"]).context("nodemesh flows")?);
    println!("\n$ nodemesh flows --verdict denied   (on node2: the policy's verdicts)");
    print!("{}", agent2.cli(&["flows", "--verdict", "denied"]).context("nodemesh flows")?);
    println!("\ntearing down: agents stopped with SIGTERM, namespaces and cgroups removed");
    for agent in [agent1, agent2] {
        let stopped = agent.terminate(Duration::from_secs(15))?;
        anyhow::ensure!(stopped.success(), "an agent exited with {stopped}");
    }
    Ok(())
}

/// The demo's Service, and the DestinationRule that ejects a failing endpoint.
const CART: &str = "\
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: mesh}
spec: {clusterIP: 10.96.0.10, selector: {app: cart}, ports: [{name: tcp, port: 80, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: mesh}
spec:
  host: cart
  trafficPolicy:
    outlierDetection: {consecutiveGatewayErrors: 2, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50}
";
const CART_PORT: u16 = 8080;

fn service_client(pod: &Pod, mode: &str, vip: IpAddr, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = pod.output(tools::service_client(mode, vip, 80, args))?;
    tools::json_result("service_client", &out)
}

fn curl_sha(pod: &Pod, url: &str, out: &std::path::Path) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "60", "-o"]).arg(out).arg(url);
    let result = pod.output(cmd)?;
    anyhow::ensure!(result.status.success(), "curl {url}: {}", String::from_utf8_lossy(&result.stderr));
    tools::sha256_file(out)
}

fn bulk(pod: &Pod, target: IpAddr) -> anyhow::Result<serde_json::Value> {
    let out = pod.output(tools::bulk_client(target, BULK_PORT, 1 << 20, 1 << 20))?;
    let r = tools::json_result("bulk", &out)?;
    anyhow::ensure!(r["ok"] == true, "transfer failed: {r}");
    Ok(r)
}
