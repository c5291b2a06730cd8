//! Bad input never changes what is enforced: a truncated, empty, non-UTF-8, deeply nested or
//! huge version of the enrollment file, or of a control-plane input file, is refused with the
//! file named, the last good state keeps serving (the pods stay intercepted), the admin API
//! answers within a second meanwhile, and the error clears once the good version is back.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use nodemesh_testbed::{
    Agent, AgentOptions, PodOptions,
    scenario::{BULK_PORT, ControlledNode, SingleNode},
    tools, wait_for,
};
use serde_json::Value;

/// The bad versions: name, bytes, a word the error must contain.
fn bad_versions(good: &str) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        ("truncated", good.as_bytes()[..good.len() * 2 / 3].to_vec(), "newline"),
        ("empty", Vec::new(), "no documents"),
        ("not UTF-8", [good.as_bytes(), b"# \xff\xfe\n"].concat(), "UTF-8"),
        ("deeply nested", format!("{}\n", "[".repeat(10_000)).into_bytes(), "nested"),
        ("huge", format!("# {}\n", "x".repeat(20 << 20)).into_bytes(), "bytes"),
    ]
}

/// The agent's admin API answers, and within a second.
fn admin_answers(agent: &Agent, when: &str) -> Value {
    let started = Instant::now();
    let status = agent.status().unwrap_or_else(|e| panic!("{when}: the admin API did not answer: {e}"));
    assert!(started.elapsed() < Duration::from_secs(1), "{when}: the admin API took {:?}", started.elapsed());
    status
}

#[test]
fn bad_enrollment_files_keep_the_last_good_state() {
    let s = SingleNode::start("badenroll", &AgentOptions::default()).expect("cluster");
    let good = std::fs::read_to_string(s.node.enrollment_path()).expect("the file");
    let ext = IpAddr::from(s.ext.ipv4);
    for (what, bytes, says) in bad_versions(&good) {
        let path = s.node.enrollment_path();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        let mut error = String::new();
        wait_for(&format!("the {what} file refused"), Duration::from_secs(5), || {
            error = admin_answers(&s.agent, what)["enrollment"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            !error.is_empty()
        })
        .expect("refused");
        assert!(error.contains("enrollment") && error.contains(says), "{what}: {error}");
        let status = admin_answers(&s.agent, what);
        assert_eq!(status["pods"].as_array().map(Vec::len), Some(2), "{what}: pods released");
        let out =
            s.client.output(tools::probe(ext, BULK_PORT, "intercepted", tools::unix_now())).expect("probe");
        tools::json_result(&format!("still intercepted after a {what} file"), &out).expect("intercepted");

        s.node.write_enrollment().expect("the good file back");
        wait_for("the error to clear", Duration::from_secs(5), || {
            admin_answers(&s.agent, what)["enrollment"]["last_error"].is_null()
        })
        .expect("cleared");
    }
}

#[test]
fn bad_control_plane_files_keep_the_last_good_state() {
    let ControlledNode { cluster: _cluster, node: _node, ext, cp, pod, agent } =
        ControlledNode::start("badcp", "a", PodOptions::default(), &[]).expect("cluster");
    let good = std::fs::read_to_string(cp.config_dir.join("pods.yaml")).expect("pods.yaml");

    for (what, bytes, says) in bad_versions(&good) {
        // Written in place, as an editor or a careless script would, not renamed.
        std::fs::write(cp.config_dir.join("pods.yaml"), &bytes).expect("write");
        let mut errors = String::new();
        wait_for(&format!("the {what} pods.yaml refused"), Duration::from_secs(10), || {
            let started = Instant::now();
            let Ok(status) = cp.status() else { return false };
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{what}: the control plane's admin API was slow"
            );
            errors = status["served"]["input_errors"].to_string();
            errors.contains("pods.yaml")
        })
        .expect("refused");
        assert!(errors.contains(says), "{what}: {errors}");
        admin_answers(&agent, what);
        let out = pod
            .output(tools::probe(IpAddr::from(ext.ipv4), BULK_PORT, "intercepted", tools::unix_now()))
            .expect("probe");
        tools::json_result(&format!("still intercepted after a {what} pods.yaml"), &out)
            .expect("intercepted");
        assert_eq!(agent.status().expect("status")["pods"].as_array().map(Vec::len), Some(1), "{what}");

        cp.write("pods.yaml", &good).expect("the good file back");
        wait_for("the error to clear", Duration::from_secs(10), || {
            cp.status().is_ok_and(|s| !s["served"]["input_errors"].to_string().contains("pods.yaml"))
        })
        .expect("cleared");
    }
}
