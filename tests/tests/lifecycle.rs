//! Program lifecycle: one link per hook per pod; a restarted agent (after kill -9 or after a
//! clean stop) replaces what it finds and never duplicates it; SIGTERM removes everything the
//! agent created from bpffs, the pods' cgroups and their network namespaces.

use std::{net::IpAddr, time::Duration};

use nodemesh_testbed::{
    Agent, AgentOptions, Pod,
    kernel::{self, cgroup_programs, sk_lookup_links},
    scenario::{BULK_PORT, SingleNode},
    tools, wait_for,
};

const CGROUP_HOOKS: [(&str, &str); 5] = [
    ("cgroup_inet4_connect", "nm_connect4"),
    ("cgroup_inet6_connect", "nm_connect6"),
    ("cgroup_inet4_getpeername", "nm_getpeername4"),
    ("cgroup_inet6_getpeername", "nm_getpeername6"),
    ("cgroup_sock_ops", "nm_sock_ops"),
];

/// Asserts every hook is attached `n` times to each pod.
fn assert_hooks(pods: &[&Pod], n: usize, when: &str) {
    for pod in pods {
        let attached = cgroup_programs(&pod.cgroup_dir).expect("bpftool cgroup show");
        for (attach_type, name) in CGROUP_HOOKS {
            let count = attached.iter().filter(|(t, p)| t == attach_type && p == name).count();
            assert_eq!(count, n, "{when}: {name} on {}'s cgroup: {attached:?}", pod.name);
        }
        assert_eq!(attached.len(), CGROUP_HOOKS.len() * n, "{when}: unexpected programs {attached:?}");
        assert_eq!(
            sk_lookup_links(&pod.netns_path()).expect("bpftool link"),
            n,
            "{when}: sk_lookup on {}",
            pod.name
        );
    }
}

fn assert_intercepted(s: &SingleNode) {
    let out =
        s.client.output(tools::probe(IpAddr::from(s.ext.ipv4), BULK_PORT, "intercepted", tools::unix_now()));
    tools::json_result("intercepted", &out.expect("probe")).expect("intercepted");
}

fn program_ids(agent: &Agent) -> Vec<u64> {
    let status = agent.status().expect("status");
    status["programs"].as_array().expect("programs").iter().filter_map(|p| p["id"].as_u64()).collect()
}

#[test]
fn restarts_replace_and_shutdown_removes_everything() {
    let mut s = SingleNode::start("lifecycle", &AgentOptions::default()).expect("cluster");
    let pods = [&s.client, &s.server];
    assert_hooks(&pods, 1, "first start");

    // kill -9: the pins keep the hooks attached for the next agent.
    s.agent.kill9();
    assert!(s.agent.bpffs_dir.join("pods").join(&s.client.uid).exists(), "pins must survive a kill");
    assert_hooks(&pods, 1, "after kill -9");

    s.agent = s.agent.restart(&s.node).expect("restart");
    s.agent.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(10)).expect("enrolled");
    assert_hooks(&pods, 1, "after restart from kill -9");
    assert_intercepted(&s);

    // A clean stop and a start again.
    let status = s.agent.terminate(Duration::from_secs(15)).expect("terminate");
    assert!(status.success(), "SIGTERM exit status {status}");
    s.agent = s.agent.restart(&s.node).expect("restart");
    s.agent.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(10)).expect("enrolled");
    assert_hooks(&pods, 1, "after restart from SIGTERM");
    assert_intercepted(&s);

    // SIGTERM removes everything.
    let ids = program_ids(&s.agent);
    assert!(!ids.is_empty());
    let status = s.agent.terminate(Duration::from_secs(15)).expect("terminate");
    assert!(status.success(), "SIGTERM exit status {status}");
    assert!(!s.agent.bpffs_dir.exists(), "{} is left in bpffs", s.agent.bpffs_dir.display());
    assert_hooks(&pods, 0, "after SIGTERM");
    for pod in pods {
        let left = kernel::listeners(&pod.netns_path(), &[15001, 15006]).expect("ss");
        assert!(left.is_empty(), "listeners left in {}: {left:?}", pod.name);
    }
    // The last reference to a program can go after the agent has exited: the kernel frees a
    // sockhash (which holds its stream verdict) from a workqueue and a link after an RCU grace
    // period. So "unloaded" is awaited, not sampled at the instant of exit.
    wait_for("every program the agent loaded to be unloaded", Duration::from_secs(5), || {
        ids.iter().all(|&id| !kernel::program_loaded(id))
    })
    .unwrap_or_else(|e| {
        let left: Vec<_> = ids.iter().filter(|&&id| kernel::program_loaded(id)).collect();
        panic!("{e}: still loaded {left:?}")
    });
    // And traffic is direct.
    let out = s.client.output(tools::probe(IpAddr::from(s.ext.ipv4), BULK_PORT, "direct", tools::unix_now()));
    tools::json_result("direct", &out.expect("probe")).expect("direct");
}
