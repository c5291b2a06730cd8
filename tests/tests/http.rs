//! The HTTP stage, as root on the fake cluster with real clients (curl) and real servers
//! (`nm-loadgen http-server`, HTTP/1.1 and h2c): Gateway API HTTPRoutes route by header and
//! path, split a canary by weight and change it live, retry within a budget, cut a slow
//! request at its timeout, and every request shows in Istio's request metrics.

use std::{collections::BTreeMap, process::Command, time::Duration};

use nodemesh_testbed::{
    require_root,
    services::{Layout, Services, TARGET_PORT},
    tools, wait_for,
};

const VIP: &str = "10.96.0.20";

/// A Service of namespace `mesh` at `vip` selecting `app`, port 80 (and 81 when `h2`) → 8080,
/// declared HTTP (and HTTP/2).
fn http_service(name: &str, app: &str, vip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: mesh}}\nspec:\n  \
         clusterIP: {vip}\n  selector: {{app: {app}}}\n  ports:\n  - {{name: http, port: 80, targetPort: {TARGET_PORT}, appProtocol: http}}\n  \
         - {{name: h2, port: 81, targetPort: {TARGET_PORT}, appProtocol: kubernetes.io/h2c}}\n"
    )
}

/// `reviews` routes: `x-canary: yes` to v2, `/ratings` to ratings (prefix stripped), the rest
/// split `v1`:`v2` by weight, with a response header.
fn reviews_route(v1: u32, v2: u32) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews, namespace: mesh}}\nspec:\n  \
         parentRefs: [{{group: '', kind: Service, name: reviews}}]\n  rules:\n  \
         - matches: [{{headers: [{{name: x-canary, value: 'yes'}}]}}]\n    backendRefs: [{{name: reviews-v2, port: 80}}]\n  \
         - matches: [{{path: {{type: PathPrefix, value: /ratings}}}}]\n    backendRefs: [{{name: ratings, port: 80}}]\n    \
         filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]\n  \
         - backendRefs: [{{name: reviews-v1, port: 80, weight: {v1}}}, {{name: reviews-v2, port: 80, weight: {v2}}}]\n    \
         filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-route, value: canary}}]}}}}]\n"
    )
}

fn objects(v1: u32, v2: u32) -> String {
    [
        http_service("reviews", "reviews", VIP),
        http_service("reviews-v1", "reviews-v1", "10.96.0.21"),
        http_service("reviews-v2", "reviews-v2", "10.96.0.22"),
        http_service("ratings", "ratings", "10.96.0.23"),
        reviews_route(v1, v2),
    ]
    .concat()
}

const ENDPOINTS: &[(usize, &str, &str)] = &[
    (0, "v1-a", "reviews-v1"),
    (1, "v1-b", "reviews-v1"),
    (1, "v2-a", "reviews-v2"),
    (0, "ratings-1", "ratings"),
];

