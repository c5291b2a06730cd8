//! The Helm chart, rendered by real Helm (Helm v4's library through `helm-python-sdk`, with
//! no cluster) with its defaults and every `charts/nodemesh/ci/` values file, every object
//! validated strictly against Kubernetes 1.33's schemas (`kubernetes-validate`), the CRD's
//! schema tried on good and bad resources, and wrong values refused naming their path
//! (`tests/tools/chart_check.py`); each rendered agent configuration is one the agent binary
//! accepts. Needs `cargo xtask setup`'s virtualenv.

use std::{path::Path, process::Command};

use nodemesh_testbed::tools;

#[test]
fn the_chart_renders_valid_kubernetes_objects_and_refuses_wrong_values_by_path() {
    let python = tools::grpc_python_path();
    assert!(python.exists(), "{} is missing: run `cargo xtask setup`", python.display());
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/nodemesh");
    let out = Command::new(python)
        .arg(tools::tool("chart_check.py"))
        .arg(&chart)
        .arg(nodemesh_testbed::nodemesh_bin())
        .output()
        .expect("running chart_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // Each values file was rendered, and each wrong value refused.
    for line in [
        "ok defaults:",
        "ok ci/full-values.yaml:",
        "ok ci/minimal-values.yaml:",
        "ok nothing left behind:",
        "ok agent capabilities:",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
    assert_eq!(stdout.matches("ok refused").count(), 7, "{stdout}");
}
