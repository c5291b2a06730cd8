//! `cargo xtask demo`: one fake node, real traffic through the mesh, `nodemesh status`.

use std::net::IpAddr;

use anyhow::Context as _;
use nodemesh_testbed::{
    AgentOptions,
    scenario::{BULK_PORT, HTTP_PORT, SingleNode},
    tools::{self, authority},
};

pub fn run(splice: bool) -> anyhow::Result<()> {
    nodemesh_testbed::sweep_stale();
    println!("\n== Nodemesh demo ==");
    println!(
        "[1/6] a fake node (network namespace) with pods mesh/client and mesh/server (namespace \
         \"mesh\", labelled nodemesh.io/intercept=enabled), plain/plain (namespace not labelled), \
         and a host outside the mesh"
    );
    let s = SingleNode::start("demo", &AgentOptions { splice, ..Default::default() })?;
    println!(
        "[2/6] nodemesh agent running on the node, kernel splice {}; it enrolled mesh/client and mesh/server",
        if splice { "on" } else { "off" }
    );

    let (_, sha) = s.payload(1 << 20)?;
    let url = format!("http://{}/payload-{}", authority(IpAddr::from(s.server.ipv4), HTTP_PORT), 1 << 20);
    let got = s.curl_download(&s.client, &url)?;
    anyhow::ensure!(got == sha, "the download through the mesh was corrupted");
    println!(
        "[3/6] mesh/client: curl {url} -> 1 MiB, sha256 matches (intercepted by connect4, proxied into mesh/server)"
    );

    let r = bulk(&s.client, IpAddr::from(s.server.ipv4))?;
    println!(
        "      blocking Python client to mesh/server: its local address {} (the proxy's loopback \
         listener), the server saw {}",
        r["local"][0], r["greeting"]
    );
    let r = bulk(&s.client, IpAddr::from(s.ext.ipv4))?;
    println!(
        "[4/6] mesh/client to the external host {}: through the proxy, the host saw {} (the pod's own address)",
        s.ext.ipv4, r["greeting"]
    );
    let out = s.ext.output(tools::bulk_client(IpAddr::from(s.server.ipv4), BULK_PORT, 1 << 20, 1 << 20))?;
    let r = tools::json_result("inbound", &out)?;
    println!(
        "[5/6] external host to mesh/server {}: sk_lookup steered it to the inbound listener; the app saw {}",
        s.server.ipv4, r["greeting"]
    );
    let r = bulk(&s.plain, IpAddr::from(s.ext.ipv4))?;
    println!(
        "[6/6] plain/plain (not enrolled) to the external host: direct, local address {}",
        r["local"][0]
    );

    println!("\n$ nodemesh status   (in the node's network namespace)");
    let mut status = s.node.command(nodemesh_testbed::nodemesh_bin())?;
    status.arg("status");
    let out = status.output().context("nodemesh status")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\ntearing down: agent stopped with SIGTERM, namespaces and cgroups removed");
    let stopped = s.agent.terminate(std::time::Duration::from_secs(15))?;
    anyhow::ensure!(stopped.success(), "the agent exited with {stopped}");
    Ok(())
}

fn bulk(pod: &nodemesh_testbed::Pod, target: IpAddr) -> anyhow::Result<serde_json::Value> {
    let out = pod.output(tools::bulk_client(target, BULK_PORT, 1 << 20, 1 << 20))?;
    let r = tools::json_result("bulk", &out)?;
    anyhow::ensure!(r["ok"] == true, "transfer failed: {r}");
    Ok(r)
}
