//! A crash is an error, not a clean end: when the agent dies mid-transfer, every connection
//! it carried ends with a reset on both sides, so no app takes a cut EOF-delimited transfer
//! for a complete one. Copied and spliced, to a pod on the same node and to a host outside.

use std::{fs::File, net::IpAddr, path::PathBuf, time::Duration};

use nodemesh_testbed::{AgentOptions, scenario::SingleNode, tools, wait_for};
use serde_json::Value;

const PORT: u16 = 7100;

fn kill9_mid_transfer_resets_both_sides(splice: bool) {
    let s = SingleNode::start("crash", &AgentOptions { splice, ..Default::default() }).expect("cluster");
    let work = s.cluster.work_dir().to_owned();
    let (server_out, ext_out) = (work.join("server-uploads"), work.join("ext-uploads"));
    for dir in [&server_out, &ext_out] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    s.server.spawn(tools::eof_server(PORT, &server_out)).expect("server");
    s.ext.spawn(tools::eof_server(PORT, &ext_out)).expect("ext server");
    tools::wait_listening(&s.server.netns_path(), PORT).expect("server listening");
    tools::wait_listening(&s.ext.netns_path(), PORT).expect("ext listening");

    let mut clients: Vec<(String, u32, PathBuf, PathBuf)> = Vec::new();
    for (host, name) in [(IpAddr::from(s.server.ipv4), "server"), (IpAddr::from(s.ext.ipv4), "ext")] {
        for mode in ["down", "up"] {
            let label = format!("{mode} to {name}");
            let (progress, out) =
                (work.join(format!("{name}-{mode}.progress")), work.join(format!("{name}-{mode}.out")));
            let mut cmd = tools::eof_client(host, PORT, mode, &progress);
            cmd.stdout(File::create(&out).expect("out"));
            let pid = s.client.spawn(cmd).expect("client");
            clients.push((label, pid, progress, out));
        }
    }
    // Every transfer is under way (and, with the splice, handed to the kernel) before the kill.
    wait_for("every transfer to move 2 MiB", Duration::from_secs(20), || {
        clients.iter().all(|(_, _, progress, _)| {
            std::fs::read_to_string(progress)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 2 << 20)
        })
    })
    .expect("transfers under way");
    if splice {
        let redirected = s.agent.counter("splice", "redirected").expect("counter");
        assert!(redirected > 0, "nothing went through the splice before the kill");
    }
    s.agent.kill9();

    for (label, pid, _, out) in &clients {
        s.client.wait(*pid, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{label}: {e}"));
        let r: Value = serde_json::from_str(std::fs::read_to_string(out).expect("out").trim())
            .unwrap_or_else(|e| panic!("{label} printed no result: {e}"));
        eprintln!("{label}: client saw {r}");
        if label.starts_with("down") {
            assert_eq!(r["outcome"], "reset", "{label}: the downloading app saw {r}, not a reset");
        } else {
            assert_ne!(r["outcome"], "eof", "{label}: {r}");
        }
    }
    // The servers' side of the uploads: a reset, never a clean EOF.
    for (name, dir) in [("server", &server_out), ("ext", &ext_out)] {
        wait_for(&format!("{name} to record its upload"), Duration::from_secs(20), || {
            std::fs::read_dir(dir).is_ok_and(|d| {
                d.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "json"))
            })
        })
        .expect("recorded");
        for entry in std::fs::read_dir(dir).expect("dir").filter_map(Result::ok) {
            if entry.path().extension().is_none_or(|x| x != "json") {
                continue;
            }
            let r: Value =
                serde_json::from_str(&std::fs::read_to_string(entry.path()).expect("read")).expect("json");
            eprintln!("upload to {name}: server saw {r}");
            assert_eq!(r["outcome"], "reset", "the {name} app took a cut upload for a complete one: {r}");
        }
    }
}

#[test]
fn kill9_mid_transfer_resets_both_sides_copy() {
    kill9_mid_transfer_resets_both_sides(false);
}

#[test]
fn kill9_mid_transfer_resets_both_sides_splice() {
    kill9_mid_transfer_resets_both_sides(true);
}
