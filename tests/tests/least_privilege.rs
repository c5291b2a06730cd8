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

/// A directory for the wrapper scripts, removed when the test ends.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("nodemesh-leastpriv-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(name: &str, binary: PathBuf) -> anyhow::Result<SingleNode> {
    SingleNode::start(name, &AgentOptions { splice: true, binary: Some(binary), ..Default::default() })
}

#[test]
fn the_charts_capabilities_are_enough_and_each_is_needed() {
    nodemesh_testbed::require_root();
    let caps = chart_capabilities();
    let dir = ScratchDir::new();
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

/// The host's cgroup v2 mount point (the mount of the hierarchy's root).
fn host_cgroup2() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|l| {
            let (fields, fs) = l.split_once(" - ")?;
            let f: Vec<&str> = fields.split_whitespace().collect();
            (fs.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| PathBuf::from(f[4]))
        })
        .expect("a cgroup2 mount")
}

/// A script that runs the agent as the chart's DaemonSet does, as far as a test can: only the
/// chart's capabilities, its own cgroup namespace (the default for a container on cgroup v2,
/// so `/proc/self/cgroup` says `/`), its own mount namespace where the runtime's cgroup2
/// mount shows only that namespace, the host's hierarchy mounted read-only elsewhere (the
/// chart's `/host/cgroup`), which the agent's config names as its cgroup root, and the root
/// filesystem read-only (the chart's `readOnlyRootFilesystem`; the bpffs stays writable, a
/// mount of its own as in the chart).
fn sandboxed_binary(dir: &Path, caps: &[String]) -> PathBuf {
    let set: String = caps.iter().map(|c| format!(",+{}", c.to_ascii_lowercase())).collect();
    let host = host_cgroup2().display().to_string();
    let view = dir.join("host-cgroup");
    std::fs::create_dir_all(&view).expect("mkdir");
    let view = view.display().to_string();
    let bin = nodemesh_testbed::nodemesh_bin().display().to_string();
    let steps_dir = dir.display().to_string();
    // One step per namespace, each exec'ing the next, so the agent keeps the PID the test
    // started. $1 is always the sandbox's config.
    let steps = [
        // The runtime's view: the host's hierarchy read-only at the chart's path, the root
        // filesystem read-only, then a cgroup namespace of its own.
        (
            "stage-mounts",
            format!(
                "mount --bind -o ro {host} {view} && mount -o remount,bind,ro / && \
                 exec unshare --cgroup sh {steps_dir}/stage-cgroup \"$1\""
            ),
        ),
        // The container's /sys/fs/cgroup: a cgroup2 mount made inside its namespace.
        (
            "stage-cgroup",
            format!(
                "umount -l {host} && mount -t cgroup2 cgroup2 {host} && exec setpriv --bounding-set -all{set} --inh-caps -all {bin} agent --config \"$1\""
            ),
        ),
    ];
    for (name, body) in steps {
        std::fs::write(dir.join(name), format!("set -e\n{body}\n")).expect("write a step");
    }
    // $1 = agent, $2 = --config, $3 = the testbed's config: the same, with the cgroup root
    // seen through the host view. The CLI (`nodemesh status`, which the testbed runs with
    // the same binary) runs as it is.
    let script = format!(
        "#!/bin/sh\nset -e\n[ \"$1\" = agent ] || exec {bin} \"$@\"\nconfig=\"$3.sandbox\"\n\
         sed 's|^cgroup_root: {host}|cgroup_root: {view}|' \"$3\" > \"$config\"\n\
         exec unshare --mount --propagation private sh {steps_dir}/stage-mounts \"$config\"\n",
    );
    let path = dir.join("nodemesh-sandboxed");
    std::fs::write(&path, script).expect("write the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn the_agent_works_from_a_pods_sandbox_and_hooks_only_its_own_cgroup() {
    nodemesh_testbed::require_root();
    let dir = ScratchDir::new();
    let binary = sandboxed_binary(dir.path(), &chart_capabilities());
    let s = start("sandbox", binary).expect("an agent in a sandbox");
    let pid = s.agent.pid();
    let seen = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let own = std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).expect("cgroupns");
    let host_ns = std::fs::read_link("/proc/self/ns/cgroup").expect("cgroupns");
    assert_ne!(own, host_ns, "the agent is not in a cgroup namespace of its own");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mounts.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).expect("a root mount");
    let options = root.split_whitespace().nth(5).unwrap_or_default();
    assert!(options.split(',').any(|o| o == "ro"), "the agent's root filesystem is writable: {root}");
    works(&s).expect("from the sandbox");
    // The agent's own sockets' TCP health comes from sock_ops on its own cgroup: that cgroup,
    // as the host sees it, and not the hierarchy's root (which would hook every process).
    let relative = seen.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup v2 line");
    let agent_cgroup = host_cgroup2().join(relative.trim_start_matches('/'));
    let on = |dir: &Path| nodemesh_testbed::kernel::cgroup_programs(dir).expect("bpftool");

    assert!(
        on(&agent_cgroup).iter().any(|(t, p)| t == "cgroup_sock_ops" && p == "nm_sock_ops_proxy"),
        "no sock_ops on the agent's cgroup {}: {:?}",
        agent_cgroup.display(),
        on(&agent_cgroup)
    );
    let root = on(&host_cgroup2());
    assert!(!root.iter().any(|(_, p)| p.starts_with("nm_")), "programs on the host's root cgroup: {root:?}");
}
