//! Enrollment from the local file: both kubelet cgroup layouts, and a bad file that is
//! rejected with the field at fault while the last good state keeps serving.

use std::{net::IpAddr, time::Duration};

use nodemesh_testbed::{
    AgentOptions, CgroupLayout, Cluster, PodOptions,
    scenario::{BULK_PORT, SingleNode},
    tools, wait_for,
};

#[test]
fn systemd_cgroup_layout_is_found() {
    let cluster = Cluster::new("systemd").expect("cluster");
    let node = cluster.add_node("node1", 1).expect("node");
    let ext = cluster.add_external("ext").expect("ext");
    let pod = node
        .add_pod("mesh", "sd", PodOptions { cgroup_layout: CgroupLayout::Systemd, ..Default::default() })
        .expect("pod");
    node.set_intercept("mesh", Some("enabled")).expect("label");
    ext.spawn(tools::bulk_server("0.0.0.0".parse().expect("ip"), BULK_PORT)).expect("server");
    tools::wait_listening(&ext.netns_path(), BULK_PORT).expect("listening");
    let agent = node.start_agent(&AgentOptions::default()).expect("agent");
    let status = agent.wait_enrolled(&["mesh/sd"], Duration::from_secs(10)).expect("enrolled");
    let cgroup = status["pods"][0]["cgroup"].as_str().expect("cgroup");
    assert!(cgroup.contains("kubepods-besteffort.slice"), "{cgroup}");

    let out = pod.output(tools::bulk_client(IpAddr::from(ext.ipv4), BULK_PORT, 1000, 1000)).expect("run");
    let r = tools::json_result("systemd-layout pod", &out).expect("bulk");
    assert_eq!(r["local"][0], "127.0.0.1", "{r}");
}

#[test]
fn a_bad_file_is_rejected_and_the_last_good_state_keeps_serving() {
    let s = SingleNode::start("badfile", &AgentOptions::default()).expect("cluster");
    let enrollment_error =
        || s.agent.status().ok().and_then(|st| st["enrollment"]["last_error"].as_str().map(str::to_owned));

    let good = std::fs::read_to_string(s.node.enrollment_path()).expect("read");
    let bad_ip = good.replacen(&s.client.ipv4.to_string(), "10.10.1.x", 1);
    assert_ne!(bad_ip, good);
    s.node.write_enrollment_text(&bad_ip).expect("write");
    wait_for("the rejection", Duration::from_secs(5), || enrollment_error().is_some()).expect("rejected");
    let error = enrollment_error().expect("error");
    assert!(
        error.contains("pods[0].ips[0]") && error.contains("10.10.1.x"),
        "the error must name the field: {error}"
    );

    s.node.write_enrollment_text("pods: [ {uid: 12").expect("write");
    wait_for("a parse error", Duration::from_secs(5), || {
        enrollment_error().is_some_and(|e| !e.contains("ips[0]"))
    })
    .expect("rejected");

    // Still enrolled and intercepting with the last good state.
    s.agent.wait_enrolled(&["mesh/client", "mesh/server"], Duration::from_secs(2)).expect("kept");
    let out =
        s.client.output(tools::bulk_client(IpAddr::from(s.ext.ipv4), BULK_PORT, 1000, 1000)).expect("run");
    assert_eq!(tools::json_result("intercepted", &out).expect("bulk")["local"][0], "127.0.0.1");

    s.node.write_enrollment_text(&good).expect("restore");
    wait_for("acceptance", Duration::from_secs(5), || enrollment_error().is_none()).expect("accepted");
}

#[test]
fn the_proxys_ports_are_kept_out_of_the_pods_ephemeral_range() {
    let cluster = Cluster::new("reserved").expect("cluster");
    let node = cluster.add_node("node1", 1).expect("node");
    let pod = node.add_pod("mesh", "app", PodOptions::default()).expect("pod");
    node.set_intercept("mesh", Some("enabled")).expect("label");
    let sysctl = "net.ipv4.ip_local_reserved_ports";
    // What the pod reserves itself stays.
    pod.sysctl(sysctl, "8080,9000-9010").expect("sysctl");
    let agent = node.start_agent(&AgentOptions::default()).expect("agent");
    agent.wait_enrolled(&["mesh/app"], Duration::from_secs(10)).expect("enrolled");
    let mut cat = std::process::Command::new("cat");
    cat.arg("/proc/sys/net/ipv4/ip_local_reserved_ports");
    let out = pod.output(cat).expect("read");
    let reserved = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // The kernel prints the set back as sorted ranges.
    assert_eq!(reserved, "8080,9000-9010,15001,15006,15008", "{reserved}");
}
