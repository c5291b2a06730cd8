//! The agent with exactly the capabilities the Helm chart gives its container (read from the
//! chart's DaemonSet), nothing more: interception, inbound steering, the splice and flows all
//! work; and with any one of them taken away, something the agent promises fails, and the
//! agent's error names the capability (docs/kubernetes.md#privileges says why). Each agent
//! here runs under `setpriv --bounding-set`, so root's capabilities are cut to the set as a
//! container runtime cuts them.

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use nodemesh_testbed::{
    AgentOptions,
    scenario::{BULK_PORT, SingleNode},
    tools,
};

/// The capabilities the chart adds after dropping ALL (`capabilities.add` of the agent).
fn chart_capabilities() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/nodemesh/templates/agent-daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("the chart's DaemonSet");
    let line = text.lines().map(str::trim).find_map(|l| l.strip_prefix("add: [")).expect("capabilities.add");
    line.trim_end_matches(']').split(',').map(|c| c.trim().to_owned()).collect()
}

/// A script that runs the agent binary with only `caps` in its bounding set.
fn capped_binary(dir: &Path, name: &str, caps: &[String]) -> PathBuf {
    let set: String = caps.iter().map(|c| format!(",+{}", c.to_ascii_lowercase())).collect();
    let path = dir.join(format!("nodemesh-{name}"));
    let script = format!(
        "#!/bin/sh\nexec setpriv --bounding-set -all{set} --inh-caps -all {} \"$@\"\n",
        nodemesh_testbed::nodemesh_bin().display()
    );
    std::fs::write(&path, script).expect("write the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// What the agent does for its pods, checked from outside; the first thing that fails.
fn works(s: &SingleNode) -> Result<(), String> {
    let server = IpAddr::from(s.server.ipv4);
    let ext = IpAddr::from(s.ext.ipv4);
    let bulk = |from: &nodemesh_testbed::Pod, to: IpAddr, what: &str| {
        let out = from
            .output(tools::bulk_client(to, BULK_PORT, 256 << 10, 256 << 10))
            .map_err(|e| e.to_string())?;
        let r = tools::json_result(what, &out).map_err(|e| format!("{what}: {e}"))?;
        if r["ok"] != true {
            return Err(format!("{what}: {r}"));
        }
        Ok(r)
    };
    // Outbound, into a pod of the node: intercepted (connect4), carried (and spliced).
    let r = bulk(&s.client, server, "client to server")?;
    if r["local"][0] != "127.0.0.1" || !r["greeting"].as_str().unwrap_or("").contains("peer=127.0.0.6:") {
        return Err(format!("client to server was not intercepted: {r}"));
    }
    // Outbound, out of the mesh: the source address stays the pod's (a transparent socket).
    let r = bulk(&s.client, ext, "client to external")?;
    let pod_source = format!("peer={}:", s.client.ipv4);
    if r["local"][0] != "127.0.0.1" || !r["greeting"].as_str().unwrap_or("").contains(&pod_source) {
        return Err(format!("client to external host was not intercepted from the pod's address: {r}"));
    }
    // Inbound, from outside the node: steered (sk_lookup) into the pod's inbound listener.
    let out = s.ext.output(tools::bulk_client(server, BULK_PORT, 4096, 4096)).map_err(|e| e.to_string())?;
    let r = tools::json_result("external to server", &out).map_err(|e| e.to_string())?;
    if r["ok"] != true || !r["greeting"].as_str().unwrap_or("").contains("peer=127.0.0.6:") {
        return Err(format!("external to server was not steered through the proxy: {r}"));
    }
    // Flows, with the kernel's TCP health from sock_ops.
    let flows = s.agent.flows("").map_err(|e| e.to_string())?;
    if flows.len() < 3 {
        return Err(format!("{} flows recorded for 3 connections", flows.len()));
    }
    if !flows.iter().any(|f| f["kernel"]["tcp"]["srtt_us"].as_u64().is_some_and(|rtt| rtt > 0)) {
        return Err(format!("no flow carries the kernel's TCP health: {:#?}", flows[0]));
    }
    Ok(())
}

fn start(name: &str, binary: PathBuf) -> anyhow::Result<SingleNode> {
    SingleNode::start(name, &AgentOptions { splice: true, binary: Some(binary), ..Default::default() })
}

#[test]
fn the_charts_capabilities_are_enough_and_each_is_needed() {
    nodemesh_testbed::require_root();
    let caps = chart_capabilities();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start("leastpriv", capped_binary(dir.path(), "chart", &caps))
        .expect("an agent with the chart's capabilities");
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.agent.pid())).expect("status");
    println!("agent: {}", status.lines().find(|l| l.starts_with("CapEff")).unwrap_or("?"));
    works(&s).expect("with the chart's capabilities");
    drop(s);

    let mut needed = Vec::new();
    for cap in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        let binary = capped_binary(dir.path(), &format!("no-{cap}"), &fewer);
        let failed = match start(&format!("lp-{}", cap.to_ascii_lowercase()), binary) {
            Err(e) => format!("the agent does not start: {}", format!("{e:#}").lines().last().unwrap_or("")),
            Ok(s) => match works(&s) {
                Err(what) => what,
                Ok(()) => String::new(),
            },
        };
        println!("without {cap}: {}", if failed.is_empty() { "everything still works" } else { &failed });
        if !failed.is_empty() {
            // And the agent says which capability it lacks, so an admin who cut one knows.
            assert!(
                failed.contains(&format!("CAP_{cap}")),
                "without {cap}, the failure does not name it: {failed}"
            );
            needed.push(cap.clone());
        }
    }
    assert_eq!(needed, caps, "the chart grants capabilities nothing needs");
}
