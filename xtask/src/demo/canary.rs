//! The demo's HTTP step: a `reviews` Service whose HTTPRoute splits requests between two
//! versions by weight; the weight shifts live while the request metrics are read.

use std::{collections::BTreeMap, process::Command, time::Duration};

use nodemesh_testbed::{Agent, ControlPlane, Node, Pod, PodOptions, tools, wait_for};

const PORT: u16 = 8080;
const VIP: &str = "10.96.0.20";

/// The Services (`reviews`, `reviews-v1`, `reviews-v2`, all HTTP) and the route splitting
/// `reviews` `v1`:`v2`.
pub fn objects(v1: u32, v2: u32) -> String {
    let service = |name: &str, vip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: mesh}}\n\
             spec: {{clusterIP: {vip}, selector: {{app: {name}}}, ports: [{{name: http, port: 80, targetPort: {PORT}, appProtocol: http}}]}}\n"
        )
    };
    format!(
        "{}{}{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews, namespace: mesh}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: reviews, port: 80}}]\n  rules:\n  \
         - backendRefs: [{{name: reviews-v1, port: 80, weight: {v1}}}, {{name: reviews-v2, port: 80, weight: {v2}}}]\n",
        service("reviews", VIP),
        service("reviews-v1", "10.96.0.21"),
        service("reviews-v2", "10.96.0.22"),
    )
}

/// One pod of each version: v1 on node1, v2 on node2 (its requests ride HBONE).
pub fn add_pods(node1: &Node, node2: &Node) -> anyhow::Result<[Pod; 2]> {
    let labelled =
        |app: &str| PodOptions { labels: [("app".to_owned(), app.to_owned())].into(), ..Default::default() };
    Ok([
        node1.add_pod("mesh", "reviews-1", labelled("reviews-v1"))?,
        node2.add_pod("mesh", "reviews-2", labelled("reviews-v2"))?,
    ])
}

/// Serves both versions, sends requests at 90/10, shifts to 50/50 live, and prints where the
/// requests went and what `istio_requests_total` says.
pub fn run(cp: &ControlPlane, client: &Pod, pods: &[Pod; 2], agent1: &Agent) -> anyhow::Result<()> {
    for pod in pods {
        let mut cmd = tools::loadgen_http_server(&pod.name, PORT, &[]);
        cmd.stdout(std::process::Stdio::null());
        pod.spawn(cmd)?;
    }
    for pod in pods {
        tools::wait_listening(&pod.netns_path(), PORT)?;
    }
    let before = by_service(agent1)?;
    let first = requests(client, 400)?;
    let after_first = by_service(agent1)?;
    println!(
        "[11/12] HTTP: Service mesh/reviews with an HTTPRoute sending 90% to reviews-v1 and 10% to reviews-v2; \
         400 requests on one keep-alive connection from mesh/client: {first:?}; istio_requests_total grew by {:?}",
        delta(&before, &after_first)
    );
    cp.write("reviews.yaml", &objects(50, 50))?;
    wait_for("the new weights on node1", Duration::from_secs(10), || {
        requests(client, 40).is_ok_and(|r| r.get("reviews-2").copied().unwrap_or(0) >= 14)
    })?;
    let before = by_service(agent1)?;
    let second = requests(client, 400)?;
    println!(
        "        the route shifted live to 50/50 (the file rewritten; the next requests follow it): 400 more requests: \
         {second:?}; istio_requests_total grew by {:?}",
        delta(&before, &by_service(agent1)?)
    );
    Ok(())
}

/// `n` GETs on one keep-alive connection; how many each pod answered (all must be 200).
fn requests(client: &Pod, n: u32) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut cmd = Command::new("curl");
    let url = format!("http://{VIP}/demo?i=[1-{n}]");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %header{x-served-by}\\n", &url]);
    let out = client.output(cmd)?;
    anyhow::ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let mut by = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (code, who) = line.split_once(' ').unwrap_or((line, ""));
        anyhow::ensure!(code == "200", "a request failed: {line}");
        *by.entry(who.to_owned()).or_insert(0) += 1;
    }
    Ok(by)
}

/// `istio_requests_total` of node1 by destination service (short name).
fn by_service(agent: &Agent) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let text = agent.http_get("http://127.0.0.1:15020/metrics")?;
    Ok(["reviews-v1", "reviews-v2"]
        .into_iter()
        .map(|s| (s, tools::metric_sum(&text, "istio_requests_total", &[("destination_service_name", s)])))
        .collect())
}

fn delta(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
) -> BTreeMap<&'static str, u64> {
    after.iter().map(|(k, v)| (*k, (v - before.get(k).copied().unwrap_or(0.0)) as u64)).collect()
}
