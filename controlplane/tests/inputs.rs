//! Bad input through the whole control plane: refused, reported on `/status` with its file,
//! object and field, and never taking anything away from what agents already have.

mod common;

use std::time::Duration;

use common::{Cp, names, namespace, pod, subscribe, uid};

fn mesh() -> Vec<(&'static str, String)> {
    vec![
        ("namespaces.yaml", namespace("mesh", true)),
        (
            "pods.yaml",
            pod("mesh", "a", "node1", "10.1.0.1", "web") + &pod("mesh", "b", "node2", "10.2.0.1", "web"),
        ),
    ]
}

/// `served.input_errors` once `done` says it is what the test waits for.
async fn input_errors(cp: &Cp, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let mut errors = Vec::new();
    for _ in 0..100 {
        errors = cp.status().await["served"]["input_errors"].as_array().cloned().unwrap_or_default();
        if done(&errors) {
            return errors;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("input_errors never became what was expected: {errors:?}");
}

#[tokio::test]
async fn a_pod_taking_an_incumbents_address_is_refused_and_changes_nothing() {
    let cp = Cp::start(&mesh()).await;
    let mut s = cp.open(subscribe("node1", &[])).await;
    let first = s.next().await;
    assert_eq!(names(&first), [uid("mesh", "a"), uid("mesh", "b")]);
    s.ack(&first).await;

    // A file that sorts first, with a pod claiming a's address.
    cp.write("a-intruder.yaml", &pod("mesh", "intruder", "node1", "10.1.0.1", "web"));
    let errors = input_errors(&cp, |e| !e.is_empty()).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert!(e["file"].as_str().is_some_and(|f| f.ends_with("a-intruder.yaml")), "{e}");
    assert_eq!(
        (e["object"].as_str(), e["field"].as_str()),
        (Some("Pod mesh/intruder"), Some("status.podIP"))
    );
    let message = e["message"].as_str().unwrap_or_default();
    assert!(message.contains("Pod mesh/a (") && message.contains("pods.yaml, document 1)"), "{message}");
    s.quiet().await;

    // The intruder goes: nothing about the incumbent changes, and the error clears.
    cp.remove("a-intruder.yaml");
    input_errors(&cp, <[_]>::is_empty).await;
    s.quiet().await;
}

#[tokio::test]
async fn a_file_that_cannot_be_read_is_its_own_error_and_the_others_are_read() {
    let cp = Cp::start(&mesh()).await;
    let mut s = cp.open(subscribe("node1", &[])).await;
    let first = s.next().await;
    s.ack(&first).await;

    let tmp = cp.dir.path().join(".bad.tmp");
    std::fs::write(&tmp, b"apiVersion: v1\nkind: Pod\nmetadata: {name: \xff}\n").expect("write");
    std::fs::rename(&tmp, cp.dir.path().join("bad.yaml")).expect("rename");
    let errors = input_errors(&cp, |e| !e.is_empty()).await;
    assert!(errors[0]["message"].as_str().is_some_and(|m| m.contains("not UTF-8")), "{errors:?}");

    // The scan goes on: a new file is read and served.
    cp.write("c.yaml", &pod("mesh", "c", "node1", "10.1.0.3", "c"));
    let added = s.next().await;
    assert_eq!(names(&added), [uid("mesh", "c")]);
}
