//! What the kernel splice must keep from the copying proxy: a slow reader holds the sender
//! back (bounded kernel memory, no unbounded queue between the proxy's sockets), and the
//! proxy's byte counts stay exact although the kernel moves the bytes.

use std::{fs::File, net::IpAddr, time::Duration};

use nodemesh_testbed::{
    AgentOptions, Pod, kernel,
    scenario::{BULK_PORT, SingleNode},
    tools, wait_for,
};

/// Bytes the stalled server may get acknowledged: the reader's receive buffer, the proxy's
/// two sockets' buffers and the splice's in-flight cap, with room to spare. Without
/// backpressure the whole download would be acknowledged.
const BOUND: u64 = 48 << 20;
/// The agent's outbound listener in every pod (`ports.outbound`).
const OUTBOUND_LISTENER: u16 = 15001;
const DOWNLOAD: usize = 256 << 20;

fn a_stalled_reader_holds_the_sender_back(splice: bool) {
    let s = SingleNode::start("slowreader", &AgentOptions { splice, ..Default::default() }).expect("cluster");
    let out = s.cluster.work_dir().join("slow.out");
    let mut cmd = tools::slow_client(IpAddr::from(s.server.ipv4), BULK_PORT, DOWNLOAD, 1 << 20, 3.0);
    cmd.stdout(File::create(&out).expect("out"));
    let pid = s.client.spawn(cmd).expect("spawn");
    wait_for("the reader to stall", Duration::from_secs(20), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.starts_with("paused"))
    })
    .expect("paused");
    std::thread::sleep(Duration::from_millis(1500));
    let acked = kernel::bytes_acked(&s.server.netns_path(), BULK_PORT).expect("ss");
    let max = acked.iter().copied().max().unwrap_or(0);
    eprintln!("stalled reader, splice {splice}: the server got {} MiB acknowledged", max >> 20);
    assert!(
        !acked.is_empty(),
        "the server sent the whole download while the reader stalled: nothing held it back"
    );
    assert!(max < BOUND, "{max} bytes went into the pipeline while the reader stalled");

    // The live flow says how its bytes move and counts them, spliced or not: the reader has
    // taken at least the MiB before its pause.
    let flows = s.agent.flows("state=active&pod=mesh/client").expect("flows");
    let flow = flows.iter().find(|f| f["destination"]["address"] == format!("{}:{BULK_PORT}", s.server.ipv4));
    let flow = flow.unwrap_or_else(|| panic!("no active flow to the server: {flows:#?}"));
    assert_eq!(flow["spliced"], splice, "{flow:#}");
    let received = flow["bytes_received"].as_u64().expect("bytes_received");
    assert!(received >= 1 << 20, "the live flow shows {received} bytes received: {flow:#}");

    let status = s.client.wait(pid, Duration::from_secs(60)).expect("exit");
    let text = std::fs::read_to_string(&out).expect("out");
    assert!(status.success(), "the download broke: {text}");
    if splice {
        assert!(
            s.agent.counter("splice", "passed_backpressure").expect("counter") > 0,
            "backpressure never engaged"
        );
    }
}

#[test]
fn a_stalled_reader_holds_the_sender_back_copy() {
    a_stalled_reader_holds_the_sender_back(false);
}

#[test]
fn a_stalled_reader_holds_the_sender_back_splice() {
    a_stalled_reader_holds_the_sender_back(true);
}

