//! Protocols on top of HTTP through the proxy's HTTP stage, as root on the fake cluster with
//! real peers that share no code with ours: gRPC (grpcio, `tools/grpc_echo.py`) keeps its
//! per-request balancing, its streams, its trailers and its status codes, and shows in
//! Istio's request metrics by gRPC status; a WebSocket (the `websockets` library,
//! `tools/ws_echo.py`) is upgraded and then passes through as a byte tunnel, across nodes
//! (HBONE) and on the same node.

use std::{collections::BTreeMap, process::Command};

use nodemesh_testbed::{
    require_root,
    services::{Layout, Services, TARGET_PORT},
    tools,
};
use serde_json::Value;

/// A Service of namespace `mesh` at `vip` selecting `app`, port 80 → 8080, declared
/// `app_protocol`.
fn service(name: &str, app: &str, vip: &str, app_protocol: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: mesh}}\nspec:\n  \
         clusterIP: {vip}\n  selector: {{app: {app}}}\n  ports:\n  \
         - {{name: main, port: 80, targetPort: {TARGET_PORT}, appProtocol: {app_protocol}}}\n"
    )
}

/// `tools/<script>` on the virtualenv's python (it has grpcio and websockets), with `args`.
fn venv_tool(script: &str, args: &[&str]) -> Command {
    let python = tools::grpc_python_path();
    assert!(python.exists(), "{} is missing: run `cargo xtask setup`", python.display());
    let mut cmd = Command::new(python);
    cmd.arg("-u").arg(tools::tool(script)).args(args);
    cmd
}

/// Starts `script serve --port 8080 ...` in `pod` and waits until it listens.
fn serve(s: &Services, pod: &str, script: &str, extra: &[&str]) {
    let port = TARGET_PORT.to_string();
    let mut cmd = venv_tool(script, &[&["serve", "--port", &port, "--name", pod], extra].concat());
    cmd.stdout(std::process::Stdio::null());
    s.pod(pod).spawn(cmd).expect(script);
    tools::wait_listening(&s.pod(pod).netns_path(), TARGET_PORT).expect("endpoint listening");
}

/// Runs `script call ...` in the client pod `web`; its JSON line.
fn call(s: &Services, script: &str, args: &[&str]) -> Value {
    let out = s.pod("web").output(venv_tool(script, &[&["call"], args].concat())).expect(script);
    tools::json_result(script, &out).expect("a JSON result")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap_or("?").to_owned()).collect()).unwrap_or_default()
}

