"""Renders charts/nodemesh with real Helm (helm-python-sdk: Helm v4's library, offline) with
its defaults and every values file in charts/nodemesh/ci/, and validates every object
strictly against Kubernetes 1.33's schemas (kubernetes-validate, bundled, offline). CRDs are
validated as objects and their own schema is tried on good and bad resources. Wrong values
must fail naming their path. What an uninstall would leave behind is checked for: nothing
under crds/ (Helm never deletes it), no object kept by `helm.sh/resource-policy`, no host
path the agent writes to by default but its bpffs (whose pins it removes as it stops).
Prints one line per check; exits 1 on the first failure."""

import json
import pathlib
import subprocess
import sys
import tempfile

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

CHART = pathlib.Path(sys.argv[1])
# The agent binary: each rendered agent.yaml must be one it accepts.
AGENT = sys.argv[2] if len(sys.argv) > 2 else None
K8S = "1.33"
# Kinds kubernetes-validate has no schema for (a CRD of another project): checked by shape.
FOREIGN = {"ServiceMonitor": "monitoring.coreos.com/v1"}


def fail(message):
    print(f"FAIL {message}")
    sys.exit(1)


def objects(manifests):
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                yield path, obj


def check_object(where, obj):
    kind, api = obj.get("kind"), obj.get("apiVersion")
    if kind in FOREIGN:
        if api != FOREIGN[kind] or "spec" not in obj:
            fail(f"{where}: {kind} with apiVersion {api} and no spec")
        return
    try:
        kubernetes_validate.validate(obj, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        fail(f"{where}: {kind} {obj['metadata'].get('name')}: {path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        fail(f"{where}: no Kubernetes {K8S} schema for {api} {kind}")


def check_agent(where, obj):
    """What the chart promises about the agent: no privileged container, the capabilities it
    needs and no more, every taint tolerated, node-critical, readiness on 15021."""
    spec = obj["spec"]["template"]["spec"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    sc = agent["securityContext"]
    if sc.get("privileged") or sc.get("allowPrivilegeEscalation", True):
        fail(f"{where}: the agent container may be privileged")
    if sc["capabilities"]["drop"] != ["ALL"]:
        fail(f"{where}: the agent does not drop every capability first")
    if spec.get("priorityClassName") != "system-node-critical":
        fail(f"{where}: priorityClassName is {spec.get('priorityClassName')}")
    if agent["readinessProbe"]["httpGet"]["port"] != 15021:
        fail(f"{where}: readiness is not on 15021")
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    if mounts["cgroup"].get("readOnly") is not True:
        fail(f"{where}: the host's cgroups are mounted writable")
    return sorted(sc["capabilities"]["add"])


def check_agent_config(where, text):
    """The agent reads its configuration before it checks its privileges: run without any
    capability, it must get past the file (to the privilege error), or name what is wrong."""
    if AGENT is None:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        run = subprocess.run(["setpriv", "--bounding-set", "-all", AGENT, "agent", "--config", f.name,
                              "--node-name", "node1"], capture_output=True, text=True, timeout=30)
    if "needs root" not in run.stderr:
        fail(f"{where}: the agent refuses the chart's agent.yaml: {run.stderr.strip()}")


def render(chart, values, label):
    try:
        chart.validate_schema(values)
        manifests = chart.render(values, name="nodemesh", namespace="nodemesh-system", is_install=True)
    except helm.HelmError as e:
        fail(f"{label}: {e}")
    kinds = []
    capabilities = None
    crds = []
    for path, obj in objects(manifests):
        where = f"{label}: {path}"
        check_object(where, obj)
        check_nothing_kept(where, obj)
        kinds.append(obj["kind"])
        if obj["kind"] == "CustomResourceDefinition":
            crds.append((where, obj))
        if obj["kind"] == "DaemonSet":
            capabilities = check_agent(where, obj)
            # A state directory on the host is left behind, as values.yaml says: only when asked.
            asked = bool(((values or {}).get("agent") or {}).get("stateDir"))
            check_host_paths(where, obj, {"bpffs", "state"} if asked else {"bpffs"})
        if obj["kind"] == "ConfigMap" and "agent.yaml" in obj.get("data", {}):
            check_agent_config(where, obj["data"]["agent.yaml"])
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-dashboard"):
            json.loads(obj["data"]["nodemesh.json"])
    for needed in ["DaemonSet", "Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap"]:
        if needed not in kinds:
            fail(f"{label}: no {needed} rendered")
    print(f"ok {label}: {len(kinds)} objects valid against Kubernetes {K8S} ({', '.join(sorted(set(kinds)))})")
    return capabilities, crds


def check_nothing_kept(where, obj):
    """Nothing of the release survives `helm uninstall`."""
    annotations = obj["metadata"].get("annotations") or {}
    if annotations.get("helm.sh/resource-policy") == "keep":
        fail(f"{where}: {obj['kind']} is kept after an uninstall")


def check_host_paths(where, obj, writable_allowed):
    """The host paths the agent may write to."""
    spec = obj["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for c in spec.get("initContainers", []) + spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m["name"] in host and not m.get("readOnly") and m["name"] not in writable_allowed:
                fail(f"{where}: {c['name']} writes to the host's {host[m['name']]}, left behind on uninstall")


def check_crds(chart, crds):
    if chart.crds:
        fail(f"crds/ holds {[c['filename'] for c in chart.crds]}: Helm never deletes those on uninstall")
    if not crds:
        fail("the chart ships no CRD")
    for where, obj in crds:
        version = obj["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        kind = obj["spec"]["names"]["kind"]
        api = f"{obj['spec']['group']}/{version['name']}"
        good = {"apiVersion": api, "kind": kind, "metadata": {"name": "t", "namespace": "shop"},
                "spec": {"targetRef": {"group": "", "kind": "Service", "name": "cart"},
                         "rateLimits": [{"principals": ["cluster.local/ns/web/sa/*"], "connectionsPerSecond": 100, "burst": 200}],
                         "fallback": {"service": "cart-static"},
                         "scaleFromZero": {"autoscalerURL": "http://keda.keda:8080/wake", "holdTimeout": "30s", "maxHeld": 50}}}
        jsonschema.validate(good, schema)
        bad = json.loads(json.dumps(good))
        bad["spec"]["rateLimits"][0]["connectionsPerSecond"] = 0
        try:
            jsonschema.validate(bad, schema)
            fail(f"{where}: a rate of 0 passed the CRD's schema")
        except jsonschema.ValidationError as e:
            print(f"ok {where}: valid CRD; its schema refuses {'.'.join(str(p) for p in e.path)}")


# Wrong values, and the path each error must name.
WRONG = [
    ({"agent": {"excludedOutboundPorts": [70000]}}, "/agent/excludedOutboundPorts/0"),
    ({"controlplane": {"replicas": 0}}, "/controlplane/replicas"),
    ({"agnet": {"splice": False}}, "agnet"),
    ({"agent": {"hostBpffs": "sys/fs/bpf"}}, "/agent/hostBpffs"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"ca": {"tokenAudience": ""}}, "/ca/tokenAudience"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
]


def main():
    chart = helm.Chart.load(CHART)
    baseline, crds = render(chart, None, "defaults")
    for values_file in sorted((CHART / "ci").glob("*.yaml")):
        values = yaml.safe_load(values_file.read_text()) or {}
        caps, _ = render(chart, values, f"ci/{values_file.name}")
        if caps != baseline:
            fail(f"ci/{values_file.name}: the agent's capabilities changed with values: {caps}")
    check_crds(chart, crds)
    print("ok nothing left behind: no crds/, nothing kept, the agent writes to no host path but its bpffs")
    for values, path in WRONG:
        try:
            chart.validate_schema(values)
            chart.render(values, name="nodemesh", namespace="nodemesh-system", is_install=True)
        except helm.HelmError as e:
            if path not in str(e):
                fail(f"{values}: refused, but the error does not name {path}: {e}")
            print(f"ok refused {json.dumps(values)}: {' '.join(str(e).split())[:200]}")
            continue
        fail(f"{values} was accepted")
    print(f"ok agent capabilities: {' '.join(baseline)}")


main()