fn byte_counts_are_exact(splice: bool) {
    let s = SingleNode::start("bytecount", &AgentOptions { splice, ..Default::default() }).expect("cluster");
    let before = s.agent.pod_stats("mesh/client").expect("stats")["outbound"].clone();
    let (up, down) = (10_000_019usize, 23_000_017usize);
    let out =
        s.client.output(tools::bulk_client(IpAddr::from(s.ext.ipv4), BULK_PORT, up, down)).expect("run");
    let r = tools::json_result("bulk", &out).expect("bulk");
    assert_eq!(r["ok"], true);
    // What crossed the wire at the application layer, per direction (tools/bulk_server.py).
    let greeting = r["greeting"].as_str().expect("greeting").len() + 1;
    let expected_sent = format!("{up} {down}\n").len() + up;
    let expected_received = greeting + 65 + down;
    let after = s.agent.pod_stats("mesh/client").expect("stats")["outbound"].clone();
    let delta = |field: &str| after[field].as_u64().expect("n") - before[field].as_u64().expect("n");
    assert_eq!(delta("bytes_sent"), expected_sent as u64);
    assert_eq!(delta("bytes_received"), expected_received as u64);
    assert_eq!(delta("spliced"), u64::from(splice));
    assert_eq!(s.agent.splice_audit_mismatches().expect("metrics"), 0, "{}", s.agent.log_tail(20));
}

#[test]
fn byte_counts_are_exact_copy() {
    byte_counts_are_exact(false);
}

#[test]
fn byte_counts_are_exact_splice() {
    byte_counts_are_exact(true);
}

/// With a hand-off threshold, a connection starts in the copying proxy and moves to the
/// kernel mid-stream: byte-exact across the hand-off, both ways. A short exchange stays
/// copied, and so does a connection half-closed before the threshold (the kernel refuses a
/// socket whose peer sent FIN), which still completes byte-exact.
///
/// With 4 KiB copy buffers against loopback's 64 KiB skbs the hand-off almost always leaves
/// an skb partly read, whose prefix the kernel would hand the verdict again: the verdict must
/// cut it off by sequence number (`splice/trimmed_hand_off`), the same repair that keeps a
/// partly overlapping retransmission from being delivered twice (`trimmed_overlap`).
#[test]
fn hand_off_in_the_middle_of_a_stream() {
    let options = AgentOptions {
        splice: true,
        splice_after_bytes: Some(100_000),
        extra_config: "max_buffer_bytes: 4096\n".into(),
        ..Default::default()
    };
    let s = SingleNode::start("handoff", &options).expect("cluster");
    let spliced =
        || s.agent.pod_stats("mesh/client").expect("stats")["outbound"]["spliced"].as_u64().expect("n");
    let server = IpAddr::from(s.server.ipv4);
    // (upload, download, handed over?) The client half-closes after its upload.
    let cases = [
        (1000, 1000, false),
        (3 << 20, 5 << 20, true),
        (64 << 20, 1 << 20, true),
        (1 << 10, 64 << 20, false),
    ];
    for (up, down, handed_over) in cases {
        let before = spliced();
        let out = s.client.output(tools::bulk_client(server, BULK_PORT, up, down)).expect("run");
        let r = tools::json_result(&format!("{up} B up, {down} B down"), &out).expect("bulk");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(spliced() - before, u64::from(handed_over), "{up} B up, {down} B down");
    }
    assert!(s.agent.counter("splice", "redirected").expect("counter") > 100);
    assert!(
        s.agent.counter("splice", "trimmed_hand_off").expect("counter") > 0,
        "no hand-off left a partly read skb: the test no longer exercises the trim"
    );
    // Every spliced direction's counts agree with the kernel's (the audit counts exactly).
    assert_eq!(s.agent.splice_audit_mismatches().expect("metrics"), 0, "{}", s.agent.log_tail(20));
}

/// The agent's default splices only legs that stay on loopback (same node): a leg that
/// receives from the network is copied, because the kernel's stream verdict can be handed a
/// retransmitted skb with an already-delivered prefix (docs/acceleration.md). Both kinds stay
/// byte-exact and the audit agrees with the kernel on every spliced direction.
#[test]
fn by_default_only_loopback_legs_are_spliced() {
    let options = AgentOptions { splice: true, splice_network_legs: Some(false), ..Default::default() };
    let s = SingleNode::start("spliceloop", &options).expect("cluster");
    let spliced =
        || s.agent.pod_stats("mesh/client").expect("stats")["outbound"]["spliced"].as_u64().expect("n");
    for (target, expect_spliced) in [(IpAddr::from(s.server.ipv4), true), (IpAddr::from(s.ext.ipv4), false)] {
        let before = spliced();
        let out = s.client.output(tools::bulk_client(target, BULK_PORT, 3 << 20, 5 << 20)).expect("run");
        let r = tools::json_result(&format!("to {target}"), &out).expect("bulk");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(spliced() - before, u64::from(expect_spliced), "to {target}");
    }
    assert_eq!(s.agent.splice_audit_mismatches().expect("metrics"), 0, "{}", s.agent.log_tail(20));
}