/// Runs curl in the `web` pod with `args`; its stdout.
fn curl(s: &Services, args: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60"]).args(args);
    let out = s.pod("web").output(cmd).expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` GETs of `path` on one keep-alive connection; (status, served-by, new connections) each.
fn requests(s: &Services, port: u16, path: &str, n: u32, extra: &[&str]) -> Vec<(u16, String, u32)> {
    let url = format!("http://{VIP}:{port}{path}?i=[1-{n}]");
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code} %header{x-served-by} %{num_connects}\\n"];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(s, &args)
        .lines()
        .map(|l| {
            let mut parts = l.split(' ');
            let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            let by = parts.next().unwrap_or("").to_owned();
            let connects = parts.next().and_then(|c| c.parse().ok()).unwrap_or(99);
            (code, by, connects)
        })
        .collect()
}

fn tally(results: &[(u16, String, u32)]) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for (code, who, _) in results {
        *by.entry(format!("{code} {who}")).or_insert(0) += 1;
    }
    by
}

fn start(name: &str, objects: &str) -> Services {
    let layout = Layout { endpoints: ENDPOINTS, clients: &[("web", "web")], objects, ..Default::default() };
    Services::start(name, &layout)
}

#[test]
fn routes_split_a_canary_by_weight_and_requests_show_in_istio_metrics() {
    require_root();
    let s = start("http-canary", &objects(90, 10));
    for pod in ["v1-a", "v1-b", "v2-a", "ratings-1"] {
        s.serve_http(pod, &[]);
    }
    s.wait_endpoints("reviews-v1", 2);
    s.wait_endpoints("reviews-v2", 1);
    s.wait_endpoints("ratings", 1);

    // 2,000 requests on one HTTP/1.1 keep-alive connection, split 90/10 and spread over both
    // v1 endpoints (each request is balanced on its own).
    let results = requests(&s, 80, "/canary", 2000, &[]);
    let by = tally(&results);
    assert_eq!(results.len(), 2000);
    assert!(results.iter().all(|(code, _, _)| *code == 200), "{by:?}");
    assert_eq!(results.iter().map(|r| r.2).sum::<u32>(), 1, "one connection for all: {by:?}");
    let v2 = by.get("200 v2-a").copied().unwrap_or(0) as f64;
    // Binomial(2000, 0.1): mean 200, sd 13.4; five sd either way.
    assert!((133.0..=267.0).contains(&v2), "v2 took {v2} of 2000: {by:?}");
    // Both v1 endpoints take requests; the balancer's latency signal favours the one on this
    // node (no tunnel), as Linkerd's would.
    assert!(
        by.get("200 v1-a").copied().unwrap_or(0) > 0 && by.get("200 v1-b").copied().unwrap_or(0) > 0,
        "{by:?}"
    );

    // The proxy's connections to the endpoints are reused (keep-alive): a handful, not one
    // per request.
    for service in ["reviews-v1", "reviews-v2"] {
        let opened = s.service_state(service).expect("service state")["connections"].as_u64().expect("n");
        assert!((1..=8).contains(&opened), "{service}: {opened} upstream connections for {by:?}");
    }

    // A header match goes to v2; a path prefix to ratings, with the prefix rewritten away; the
    // rule's response header is set.
    assert!(
        tally(&requests(&s, 80, "/x", 20, &["-H", "x-canary: yes"])) == [("200 v2-a".to_owned(), 20)].into()
    );
    let body = curl(&s, &[&format!("http://{VIP}/ratings/stars?x=1")]);
    assert!(body.starts_with("ratings-1 GET /stars?x=1 HTTP/1.1"), "{body}");
    let head = curl(&s, &["-D", "-", "-o", "/dev/null", &format!("http://{VIP}/")]);
    assert!(head.to_ascii_lowercase().contains("x-route: canary"), "{head}");

    // HTTP/2 with prior knowledge, on ratings' h2c port (no route: the service itself), to
    // the endpoint in HTTP/2 too. (One request per curl: curl 7.88 fails to reuse an h2c
    // prior-knowledge connection, against any server.)
    for i in 0..20 {
        let url = format!("http://10.96.0.23:81/h2?a={i}");
        let out = curl(&s, &["--http2-prior-knowledge", "-w", "\\n%{http_version}", &url]);
        let (body, version) = out.rsplit_once('\n').expect("version");
        assert_eq!(version, "2", "{out}");
        assert!(body.contains(&format!("/h2?a={i} HTTP/2.0")), "the endpoint got HTTP/2: {out}");
    }

    // Istio's request metrics count every request, by destination service and code.
    let text = s.agent1.http_get("http://127.0.0.1:15020/metrics").expect("/metrics");
    let count = |service: &str, code: &str| {
        let host = format!("{service}.mesh.svc.cluster.local");
        tools::metric_sum(
            &text,
            "istio_requests_total",
            &[("destination_service", &host), ("response_code", code)],
        )
    };
    let v1_total =
        (by.get("200 v1-a").copied().unwrap_or(0) + by.get("200 v1-b").copied().unwrap_or(0)) as f64;
    // The canary's, the header-routed ones and the one whose headers were read.
    assert_eq!(count("reviews-v1", "200") + count("reviews-v2", "200"), 2000.0 + 20.0 + 1.0, "{by:?}");
    assert!(count("reviews-v1", "200") >= v1_total && count("reviews-v2", "200") >= v2 + 20.0, "{by:?}");
    assert_eq!(count("ratings", "200"), 21.0);
    // v2's one endpoint is on node 2: its requests rode HBONE, and say so.
    let v2_host = "reviews-v2.mesh.svc.cluster.local";
    let tls = [("destination_service", v2_host), ("connection_security_policy", "mutual_tls")];
    assert_eq!(tools::metric_sum(&text, "istio_requests_total", &tls), count("reviews-v2", "200"));
    let plain = [("destination_workload", "v1-a"), ("connection_security_policy", "none")];
    assert!(tools::metric_sum(&text, "istio_requests_total", &plain) > 0.0, "v1-a is on this node");
    dashboard_queries_exist(&text);
    let labels = [("reporter", "source"), ("source_workload", "web"), ("request_protocol", "http")];
    assert!(tools::metric_sum(&text, "istio_requests_total", &labels) >= 2000.0);
    assert!(tools::metric_sum(&text, "istio_request_duration_milliseconds_count", &labels) >= 2000.0);
    let metrics_file = s.cluster.work_dir().join("metrics.txt");
    std::fs::write(&metrics_file, &text).expect("metrics file");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics_file).expect("metrics file"))
        .output()
        .expect("promtool");
    // promtool parses the whole exposition (exit 1 on any error) and then lints names (exit 3).
    // Istio's own name for the duration histogram says milliseconds, which the lint wants in
    // seconds; dashboards query that name, so it is kept, and it is the only lint allowed.
    let said =
        format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    let only_istio_unit = check.status.code() == Some(3)
        && said.lines().all(|l| l.starts_with("istio_request_duration_milliseconds use base unit"));
    assert!(check.status.success() || only_istio_unit, "promtool ({}): {said}", check.status);

    // The flows of the client's connections count their requests by status class.
    let flows = s.agent1.flows("state=all").expect("flows");
    let counted: u64 = flows.iter().filter_map(|f| f["http"]["requests"].as_u64()).sum();
    assert!(counted >= 2000 + 20 + 2 + 20, "{counted}");

    // A live weight change: all of it to v2, while a client keeps one connection busy.
    let out = s.cluster.work_dir().join("live.txt");
    let url = format!("http://{VIP}/live?i=[1-4000]");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %header{x-served-by}\\n", &url])
        .stdout(std::fs::File::create(&out).expect("out"));
    let pid = s.pod("web").spawn(cmd).expect("curl");
    std::thread::sleep(Duration::from_millis(300));
    s.write_objects(&objects(0, 100));
    wait_for("requests all going to v2", Duration::from_secs(15), || {
        tally(&requests(&s, 80, "/probe", 20, &[])) == [("200 v2-a".to_owned(), 20)].into()
    })
    .expect("the new weights");
    let ended = s.pod("web").wait(pid, Duration::from_secs(60)).expect("curl ended");
    assert!(ended.success(), "the live client: {ended}");
    let lines = std::fs::read_to_string(&out).expect("live output");
    let codes: BTreeMap<&str, usize> = lines.lines().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.split(' ').next().unwrap_or("")).or_insert(0) += 1;
        m
    });
    assert_eq!(codes, [("200", 4000)].into(), "no request failed across the change");
    let last: Vec<&str> = lines.lines().rev().take(50).collect();
    assert!(last.iter().all(|l| l.ends_with("v2-a")), "the end of the run went to v2: {last:?}");
}

#[test]
fn retries_hide_a_flaky_endpoint_within_the_budget_and_a_slow_one_times_out() {
    require_root();
    let route = |name: &str, rule: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: mesh}}\nspec:\n  \
             parentRefs: [{{kind: Service, name: {name}}}]\n  rules:\n  - backendRefs: [{{name: {name}, port: 80}}]\n{rule}"
        )
    };
    let objects = [
        http_service("flaky", "flaky", "10.96.0.30"),
        route("flaky", "    retry: {codes: [503], attempts: 2, backoff: 1ms}\n"),
        http_service("broken", "broken", "10.96.0.31"),
        route("broken", "    retry: {codes: [503], attempts: 3, backoff: 1ms}\n"),
        http_service("slow", "slow", "10.96.0.32"),
        route("slow", "    timeouts: {request: 300ms}\n"),
    ]
    .concat();
    let endpoints =
        [(0, "flaky-1", "flaky"), (1, "flaky-2", "flaky"), (0, "broken-1", "broken"), (1, "slow-1", "slow")];
    let layout =
        Layout { endpoints: &endpoints, clients: &[("web", "web")], objects: &objects, ..Default::default() };
    let s = Services::start("http-retry", &layout);
    s.serve_http("flaky-1", &["--fail-every", "2"]);
    s.serve_http("flaky-2", &["--fail-every", "2"]);
    s.serve_http("broken-1", &["--fail-every", "1"]);
    s.serve_http("slow-1", &["--delay-ms", "3000"]);
    for name in ["flaky", "broken", "slow"] {
        s.wait_endpoints(name, if name == "flaky" { 2 } else { 1 });
    }
    let retried = || s.agent1.metric("nodemesh_http_retries_total{result=\"retried\"}").unwrap_or(0);
    let exhausted =
        || s.agent1.metric("nodemesh_http_retries_total{result=\"budget_exhausted\"}").unwrap_or(0);

    // Every other answer of each endpoint is a 503: the client sees only 200s. (A hundred
    // requests: half of them retried stays inside the budget's floor of 100 per 10 s.)
    let url = "http://10.96.0.30/?i=[1-100]";
    let out = curl(&s, &["-o", "/dev/null", "-w", "%{http_code}\\n", url]);
    assert_eq!(out.lines().filter(|l| *l == "200").count(), 100, "{out}");
    let flaky_retries = retried();
    assert!(flaky_retries >= 30, "the 503s were retried: {flaky_retries}");
    assert_eq!(exhausted(), 0);

    // A bad route is refused with its field named, and the last good one keeps serving:
    // retries still hide the flaky endpoint.
    let bad = objects.replace("retry: {codes: [503], attempts: 2", "retry: {codes: [200], attempts: 2");
    s.write_objects(&bad);
    let mut errors = String::new();
    wait_for("the bad route refused", Duration::from_secs(10), || {
        errors = s.cp.status().map(|st| st["served"]["input_errors"].to_string()).unwrap_or_default();
        errors.contains("objects.yaml")
    })
    .expect("refused");
    assert!(errors.contains("spec.rules[0].retry.codes[0]"), "the error names the field: {errors}");
    let out = curl(&s, &["-o", "/dev/null", "-w", "%{http_code}\\n", "http://10.96.0.30/?i=[1-20]"]);
    assert_eq!(out.lines().filter(|l| *l == "200").count(), 20, "the last good route serves: {out}");
    s.write_objects(&objects);
    let after_flaky = retried();

    // Every answer a 503: retries stay within the budget (10/s over 10 s, plus a fifth of
    // the requests), not the 3 per request the route allows.
    let n = 400u64;
    let url = format!("http://10.96.0.31/?i=[1-{n}]");
    let out = curl(&s, &["-o", "/dev/null", "-w", "%{http_code}\\n", &url]);
    assert_eq!(out.lines().filter(|l| *l == "503").count(), n as usize, "{out}");
    let spent = retried() - after_flaky;
    assert!(spent <= 100 + n / 5, "retries {spent} for {n} failing requests");
    assert!(exhausted() > 0, "the budget refused some");
    // Ranked by error rate, the connection to the broken service comes first.
    let worst = s.agent1.flows("top=1&by=errors").expect("flows");
    assert_eq!(worst[0]["service"], "mesh/broken.mesh.svc.cluster.local", "{worst:?}");
    assert_eq!(worst[0]["http"]["5xx"], n, "{worst:?}");

    // A request slower than the route's timeout: 504 at the deadline, and the endpoint sees it
    // cancelled.
    let started = std::time::Instant::now();
    let out = curl(&s, &["-o", "/dev/null", "-w", "%{http_code}", "http://10.96.0.32/slow"]);
    let took = started.elapsed();
    assert_eq!(out, "504");
    assert!(took < Duration::from_millis(2500), "answered at the deadline, not the server's 3 s: {took:?}");
    let stats = || {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", &format!("http://[::1]:{TARGET_PORT}/stats")]);
        let out = s.pod("slow-1").output(cmd).expect("stats");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    wait_for("the slow request cancelled upstream", Duration::from_secs(5), || stats()["cancelled"] == 1)
        .unwrap_or_else(|e| panic!("{e}: {}", stats()));
    let text = s.agent1.http_get("http://127.0.0.1:15020/metrics").expect("/metrics");
    let timed_out = tools::metric_sum(
        &text,
        "istio_requests_total",
        &[("response_code", "504"), ("response_flags", "UT")],
    );
    assert_eq!(timed_out, 1.0);
}

/// Every metric the chart's Grafana dashboard queries is one this agent exports (identities
/// on, HTTP and TCP traffic through it): a dashboard panel never stays empty for a typo.
fn dashboard_queries_exist(metrics: &str) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/nodemesh/dashboards/nodemesh.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
            .expect("dashboard JSON");
    let families: std::collections::HashSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut queried = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_owned())
        .chain(std::iter::once(
            dashboard["templating"]["list"][1]["query"].as_str().expect("query").to_owned(),
        ));
    for expr in exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("istio_") || word.starts_with("nodemesh_") {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s).filter(|f| families.contains(f)))
                    .unwrap_or(word);
                assert!(
                    families.contains(family),
                    "the dashboard queries {word}, which the agent does not export"
                );
                queried.push(family.to_owned());
            }
        }
    }
    assert!(queried.len() >= 20, "the dashboard's queries were not found: {queried:?}");
}