#[test]
fn grpc_unary_and_streaming_through_the_proxy_keep_trailers_and_status_codes() {
    require_root();
    const VIP: &str = "10.96.0.40";
    let objects = service("echo", "echo", VIP, "grpc");
    let layout = Layout {
        endpoints: &[(0, "echo-a", "echo"), (1, "echo-b", "echo")],
        clients: &[("web", "web")],
        objects: &objects,
        ..Default::default()
    };
    let s = Services::start("http-grpc", &layout);
    serve(&s, "echo-a", "grpc_echo.py", &[]);
    serve(&s, "echo-b", "grpc_echo.py", &[]);
    s.wait_endpoints("echo", 2);
    let target = format!("{VIP}:80");

    // Unary calls on one channel (one HTTP/2 connection): every call answered by the
    // endpoint that got it, and both endpoints among them, as each request is balanced on
    // its own rather than the connection pinned to one endpoint.
    const UNARY: usize = 50;
    let unary = call(&s, "grpc_echo.py", &["--target", &target, "--mode", "unary", "--count", "50"]);
    let texts = strings(&unary["texts"]);
    assert_eq!(strings(&unary["codes"]), vec!["OK"; UNARY], "{unary}");
    assert_eq!(texts.len(), UNARY, "{unary}");
    let mut by = BTreeMap::new();
    for (i, text) in texts.iter().enumerate() {
        let (who, said) = text.split_once(':').unwrap_or(("?", text));
        assert!(["echo-a", "echo-b"].contains(&who) && said == format!("hello-{i}"), "{i}: {text}");
        *by.entry(who.to_owned()).or_insert(0) += 1;
    }
    assert_eq!(by.len(), 2, "both endpoints answer calls on the one channel: {by:?}");

    // A server stream: every message, in order, then the trailing metadata, which only
    // reaches the client if the proxy forwards the HTTP/2 trailers.
    const STREAMED: usize = 200;
    let stream = call(&s, "grpc_echo.py", &["--target", &target, "--mode", "stream", "--count", "200"]);
    assert_eq!(stream["code"], "OK", "{stream}");
    let texts = strings(&stream["texts"]);
    assert_eq!(texts.len(), STREAMED, "{stream}");
    let who = texts[0].split(':').next().unwrap_or("?").to_owned();
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, &format!("{who}:hello:{i}"), "message {i} of one stream, from one endpoint");
    }
    assert_eq!(stream["trailers"]["x-trailer"], "done", "{stream}");

    // Calls the server aborts: NOT_FOUND reaches the client as NOT_FOUND with the server's
    // message (grpcio sends these trailers-only: grpc-status in the response headers).
    const ABORTED: usize = 10;
    let aborted = call(
        &s,
        "grpc_echo.py",
        &["--target", &target, "--mode", "status", "--count", "10", "--code", "5", "--text", "gone"],
    );
    assert_eq!(strings(&aborted["codes"]), vec!["NOT_FOUND"; ABORTED], "{aborted}");
    for (i, detail) in strings(&aborted["details"]).iter().enumerate() {
        let (who, said) = detail.split_once(": ").unwrap_or(("?", detail));
        assert!(["echo-a", "echo-b"].contains(&who) && said == format!("gone-{i}"), "{i}: {detail}");
    }

    // Istio's request metrics, by gRPC status: every call is an HTTP 200, the successful
    // ones with grpc status 0 and the aborted ones with 5.
    let text = s.agent1.http_get("http://127.0.0.1:15020/metrics").expect("/metrics");
    let count = |labels: &[(&str, &str)]| {
        let host = "echo.mesh.svc.cluster.local";
        let mut all = vec![("destination_service", host), ("request_protocol", "grpc")];
        all.extend_from_slice(labels);
        tools::metric_sum(&text, "istio_requests_total", &all)
    };
    let grpc_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request_protocol=\"grpc\"") && l.starts_with("istio_requests_total"))
        .collect();
    let ok = count(&[("grpc_response_status", "0"), ("response_code", "200")]);
    assert_eq!(ok, (UNARY + 1) as f64, "the unary calls and the stream: {grpc_lines:#?}");
    let not_found = count(&[("grpc_response_status", "5"), ("response_code", "200")]);
    assert_eq!(not_found, ABORTED as f64, "the aborted calls: {grpc_lines:#?}");
    assert_eq!(count(&[]), (UNARY + 1 + ABORTED) as f64, "nothing else: {grpc_lines:#?}");
    assert_eq!(
        tools::metric_sum(&text, "istio_requests_total", &[("request_protocol", "http")]),
        0.0,
        "no gRPC call counted as plain HTTP"
    );
}

#[test]
fn a_websocket_echo_passes_through_as_a_tunnel() {
    require_root();
    // `far`'s endpoint is on node 2, so the upgraded connection rides HBONE; `near`'s is on
    // the client's node.
    let objects =
        [service("far", "far", "10.96.0.50", "http"), service("near", "near", "10.96.0.51", "http")].concat();
    let layout = Layout {
        endpoints: &[(1, "far-1", "far"), (0, "near-1", "near")],
        clients: &[("web", "web")],
        objects: &objects,
        ..Default::default()
    };
    let s = Services::start("http-websocket", &layout);
    serve(&s, "far-1", "ws_echo.py", &[]);
    serve(&s, "near-1", "ws_echo.py", &[]);
    s.wait_endpoints("far", 1);
    s.wait_endpoints("near", 1);

    const MESSAGES: u64 = 200;
    const SIZE: u64 = 3000;
    for (vip, pod) in [("10.96.0.50", "far-1"), ("10.96.0.51", "near-1")] {
        let url = format!("ws://{vip}/echo");
        let result = call(
            &s,
            "ws_echo.py",
            &["--url", &url, "--messages", &MESSAGES.to_string(), "--size", &SIZE.to_string()],
        );
        // Every message (the text ones and the 100 KiB binary one) came back as sent, and
        // the server's greeting, sent right after the handshake, came through first.
        assert_eq!(result["ok"], true, "{pod}: {result}");
        assert_eq!(result["mismatched"], 0, "{pod}: {result}");
        assert_eq!(result["echoed"], MESSAGES + 1, "{pod}: {result}");
        assert_eq!(result["bytes"], MESSAGES * SIZE + 100 * 1024, "{pod}: {result}");
        assert_eq!(result["server"], pod, "{result}");
    }

    // The handshakes went through the HTTP stage (a request each, answered 101) rather than
    // around it.
    let text = s.agent1.http_get("http://127.0.0.1:15020/metrics").expect("/metrics");
    for name in ["far", "near"] {
        let host = format!("{name}.mesh.svc.cluster.local");
        let labels = [("destination_service", host.as_str()), ("response_code", "101")];
        assert_eq!(tools::metric_sum(&text, "istio_requests_total", &labels), 1.0, "{name}");
    }
}