/// Many long bulk streams through the splice at once, both directions, with every CPU busy
/// and 2% of the packets on both of the proxy's receiving legs dropped (contention and loss
/// are what make loopback TCP retransmit segments that partly overlap delivered data): every
/// byte is checked against what was sent (`nm-loadgen verify`, offset by offset), and no
/// direction's counts disagree with the kernel's. `cargo xtask bench` runs the same, without
/// the loss, for tens of gigabytes (`splice_stress` in docs/bench.md).
#[test]
fn bulk_streams_under_contention_and_loss_stay_byte_exact() {
    const PORT: u16 = 9100;
    const CONNS: usize = 8;
    const BYTES: u64 = 128 << 20;
    let options = AgentOptions {
        splice: true,
        splice_after_bytes: None,
        splice_network_legs: Some(false),
        ..Default::default()
    };
    let s = SingleNode::start("splicestress", &options).expect("cluster");
    s.server.spawn(tools::loadgen_server(PORT)).expect("loadgen server");
    tools::wait_listening(&s.server.netns_path(), PORT).expect("listening");
    // The client's packets to the proxy's outbound listener, and the server's to the proxy's
    // upstream socket (same node: it connects from inside the server pod).
    let work = s.cluster.work_dir();
    drop_randomly(&s.client, work, &format!("tcp dport {OUTBOUND_LISTENER}"), 20);
    drop_randomly(&s.server, work, &format!("tcp sport {PORT}"), 20);
    let spliced =
        || s.agent.pod_stats("mesh/client").expect("stats")["outbound"]["spliced"].as_u64().expect("n");
    let before = spliced();
    let out = {
        let _hogs = tools::CpuHogs::start().expect("busy loops");
        s.client.output(tools::loadgen_verify(IpAddr::from(s.server.ipv4), PORT, CONNS, BYTES)).expect("run")
    };
    let r = tools::json_result("nm-loadgen verify", &out).expect("every byte checked out");
    assert_eq!(r["bytes_checked"].as_u64(), Some(2 * CONNS as u64 * BYTES), "{r}");
    assert_eq!(spliced() - before, CONNS as u64, "every stream went through the splice");
    assert_eq!(s.agent.splice_audit_mismatches().expect("metrics"), 0, "{}", s.agent.log_tail(20));
    assert_eq!(s.agent.copy_audit_mismatches().expect("metrics"), 0, "{}", s.agent.log_tail(20));
    let count = |reason| s.agent.counter("splice", reason).expect("counter");
    eprintln!(
        "{r}; trimmed: {} retransmitted overlaps, {} hand-off prefixes",
        count("trimmed_overlap"),
        count("trimmed_hand_off")
    );
}

/// Drops about `per_mille` of the packets matching `selector` that arrive in `pod`'s network
/// namespace (nftables `numgen random`: this kernel has no netem).
fn drop_randomly(pod: &Pod, work_dir: &std::path::Path, selector: &str, per_mille: u32) {
    let rules = format!(
        "table inet nmloss {{\n  chain input {{\n    type filter hook input priority 0;\n    \
         {selector} numgen random mod 1000 < {per_mille} drop\n  }}\n}}\n"
    );
    let file = work_dir.join(format!("loss-{}.nft", pod.name));
    std::fs::write(&file, rules).expect("writing the rules");
    let mut nft = std::process::Command::new("nft");
    nft.arg("-f").arg(&file);
    let out = pod.output(nft).expect("nft");
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
}
