//! Replays the `controlplane_yaml` fuzz corpus (`fuzz/corpus/controlplane_yaml/`) and every
//! crashing input ever found for it (`fuzz/regressions/controlplane_yaml/`) through the
//! function the fuzz target runs, and checks the hand-made seed is the one built here
//! (`UPDATE_SEEDS=1` rewrites it). The agent's targets are replayed by the agent's tests.

use std::{fs, path::PathBuf};

use nodemesh_controlplane::fuzzing::yaml_directory;

const TARGET: &str = "controlplane_yaml";

fn dir(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz").join(kind).join(TARGET)
}

fn inputs(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir(kind)) else { return Vec::new() };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_corpus_and_every_crash_found_replay_cleanly() {
    let corpus = inputs("corpus");
    assert!(!corpus.is_empty(), "fuzz/corpus/{TARGET} is empty: the replay would prove nothing");
    for (path, bytes) in corpus.iter().chain(&inputs("regressions")) {
        let outcome = std::panic::catch_unwind(|| yaml_directory(bytes));
        assert!(outcome.is_ok(), "{} makes the control plane's input path panic", path.display());
    }
}

#[test]
fn the_committed_seed_is_the_built_one() {
    // Two files (split at the NUL byte): a namespace and a pod, then a service and a policy.
    let seed: &[u8] = b"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {nodemesh.io/intercept: enabled}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cart-0, namespace: shop, uid: 0a1b, labels: {app: cart}}\nspec: {nodeName: node1, serviceAccountName: cart}\nstatus: {podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}], phase: Running}\n\0apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: cart}, ports: [{port: 80, targetPort: 8080}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-web, namespace: shop}\nspec: {action: ALLOW, rules: [{from: [{source: {namespaces: [web]}}], to: [{operation: {ports: [\"8080\"]}}]}]}\n";
    let path = dir("corpus").join("seed-two-files");
    if std::env::var_os("UPDATE_SEEDS").is_some() {
        fs::write(&path, seed).expect("write");
    }
    assert!(
        fs::read(&path).unwrap_or_default() == seed,
        "{} differs from the seed built here",
        path.display()
    );
}
