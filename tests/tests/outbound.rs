//! Outbound interception from an enrolled pod, to a pod on the same node and to a server
//! outside the mesh: byte-exact both ways from 1 B to 64 MiB with curl (non-blocking) and a
//! blocking Python client, with half-close, 1,000 concurrent connections, and the proxy
//! seeing every connection. Each runs with the kernel splice off and on.

use std::net::IpAddr;

use nodemesh_testbed::{
    AgentOptions,
    scenario::{BULK_PORT, HTTP_PORT, SingleNode},
    tools::{self, authority},
};

const SIZES: [usize; 5] = [1, 1000, 65_543, 1 << 20, 64 << 20];

fn byte_exact_both_ways(splice: bool) {
    let s = SingleNode::start("outbound", &AgentOptions { splice, ..Default::default() }).expect("cluster");
    let before =
        s.agent.pod_stats("mesh/client").expect("stats")["outbound"]["accepted"].as_u64().expect("n");
    let mut connections = 0u64;

    let targets: [(&str, IpAddr); 2] =
        [("same-node pod", s.server.ipv4.into()), ("external host", s.ext.ipv4.into())];
    for (what, target) in targets {
        for size in SIZES {
            // Blocking client: upload `size`, half-close, download `size`.
            let out = s.client.output(tools::bulk_client(target, BULK_PORT, size, size)).expect("run");
            let r = tools::json_result(&format!("bulk client to {what}, {size} B"), &out).expect("bulk");
            assert_eq!(r["ok"], true, "{what} {size} B: {r}");
            assert_eq!(r["local"][0], "127.0.0.1", "the connection was not intercepted: {r}");
            assert_eq!(r["peer"][0], target.to_string(), "getpeername must show the original destination");
            let greeting = r["greeting"].as_str().expect("greeting");
            let expected_source = if target == IpAddr::from(s.ext.ipv4) {
                // Out of the mesh the source address stays the pod's.
                format!("peer={}:", s.client.ipv4)
            } else {
                // Into a pod on this node the proxy connects from 127.0.0.6 in that pod.
                "peer=127.0.0.6:".to_owned()
            };
            assert!(greeting.contains(&expected_source), "{what}: server saw {greeting}");
            connections += 1;

            // curl, non-blocking: download and upload the same size over HTTP.
            let (file, sha) = s.payload(size).expect("payload");
            let url = format!("http://{}/payload-{size}", authority(target, HTTP_PORT));
            assert_eq!(s.curl_download(&s.client, &url).expect("download"), sha, "{what} GET {size} B");
            let upload = format!("http://{}/upload", authority(target, HTTP_PORT));
            assert_eq!(s.curl_upload(&s.client, &upload, &file).expect("upload"), format!("{sha} {size}"));
            connections += 2;
        }
    }

    let stats = s.agent.pod_stats("mesh/client").expect("stats");
    assert_eq!(
        stats["outbound"]["accepted"].as_u64().expect("n") - before,
        connections,
        "the proxy must see every connection: {stats}"
    );
    assert_eq!(stats["outbound"]["failed"], 0, "{stats}");
    if splice {
        assert_eq!(
            stats["outbound"]["spliced"].as_u64().expect("n"),
            connections,
            "every connection is spliced"
        );
        let redirected = s.agent.counter("splice", "redirected").expect("counter");
        assert!(redirected > 1000, "the kernel moved almost nothing itself: {redirected} skbs");
    }
    eprintln!("{}", s.agent.cli(&["status"]).expect("status"));
}

#[test]
fn byte_exact_both_ways_copy() {
    byte_exact_both_ways(false);
}

#[test]
fn byte_exact_both_ways_splice() {
    byte_exact_both_ways(true);
}

fn thousand_concurrent(splice: bool) {
    let options = AgentOptions { splice, log: "nodemesh=debug".into(), ..Default::default() };
    let s = SingleNode::start("many", &options).expect("cluster");
    for (what, target) in [("external", IpAddr::from(s.ext.ipv4)), ("same-node pod", s.server.ipv4.into())] {
        let before =
            s.agent.pod_stats("mesh/client").expect("stats")["outbound"]["accepted"].as_u64().expect("n");
        let out = s.client.output(tools::many_client(target, BULK_PORT, 1000)).expect("run");
        let r = tools::json_result(&format!("1,000 connections to {what}"), &out).expect("many");
        assert_eq!(r["ok"], 1000, "{r}");
        let after =
            s.agent.pod_stats("mesh/client").expect("stats")["outbound"]["accepted"].as_u64().expect("n");
        assert_eq!(after - before, 1000, "the proxy must see all 1,000 connections to {what}");
    }
    let spliced =
        s.agent.pod_stats("mesh/client").expect("stats")["outbound"]["spliced"].as_u64().expect("n");
    assert_eq!(spliced, if splice { 2000 } else { 0 });
}

#[test]
fn thousand_concurrent_connections_copy() {
    thousand_concurrent(false);
}

#[test]
fn thousand_concurrent_connections_splice() {
    thousand_concurrent(true);
}

/// An upstream that never answers: the proxy gives up after `connect_timeout` and resets
/// the app's connection (the closest thing to the timeout the app would have seen).
#[test]
fn upstream_connect_times_out() {
    let options = AgentOptions { extra_config: "connect_timeout: 500\n".into(), ..Default::default() };
    let s = SingleNode::start("timeout", &options).expect("cluster");
    // Nobody owns this fabric address: ARP goes unanswered, the SYN never leaves.
    let nowhere: IpAddr = "192.168.100.250".parse().expect("ip");
    let started = std::time::Instant::now();
    let out = s.client.output(tools::bulk_client(nowhere, BULK_PORT, 10, 10)).expect("run");
    let elapsed = started.elapsed();
    assert!(!out.status.success(), "a connection to nowhere succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ConnectionResetError") || stderr.contains("Connection reset"), "{stderr}");
    assert!(elapsed < std::time::Duration::from_secs(2), "took {elapsed:?}, the timeout is 500 ms");
    let stats = s.agent.pod_stats("mesh/client").expect("stats");
    assert_eq!(stats["outbound"]["failed"], 1, "{stats}");
}
