//! Turning interception on and off under traffic: connections that exist survive either
//! way, and new connections follow the change within a second.

use std::{fs::File, net::IpAddr, time::Duration};

use nodemesh_testbed::{
    AgentOptions, Pod,
    scenario::{BULK_PORT, SingleNode},
    tools::{self, ArmedProbe},
};

const WITHIN: f64 = 1.0;

/// Starts a held connection; returns its pid and output file once it has connected, with
/// its local address.
fn hold(s: &SingleNode, pod: &Pod, name: &str) -> (u32, std::path::PathBuf, std::path::PathBuf, String) {
    let out = s.cluster.work_dir().join(format!("{name}.out"));
    let release = s.cluster.work_dir().join(format!("{name}.release"));
    let mut cmd = tools::hold_client(IpAddr::from(s.ext.ipv4), BULK_PORT, &release);
    cmd.stdout(File::create(&out).expect("out file"));
    let pid = pod.spawn(cmd).expect("spawn");
    let mut local = String::new();
    nodemesh_testbed::wait_for("the held connection", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        match text.lines().next().and_then(|l| l.strip_prefix("connected ")) {
            Some(addr) => {
                local = addr.to_owned();
                true
            }
            None => false,
        }
    })
    .expect("connected");
    (pid, out, release, local)
}

fn finish(pod: &Pod, pid: u32, out: &std::path::Path, release: &std::path::Path) -> serde_json::Value {
    std::fs::write(release, b"").expect("release");
    let status = pod.wait(pid, Duration::from_secs(20)).expect("exit");
    let text = std::fs::read_to_string(out).expect("output");
    let last = text.lines().last().unwrap_or("");
    assert!(status.success(), "a held connection broke: {text}");
    serde_json::from_str(last).expect("json")
}

/// Makes `change` and returns the seconds until a new connection from the client is `want`,
/// timed by a probe that was already connecting (its start-up is not counted), with its report.
fn time_change(s: &SingleNode, want: &str, change: impl FnOnce()) -> (f64, serde_json::Value) {
    let dir = s.cluster.work_dir();
    let (mut cmd, probe) = ArmedProbe::new(IpAddr::from(s.ext.ipv4), BULK_PORT, want, dir, "client");
    let out = dir.join(format!("probe-client-{want}.out"));
    cmd.stdout(File::create(&out).expect("probe output"));
    let pid = s.client.spawn(cmd).expect("probe");
    probe.wait_ready().expect("probe running");
    probe.mark(tools::unix_now()).expect("mark");
    change();
    let status = s.client.wait(pid, Duration::from_secs(15)).expect("probe exit");
    let text = std::fs::read_to_string(&out).expect("probe output");
    assert!(status.success(), "probe for {want} failed: {text}");
    let report: serde_json::Value = serde_json::from_str(text.trim()).expect("probe json");
    (report["seconds"].as_f64().expect("seconds"), report)
}

fn toggle_under_traffic(splice: bool) {
    let s = SingleNode::start("toggle", &AgentOptions { splice, ..Default::default() }).expect("cluster");

    let (held_proxied, out1, release1, local1) = hold(&s, &s.client, "proxied");
    assert_eq!(local1, "127.0.0.1", "opened while enrolled, so intercepted");

    let (took_off, report) =
        time_change(&s, "direct", || s.node.set_intercept("mesh", None).expect("unlabel"));
    eprintln!("interception off after {took_off:.3} s: {report}");
    assert!(
        took_off < WITHIN,
        "new connections still intercepted {took_off:.3} s after the label went: {report}"
    );
    s.agent.wait_enrolled(&[], Duration::from_secs(5)).expect("released");

    let (held_direct, out2, release2, local2) = hold(&s, &s.client, "direct");
    assert_eq!(local2, s.client.ipv4.to_string(), "opened while not enrolled, so direct");

    let (took_on, report) =
        time_change(&s, "intercepted", || s.node.set_intercept("mesh", Some("enabled")).expect("label"));
    eprintln!("interception on after {took_on:.3} s: {report}");
    assert!(
        took_on < WITHIN,
        "new connections not intercepted {took_on:.3} s after the label came back: {report}"
    );

    // Both connections carried on through both changes, byte-exact.
    assert_eq!(finish(&s.client, held_proxied, &out1, &release1)["ok"], true);
    assert_eq!(finish(&s.client, held_direct, &out2, &release2)["ok"], true);
}

#[test]
fn toggle_under_traffic_copy() {
    toggle_under_traffic(false);
}

#[test]
fn toggle_under_traffic_splice() {
    toggle_under_traffic(true);
}
